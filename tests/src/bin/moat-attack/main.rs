//! `moat-attack`: performs each technique of the runtime guard's threat list
//! (`shared/design/threats.md`) for real, so integration tests can run it from a lab pod
//! (`moat lab exec NAME NS/POD -- moat-attack ...`) and check what the guard did. Every
//! subcommand makes the real system call and prints one JSON line,
//! `{"technique":..,"ok":true|false,"errno":"EPERM"|null,"detail":..}`; the exit status is
//! 0 when the call succeeded, 1 when it failed, 2 on usage errors.
//!
//! Raw system calls through libc, never a shell or another program, so what the guard sees
//! comes from this process.

mod args;
mod files;
mod kernel;
mod loops;
mod mounts;
mod net;
mod ns;
mod ptrace;
mod report;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};
use report::Report;

/// An argument the technique cannot use (exit status 2).
#[derive(Debug)]
pub struct Usage(pub String);

pub fn c_string(text: &str) -> Result<CString, Usage> {
    CString::new(text).map_err(|_| Usage(format!("{text:?} contains a NUL byte")))
}

pub fn c_path(path: &Path) -> Result<CString, Usage> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Usage(format!("{} contains a NUL byte", path.display())))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Loop(kind) = &cli.command {
        return match loops::run(kind) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(loops::LoopError::Usage(Usage(message))) => usage(&message),
            Err(error) => {
                eprintln!("moat-attack loop: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let technique = cli.command.technique();
    match perform(cli.command) {
        Ok(report) => {
            println!("{}", report.json());
            ExitCode::from(report.exit_code())
        }
        Err(Usage(message)) => usage(&format!("{technique}: {message}")),
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("moat-attack: {message}");
    ExitCode::from(2)
}

fn perform(command: Command) -> Result<Report, Usage> {
    Ok(match command {
        Command::Open { path, write, read_bytes } => files::open(&path, write, read_bytes),
        Command::ProcMem { pid } => files::proc_mem(pid),
        Command::WriteBack { path } => files::write_back(&path),
        Command::Mount { fstype, source, target, remount, bind, mkdir } => {
            mounts::mount(&fstype, &source, &target, remount, bind, mkdir)?
        }
        Command::Fsopen { fstype } => mounts::fsopen(&fstype)?,
        Command::MknodBlock { path, major, minor } => mounts::mknod_block(&path, major, minor)?,
        Command::Setns { path, ns_type } => ns::setns(&path, ns_type),
        Command::SetnsPid { pid } => ns::setns_pid(pid),
        Command::UnshareUser => ns::unshare_user(),
        Command::ConnectUnix { path, address } => net::connect_unix(&path, address),
        Command::ConnectTcp { host, port } => net::connect_tcp(&host, port),
        Command::InitModule => kernel::init_module(),
        Command::FinitModule { path } => kernel::finit_module(&path)?,
        Command::Bpf => kernel::bpf(),
        Command::PerfEventOpen => kernel::perf_event_open(),
        Command::PtraceAttach { pid } => ptrace::attach(pid),
        Command::ProcessVmWritev { pid, addr } => ptrace::process_vm_writev(pid, addr),
        Command::Loop(_) => return Err(Usage("loop is handled before techniques".into())),
    })
}
