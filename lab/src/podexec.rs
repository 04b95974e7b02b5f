//! Running a process inside a lab pod, as a container runtime would: it joins the pod's
//! cgroup first (moat's programs identify pods by cgroup), then the namespaces of the pod's
//! sandbox (network, UTS, IPC, mount and, unless `hostPID`, PID) through the sandbox's pidfd.
//!
//! Joining a PID namespace only affects children, so after setns the pre-exec step forks:
//! the grandchild execs the program as a member of the pod's PID namespace. The intermediate
//! process either reports the grandchild's pid and exits (`Start::Detached`: servers) or
//! stays as its parent, forwarding signals and exiting with its status (`Start::Attached`:
//! `lab exec`, probes), so callers see the program's exit status as their child's.
//!
//! Everything that can fail or allocate (opening fds, the cwd string) happens before fork;
//! the pre-exec step only makes async-signal-safe system calls.

use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

use super::state::PodState;
use super::fsutil::current_exe;
use super::sandbox_spec::marker;
use super::{net, process, sys, LabError};

/// Whether the started program belongs to the caller or runs on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The caller waits for it: its exit status is the child's.
    Attached,
    /// In a session of its own (setsid), outliving the calling `moat`; see
    /// [`PodCommand::spawn_detached`] for its pid.
    Detached,
}

/// How a process gets into the pod's namespaces.
enum Entry {
    /// The pod's network namespace only: used to start the sandbox itself.
    Netns(OwnedFd),
    /// Every namespace of the running sandbox.
    Sandbox { pidfd: OwnedFd, pid_namespace: bool },
}

/// Where a pod lives: its cgroup and its namespaces.
pub struct PodPlace {
    pod: String,
    cgroup: PathBuf,
    entry: Entry,
}

impl PodPlace {
    /// The pod `pod` through its sandbox; an error if the sandbox is not running.
    pub fn of(pod: &PodState) -> Result<Self, LabError> {
        let gone = |message: String| LabError::InPod { pod: pod.key(), message };
        let pid = pod
            .sandbox_pid
            .ok_or_else(|| gone("it has no sandbox (made by an older moat?); recreate the lab".into()))?;
        let pidfd = sys::pidfd_open(pid)
            .map_err(|e| gone(format!("its sandbox (pid {pid}) is not running: {e}")))?;
        // Checked after opening: the pidfd now pins this very process, so a reused pid
        // cannot slip in between.
        if !process::is_alive(pid, &marker(&pod.sandbox_spec)) {
            return Err(gone(format!("its sandbox (pid {pid}) is not running")));
        }
        Ok(Self {
            pod: pod.key(),
            cgroup: pod.cgroup.clone(),
            entry: Entry::Sandbox { pidfd, pid_namespace: !pod.host_pid },
        })
    }

    /// The pod's cgroup and network namespace only, for starting its sandbox.
    pub fn for_sandbox(pod: &PodState) -> Result<Self, LabError> {
        let path = net::netns_path(&pod.netns);
        let netns: OwnedFd = File::open(&path)
            .map_err(|e| LabError::io("opening netns", &path, e))?
            .into();
        Ok(Self {
            pod: pod.key(),
            cgroup: pod.cgroup.clone(),
            entry: Entry::Netns(netns),
        })
    }

    /// A command for `program` that starts inside the pod.
    pub fn command(&self, program: impl AsRef<OsStr>, start: Start) -> Result<PodCommand, LabError> {
        let procs_path = self.cgroup.join("cgroup.procs");
        let procs: OwnedFd = OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .map_err(|e| LabError::io("opening", &procs_path, e))?
            .into();
        let (namespaces, flags, fork) = match &self.entry {
            Entry::Netns(fd) => (dup(fd)?, libc::CLONE_NEWNET, false),
            Entry::Sandbox { pidfd, pid_namespace } => {
                let mut flags = libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWNS;
                if *pid_namespace {
                    flags |= libc::CLONE_NEWPID;
                }
                (dup(pidfd)?, flags, *pid_namespace)
            }
        };
        // Joining the mount namespace moves the cwd to the pod's root; the caller's cwd is
        // restored when the pod has it (pods see the host's directories).
        let cwd = std::env::current_dir()
            .ok()
            .and_then(|dir| CString::new(dir.as_os_str().as_bytes()).ok());
        let (report_read, report_write) = if fork && start == Start::Detached {
            let (read, write) = pipe().map_err(|e| LabError::io("creating", "a pipe", e))?;
            (Some(read), Some(write))
        } else {
            (None, None)
        };
        let plan = Plan { procs, namespaces, flags, fork, start, cwd, report: report_write };
        let mut command = Command::new(program);
        // SAFETY: `Plan::enter` only makes async-signal-safe system calls on fds opened above
        // (close-on-exec, so the program never inherits them) and allocates nothing.
        unsafe {
            command.pre_exec(move || plan.enter());
        }
        Ok(PodCommand { command, report: report_read, pod: self.pod.clone() })
    }

    /// A command running this `moat-lab` binary inside the pod.
    pub fn moat(&self, start: Start) -> Result<PodCommand, LabError> {
        self.command(current_exe()?, start)
    }
}

/// A `Command` that starts inside a pod (derefs to the `Command`).
pub struct PodCommand {
    command: Command,
    /// Read end of the pipe the intermediate process reports the program's pid on.
    report: Option<OwnedFd>,
    pod: String,
}

impl Deref for PodCommand {
    type Target = Command;
    fn deref(&self) -> &Command {
        &self.command
    }
}

impl DerefMut for PodCommand {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.command
    }
}

impl PodCommand {
    /// Spawns a `Start::Detached` command; returns the program's pid (as the host sees it).
    pub fn spawn_detached(&mut self) -> Result<u32, LabError> {
        let description = format!("{:?}", self.command.get_program());
        let mut child = self.command.spawn().map_err(|source| LabError::Spawn { command: description, source })?;
        let Some(report) = self.report.take() else {
            return Ok(child.id());
        };
        // The intermediate reports and exits at once; once it is gone its report is in the
        // pipe or was never written.
        let status = child.wait().map_err(|e| LabError::io("waiting for", format!("pid {}", child.id()), e))?;
        let mut file = File::from(report);
        set_nonblocking(&file)?;
        let mut bytes = [0u8; 4];
        match file.read_exact(&mut bytes) {
            Ok(()) => Ok(u32::from_ne_bytes(bytes)),
            Err(error) => Err(LabError::InPod {
                pod: self.pod.clone(),
                message: format!("starting a process: no pid reported ({status}): {error}"),
            }),
        }
    }
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, LabError> {
    fd.try_clone().map_err(|e| LabError::io("duplicating", "a namespace fd", e))
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just returned by the kernel and are owned by no one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(file: &File) -> Result<(), LabError> {
    // SAFETY: fcntl on an open fd.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(LabError::io("configuring", "a pipe", io::Error::last_os_error()));
    }
    Ok(())
}

/// What the pre-exec step does, prepared before fork.
struct Plan {
    procs: OwnedFd,
    namespaces: OwnedFd,
    flags: libc::c_int,
    /// Fork after setns (the PID namespace is joined).
    fork: bool,
    start: Start,
    cwd: Option<CString>,
    report: Option<OwnedFd>,
}

/// The program's pid, for the intermediate's signal forwarder.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// Signals the intermediate passes on to the program.
const FORWARDED: [libc::c_int; 6] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

impl Plan {
    /// Runs in the forked child, before exec.
    fn enter(&self) -> io::Result<()> {
        // SAFETY: plain system calls on open fds, static buffers and pre-built strings.
        unsafe {
            if self.start == Start::Detached && libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // The cgroup first: nothing the process does in the pod happens outside it.
            let zero = b"0";
            if libc::write(self.procs.as_raw_fd(), zero.as_ptr().cast(), zero.len()) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setns(self.namespaces.as_raw_fd(), self.flags) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(cwd) = &self.cwd {
                // Best effort: the pod may not have the directory.
                if libc::chdir(cwd.as_ptr()) != 0 {
                    libc::chdir(c"/".as_ptr());
                }
            }
            if !self.fork {
                return Ok(());
            }
            // Our own pidfd, so the program can tell whether we died before it armed
            // PDEATHSIG (getppid() is 0 across the PID namespace boundary).
            let own = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) as libc::c_int;
            let pid = libc::fork();
            if pid < 0 {
                return Err(io::Error::last_os_error());
            }
            if pid == 0 {
                if self.start == Start::Attached {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    let mut poll = libc::pollfd { fd: own, events: libc::POLLIN, revents: 0 };
                    if own >= 0 && libc::poll(&mut poll, 1, 0) == 1 {
                        libc::_exit(1);
                    }
                }
                if own >= 0 {
                    libc::close(own);
                }
                return Ok(());
            }
            match (self.start, &self.report) {
                (Start::Detached, Some(report)) => {
                    let bytes = (pid as u32).to_ne_bytes();
                    libc::write(report.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
                    libc::_exit(0);
                }
                _ => relay(pid),
            }
        }
    }
}

/// The intermediate: waits for the program and exits as it did.
///
/// # Safety
/// Only to be called in a forked child, with `child` its own child.
unsafe fn relay(child: libc::pid_t) -> ! {
    // Nothing but stdio stays open: the spawner waits for EOF on its exec-error pipe, which
    // must come when the program execs, not when it exits.
    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    CHILD.store(child, Ordering::Relaxed);
    for signal in FORWARDED {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = forward as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
    let mut status = 0;
    loop {
        let done = libc::waitpid(child, &mut status, 0);
        if done == child {
            break;
        }
        if done < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            libc::_exit(127);
        }
    }
    if libc::WIFEXITED(status) {
        libc::_exit(libc::WEXITSTATUS(status));
    }
    let signal = libc::WTERMSIG(status);
    // Die of the same signal, so the caller sees what the program saw.
    libc::signal(signal, libc::SIG_DFL);
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigaddset(&mut set, signal);
    libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    libc::kill(libc::getpid(), signal);
    libc::_exit(128 + signal);
}

/// Passes a signal sent with kill(2) on to the program. Signals the kernel generated (a
/// terminal's ^C) are not: the program is in our process group and got them itself.
extern "C" fn forward(signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to SA_SIGINFO handlers.
    let code = unsafe { (*info).si_code };
    let child = CHILD.load(Ordering::Relaxed);
    if code <= 0 && child > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(child, signal) };
    }
}
