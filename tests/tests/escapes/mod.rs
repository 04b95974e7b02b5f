//! Shared by `guard_escapes.rs` and `guard_escapes_process.rs`: a guard lab for tenant `red`,
//! `moat-attack` runs with their JSON line, exact detection checks, `moat status` and the
//! host-side objects the tests aim at (a block device, a process).

#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub use moat_integration::guard::Probes;
use moat_integration::guard::{assert_detection, attack_bin, GuardLab, PodSpec};
use moat_integration::{Lab, Output};
use serde_json::Value;

/// The namespace every attacking pod is in, and its tenant.
pub const NS: &str = "esc";
pub const TENANT: &str = "red";

/// A guard lab with namespace `esc` (tenant `red`) plus `extra` namespaces, `pods` and the
/// agent configuration `guard` (YAML with a `guard:` key, or nothing).
///
/// Aggregation is off: each kernel record is a detection of its own, so a count is exact
/// and no folded repeat arrives a window later in another check.
///
/// What each technique is expected to do follows from how this kernel's agent attached the
/// probe that sees it ([`Probes`]): refused where it is BPF LSM, reported elsewhere.
pub fn up(extra: &[(&str, &str)], pods: &[PodSpec], guard: Option<&str>) -> GuardLab {
    let mut tenants = vec![(NS, TENANT)];
    tenants.extend_from_slice(extra);
    let config = format!("events:\n  aggregationWindowMs: 0\n{}", guard.unwrap_or_default());
    GuardLab::up(&tenants, pods, Some(&config), None)
}

/// Asserts the technique's outcome: refused with EPERM where `refused`, else it went through.
pub fn outcome(output: &Output, refused: bool) -> Value {
    if refused {
        failed_with(output, "EPERM")
    } else {
        succeeded(output)
    }
}

/// `moat status --lab NAME -o json` (the agent's own status: capabilities, detections).
pub fn agent_status(lab: &Lab) -> Value {
    lab.agent_status()
}

/// The `detections.configured` entry of `id` in `moat status`.
pub fn detection_status(status: &Value, id: &str) -> Value {
    let all = status["detections"]["configured"].as_array().cloned().unwrap_or_default();
    all.into_iter().find(|d| d["id"] == id).unwrap_or_else(|| panic!("moat status does not list {id}: {status}"))
}

/// `moat-attack` in the lab's own build, for `sh -c` scripts run in pods.
pub fn attack_path() -> String {
    attack_bin().to_str().expect("UTF-8 path").to_string()
}

/// The JSON lines `moat-attack` printed (one per run; a script may run several).
pub fn lines(output: &Output) -> Vec<Value> {
    output.stdout.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v["technique"].is_string()).collect()
}

/// The single `moat-attack` line of `output`.
pub fn line(output: &Output) -> Value {
    match lines(output).as_slice() {
        [one] => one.clone(),
        _ => panic!("expected one moat-attack line:\n{output}"),
    }
}

/// Asserts the technique's system call succeeded.
pub fn succeeded(output: &Output) -> Value {
    let line = line(output);
    assert!(line["ok"] == true && output.success, "the call succeeds:\n{output}");
    line
}

/// Asserts the technique's system call failed with `errno`.
pub fn failed_with(output: &Output, errno: &str) -> Value {
    let line = line(output);
    assert!(line["ok"] == false && line["errno"] == errno, "the call fails with {errno}:\n{output}");
    line
}

/// Runs `moat-attack ARGS` in `pod` while watching: the output and every detection it
/// caused (nothing else: `GuardLab::during` ends with a marker and drops the marker's).
pub fn attack(guard: &GuardLab, pod: &str, args: &[&str]) -> (Output, Vec<Value>) {
    let mut output = None;
    let seen = guard.during(|| output = Some(guard.attack(pod, args)));
    (output.expect("the attack ran"), seen)
}

/// Like [`attack`] for `sh -c SCRIPT` in `pod`.
pub fn script(guard: &GuardLab, pod: &str, script: &str) -> (Output, Vec<Value>) {
    let mut output = None;
    let seen = guard.during(|| output = Some(guard.lab.exec(pod, &["sh", "-c", script])));
    (output.expect("the script ran"), seen)
}

/// Runs `moat-attack` with each `(pod, arguments)` while watching; asserts every call
/// succeeded (silence of a call that failed would prove nothing) and none was reported.
pub fn assert_silent(guard: &GuardLab, what: &str, runs: &[(&str, &[&str])]) {
    let mut outputs = Vec::new();
    let seen = guard.during(|| outputs.extend(runs.iter().map(|(pod, args)| guard.attack(pod, args))));
    for output in &outputs {
        succeeded(output);
    }
    assert!(seen.is_empty(), "{what}: silent, but reported: {seen:#?}");
}

/// The one detection in `seen`; panics showing all of them otherwise.
pub fn single(seen: &[Value], what: &str) -> Value {
    match seen {
        [one] => one.clone(),
        _ => panic!("{what}: expected exactly one detection, got {}: {seen:#?}", seen.len()),
    }
}

/// Asserts everything a detection says: id, pod, tenant, action, the mode that goes with the
/// action, and the detection's severity.
pub fn assert_exact(event: &Value, id: &str, pod: &str, action: &str) {
    assert_detection(event, id, pod, TENANT, action);
    let mode = if action == "blocked" { "block" } else { "detect" };
    assert_eq!(event["mode"], mode, "{event}");
    let severity = moat_agent::detections::by_id(id).map(|s| s.severity).expect("a known detection");
    assert_eq!(event["severity"], severity, "{event}");
}

/// The detection's evidence text.
pub fn evidence(event: &Value) -> &str {
    event["evidence"].as_str().unwrap_or_default()
}

/// The detection's message text.
pub fn message(event: &Value) -> &str {
    event["message"].as_str().unwrap_or_default()
}

/// Whether the detection names `program` as the executable: its path while the process
/// lived, else its comm (a process that exits at once is gone before the agent reads /proc).
pub fn by(event: &Value, program: &str) -> bool {
    event["executable"].as_str().is_some_and(|exe| exe == program || exe.ends_with(&format!("/{program}")))
}

/// A block device on the host that the host itself can open read-only: the one holding `/`
/// when it can (some sandboxes refuse even root that), else the first other one. A pod must
/// not be able to open it, nor make a node for it.
pub struct HostBlockDevice {
    pub path: PathBuf,
    pub major: u32,
    pub minor: u32,
}

impl HostBlockDevice {
    pub fn find() -> HostBlockDevice {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let root = std::fs::metadata("/").expect("stat /").dev();
        let root_name = std::fs::read_to_string(format!("/sys/dev/block/{}:{}/uevent", libc::major(root), libc::minor(root)))
            .ok()
            .and_then(|uevent| uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")).map(String::from));
        let mut others: Vec<String> = std::fs::read_dir("/sys/class/block")
            .map(|dir| dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        others.sort();
        let mut refused = Vec::new();
        for name in root_name.iter().chain(&others) {
            let path = Path::new("/dev").join(name);
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if !meta.file_type().is_block_device() {
                continue;
            }
            match std::fs::File::open(&path) {
                Ok(_) => {
                    let rdev = meta.rdev();
                    let device = HostBlockDevice { path, major: libc::major(rdev), minor: libc::minor(rdev) };
                    if Some(name) != root_name.as_ref() {
                        eprintln!("the block device holding / ({root_name:?}) is not openable here ({refused:?}); using {}", device.path.display());
                    }
                    return device;
                }
                Err(error) => refused.push(format!("{}: {error}", path.display())),
            }
        }
        panic!("no block device the host itself can open read-only: {refused:?}");
    }

    /// `MAJOR:MINOR`.
    pub fn number(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }
}

/// A process on the host, outside every pod (`sleep 60`); killed on drop.
pub struct HostProcess(Child);

impl HostProcess {
    pub fn start() -> HostProcess {
        let child = Command::new("sleep").arg("60").stdin(Stdio::null()).spawn().expect("starting sleep");
        HostProcess(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Whether it still runs, and is not left stopped by a tracer (`/proc/PID/stat` state).
    pub fn running(&mut self) -> bool {
        let alive = matches!(self.0.try_wait(), Ok(None));
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        alive && matches!(state, Some('S') | Some('R'))
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
