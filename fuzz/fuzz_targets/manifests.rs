//! Manifest files (YAML and JSON, Lists, multi-document streams) → documents → the model →
//! the compiled map entries, as the agent and `moat explain` do with files it is given.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use moat_agent::compiler::{compile_scoped, Scope};
use moat_agent::config::Config;
use moat_agent::sources::manifests::{build_cluster, parse_text};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for name in ["fuzz.yaml", "fuzz.json"] {
        let Ok(documents) = parse_text(Path::new(name), text) else { continue };
        let Ok(loaded) = build_cluster(&documents) else { continue };
        let _ = compile_scoped(&loaded.cluster, &Config::default(), &Default::default(), Scope::Cluster);
    }
});
