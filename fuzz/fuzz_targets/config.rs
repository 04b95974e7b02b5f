//! The agent's configuration file (YAML), parsed and validated.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use moat_agent::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = Config::parse(text, Path::new("fuzz.yaml")) {
            let _ = config.events.budget.kernel();
        }
    }
});
