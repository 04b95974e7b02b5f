//! The guest side of `cargo xtask vm`: the script it runs, booting it, and reading what it
//! printed (its initramfs: `initramfs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::initramfs::shell_quote;
use super::kernels::Prepared;
use super::{spawn_quiet, Reaped};

/// How much slower than this host the emulated guest runs: the integration tests stretch
/// their waits by it (`MOAT_TEST_TIME_SCALE`), the lab its agent's start-up.
const TIME_SCALE: u32 = 8;

/// The guest's run script: every test binary in turn, each framed by markers. `expect`:
/// how the guard's probes must attach on this boot (`MOAT_EXPECT_GUARD_KIND`).
/// `only`: a libtest filter for one binary, in place of `filter`.
pub fn script(workspace: &Path, moat: &Path, binaries: &BTreeMap<String, PathBuf>, filter: &[String], only: &BTreeMap<String, Vec<String>>, expect: &str) -> String {
    let apiserver = moat.with_file_name("moat-test-apiserver");
    let mut text = format!(
        "export MOAT_BIN={} MOAT_TEST_APISERVER_BIN={} MOAT_LAB_READY_SECS=900 MOAT_TEST_TIME_SCALE={TIME_SCALE} MOAT_EXPECT_GUARD_KIND={expect} RUST_BACKTRACE=1 RUST_LIB_BACKTRACE=0\n",
        shell_quote(moat),
        shell_quote(&apiserver)
    );
    text.push_str("echo \"MOAT-VM-KERNEL $(uname -r) lsm=$(cat /sys/kernel/security/lsm 2>/dev/null)\"\n");
    text.push_str(&format!("cd {}\n", shell_quote(workspace.join("tests"))));
    let filter: Vec<String> = filter.iter().map(shell_quote).collect();
    for (name, binary) in binaries {
        let args = match only.get(name) {
            Some(filters) => filters.iter().map(shell_quote).collect::<Vec<_>>().join(" "),
            None => filter.join(" "),
        };
        text.push_str(&format!(
            "echo 'MOAT-VM-BEGIN {name}'\n{} --test-threads=1 --color=never --nocapture {args} 2>&1\necho \"MOAT-VM-RESULT {name} $?\"\n",
            shell_quote(binary),
        ));
    }
    text
}

/// The guest's run script for `--exec`: the command, its output on the console.
pub fn exec_script(command: &str) -> String {
    format!("echo \"MOAT-VM-KERNEL $(uname -r) lsm=$(cat /sys/kernel/security/lsm 2>/dev/null)\"\n{command}\n")
}

/// A booted guest: QEMU and the virtiofsd serving it the host's root.
pub struct Vm {
    qemu: Reaped,
    _virtiofsd: Reaped,
    socket: PathBuf,
}

impl Vm {
    pub fn boot(kernel: &Prepared, lsm: Option<&str>, script: &Path, console: &Path, memory_mib: u64) -> Result<Self> {
        let socket = script.with_extension("vfs.sock");
        let _ = std::fs::remove_file(&socket);
        let virtiofsd = spawn_quiet(
            Command::new("/usr/lib/qemu/virtiofsd")
                .arg(format!("--socket-path={}", socket.display()))
                .args(["-o", "source=/", "-o", "cache=always", "-o", "sandbox=chroot"]),
            &script.with_extension("virtiofsd.log"),
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("virtiofsd did not create {} (see {})", socket.display(), script.with_extension("virtiofsd.log").display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut append = format!(
            "console=ttyS0 quiet panic=-1 rdinit=/init moat.run={} moat.modules={}",
            script.display(),
            kernel.dir.join("lib/modules").join(&kernel.release).display()
        );
        if let Some(lsm) = lsm {
            append.push_str(&format!(" lsm={lsm}"));
        }
        let memory = format!("{memory_mib}M");
        // A small empty disk: a node has block devices, and the guard's tests refuse a pod
        // opening one (its read-only attachment keeps the image unchanged).
        let disk = kernel.dir.join("disk.img");
        if !disk.exists() {
            std::fs::File::create(&disk)?.set_len(4 << 20)?;
        }
        let qemu = spawn_quiet(
            Command::new("qemu-system-x86_64")
                .args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "1", "-m", &memory])
                .args(["-object", &format!("memory-backend-memfd,id=mem,size={memory},share=on")])
                .args(["-machine", "q35,memory-backend=mem"])
                .args(["-chardev", &format!("socket,id=vfs,path={}", socket.display())])
                .args(["-device", "vhost-user-fs-pci,chardev=vfs,tag=hostroot"])
                .args(["-drive", &format!("file={},if=virtio,format=raw,readonly=on", disk.display())])
                .arg("-kernel")
                .arg(&kernel.vmlinuz)
                .arg("-initrd")
                .arg(&kernel.initrd)
                .args(["-append", &append])
                .args(["-display", "none", "-serial", "stdio", "-no-reboot", "-net", "none", "-monitor", "none"]),
            console,
        )?;
        Ok(Self { qemu, _virtiofsd: virtiofsd, socket })
    }

    /// The exit status once QEMU has exited; with `stop`, kills it first.
    pub fn finished(&mut self, stop: bool) -> Result<Option<ExitStatus>> {
        if stop {
            let _ = self.qemu.0.kill();
        }
        let status = self.qemu.0.try_wait()?;
        if status.is_some() {
            let _ = std::fs::remove_file(&self.socket);
        }
        Ok(status)
    }
}

/// What a guest printed: its kernel, per test binary the exit status and libtest summary.
#[derive(Default)]
pub struct Console {
    pub kernel: Option<String>,
    /// `MOAT-KERNEL-REPORT` lines (kernel_features): what the agent found on the kernel.
    pub reports: Vec<String>,
    pub results: BTreeMap<String, i32>,
    pub summaries: BTreeMap<String, String>,
    pub failure: Option<String>,
}

pub fn parse_console(text: &str) -> Console {
    let mut console = Console::default();
    let mut current: Option<String> = None;
    let mut exited = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("MOAT-VM-KERNEL ") {
            console.kernel = Some(rest.trim().to_string());
        } else if let Some(name) = line.strip_prefix("MOAT-VM-BEGIN ") {
            current = Some(name.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("MOAT-VM-RESULT ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(code)) = (parts.next(), parts.next().and_then(|c| c.parse().ok())) {
                console.results.insert(name.to_string(), code);
            }
            current = None;
        } else if let Some(what) = line.strip_prefix("MOAT-VM-FAILED ") {
            console.failure = Some(format!("guest boot: {what}"));
        } else if let Some(report) = line.split_once("MOAT-KERNEL-REPORT ").map(|(_, r)| r) {
            console.reports.push(report.to_string());
        } else if line.starts_with("MOAT-VM-EXIT=") {
            exited = true;
        } else if let (Some(name), Some(summary)) = (&current, line.strip_prefix("test result: ")) {
            console.summaries.insert(name.clone(), summary.to_string());
        }
    }
    if !exited && console.failure.is_none() {
        console.failure = Some("the guest did not finish its run script".into());
    }
    console
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_results_and_summaries_per_binary() {
        let text = "boot noise\nMOAT-VM-KERNEL 6.1.0-57-cloud-amd64 lsm=lockdown,bpf\nMOAT-VM-BEGIN isolation\nrunning 2 tests\ntest result: ok. 2 passed; 0 failed\nMOAT-VM-RESULT isolation 0\nMOAT-VM-BEGIN guard_sysctl\ntest result: FAILED. 0 passed; 1 failed\nMOAT-VM-RESULT guard_sysctl 101\nMOAT-VM-EXIT=0\n";
        let console = parse_console(text);
        assert_eq!(console.kernel.as_deref(), Some("6.1.0-57-cloud-amd64 lsm=lockdown,bpf"));
        assert_eq!(console.results.get("isolation"), Some(&0));
        assert_eq!(console.results.get("guard_sysctl"), Some(&101));
        assert_eq!(console.summaries.get("guard_sysctl").map(String::as_str), Some("FAILED. 0 passed; 1 failed"));
        assert!(console.failure.is_none());
    }

    #[test]
    fn a_guest_that_stops_early_is_a_failure() {
        let console = parse_console("MOAT-VM-BEGIN isolation\nKernel panic\n");
        assert!(console.results.is_empty());
        assert!(console.failure.is_some());
    }
}
