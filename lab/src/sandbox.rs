//! A pod's sandbox, like a pause container: it holds the pod's namespaces (mount with its
//! own root and volumes, UTS, IPC and, unless `hostPID`, PID) for every process that later
//! enters the pod, and is PID 1 of the pod's PID namespace, reaping orphans.
//!
//! `moat-lab __pod-sandbox --spec FILE` starts in the pod's cgroup and network namespace, makes
//! the other namespaces and the root (`podroot`), forks the sandbox proper (PID 1 in the new
//! PID namespace, which mounts the pod's /proc), prints `ready <pid>` and exits. When the
//! sandbox dies, the kernel ends every process of its PID namespace.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::fsutil::{tail, write_atomic};
use super::podexec::{pipe, PodPlace, Start};
use super::sandbox_spec::{marker, SandboxSpec, COMMAND};
use super::state::PodState;
use super::{podroot, sys, LabError};

#[derive(clap::Args, Debug)]
pub struct SandboxArgs {
    /// The sandbox spec (JSON) written by the lab.
    #[arg(long)]
    pub spec: PathBuf,
}

/// Starts the pod's sandbox from the host; returns its pid as the host sees it.
pub fn start(pod: &PodState, spec: &SandboxSpec) -> Result<u32, LabError> {
    let text = serde_json::to_string_pretty(spec).map_err(|e| LabError::Internal(format!("sandbox spec: {e}")))?;
    std::fs::create_dir_all(&spec.root).map_err(|e| LabError::io("creating", &spec.root, e))?;
    write_atomic(&pod.sandbox_spec, text.as_bytes())?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&pod.log)
        .map_err(|e| LabError::io("opening log", &pod.log, e))?;
    let mut command = PodPlace::for_sandbox(pod)?.moat(Start::Detached)?;
    command.arg(COMMAND).arg("--spec").arg(&pod.sandbox_spec).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
    let child = command.spawn().map_err(|source| LabError::Spawn { command: marker(&pod.sandbox_spec), source })?;
    let output = child.wait_with_output().map_err(|e| LabError::io("waiting for the sandbox of", pod.key(), e))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.trim().strip_prefix("ready ").and_then(|pid| pid.parse().ok()) {
        Some(pid) if output.status.success() => Ok(pid),
        _ => Err(LabError::InPod {
            pod: pod.key(),
            message: format!(
                "the sandbox did not start ({}); log {}:\n{}",
                output.status,
                pod.log.display(),
                tail(&pod.log, 5)
            ),
        }),
    }
}

/// `moat-lab __pod-sandbox`: must run single-threaded (unshare and fork).
pub fn run(args: SandboxArgs) -> Result<(), LabError> {
    let text = std::fs::read_to_string(&args.spec).map_err(|e| LabError::io("reading", &args.spec, e))?;
    let spec: SandboxSpec = serde_json::from_str(&text)
        .map_err(|e| LabError::State { path: args.spec.clone(), message: e.to_string() })?;
    let failed = |message: String| LabError::InPod { pod: spec.pod.clone(), message };
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if !spec.host_pid {
        flags |= libc::CLONE_NEWPID;
    }
    sys::unshare(flags).map_err(|e| failed(format!("unshare: {e}")))?;
    sys::sethostname(&spec.hostname).map_err(|e| failed(format!("sethostname: {e}")))?;
    podroot::build(&spec)?;
    let (ready_read, ready_write) = pipe().map_err(|e| failed(format!("pipe: {e}")))?;
    // SAFETY: this process is single-threaded (nothing here starts threads), so the child
    // may do anything the parent could.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(failed(format!("fork: {}", std::io::Error::last_os_error())));
    }
    if pid == 0 {
        drop(ready_read);
        pause(&spec, ready_write);
    }
    drop(ready_write);
    let mut answer = String::new();
    let _ = File::from(ready_read).read_to_string(&mut answer);
    if answer == "ok" {
        println!("ready {pid}");
        Ok(())
    } else {
        Err(failed(format!("sandbox (pid {pid}): {}", if answer.is_empty() { "died while starting" } else { &answer })))
    }
}

/// Signals the sandbox waits for: children to reap, and requests to stop.
const WAITED: [libc::c_int; 4] = [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The sandbox proper. Reports "ok" (or what failed) on `ready`, then reaps children until
/// asked to stop.
fn pause(spec: &SandboxSpec, ready: OwnedFd) -> ! {
    let result = settle(spec);
    let answer = match &result {
        Ok(()) => "ok".to_string(),
        Err(error) => error.clone(),
    };
    let mut ready = File::from(ready);
    let _ = std::io::Write::write_all(&mut ready, answer.as_bytes());
    drop(ready);
    if result.is_err() {
        // SAFETY: ends this process without running the parent's destructors twice.
        unsafe { libc::_exit(1) };
    }
    // SAFETY: sigset operations on a local set; sigwaitinfo and waitpid have no memory
    // preconditions beyond it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in WAITED {
            libc::sigaddset(&mut set, signal);
        }
        loop {
            let signal = libc::sigwaitinfo(&set, std::ptr::null_mut());
            if signal == libc::SIGCHLD {
                while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            } else if signal > 0 {
                libc::_exit(0);
            }
        }
    }
}

/// The sandbox's own set-up: /proc for its PID namespace, its name, stdio, signals.
fn settle(spec: &SandboxSpec) -> Result<(), String> {
    if !spec.host_pid {
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        sys::mount(Some(Path::new("proc")), Path::new("/proc"), Some("proc"), flags, None)
            .map_err(|e| format!("mounting /proc: {e}"))?;
    }
    // SAFETY: prctl with a static NUL-terminated name; dup2 onto stdio of fds we own.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"pause".as_ptr());
        let null = File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?;
        // stdout is the lab's pipe: it must close for `lab up` to see the launcher's answer.
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in WAITED {
            libc::sigaddset(&mut set, signal);
        }
        // Blocked signals are queued even for PID 1, for sigwaitinfo to take.
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    Ok(())
}
