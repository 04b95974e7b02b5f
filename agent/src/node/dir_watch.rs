//! Whether directories a scan read may have changed since it began. A scan of the node
//! (the pods' cgroup tree; the guard's credentials, runtime files and pod volumes) lists
//! directories; inotify on each of them says when an entry was created, removed, renamed or
//! written below it, so an idle node is not walked on every tick. mkdir and rmdir on
//! cgroupfs notify synchronously, so a cgroup made before a pod's watch event is already
//! known when the event is handled.
//!
//! Fail-safe: without inotify (no instance, or a directory it cannot watch) every call says
//! "scan", as if there were no watch; a full scan also runs every `full_scan` regardless,
//! for what no watch sees (a symlink's target elsewhere, a file changed in place).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Directory entries created, removed or moved below a watched directory, or the directory
/// itself going: what changes a tree's shape (pod cgroups).
pub const ENTRIES: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

/// [`ENTRIES`], and files below a watched directory written or their metadata changed: what
/// changes a file read for its content (a kubeconfig) or identity (a replaced binary).
pub const ENTRIES_AND_CONTENT: u32 = ENTRIES | libc::IN_CLOSE_WRITE | libc::IN_MODIFY | libc::IN_ATTRIB;

pub struct DirWatch {
    /// What the scan finds, for the log.
    what: &'static str,
    mask: u32,
    full_scan: Duration,
    inotify: Option<OwnedFd>,
    /// Something may have changed since the last scan began.
    dirty: bool,
    last_scan: Option<Instant>,
    warned: bool,
}

impl DirWatch {
    pub fn new(what: &'static str, mask: u32, full_scan: Duration) -> Self {
        // SAFETY: inotify_init1 takes flags only; a non-negative result is a new descriptor.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        let inotify = if fd >= 0 {
            // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        } else {
            let error = std::io::Error::last_os_error();
            tracing::warn!(%error, what, "inotify unavailable: scanned on every tick");
            None
        };
        Self { what, mask, full_scan, inotify, dirty: true, last_scan: None, warned: false }
    }

    /// Whether a scan is due: a watched directory changed, the watch is unavailable, or
    /// `full_scan` passed since the last one.
    pub fn due(&mut self) -> bool {
        self.drain();
        self.dirty || self.inotify.is_none() || self.last_scan.is_none_or(|at| at.elapsed() >= self.full_scan)
    }

    /// A scan begins: changes from here on are the next scan's.
    pub fn scanning(&mut self) {
        self.drain();
        self.dirty = false;
        self.last_scan = Some(Instant::now());
    }

    /// The next scan is due at once: the last one failed, or what it found was not taken.
    pub fn mark_due(&mut self) {
        self.dirty = true;
    }

    /// Watches `dir`; called before the scan lists it, so nothing made after the listing
    /// goes unnoticed. A directory that cannot be watched keeps every scan due.
    pub fn watch(&mut self, dir: &Path) {
        let Some(fd) = &self.inotify else { return };
        let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
            self.dirty = true;
            return;
        };
        // SAFETY: a valid inotify descriptor and a NUL-terminated path that outlives the call.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), self.mask) } < 0 {
            let error = std::io::Error::last_os_error();
            // A directory removed mid-scan is no reason to scan again forever.
            if error.kind() == std::io::ErrorKind::NotFound {
                return;
            }
            if !self.warned {
                self.warned = true;
                tracing::warn!(dir = %dir.display(), %error, what = self.what, "watching a directory failed (fs.inotify.max_user_watches?): scanned on every tick");
            }
            self.dirty = true;
        }
    }

    /// Reads every pending event; any at all (or a failed read) marks the tree changed.
    fn drain(&mut self) {
        let Some(fd) = &self.inotify else { return };
        let mut buffer = [0u8; 4096];
        loop {
            // SAFETY: reads into a buffer of the length given.
            let read = unsafe { libc::read(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
            if read > 0 {
                self.dirty = true;
                continue;
            }
            if read < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
                self.dirty = true;
            }
            return;
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_made_or_removed_below_a_watched_one_makes_a_scan_due() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = DirWatch::new("test", ENTRIES, Duration::from_secs(60));
        assert!(watch.due(), "the first scan is always due");
        watch.scanning();
        watch.watch(dir.path());
        assert!(!watch.due(), "nothing changed since the scan");
        std::fs::create_dir(dir.path().join("pod")).unwrap();
        assert!(watch.due(), "a new directory");
        watch.scanning();
        watch.watch(dir.path());
        watch.watch(&dir.path().join("pod"));
        assert!(!watch.due());
        std::fs::create_dir(dir.path().join("pod/container")).unwrap();
        assert!(watch.due(), "a new directory one level down");
        watch.scanning();
        assert!(!watch.due());
        std::fs::remove_dir(dir.path().join("pod/container")).unwrap();
        assert!(watch.due(), "a removed directory");
    }

    #[test]
    fn a_directory_it_cannot_watch_keeps_every_scan_due() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let mut watch = DirWatch::new("test", ENTRIES, Duration::from_secs(60));
        watch.scanning();
        // IN_ONLYDIR refuses a file: as a directory the watch limit refused would be.
        watch.watch(&file);
        assert!(watch.due());
        watch.scanning();
        assert!(!watch.due(), "the next scan watched everything");
    }
}
