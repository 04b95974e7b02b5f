//! Whether this mount namespace's mount table changed since the last look: the kernel marks
//! an open mountinfo file readable with `POLLPRI` once after every mount or unmount in the
//! namespace (propagated ones included), so one `poll` with no wait answers it — no read,
//! no parse. Pod volumes (secret and token tmpfs) appear as mounts.
//!
//! Fail-safe: a mountinfo that cannot be opened or polled answers "changed" every time.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

pub struct MountWatch {
    file: Option<File>,
    /// Nothing was looked at yet: the first answer is always "changed".
    first: bool,
}

impl MountWatch {
    /// Watches the namespace of the process whose `mountinfo` this is.
    pub fn new(mountinfo: &Path) -> Self {
        let file = File::open(mountinfo)
            .inspect_err(|error| tracing::warn!(path = %mountinfo.display(), %error, "watching the mount table failed: the node is scanned on every tick"))
            .ok();
        Self { file, first: true }
    }

    /// Whether a mount came or went since the last call (or this is the first).
    pub fn changed(&mut self) -> bool {
        let first = std::mem::take(&mut self.first);
        let Some(file) = &self.file else { return true };
        let mut poll = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLPRI, revents: 0 };
        // SAFETY: one pollfd for one call, and no wait.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        first || ready < 0 || (ready > 0 && poll.revents & (libc::POLLPRI | libc::POLLERR | libc::POLLNVAL) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    /// A shell in a mount namespace of its own (never the host's table) mounts a tmpfs when
    /// told; its mountinfo is watched. Skipped where namespaces cannot be made (no root).
    #[test]
    fn a_mount_is_a_change_and_quiet_is_not() {
        let script = "echo ready; read go; mount -t tmpfs moat-test /mnt && echo mounted; read end";
        let Ok(mut child) = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        else {
            return;
        };
        let mut input = child.stdin.take().unwrap();
        let mut output = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        if output.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = child.wait();
            return;
        }
        let mut watch = MountWatch::new(Path::new(&format!("/proc/{}/mountinfo", child.id())));
        assert!(watch.changed(), "the first look");
        assert!(!watch.changed(), "nothing mounted since");
        writeln!(input, "go").unwrap();
        line.clear();
        output.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "mounted");
        assert!(watch.changed(), "a tmpfs mounted");
        assert!(!watch.changed(), "reported once");
        writeln!(input, "end").unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_table_it_cannot_open_is_always_changed() {
        let mut watch = MountWatch::new(Path::new("/nonexistent/mountinfo"));
        assert!(watch.changed());
        assert!(watch.changed());
    }
}
