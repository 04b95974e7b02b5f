//! The command line: one subcommand per technique, plus the hidden `loop` the guard bench
//! runs inside lab pods.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Performs one escape or credential technique for real (the system call is made) and prints
/// `{"technique":..,"ok":..,"errno":..,"detail":..}`. Exit 0: the call succeeded; 1: it
/// failed; 2: usage error. Everything it changes is put back (mounts unmounted, device
/// nodes removed, files rewritten with what they held).
#[derive(Parser, Debug)]
#[command(name = "moat-attack")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum Command {
    /// open(2) PATH read-only, or write-only with --write; never O_CREAT or O_TRUNC.
    Open {
        path: PathBuf,
        #[arg(long)]
        write: bool,
        /// Read this many bytes after opening (not with --write).
        #[arg(long, value_name = "N", conflicts_with = "write")]
        read_bytes: Option<usize>,
    },
    /// Open /proc/PID/mem read-write.
    ProcMem {
        #[arg(value_parser = pid)]
        pid: i32,
    },
    /// mount(2) SOURCE on TARGET; a new mount is unmounted again, a remount keeps the
    /// target's current flags.
    Mount {
        fstype: String,
        source: String,
        target: PathBuf,
        #[arg(long)]
        remount: bool,
        #[arg(long)]
        bind: bool,
        /// Create TARGET first (and remove it afterwards).
        #[arg(long)]
        mkdir: bool,
    },
    /// fsopen(2) FSTYPE (the new mount API); the context is closed at once.
    Fsopen { fstype: String },
    /// mknod(2) a block device node (removed again if made).
    MknodBlock { path: PathBuf, major: u32, minor: u32 },
    /// Open PATH (e.g. /proc/1/ns/net) and setns(2) into it.
    Setns {
        path: PathBuf,
        #[arg(long = "type", value_enum, default_value_t = NsType::Any)]
        ns_type: NsType,
    },
    /// pidfd_open(2) PID and setns(2) into all of its namespaces.
    SetnsPid {
        #[arg(value_parser = pid)]
        pid: i32,
    },
    /// unshare(CLONE_NEWUSER).
    UnshareUser,
    /// connect(2) a unix stream socket to PATH.
    ConnectUnix {
        path: PathBuf,
        /// How the address names PATH: the kernel reads the same path from each.
        #[arg(long, value_enum, default_value_t = UnixAddress::Terminated)]
        address: UnixAddress,
    },
    /// connect(2) to HOST:PORT over TCP, 1 s timeout (ECONNREFUSED: the call was made).
    ConnectTcp { host: String, port: u16 },
    /// init_module(2) with a bogus image: the kernel refuses it, nothing is loaded.
    InitModule,
    /// finit_module(2) on PATH, which must not be an ELF file (so it cannot be a module).
    FinitModule { path: PathBuf },
    /// bpf(BPF_MAP_CREATE) of a one-entry array, closed at once.
    Bpf,
    /// perf_event_open(2) of a software event on this process, closed at once.
    PerfEventOpen,
    /// ptrace(PTRACE_SEIZE) PID, then detach.
    PtraceAttach {
        #[arg(value_parser = pid)]
        pid: i32,
    },
    /// process_vm_writev(2) of one byte to ADDR in PID (unmapped there: EFAULT, nothing changes).
    ProcessVmWritev {
        #[arg(value_parser = pid)]
        pid: i32,
        /// Address in PID (0x-prefixed hex, or decimal).
        #[arg(value_parser = address)]
        addr: u64,
    },
    /// Read PATH and write the same bytes back (sysctls, sysfs: leaves the host as found).
    WriteBack { path: PathBuf },
    /// Benchmark loops for `cargo xtask bench --only guard` (prints one JSON object).
    #[command(subcommand, hide = true)]
    Loop(Loop),
}

#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum Loop {
    /// open(2) + close(2) of PATH, N times.
    Open {
        iterations: u64,
        path: PathBuf,
        /// Time the loop in this many batches.
        #[arg(long, default_value_t = 1)]
        batches: u64,
    },
    /// stat(2) of PATH, N times (a file system call no detection watches).
    Stat {
        iterations: u64,
        path: PathBuf,
        /// Time the loop in this many batches.
        #[arg(long, default_value_t = 1)]
        batches: u64,
    },
    /// getppid(2), N times (the cheapest system call: what every call pays).
    Getppid {
        iterations: u64,
        /// Time the loop in this many batches.
        #[arg(long, default_value_t = 1)]
        batches: u64,
    },
    /// connect(2) to a unix socket of its own (accepted, both ends closed), N times.
    ConnectUnix {
        iterations: u64,
        /// Time the loop in this many batches.
        #[arg(long, default_value_t = 1)]
        batches: u64,
    },
    /// connect(2) to a TCP listener of its own (accepted, both ends closed), N times: the
    /// call every client makes.
    ConnectTcp {
        iterations: u64,
        /// The listener's address (it binds a free port there).
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
        /// Time the loop in this many batches.
        #[arg(long, default_value_t = 1)]
        batches: u64,
    },
    /// fork(2) + execve(2) of PROGRAM (no arguments) and wait, N times.
    Exec {
        iterations: u64,
        #[arg(default_value = "/bin/true")]
        program: PathBuf,
        /// Time the loop in this many batches.
        #[arg(long, default_value_t = 1)]
        batches: u64,
    },
}

/// The forms of a `sockaddr_un` that name one path.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnixAddress {
    /// The path and its NUL, as libc and std pass it.
    Terminated,
    /// The path without a NUL: the length ends the path.
    Unterminated,
    /// The path, its NUL, and bytes after it that the kernel ignores.
    Padded,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsType {
    Net,
    Mnt,
    Pid,
    Uts,
    Ipc,
    Cgroup,
    User,
    /// nstype 0: whatever PATH is.
    Any,
}

impl NsType {
    pub fn flag(self) -> libc::c_int {
        match self {
            Self::Net => libc::CLONE_NEWNET,
            Self::Mnt => libc::CLONE_NEWNS,
            Self::Pid => libc::CLONE_NEWPID,
            Self::Uts => libc::CLONE_NEWUTS,
            Self::Ipc => libc::CLONE_NEWIPC,
            Self::Cgroup => libc::CLONE_NEWCGROUP,
            Self::User => libc::CLONE_NEWUSER,
            Self::Any => 0,
        }
    }
}

impl Command {
    /// The technique's name in the JSON line: the subcommand's.
    pub fn technique(&self) -> &'static str {
        match self {
            Self::Open { .. } => "open",
            Self::ProcMem { .. } => "proc-mem",
            Self::Mount { .. } => "mount",
            Self::Fsopen { .. } => "fsopen",
            Self::MknodBlock { .. } => "mknod-block",
            Self::Setns { .. } => "setns",
            Self::SetnsPid { .. } => "setns-pid",
            Self::UnshareUser => "unshare-user",
            Self::ConnectUnix { .. } => "connect-unix",
            Self::ConnectTcp { .. } => "connect-tcp",
            Self::InitModule => "init-module",
            Self::FinitModule { .. } => "finit-module",
            Self::Bpf => "bpf",
            Self::PerfEventOpen => "perf-event-open",
            Self::PtraceAttach { .. } => "ptrace-attach",
            Self::ProcessVmWritev { .. } => "process-vm-writev",
            Self::WriteBack { .. } => "write-back",
            Self::Loop(_) => "loop",
        }
    }
}

/// A process id: positive (0 and negatives mean other things to these calls).
fn pid(text: &str) -> Result<i32, String> {
    match text.parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(format!("{text:?} is not a process id (a positive number)")),
    }
}

fn address(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("{text:?} is not an address (0x-prefixed hex, or decimal)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("moat-attack").chain(args.iter().copied())).map(|cli| cli.command)
    }

    #[test]
    fn open_flags() {
        assert_eq!(
            parse(&["open", "/etc/hostname", "--read-bytes", "16"]).unwrap(),
            Command::Open { path: "/etc/hostname".into(), write: false, read_bytes: Some(16) }
        );
        assert_eq!(
            parse(&["open", "/proc/sysrq-trigger", "--write"]).unwrap(),
            Command::Open { path: "/proc/sysrq-trigger".into(), write: true, read_bytes: None }
        );
        assert!(parse(&["open", "/x", "--write", "--read-bytes", "1"]).is_err());
        assert!(parse(&["open"]).is_err());
    }

    #[test]
    fn mount_flags() {
        assert_eq!(
            parse(&["mount", "proc", "proc", "/proc", "--remount"]).unwrap(),
            Command::Mount {
                fstype: "proc".into(),
                source: "proc".into(),
                target: "/proc".into(),
                remount: true,
                bind: false,
                mkdir: false
            }
        );
        assert!(matches!(
            parse(&["mount", "cgroup", "cgroup", "/tmp/c", "--mkdir", "--bind"]).unwrap(),
            Command::Mount { mkdir: true, bind: true, remount: false, .. }
        ));
        assert!(parse(&["mount", "proc", "proc"]).is_err());
    }

    #[test]
    fn setns_types() {
        assert_eq!(
            parse(&["setns", "/proc/1/ns/net"]).unwrap(),
            Command::Setns { path: "/proc/1/ns/net".into(), ns_type: NsType::Any }
        );
        let mnt = parse(&["setns", "/proc/1/ns/mnt", "--type", "mnt"]).unwrap();
        assert!(matches!(mnt, Command::Setns { ns_type: NsType::Mnt, .. }));
        assert_eq!(NsType::Mnt.flag(), libc::CLONE_NEWNS);
        assert!(parse(&["setns", "/proc/1/ns/net", "--type", "time"]).is_err());
        assert_eq!(parse(&["setns-pid", "1"]).unwrap(), Command::SetnsPid { pid: 1 });
    }

    #[test]
    fn pids_and_addresses() {
        assert_eq!(
            parse(&["process-vm-writev", "42", "0x7fff0000"]).unwrap(),
            Command::ProcessVmWritev { pid: 42, addr: 0x7fff_0000 }
        );
        assert_eq!(parse(&["process-vm-writev", "42", "4096"]).unwrap(), Command::ProcessVmWritev { pid: 42, addr: 4096 });
        assert!(parse(&["process-vm-writev", "42", "0xzz"]).is_err());
        assert!(parse(&["ptrace-attach", "0"]).is_err());
        assert!(parse(&["proc-mem", "-1"]).is_err());
        assert!(parse(&["proc-mem", "self"]).is_err());
    }

    #[test]
    fn numbers_and_plain_subcommands() {
        assert_eq!(
            parse(&["mknod-block", "/tmp/sda", "8", "0"]).unwrap(),
            Command::MknodBlock { path: "/tmp/sda".into(), major: 8, minor: 0 }
        );
        assert_eq!(parse(&["connect-tcp", "127.0.0.1", "10250"]).unwrap(), Command::ConnectTcp { host: "127.0.0.1".into(), port: 10250 });
        assert!(parse(&["connect-tcp", "127.0.0.1", "70000"]).is_err());
        for (args, technique) in [
            (&["unshare-user"][..], "unshare-user"),
            (&["init-module"], "init-module"),
            (&["bpf"], "bpf"),
            (&["perf-event-open"], "perf-event-open"),
            (&["fsopen", "cgroup"], "fsopen"),
            (&["write-back", "/proc/sys/kernel/core_pattern"], "write-back"),
        ] {
            assert_eq!(parse(args).unwrap().technique(), technique);
        }
        assert!(parse(&["bpf", "extra"]).is_err());
        assert!(parse(&["no-such-technique"]).is_err());
    }

    #[test]
    fn hidden_loops() {
        assert_eq!(
            parse(&["loop", "open", "1000", "/etc/hostname", "--batches", "10"]).unwrap(),
            Command::Loop(Loop::Open { iterations: 1000, path: "/etc/hostname".into(), batches: 10 })
        );
        assert_eq!(
            parse(&["loop", "exec", "10"]).unwrap(),
            Command::Loop(Loop::Exec { iterations: 10, program: "/bin/true".into(), batches: 1 })
        );
        assert!(parse(&["loop", "exec", "many"]).is_err());
        assert_eq!(
            parse(&["loop", "connect-unix", "5", "--batches", "2"]).unwrap(),
            Command::Loop(Loop::ConnectUnix { iterations: 5, batches: 2 })
        );
        assert_eq!(
            parse(&["loop", "connect-tcp", "5", "--batches", "2"]).unwrap(),
            Command::Loop(Loop::ConnectTcp { iterations: 5, address: [127, 0, 0, 1].into(), batches: 2 })
        );
        assert_eq!(
            parse(&["loop", "connect-tcp", "1", "--address", "::1"]).unwrap(),
            Command::Loop(Loop::ConnectTcp { iterations: 1, address: std::net::Ipv6Addr::LOCALHOST.into(), batches: 1 })
        );
        assert_eq!(
            parse(&["loop", "stat", "3", "/etc/hostname"]).unwrap(),
            Command::Loop(Loop::Stat { iterations: 3, path: "/etc/hostname".into(), batches: 1 })
        );
        assert_eq!(
            parse(&["loop", "getppid", "7", "--batches", "7"]).unwrap(),
            Command::Loop(Loop::Getppid { iterations: 7, batches: 7 })
        );
    }

    #[test]
    fn usage_errors_exit_2() {
        let error = parse(&["open"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
    }
}
