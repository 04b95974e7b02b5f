//! The guard's hooks on this kernel, planned from the configured modes: the detection probes
//! (BPF LSM, fentry or syscall tracepoints) and cgroup/connect_unix. A detection set to
//! `off` holds nothing; changing modes re-plans (attaching and detaching) without a restart.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use aya::Ebpf;

use crate::config::{GuardConfig, GuardMode};
use super::effective::{self, Attached, DetectionStatus};
use crate::detections;
use crate::kernel::bpffs::PinDirs;
use crate::detections::Probe;
use crate::kernel::guard_probes::{GuardKernel, GuardProbes, Kind, ProbeStatus};
use crate::kernel::{loader, unix_connect, KernelError};

pub struct GuardHooks {
    probes: GuardProbes,
    /// `moat_connect_unix`, loaded by hand (or why not: before Linux 6.7 the hook is absent).
    unix_connect: Result<OwnedFd, String>,
    unix_connect_attached: Option<loader::Attached>,
    cgroup_root: PathBuf,
    dirs: PinDirs,
}

impl GuardHooks {
    /// `layout_error`: the programs cannot read kernel structures, so no probe attaches
    /// (the cgroup hooks still refuse what they refuse). `unix_connect_ready`: its context
    /// offsets are known.
    pub fn new(
        dirs: &PinDirs,
        run_dir: &Path,
        cgroup_root: &Path,
        unix_connect: Result<OwnedFd, KernelError>,
        unix_connect_ready: bool,
        layout_error: Option<String>,
    ) -> Self {
        let mut probes = GuardProbes::new(dirs, run_dir);
        if let Some(reason) = layout_error {
            probes.disable(format!("kernel layout unavailable: {reason}"));
        }
        let unix_connect = match unix_connect {
            // Attached without its offsets it would refuse nothing while status says it blocks.
            Ok(_) if !unix_connect_ready => Err("kernel BTF has no bpf_sock_addr_kern.uaddr/uaddrlen".to_string()),
            Ok(program) => Ok(program),
            Err(error) => Err(error.to_string()),
        };
        Self { probes, unix_connect, unix_connect_attached: None, cgroup_root: cgroup_root.into(), dirs: dirs.clone() }
    }

    /// Attaches what `config`'s detections need, detaches the rest; the resulting statuses.
    pub fn plan(&mut self, ebpf: &mut Ebpf, config: &GuardConfig) -> Vec<DetectionStatus> {
        self.probes.apply(ebpf, &effective::wanted(config, false));
        self.plan_unix_connect(config);
        let connect_unix = self.unix_connect_attached.is_some();
        self.probes.apply(ebpf, &effective::wanted(config, connect_unix));
        effective::statuses(config, &self.attached())
    }

    /// cgroup/connect_unix refuses runtime sockets by path where BPF LSM cannot by inode:
    /// attached in block mode unless `unix_stream_connect` runs as BPF LSM.
    fn plan_unix_connect(&mut self, config: &GuardConfig) {
        let by_lsm = self.probes.kind(Probe::UnixConnect) == Some(Kind::Lsm);
        let wanted = config.mode(&detections::RUNTIME_SOCKET) == GuardMode::Block && !by_lsm;
        match (&self.unix_connect, wanted, self.unix_connect_attached.is_some()) {
            (Ok(program), true, false) => match loader::attach_unix_connect(program, &self.cgroup_root, &self.dirs) {
                Ok(attached) => self.unix_connect_attached = Some(attached),
                Err(error) => {
                    tracing::info!(%error, "cgroup/connect_unix not attached; runtime sockets are refused only with BPF LSM");
                    self.unix_connect = Err(error.to_string());
                }
            },
            (Err(error), true, _) => {
                tracing::info!(%error, "cgroup/connect_unix unavailable; runtime sockets are refused only with BPF LSM");
            }
            (_, false, _) => {
                self.unix_connect_attached = None;
                if let Err(error) = loader::detach_links(&self.dirs.links, unix_connect::PROGRAM, None) {
                    tracing::warn!(%error, "detaching cgroup/connect_unix failed");
                }
            }
            _ => {}
        }
    }

    pub fn attached(&self) -> Attached {
        Attached {
            probes: Probe::ALL.iter().map(|p| (*p, self.probes.status(*p))).collect(),
            connect_unix: self.unix_connect_attached.is_some(),
        }
    }

    pub fn probe_statuses(&self) -> Vec<ProbeStatus> {
        self.probes.statuses()
    }

    /// What the kernel offers the guard, with cgroup/connect_unix.
    pub fn kernel(&self) -> GuardKernel {
        self.probes.kernel().clone()
    }

    pub fn connect_unix(&self) -> Result<Option<&loader::Attached>, &str> {
        match &self.unix_connect {
            Ok(_) => Ok(self.unix_connect_attached.as_ref()),
            Err(error) => Err(error),
        }
    }
}
