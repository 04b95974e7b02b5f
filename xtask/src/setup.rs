//! `cargo xtask setup`: checks, and on a Debian machine as root installs, what the build and
//! the tests need. Quick when everything is present: a handful of version queries.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

use crate::util::{capture, find_on_path, is_root, on_path, render, run, stdout_of};

/// Debian packages: LLVM for bpf-linker, iproute2 and procps for the lab, prometheus for
/// `promtool check metrics` in the observability tests, python3-venv for manifest validation,
/// iptables for the NetworkPolicy benchmark (rules only ever go inside a lab pod's netns),
/// QEMU, busybox, kmod, cpio, xz and zstd for the kernel matrix (`cargo xtask vm`),
/// musl-tools (musl-gcc, for ring's C code) for the static agent of `cargo xtask image`.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "procps",
    "prometheus",
    "python3-venv",
    "iptables",
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "cpio",
    "xz-utils",
    "zstd",
    "musl-tools",
];
/// Needed to link anything (and to build bpf-linker); only installed when `cc` is missing.
const APT_COMPILER: &[&str] = &["gcc", "libc6-dev"];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// `cargo xtask fuzz` and the fuzz smoke in `cargo xtask test`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The toolchain agent/build.rs builds the eBPF programs with (`rustup run stable cargo`).
const EBPF_TOOLCHAIN: &str = "stable";

#[derive(clap::Args, Default)]
pub struct SetupArgs {
    /// Only report; install nothing.
    #[arg(long)]
    pub check: bool,
}

/// One line of the report.
fn report(item: &str, status: &str) {
    println!("  {item:<44} {status}");
}

/// Collects what could not be fixed, with the commands that would fix it.
#[derive(Default)]
struct Outcome {
    problems: Vec<String>,
    manual: Vec<String>,
}

pub fn run_setup(args: &SetupArgs) -> Result<()> {
    println!("setup: checking the build and test requirements");
    let root = is_root();
    let mut outcome = Outcome::default();

    if root {
        report("root", "found");
    } else {
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        report("root", &format!("missing (uid {uid}; the lab and the integration tests need root)"));
        outcome.problems.push("not running as root".into());
        outcome.manual.push("sudo -E env PATH=\"$PATH\" cargo xtask setup".into());
    }

    // Debian packages first: bpf-linker builds against LLVM from them.
    apt(args, root, &mut outcome)?;
    rust_src(args, &mut outcome)?;
    musl_target(args, &mut outcome)?;
    bpf_linker(args, &mut outcome)?;
    cargo_fuzz(args, &mut outcome)?;
    clippy();
    manifest_validator(args, &mut outcome)?;
    cgroup2(&mut outcome);
    bpffs(&mut outcome);

    if outcome.problems.is_empty() {
        println!("setup: everything is in place");
        return Ok(());
    }
    if !outcome.manual.is_empty() {
        eprintln!("\nTo finish the set-up by hand, run (as root on Debian):");
        for command in &outcome.manual {
            eprintln!("  {command}");
        }
        eprintln!();
    }
    bail!("setup incomplete: {}", outcome.problems.join("; "))
}

// ---------------------------------------------------------------------------------------
// Debian packages

fn apt(args: &SetupArgs, root: bool, outcome: &mut Outcome) -> Result<()> {
    let mut wanted: Vec<&str> = APT_PACKAGES.to_vec();
    if !on_path("cc") {
        wanted.extend(APT_COMPILER);
    }
    if !on_path("dpkg-query") {
        for package in &wanted {
            report(&format!("apt: {package}"), "missing (no dpkg-query: not Debian?)");
        }
        outcome.problems.push("cannot check Debian packages (no dpkg-query)".into());
        outcome.manual.push(format!("apt-get update && apt-get install -y {}", wanted.join(" ")));
        return Ok(());
    }

    let installed = dpkg_versions(&wanted)?;
    let missing: Vec<&str> =
        wanted.iter().copied().filter(|package| !installed.iter().any(|(name, _)| name == package)).collect();
    for package in &wanted {
        if let Some((_, version)) = installed.iter().find(|(name, _)| name == package) {
            report(&format!("apt: {package}"), &format!("found ({version})"));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }

    let install_line = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if args.check || !root || !on_path("apt-get") {
        let why = if args.check {
            "--check"
        } else if !root {
            "not root"
        } else {
            "no apt-get"
        };
        for package in &missing {
            report(&format!("apt: {package}"), &format!("missing ({why})"));
        }
        outcome.problems.push(format!("missing Debian packages: {}", missing.join(" ")));
        outcome.manual.push(install_line);
        return Ok(());
    }

    // Update the package lists once, only because something must be installed.
    run(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    let now = dpkg_versions(&missing)?;
    for package in &missing {
        match now.iter().find(|(name, _)| name == package) {
            Some((_, version)) => report(&format!("apt: {package}"), &format!("installed ({version})")),
            None => {
                report(&format!("apt: {package}"), "missing (apt-get install did not install it)");
                outcome.problems.push(format!("{package} did not install"));
            }
        }
    }
    Ok(())
}

/// (package, version) for each of `packages` that is installed.
fn dpkg_versions(packages: &[&str]) -> Result<Vec<(String, String)>> {
    // Exit status is non-zero when any package is unknown; the output still lists the rest.
    let output = capture(
        Command::new("dpkg-query")
            .args(["-W", "-f", "${Package}\t${db:Status-Status}\t${Version}\n"])
            .args(packages),
    )?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let (name, status, version) = (fields.next()?, fields.next()?, fields.next()?);
            // Multi-arch packages print as name:arch.
            let name = name.split(':').next().unwrap_or(name);
            (status == "installed").then(|| (name.to_string(), version.to_string()))
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// Rust: rust-src (needed to build `core` for the BPF target)

fn rust_src(args: &SetupArgs, outcome: &mut Outcome) -> Result<()> {
    let active = match sysroot(Command::new("rustc").args(["--print", "sysroot"])) {
        Ok(active) => active,
        Err(err) => {
            report("rust-src", &format!("missing (no working rustc: {err:#})"));
            outcome.problems.push("no working rustc".into());
            outcome.manual.push("install Rust with rustup (https://rustup.rs), then: rustup component add rust-src".into());
            return Ok(());
        }
    };
    let active_name = toolchain_name(&active);
    let mut toolchains = vec![(active_name.clone(), Some(active))];

    let rustup = on_path("rustup");
    if rustup && !active_name.starts_with(&format!("{EBPF_TOOLCHAIN}-")) {
        let stable = sysroot(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "rustc", "--print", "sysroot"])).ok();
        let same = stable.as_deref().map(toolchain_name).is_some_and(|name| name == active_name);
        if !same {
            toolchains.push((EBPF_TOOLCHAIN.to_string(), stable));
        }
    }

    for (name, sysroot) in toolchains {
        let item = format!("rust-src ({name})");
        let Some(sysroot) = sysroot else {
            // The eBPF build runs `rustup run stable cargo`: the toolchain itself is missing.
            let install = format!("rustup toolchain install {name} --profile minimal --component rust-src");
            if args.check {
                report(&item, "missing (toolchain not installed)");
                outcome.problems.push(format!("toolchain {name} missing"));
                outcome.manual.push(install);
            } else {
                run(Command::new("rustup").args(["toolchain", "install", &name, "--profile", "minimal", "--component", "rust-src"]))?;
                report(&item, "installed (toolchain and rust-src)");
            }
            continue;
        };
        let version = stdout_of(Command::new(sysroot.join("bin/rustc")).arg("--version"))
            .map(|text| text.trim().to_string())
            .unwrap_or_else(|_| "rustc".into());
        if has_rust_src(&sysroot) {
            report(&item, &format!("found ({version})"));
            continue;
        }
        let install = format!("rustup component add rust-src --toolchain {name}");
        if args.check || !rustup {
            let why = if args.check { "--check" } else { "no rustup" };
            report(&item, &format!("missing ({why})"));
            outcome.problems.push(format!("rust-src missing for {name}"));
            outcome.manual.push(install);
            continue;
        }
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &name]))?;
        if has_rust_src(&sysroot) {
            report(&item, &format!("installed ({version})"));
        } else {
            report(&item, "missing (rustup did not install it)");
            outcome.problems.push(format!("rust-src missing for {name}"));
        }
    }
    Ok(())
}

fn sysroot(cmd: &mut Command) -> Result<PathBuf> {
    Ok(PathBuf::from(stdout_of(cmd)?.trim()))
}

fn toolchain_name(sysroot: &Path) -> String {
    sysroot.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
}

fn has_rust_src(sysroot: &Path) -> bool {
    sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml").is_file()
}

// ---------------------------------------------------------------------------------------
// The musl target, for the statically linked agent of `cargo xtask image`

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

fn musl_target(args: &SetupArgs, outcome: &mut Outcome) -> Result<()> {
    let target = MUSL_TARGET;
    let item = format!("rust target {target}");
    let installed = |sysroot: &Path| sysroot.join("lib/rustlib").join(target).join("lib").is_dir();
    let sysroot = sysroot(Command::new("rustc").args(["--print", "sysroot"]))?;
    if installed(&sysroot) {
        report(&item, "found");
        return Ok(());
    }
    let install = format!("rustup target add {target}");
    if args.check || !on_path("rustup") {
        let why = if args.check { "--check" } else { "no rustup" };
        report(&item, &format!("missing ({why})"));
        outcome.problems.push(format!("rust target {target} missing"));
        outcome.manual.push(install);
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", target]))?;
    if installed(&sysroot) {
        report(&item, "installed");
    } else {
        report(&item, "missing (rustup did not install it)");
        outcome.problems.push(format!("rust target {target} missing"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// bpf-linker

fn bpf_linker(args: &SetupArgs, outcome: &mut Outcome) -> Result<()> {
    let item = format!("bpf-linker {BPF_LINKER_VERSION}");
    let found = bpf_linker_version();
    let wanted_minor = BPF_LINKER_VERSION.rsplit_once('.').map_or(BPF_LINKER_VERSION, |(minor, _)| minor);
    let why = match &found {
        Some(version) if version.starts_with(&format!("{wanted_minor}.")) => {
            report(&item, &format!("found ({version})"));
            return Ok(());
        }
        Some(version) => format!("found {version}, need {wanted_minor}.x"),
        None => "not on PATH or does not run".to_string(),
    };

    let mut cmd = install_bpf_linker_command();
    let shown = render(&cmd);
    let program = PathBuf::from(cmd.get_program());
    let have_cargo = if program.is_absolute() { program.is_file() } else { on_path(&program.to_string_lossy()) };
    let have_llvm = Path::new(LLVM_PREFIX).join("bin/llvm-config").is_file();
    if args.check || !have_cargo || !have_llvm {
        let detail = if args.check {
            "--check".to_string()
        } else if !have_cargo {
            "no cargo on PATH".to_string()
        } else {
            format!("{LLVM_PREFIX} missing: install llvm-22-dev first")
        };
        report(&item, &format!("missing ({why}; {detail})"));
        outcome.problems.push("bpf-linker missing".into());
        outcome.manual.push(shown);
        return Ok(());
    }
    eprintln!("bpf-linker: {why}; building it (about 2 minutes)");
    run(&mut cmd)?;
    match bpf_linker_version() {
        Some(version) => report(&item, &format!("installed ({version})")),
        None => {
            report(&item, "missing (installed, but `bpf-linker --version` fails; is ~/.cargo/bin on PATH?)");
            outcome.problems.push("bpf-linker does not run after install".into());
        }
    }
    Ok(())
}

/// cargo-fuzz from crates.io (the fuzz targets need only it and the stable toolchain).
fn cargo_fuzz(args: &SetupArgs, outcome: &mut Outcome) -> Result<()> {
    let item = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    let found = capture(crate::util::cargo().args(["fuzz", "--version"]))
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string());
    if let Some(version) = found.filter(|v| v.ends_with(CARGO_FUZZ_VERSION)) {
        report(&item, &format!("found ({version})"));
        return Ok(());
    }
    let mut cmd = crate::util::cargo();
    cmd.env_remove("RUSTC_BOOTSTRAP").args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--locked", "--force"]);
    if args.check {
        report(&item, "missing (--check)");
        outcome.problems.push("cargo-fuzz missing".into());
        outcome.manual.push(render(&cmd));
        return Ok(());
    }
    eprintln!("cargo-fuzz: building it (about 2 minutes)");
    run(&mut cmd)?;
    report(&item, "installed");
    Ok(())
}

fn manifest_validator(args: &SetupArgs, outcome: &mut Outcome) -> Result<()> {
    let item = format!("kubernetes-validate {} (venv)", crate::validate::VALIDATOR_VERSION);
    if crate::validate::installed()? {
        report(&item, "found");
        return Ok(());
    }
    if args.check {
        report(&item, "missing (--check)");
        outcome.problems.push("kubernetes-validate missing".into());
        outcome.manual.extend(crate::validate::install_commands()?.iter().map(render));
        return Ok(());
    }
    crate::validate::install()?;
    report(&item, "installed");
    Ok(())
}

fn install_bpf_linker_command() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // LLVM_PREFIX matters: without it llvm-sys looks in the wrong directory and the link
    // fails with `unable to find library -lLLVM`.
    // RUSTC_BOOTSTRAP comes from this workspace's .cargo/config.toml (through `cargo run`);
    // bpf-linker is an ordinary stable build and should not see it.
    cmd.env_remove("RUSTC_BOOTSTRAP")
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"])
        .args(["--no-default-features", "--features", "llvm-22"]);
    cmd
}

/// "0.13.0" from `bpf-linker --version` ("bpf-linker 0.13.0"), if it runs.
fn bpf_linker_version() -> Option<String> {
    let program = find_on_path("bpf-linker").or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))?;
        let candidate = home.join("bin/bpf-linker");
        candidate.is_file().then_some(candidate)
    })?;
    let output = capture(Command::new(program).arg("--version")).ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace().last().map(str::to_string)
}

// ---------------------------------------------------------------------------------------
// clippy (optional), cgroup v2 and bpffs (checked, never changed)

fn clippy() {
    match capture(crate::util::cargo().args(["clippy", "--version"])) {
        Ok(output) if output.status.success() => {
            let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
            report("clippy (optional)", &format!("found ({version})"));
        }
        _ => report("clippy (optional)", "missing (lint step skipped; `rustup component add clippy`)"),
    }
}

fn cgroup2(outcome: &mut Outcome) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let point = mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        (after.split(' ').next()? == "cgroup2").then(|| before.split(' ').nth(4).map(str::to_string))?
    });
    match point {
        Some(point) => report("cgroup v2", &format!("found (mounted at {point})")),
        None => {
            report("cgroup v2", "missing (no cgroup2 mount in /proc/self/mountinfo)");
            outcome.problems.push("cgroup v2 is not mounted".into());
            outcome.manual.push("mount -t cgroup2 none /sys/fs/cgroup   # or boot with systemd.unified_cgroup_hierarchy=1".into());
        }
    }
}

fn bpffs(outcome: &mut Outcome) {
    if Path::new("/sys/fs/bpf").is_dir() {
        report("/sys/fs/bpf", "found");
    } else {
        report("/sys/fs/bpf", "missing");
        outcome.problems.push("/sys/fs/bpf does not exist".into());
        outcome.manual.push("mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf".into());
    }
}
