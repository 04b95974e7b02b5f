//! Processes the lab started: liveness (guarded against pid reuse by a marker that must
//! appear in the command line) and termination.

use std::time::{Duration, Instant};

/// The command line of `pid`, arguments joined by spaces; None if it is gone or a zombie.
pub fn cmdline(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the parenthesised command name.
    let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
    if state == 'Z' || state == 'X' {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Whether `pid` is running and its command line contains `marker`.
pub fn is_alive(pid: u32, marker: &str) -> bool {
    cmdline(pid).is_some_and(|line| line.contains(marker))
}

fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        if pid > 0 {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// Sends SIGTERM, waits up to `grace` for the process to go, then SIGKILL. Does nothing
/// unless `pid` is alive with `marker` in its command line. Returns whether it was killed
/// by SIGKILL.
pub fn terminate(pid: u32, marker: &str, grace: Duration) -> bool {
    if !is_alive(pid, marker) {
        return false;
    }
    signal(pid, libc::SIGTERM);
    if wait_gone(pid, grace) {
        return false;
    }
    kill(pid, marker);
    true
}

/// SIGKILL, then waits briefly for the process to disappear.
pub fn kill(pid: u32, marker: &str) {
    if is_alive(pid, marker) {
        signal(pid, libc::SIGKILL);
        wait_gone(pid, Duration::from_secs(2));
    }
}

fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cmdline(pid).is_none() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cmdline(pid).is_none()
}

/// Pids of all processes whose command line contains `marker`.
pub fn find(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own && is_alive(*pid, marker))
        .collect()
}
