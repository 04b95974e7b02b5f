//! `moat-attack loop ...`: the syscall loops `cargo xtask bench --only guard` times, inside a
//! lab pod and on the host, to see what the guard's programs add to every open, exec and
//! connect.
//! Only the loop is timed (not process start-up); setup happens before the clock starts.
//! The loop runs in batches, each timed on its own, so a caller can see past interference.

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Instant;

use crate::args::Loop;
use crate::{c_path, Usage};

/// Why a loop stopped early.
#[derive(Debug)]
pub enum LoopError {
    Usage(Usage),
    Syscall { call: &'static str, iteration: u64, source: io::Error },
    Child { iteration: u64, status: libc::c_int },
}

impl std::fmt::Display for LoopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(Usage(message)) => write!(f, "{message}"),
            Self::Syscall { call, iteration, source } => write!(f, "{call} failed at iteration {iteration}: {source}"),
            Self::Child { iteration, status } => write!(f, "the program did not exit 0 at iteration {iteration} (wait status {status:#x})"),
        }
    }
}

/// Runs the loop and returns its JSON line: iterations, batches, total seconds, and ns per
/// operation over the whole loop, in the fastest batch and in the median batch. On a busy
/// machine the fastest batch is the one least disturbed by other work; what the guard adds
/// to each call is in every batch.
pub fn run(kind: &Loop) -> Result<String, LoopError> {
    let (name, iterations, batches, timing) = match kind {
        Loop::Open { iterations, path, batches } => ("open", *iterations, *batches, open_close(*iterations, *batches, path)?),
        Loop::Exec { iterations, program, batches } => ("exec", *iterations, *batches, fork_exec(*iterations, *batches, program)?),
        Loop::ConnectUnix { iterations, batches } => ("connect-unix", *iterations, *batches, connect_close(*iterations, *batches)?),
        Loop::ConnectTcp { iterations, address, batches } => ("connect-tcp", *iterations, *batches, tcp_connect_close(*address, *iterations, *batches)?),
        Loop::Stat { iterations, path, batches } => ("stat", *iterations, *batches, stat(*iterations, *batches, path)?),
        Loop::Getppid { iterations, batches } => ("getppid", *iterations, *batches, getppid(*iterations, *batches)?),
    };
    let mut per_batch = timing.batch_ns_per_op;
    per_batch.sort_by(f64::total_cmp);
    let ns_per_op = if iterations == 0 { 0.0 } else { timing.seconds * 1e9 / iterations as f64 };
    Ok(serde_json::json!({
        "loop": name,
        "iterations": iterations,
        "batches": batches,
        "seconds": timing.seconds,
        "ns_per_op": ns_per_op,
        "min_ns_per_op": per_batch.first().copied().unwrap_or(0.0),
        "median_ns_per_op": per_batch.get(per_batch.len().saturating_sub(1) / 2).copied().unwrap_or(0.0),
    })
    .to_string())
}

struct Timing {
    seconds: f64,
    batch_ns_per_op: Vec<f64>,
}

/// Runs `call` `iterations` times in `batches` timed batches (the last takes the remainder).
fn batched(iterations: u64, batches: u64, mut call: impl FnMut(u64) -> Result<(), LoopError>) -> Result<Timing, LoopError> {
    let batches = batches.clamp(1, iterations.max(1));
    let size = iterations / batches;
    let mut batch_ns_per_op = Vec::with_capacity(batches as usize);
    let start = Instant::now();
    let mut done = 0;
    for batch in 0..batches {
        let count = if batch + 1 == batches { iterations - done } else { size };
        let batch_start = Instant::now();
        for iteration in done..done + count {
            call(iteration)?;
        }
        if count > 0 {
            batch_ns_per_op.push(batch_start.elapsed().as_nanos() as f64 / count as f64);
        }
        done += count;
    }
    Ok(Timing { seconds: start.elapsed().as_secs_f64(), batch_ns_per_op })
}

fn open_close(iterations: u64, batches: u64, path: &Path) -> Result<Timing, LoopError> {
    let path = c_path(path).map_err(LoopError::Usage)?;
    batched(iterations, batches, |iteration| {
        // SAFETY: path is a valid string; the fd is closed right away.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(LoopError::Syscall { call: "open", iteration, source: io::Error::last_os_error() });
        }
        unsafe { libc::close(fd) };
        Ok(())
    })
}

fn stat(iterations: u64, batches: u64, path: &Path) -> Result<Timing, LoopError> {
    let path = c_path(path).map_err(LoopError::Usage)?;
    batched(iterations, batches, |iteration| {
        // SAFETY: a valid path and a buffer of the right type.
        let mut buf: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::stat(path.as_ptr(), &mut buf) } != 0 {
            return Err(LoopError::Syscall { call: "stat", iteration, source: io::Error::last_os_error() });
        }
        Ok(())
    })
}

fn getppid(iterations: u64, batches: u64) -> Result<Timing, LoopError> {
    batched(iterations, batches, |_| {
        // The libc wrapper would do; the raw call makes sure nothing caches it.
        // SAFETY: getppid takes no arguments and cannot fail.
        std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
        Ok(())
    })
}

/// One thread: connect (the listener's backlog completes it), accept, close both ends.
fn connect_close(iterations: u64, batches: u64) -> Result<Timing, LoopError> {
    let path = std::env::temp_dir().join(format!("moat-attack-loop-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|source| LoopError::Syscall { call: "bind", iteration: 0, source })?;
    let timing = batched(iterations, batches, |iteration| {
        let client = UnixStream::connect(&path).map_err(|source| LoopError::Syscall { call: "connect", iteration, source })?;
        let (server, _) = listener.accept().map_err(|source| LoopError::Syscall { call: "accept", iteration, source })?;
        drop((client, server));
        Ok(())
    });
    let _ = std::fs::remove_file(&path);
    timing
}

/// One thread: connect to a loopback listener (the backlog completes the handshake), accept,
/// close both ends. The accepted end closes first and resets (SO_LINGER 0), so no end keeps
/// a TIME_WAIT entry: a run leaves nothing behind in the pod's or the host's socket table.
fn tcp_connect_close(address: IpAddr, iterations: u64, batches: u64) -> Result<Timing, LoopError> {
    let listener = TcpListener::bind((address, 0)).map_err(|source| LoopError::Syscall { call: "bind", iteration: 0, source })?;
    tcp_connect_close_to(&listener, iterations, batches)
}

fn tcp_connect_close_to(listener: &TcpListener, iterations: u64, batches: u64) -> Result<Timing, LoopError> {
    let address = listener.local_addr().map_err(|source| LoopError::Syscall { call: "getsockname", iteration: 0, source })?;
    batched(iterations, batches, |iteration| {
        let client = TcpStream::connect(address).map_err(|source| LoopError::Syscall { call: "connect", iteration, source })?;
        let (server, _) = listener.accept().map_err(|source| LoopError::Syscall { call: "accept", iteration, source })?;
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: a valid socket and a struct of the size passed.
        let set = unsafe {
            libc::setsockopt(
                server.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(LoopError::Syscall { call: "setsockopt(SO_LINGER)", iteration, source: io::Error::last_os_error() });
        }
        drop(server);
        drop(client);
        Ok(())
    })
}

fn fork_exec(iterations: u64, batches: u64, program: &Path) -> Result<Timing, LoopError> {
    let program = c_path(program).map_err(LoopError::Usage)?;
    let argv: [*const libc::c_char; 2] = [program.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    batched(iterations, batches, |iteration| {
        let status = spawn_and_wait(&program, &argv, &envp).map_err(|source| LoopError::Syscall { call: "fork/wait", iteration, source })?;
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            return Err(LoopError::Child { iteration, status });
        }
        Ok(())
    })
}

/// fork(2), execve(2) in the child, waitpid(2) in the parent. The child makes only
/// async-signal-safe calls on memory prepared before the fork.
fn spawn_and_wait(program: &CString, argv: &[*const libc::c_char; 2], envp: &[*const libc::c_char; 1]) -> io::Result<libc::c_int> {
    // SAFETY: this process is single-threaded; the child only calls execve and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: all pointers were built before the fork and stay valid in the child.
        unsafe {
            libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for the child just forked.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return Ok(status);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_iteration_once() {
        let mut seen = Vec::new();
        let timing = batched(10, 3, |i| {
            seen.push(i);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(timing.batch_ns_per_op.len(), 3);
        // More batches than iterations: one iteration each.
        assert_eq!(batched(2, 5, |_| Ok(())).unwrap().batch_ns_per_op.len(), 2);
        assert!(batched(0, 5, |_| Ok(())).unwrap().batch_ns_per_op.is_empty());
    }

    #[test]
    fn the_tcp_connect_loop_leaves_no_time_wait_behind() {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let timing = tcp_connect_close_to(&listener, 2_000, 4).unwrap();
        assert_eq!(timing.batch_ns_per_op.len(), 4);
        // /proc/net/tcp: "sl local_address rem_address st ...", addresses as HEX_IP:HEX_PORT,
        // state 06 = TIME_WAIT.
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let ours = format!(":{port:04X}");
        let waiting = table
            .lines()
            .skip(1)
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 3 && fields[3] == "06" && (fields[1].ends_with(&ours) || fields[2].ends_with(&ours))
            })
            .count();
        assert_eq!(waiting, 0, "TIME_WAIT entries of the loop's port {port}");
    }

    #[test]
    fn the_connect_loop_connects_and_cleans_up() {
        let timing = connect_close(20, 4).unwrap();
        assert_eq!(timing.batch_ns_per_op.len(), 4);
        let leftover = std::env::temp_dir().join(format!("moat-attack-loop-{}.sock", std::process::id()));
        assert!(!leftover.exists());
    }
}
