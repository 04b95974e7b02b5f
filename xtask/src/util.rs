//! Running commands, finding the workspace, interrupt handling and the lab guard.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context as _, Result};

/// Where labs keep their files (the agent's `cli::lab::LAB_RUN_DIR`; xtask does not link it).
pub const LAB_RUN_DIR: &str = "/run/moat/lab";

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// `cargo`, the same one that runs xtask, in the workspace root.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

/// A shell-like rendering of a command, for logs and error messages.
pub fn render(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(key, value)| Some(format!("{}={}", key.to_string_lossy(), quote(value?))))
        .collect();
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(value: &OsStr) -> String {
    let text = value.to_string_lossy();
    let plain = !text.is_empty()
        && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Runs a command with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = render(cmd);
    eprintln!("$ {shown}");
    let status = cmd.status().with_context(|| format!("starting `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs a command and captures its output, whatever its exit status.
pub fn capture(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{}`", render(cmd)))
}

/// Runs a command, captures stdout, fails (with its stderr) unless it exits 0.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let output = capture(cmd)?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            render(cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether `program` can be found on PATH.
pub fn on_path(program: &str) -> bool {
    find_on_path(program).is_some()
}

pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// cargo's target directory for this workspace (honours CARGO_TARGET_DIR and config).
pub fn target_dir() -> Result<PathBuf> {
    let text = stdout_of(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let metadata: serde_json::Value =
        serde_json::from_str(&text).context("parsing `cargo metadata` output")?;
    let dir = metadata["target_directory"]
        .as_str()
        .context("`cargo metadata` did not report a target_directory")?;
    Ok(PathBuf::from(dir))
}

/// The agent binary built by `cargo build -p moat-agent`, or `$MOAT_BIN` if set (as for the
/// integration tests). `moat lab` runs `moat-lab` from beside it (`lab_bin_beside`).
pub fn moat_bin() -> Result<PathBuf> {
    let bin = match std::env::var_os("MOAT_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => target_dir()?.join("debug").join("moat"),
    };
    if !bin.is_file() {
        bail!("{} does not exist; build it with `cargo build -p moat-agent -p moat-lab` (or unset MOAT_BIN)", bin.display());
    }
    Ok(bin)
}

/// `moat-lab` beside `moat`: where `moat lab` looks first, and where cargo builds it.
pub fn lab_bin_beside(moat: &Path) -> PathBuf {
    moat.with_file_name("moat-lab")
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catches SIGINT and SIGTERM so that clean-up (lab down) still runs. Children get the
/// signal too (same process group) and stop, so the step under way fails and unwinds.
pub fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails if an interrupt arrived; call between steps.
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// A running lab; `moat lab down` runs when this goes out of scope, whatever happened.
pub struct Lab {
    moat: PathBuf,
    name: String,
}

impl Lab {
    /// Tears down any lab left over under `name`, then brings a new one up.
    pub fn up(moat: &Path, name: &str, files: &[PathBuf], extra: &[&str]) -> Result<Lab> {
        let leftover = capture(Command::new(moat).args(["lab", "down", "--name", name]))?;
        if !leftover.status.success() {
            // Usually "no such lab"; shown in case it is something worse.
            let stderr = String::from_utf8_lossy(&leftover.stderr);
            if !stderr.trim().is_empty() {
                eprintln!("(lab down before up: {})", stderr.trim());
            }
        }
        // The guard exists before `up` runs so a half-built lab is torn down too.
        let lab = Lab { moat: moat.to_path_buf(), name: name.to_string() };
        let mut cmd = lab.command();
        cmd.args(["up", "--name", name]);
        for file in files {
            cmd.arg("-f").arg(file);
        }
        cmd.args(extra);
        run(&mut cmd)?;
        Ok(lab)
    }

    /// `moat lab` with nothing else.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.moat);
        cmd.current_dir(workspace_root()).arg("lab");
        cmd
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut cmd = self.command();
        cmd.args(["down", "--name", &self.name]);
        if let Err(err) = run(&mut cmd) {
            eprintln!("warning: tearing down lab {}: {err:#}", self.name);
        }
    }
}
