//! `cargo xtask fuzz [--seconds N] [--target NAME]`: runs every cargo-fuzz target in fuzz/
//! for N seconds, each from a corpus seeded with fuzz/seeds/<target> and the inputs the
//! tests use (manifest test data, fixtures). A finding fails the run and names the input
//! libFuzzer saved (fuzz/artifacts/<target>/); fix it, keep the input as a regression test
//! and in fuzz/seeds. `cargo xtask test` runs a short smoke of every target.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::util::{cargo, run, workspace_root};

/// The targets, each with the test inputs (files or directories) that seed it.
pub const TARGETS: [(&str, &[&str]); 6] = [
    ("manifests", &["agent/src/sources/testdata", "tests/fixtures"]),
    ("watch_object", &[]),
    ("config", &[]),
    ("btf", &[]),
    ("kernel_event", &[]),
    ("admin_request", &[]),
];

/// Seconds each target runs in `cargo xtask test`.
pub const SMOKE_SECONDS: u64 = 3;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only this target (default: all).
    #[arg(long)]
    pub target: Option<String>,
    /// Build the targets unoptimized (cargo-fuzz `--dev`): a third of the build time (4 min
    /// against 14 here), slower fuzzing; the smoke in `cargo xtask test` runs each target
    /// only seconds.
    #[arg(long)]
    pub dev: bool,
}

pub fn run_fuzz(args: &FuzzArgs) -> Result<()> {
    let targets: Vec<_> = TARGETS.iter().filter(|(name, _)| args.target.as_deref().is_none_or(|t| t == *name)).collect();
    if targets.is_empty() {
        bail!("no fuzz target {:?}; targets: {}", args.target, TARGETS.map(|(name, _)| name).join(", "));
    }
    let root = workspace_root();
    // One build of every target first, so each run starts at once.
    run(&mut fuzz_command("build", args.dev))?;
    for (name, seeds) in targets {
        let corpus = seed_corpus(&root, name, seeds)?;
        let max_total_time = format!("-max_total_time={}", args.seconds);
        let status = fuzz_command("run", args.dev)
            .arg(name)
            .arg(&corpus)
            .args(["--", &max_total_time, "-timeout=10", "-rss_limit_mb=4096", "-max_len=65536"])
            .status()
            .with_context(|| format!("running fuzz target {name}"))?;
        if !status.success() {
            bail!(
                "fuzz target {name} found a failing input ({status}); it is saved in {}: fix it, and keep it as a regression test and in fuzz/seeds/{name}",
                root.join("fuzz/artifacts").join(name).display()
            );
        }
    }
    Ok(())
}

/// `cargo fuzz` for the fuzz/ directory, on the stable toolchain (RUSTC_BOOTSTRAP=1 allows
/// the sanitizer flags it passes).
fn fuzz_command(subcommand: &str, dev: bool) -> Command {
    let mut command = cargo();
    // cargo-fuzz takes --fuzz-dir after its subcommand.
    command.args(["fuzz", subcommand, "--fuzz-dir", "fuzz"]).env("RUSTC_BOOTSTRAP", "1");
    if dev {
        command.arg("--dev");
    }
    command
}

/// fuzz/corpus/<target> (not kept in git) with the seeds copied in.
fn seed_corpus(root: &Path, name: &str, test_inputs: &[&str]) -> Result<PathBuf> {
    let corpus = root.join("fuzz/corpus").join(name);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let mut sources: Vec<PathBuf> = vec![root.join("fuzz/seeds").join(name)];
    sources.extend(test_inputs.iter().map(|p| root.join(p)));
    for source in sources {
        let files: Vec<PathBuf> = if source.is_dir() {
            std::fs::read_dir(&source)
                .with_context(|| format!("listing {}", source.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| path.is_file())
                .collect()
        } else {
            vec![source]
        };
        for file in files {
            let Some(file_name) = file.file_name() else { continue };
            std::fs::copy(&file, corpus.join(file_name)).with_context(|| format!("copying seed {}", file.display()))?;
        }
    }
    Ok(corpus)
}
