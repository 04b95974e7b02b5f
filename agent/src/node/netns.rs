//! Pod network namespaces: found through a process in the pod's cgroup, identified by the
//! nsfs inode, and entered only by a dedicated short-lived thread (setns moves the calling
//! thread alone, so the agent's own threads never change namespace).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A network namespace, as the kernel names it (`net:[<ino>]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("entering network namespace net:[{ino}]: {source}")]
    Setns { ino: u64, source: io::Error },
    #[error("the thread working in network namespace net:[{0}] panicked")]
    Panicked(u64),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> NetnsError + '_ {
    move |source| NetnsError::Io { path: path.into(), source }
}

/// The agent's own network namespace: the host's when it runs with hostNetwork.
pub fn own() -> Result<NetnsId, NetnsError> {
    let path = Path::new("/proc/self/ns/net");
    let metadata = std::fs::metadata(path).map_err(io_error(path))?;
    Ok(NetnsId { dev: metadata.dev(), ino: metadata.ino() })
}

/// A process in one of the cgroup directories `dirs` (the first listed in `cgroup.procs`).
/// None while the pod has no process yet, or when it runs in another PID namespace.
pub fn process_in(dirs: &[PathBuf]) -> Option<u32> {
    dirs.iter().find_map(|dir| {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
        // A pid of 0 is a process outside the reader's PID namespace.
        procs.lines().filter_map(|line| line.trim().parse().ok()).find(|pid| *pid != 0)
    })
}

/// A pod's network namespace, held open.
pub struct PodNetns {
    pub id: NetnsId,
    pub file: File,
    /// Interface names from `/proc/<pid>/net/dev`: read without entering the namespace, so
    /// a change (the CNI adding `eth0`) is seen cheaply on every tick.
    pub interfaces: Vec<String>,
}

/// The network namespace of process `pid`.
pub fn of_process(pid: u32) -> Result<PodNetns, NetnsError> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let file = File::open(&path).map_err(io_error(&path))?;
    let metadata = file.metadata().map_err(io_error(&path))?;
    let dev_path = PathBuf::from(format!("/proc/{pid}/net/dev"));
    let dev = std::fs::read_to_string(&dev_path).map_err(io_error(&dev_path))?;
    Ok(PodNetns { id: NetnsId { dev: metadata.dev(), ino: metadata.ino() }, file, interfaces: interface_names(&dev) })
}

/// The names in `/proc/net/dev` (two header lines, then `name: counters...`), sorted.
fn interface_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> =
        text.lines().skip(2).filter_map(|line| Some(line.split_once(':')?.0.trim().to_string())).collect();
    names.sort();
    names
}

/// Runs `work` on a new thread that has entered `netns`, and waits for it. The thread ends
/// with `work`, so no thread is ever left in a pod's namespace.
pub fn run_in<R: Send>(netns: &PodNetns, work: impl FnOnce() -> R + Send) -> Result<R, NetnsError> {
    let ino = netns.id.ino;
    let fd = netns.file.as_raw_fd();
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new().name("moat-netns".into()).spawn_scoped(scope, move || {
            // SAFETY: setns on an open nsfs fd; it changes only this thread's namespace.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(NetnsError::Setns { ino, source: io::Error::last_os_error() });
            }
            Ok(work())
        });
        match thread {
            Ok(handle) => handle.join().unwrap_or(Err(NetnsError::Panicked(ino))),
            Err(source) => Err(NetnsError::Setns { ino, source }),
        }
    })
}

/// A network interface of the calling thread's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
}

/// The calling thread's interfaces except loopback (which never carries a pod's traffic from
/// elsewhere). getifaddrs asks netlink, whose socket belongs to the caller's namespace.
pub fn interfaces() -> io::Result<Vec<Interface>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut entry = head;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*entry };
        entry = ifa.ifa_next;
        let loopback = ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
        // One AF_PACKET entry per link, whatever addresses it has.
        // SAFETY: a non-null ifa_addr points at a sockaddr whose family says its type.
        if ifa.ifa_addr.is_null() || loopback || i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_PACKET {
            continue;
        }
        // SAFETY: AF_PACKET entries carry a sockaddr_ll; the name is a NUL-terminated string.
        let (index, name) = unsafe {
            let link = &*(ifa.ifa_addr as *const libc::sockaddr_ll);
            (link.sll_ifindex as u32, std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned())
        };
        found.push(Interface { name, index });
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_come_from_proc_net_dev() {
        let text = "Inter-|   Receive\n face |bytes\n    lo: 1 2 3\n  eth0: 4 5 6\nveth-x@if3: 0\n";
        assert_eq!(interface_names(text), ["eth0", "lo", "veth-x@if3"]);
    }

    #[test]
    fn the_agents_own_namespace_and_interfaces_are_readable() {
        let own = own().unwrap();
        let this = of_process(std::process::id()).unwrap();
        assert_eq!(this.id, own);
        assert!(this.interfaces.iter().any(|name| name == "lo"), "{:?}", this.interfaces);
        let listed = interfaces().unwrap();
        assert!(listed.iter().all(|i| i.name != "lo" && i.index > 0), "{listed:?}");
    }

    #[test]
    fn a_cgroup_without_processes_has_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "0\n").unwrap();
        assert_eq!(process_in(&[dir.path().to_path_buf()]), None);
        std::fs::write(dir.path().join("cgroup.procs"), "42\n43\n").unwrap();
        assert_eq!(process_in(&[dir.path().join("missing"), dir.path().to_path_buf()]), Some(42));
    }
}
