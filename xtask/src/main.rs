//! Developer tasks: `cargo xtask setup | test | demo | image | bench | fuzz`.

mod bench;
mod bench_dns;
mod bench_e2e;
mod bench_fair;
mod bench_guard;
mod bench_guard_agent;
mod bench_idle;
mod bench_programs;
mod bench_kube;
mod bench_np;
mod bench_run;
mod demo;
mod e2e_setup;
mod fuzz;
mod image;
mod setup;
mod util;
mod validate;
mod vm;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use util::{cargo, run};

/// The eBPF crate only builds for the BPF target (agent/build.rs does that through
/// aya-build); compiled for the host it clashes with std and its `moat` binary would
/// overwrite the agent's target/debug/moat.
const HOST_EXCLUDE: &[&str] = &["--exclude", "moat-ebpf"];

/// Run again by `cargo xtask test` with `MOAT_TEST_AGENT_CONTAINER=1`.
const AGENT_CONTAINER_TESTS: &[&str] = &[
    "guard_credentials",
    "guard_escapes",
    "guard_escapes_process",
    "guard_sysctl",
    "guard_foreign",
    "isolation",
    "icmp_ingress",
    "dns_isolation",
    "restart",
    "kube_watch",
];

#[derive(Parser)]
#[command(name = "cargo xtask", about = "moat developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check and install (Debian, root) everything the build and the tests need.
    Setup(setup::SetupArgs),
    /// setup, build, clippy, then every test of the workspace (integration tests need root).
    Test,
    /// setup, build, then a demo lab: reachability matrix and one deny event.
    Demo,
    /// setup, then the DaemonSet's image: an OCI archive holding only the static agent.
    Image(image::ImageArgs),
    /// Validate every manifest under deploy/ against the Kubernetes schemas (offline).
    Validate,
    /// setup, build, then benchmarks: moat attached versus no program attached.
    Bench(bench::BenchArgs),
    /// The privileged integration tests on Debian's 6.1 and 6.12 kernels, booted under QEMU.
    Vm(vm::VmArgs),
    /// Runs every fuzz target (cargo-fuzz) for N seconds, from seeds made of the tests' inputs.
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    util::catch_interrupts();
    let result = match cli.command {
        Task::Setup(args) => setup::run_setup(&args),
        Task::Test => test(),
        Task::Demo => demo::run_demo(),
        Task::Image(args) => image::run_image(&args),
        Task::Validate => validate::validate_manifests(),
        Task::Bench(args) => bench::run_bench(&args),
        Task::Vm(args) => vm::run_vm(&args),
        Task::Fuzz(args) => {
            setup::run_setup(&setup::SetupArgs::default()).and_then(|()| fuzz::run_fuzz(&args))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            if util::interrupted() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn test() -> Result<()> {
    setup::run_setup(&setup::SetupArgs::default())?;
    util::check_interrupt()?;
    run(cargo().args(["build", "--workspace", "--all-targets"]).args(HOST_EXCLUDE))?;
    util::check_interrupt()?;
    let clippy = util::capture(cargo().args(["clippy", "--version"]))
        .map(|output| output.status.success())
        .unwrap_or(false);
    if clippy {
        run(cargo()
            .args(["clippy", "--workspace", "--all-targets"])
            .args(HOST_EXCLUDE)
            .args(["--", "-D", "warnings"]))?;
    } else {
        eprintln!("clippy is not installed; skipping the lint step (`rustup component add clippy`)");
    }
    util::check_interrupt()?;
    validate::validate_manifests()?;
    util::check_interrupt()?;
    // The image test (tests/tests/image.rs) reads the archive and runs the binary in it.
    let image = image::default_path()?;
    image::build_image(&image)?;
    util::check_interrupt()?;
    // The integration tests (package moat-integration) run the agent binary just built, and
    // the kube_* tests the test API server built with it.
    let moat = util::moat_bin()?;
    let apiserver = moat.with_file_name("moat-test-apiserver");
    let labs_before = Path::new(util::LAB_RUN_DIR).exists();
    run(cargo()
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(HOST_EXCLUDE)
        .env("MOAT_BIN", &moat)
        .env("MOAT_TEST_APISERVER_BIN", &apiserver)
        .env("MOAT_IMAGE", image))?;
    // The guard's tests and the floor's once more with every lab's agent run as the DaemonSet
    // runs it (`moat lab up --agent-container`): the node's files only below its host root,
    // its own cgroup namespace, only the DaemonSet's capabilities.
    let mut container = cargo();
    container.args(["test", "-p", "moat-integration", "--no-fail-fast"]);
    for test in AGENT_CONTAINER_TESTS {
        container.args(["--test", test]);
    }
    run(container
        .env("MOAT_BIN", &moat)
        .env("MOAT_TEST_APISERVER_BIN", &apiserver)
        .env("MOAT_TEST_AGENT_CONTAINER", "1"))?;
    // Each test checks its own lab's leftovers; the shared root is only empty once all are down.
    if !labs_before && Path::new(util::LAB_RUN_DIR).exists() {
        bail!("the tests left {} behind: a lab's `down` did not remove it", util::LAB_RUN_DIR);
    }
    util::check_interrupt()?;
    // The same privileged tests on the kernels nodes run (6.1, 6.12), where BPF LSM is active.
    if std::env::var_os("MOAT_TEST_SKIP_VM").is_some() {
        eprintln!("MOAT_TEST_SKIP_VM is set: skipping the kernel matrix (`cargo xtask vm`)");
    } else {
        vm::run_vm(&vm::VmArgs::ci())?;
    }
    util::check_interrupt()?;
    // A short smoke of every fuzz target: each parser of outside input, from its seeds.
    fuzz::run_fuzz(&fuzz::FuzzArgs { seconds: fuzz::SMOKE_SECONDS, target: None, dev: true })
}
