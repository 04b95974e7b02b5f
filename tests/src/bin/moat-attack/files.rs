//! Techniques that open files: open, /proc/PID/mem, write-back.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use crate::report::Report;

/// `open PATH [--write] [--read-bytes N]`. std's open is openat(2) with O_CLOEXEC plus the
/// access mode; without `create`/`truncate` it adds neither O_CREAT nor O_TRUNC.
pub fn open(path: &Path, write: bool, read_bytes: Option<usize>) -> Report {
    const T: &str = "open";
    let mode = if write { "O_WRONLY" } else { "O_RDONLY" };
    let file = match OpenOptions::new().read(!write).write(write).open(path) {
        Ok(file) => file,
        Err(error) => return Report::failed(T, &error, format!("{} {mode}", path.display())),
    };
    let Some(wanted) = read_bytes else {
        return Report::done(T, format!("{} opened {mode}", path.display()));
    };
    // Only the count is reported: the content may be a key.
    let mut buffer = vec![0u8; wanted];
    let mut got = 0;
    let mut reader = &file;
    while got < wanted {
        match reader.read(&mut buffer[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(error) => {
                return Report::failed(T, &error, format!("{} opened {mode}; read failed after {got} bytes", path.display()))
            }
        }
    }
    Report::done(T, format!("{} opened {mode}, read {got} bytes", path.display()))
}

/// `proc-mem PID`: /proc/PID/mem opened read-write (the check is ptrace access mode ATTACH).
pub fn proc_mem(pid: i32) -> Report {
    const T: &str = "proc-mem";
    let path = format!("/proc/{pid}/mem");
    match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(_) => Report::done(T, format!("{path} opened O_RDWR")),
        Err(error) => Report::failed(T, &error, format!("{path} O_RDWR")),
    }
}

/// Upper bound on what write-back reads: sysctls and sysfs attributes are a page or less.
const WRITE_BACK_MAX: u64 = 1 << 20;

/// `write-back PATH`: one read of the current content, then one write(2) of it at offset 0
/// (sysctls take the value of a single write).
pub fn write_back(path: &Path) -> Report {
    const T: &str = "write-back";
    let mut content = Vec::new();
    let read = File::open(path).and_then(|file| file.take(WRITE_BACK_MAX).read_to_end(&mut content));
    if let Err(error) = read {
        return Report::failed(T, &error, format!("reading {}", path.display()));
    }
    let mut file = match OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(error) => return Report::failed(T, &error, format!("opening {} O_WRONLY", path.display())),
    };
    match file.write(&content) {
        Ok(n) if n == content.len() => Report::done(T, format!("{}: wrote back its {n} bytes", path.display())),
        Ok(n) => Report::done(T, format!("{}: short write, {n} of {} bytes", path.display(), content.len())),
        Err(error) => Report::failed(T, &error, format!("writing {} bytes back to {}", content.len(), path.display())),
    }
}
