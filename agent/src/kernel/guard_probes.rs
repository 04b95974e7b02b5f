//! The runtime guard's detection probes: for each thing a detection must see, the best way
//! this kernel offers to see it, attached only while a detection needs it.
//!
//! Each probe has up to three ways, tried in order:
//!
//! 1. **BPF LSM** programs (when `bpf` is in the active LSM list): they refuse in block mode.
//!    Their links are pinned, so blocking outlives the agent like the cgroup programs'.
//! 2. **fentry/fexit** at the hook's `security_*` function (or a syscall's entry function
//!    where no security hook exists): the kernel has BPF trampolines, but BPF LSM is not
//!    active. They see the same, report, and cost only the calls they watch.
//! 3. The system calls' own **tracepoints** (`syscalls/sys_enter_*`), where the kernel has
//!    no trampolines. They report; a program runs only for its system call (the kernel's
//!    syscall tracing path does get taken for every call while one is attached).
//!
//! Nothing is attached for a probe no detection needs (every detection using it is off).

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{FEntry, FExit, Lsm, RawTracePoint, TracePoint};
use aya::{Btf, Ebpf};
use serde::Serialize;

use super::bpffs::PinDirs;
use super::error_chain as chain;
use crate::detections::Probe;

/// The ways to see `probe`, best first.
fn ways(probe: Probe) -> &'static [Way] {
    use Target::*;
    match probe {
        Probe::FileOpen => &[
            Way::Lsm(&[("moat_lsm_file_open", Lsm("file_open", 1))]),
            Way::Fentry(&[("moat_fentry_file_open", Function("security_file_open"))]),
            Way::Tracepoint(&[
                ("moat_tp_open", Syscall("sys_exit_open")),
                ("moat_tp_openat", Syscall("sys_exit_openat")),
                ("moat_tp_openat2", Syscall("sys_exit_openat2")),
                ("moat_tp_creat", Syscall("sys_exit_creat")),
            ]),
        ],
        Probe::Mount => &[
            Way::Lsm(&[("moat_lsm_sb_mount", Lsm("sb_mount", 5))]),
            Way::Fentry(&[("moat_fentry_sb_mount", Function("security_sb_mount"))]),
            Way::Tracepoint(&[("moat_tp_mount", Syscall("sys_enter_mount"))]),
        ],
        Probe::Fsopen => &[
            Way::Fentry(&[("moat_sys_fsopen", SyscallEntry("fsopen"))]),
            Way::Tracepoint(&[("moat_tp_fsopen", Syscall("sys_enter_fsopen"))]),
        ],
        Probe::Mknod => &[
            Way::Fentry(&[("moat_sys_mknod", SyscallEntry("mknod")), ("moat_sys_mknodat", SyscallEntry("mknodat"))]),
            Way::Tracepoint(&[("moat_tp_mknod", Syscall("sys_enter_mknod")), ("moat_tp_mknodat", Syscall("sys_enter_mknodat"))]),
        ],
        Probe::UserNamespace => &[
            Way::Lsm(&[("moat_lsm_userns_create", Lsm("userns_create", 1))]),
            Way::Fentry(&[("moat_fentry_userns_create", Function("security_create_user_ns"))]),
            Way::Tracepoint(&[("moat_tp_unshare", Syscall("sys_enter_unshare"))]),
        ],
        Probe::ModuleLoad => &[
            Way::Lsm(&[
                ("moat_lsm_kernel_read_file", Lsm("kernel_read_file", 3)),
                ("moat_lsm_kernel_load_data", Lsm("kernel_load_data", 2)),
            ]),
            Way::Fentry(&[
                ("moat_fentry_kernel_read_file", Function("security_kernel_read_file")),
                ("moat_fentry_kernel_load_data", Function("security_kernel_load_data")),
            ]),
            Way::Tracepoint(&[
                ("moat_tp_init_module", Syscall("sys_enter_init_module")),
                ("moat_tp_finit_module", Syscall("sys_enter_finit_module")),
            ]),
        ],
        Probe::Bpf => &[
            // The hook gained a parameter in Linux 6.16: the program whose verdict index
            // matches the kernel's BTF loads, the other is skipped.
            Way::Lsm(&[("moat_lsm_bpf", Lsm("bpf", 3)), ("moat_lsm_bpf4", Lsm("bpf", 4))]),
            Way::Fentry(&[("moat_fentry_bpf", Function("security_bpf"))]),
            Way::Tracepoint(&[("moat_tp_bpf", Syscall("sys_enter_bpf"))]),
        ],
        Probe::PerfEvent => &[
            // `perf_event_open(attr, type)` became `perf_event_open(event)` in Linux 6.x.
            Way::Lsm(&[("moat_lsm_perf_event_open", Lsm("perf_event_open", 2)), ("moat_lsm_perf_event_open1", Lsm("perf_event_open", 1))]),
            Way::Fentry(&[("moat_fentry_perf_event_open", Function("security_perf_event_open"))]),
            Way::Tracepoint(&[("moat_tp_perf_event_open", Syscall("sys_enter_perf_event_open"))]),
        ],
        Probe::Ptrace => &[
            Way::Lsm(&[("moat_lsm_ptrace_access_check", Lsm("ptrace_access_check", 2))]),
            Way::Fentry(&[("moat_fentry_ptrace_access_check", Function("security_ptrace_access_check"))]),
            Way::Tracepoint(&[
                ("moat_tp_ptrace", Syscall("sys_enter_ptrace")),
                ("moat_tp_process_vm_writev", Syscall("sys_enter_process_vm_writev")),
            ]),
        ],
        Probe::Setns => &[
            Way::Fentry(&[("moat_sys_setns_enter", SyscallEntry("setns")), ("moat_sys_setns_exit", SyscallEntry("setns"))]),
            Way::Tracepoint(&[("moat_tp_setns_enter", Syscall("sys_enter_setns")), ("moat_tp_setns_exit", Syscall("sys_exit_setns"))]),
        ],
        Probe::UnixConnect => &[
            Way::Lsm(&[("moat_lsm_unix_stream_connect", Lsm("unix_stream_connect", 3))]),
            Way::Fentry(&[("moat_fentry_unix_stream_connect", Function("security_unix_stream_connect"))]),
            // The exit reads the socket's fd from the task's saved registers.
            Way::Tracepoint(&[("moat_tp_connect_exit", Syscall("sys_exit_connect"))]),
        ],
        Probe::ConnectRefusals => &[
            Way::Fentry(&[("moat_sys_connect_exit", SyscallEntry("connect"))]),
            Way::Tracepoint(&[("moat_tp_connect_exit", Syscall("sys_exit_connect"))]),
        ],
        Probe::ApiConnect => &[
            Way::Lsm(&[("moat_lsm_socket_connect", Lsm("socket_connect", 3))]),
            Way::Fentry(&[("moat_fentry_socket_connect", Function("security_socket_connect"))]),
            Way::Tracepoint(&[("moat_tp_connect_enter", Syscall("sys_enter_connect"))]),
        ],
        Probe::Fork => &[Way::RawTracepoint(&[("moat_sched_fork", Syscall("sched_process_fork"))])],
    }
}

/// How a probe is attached on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Lsm,
    Fentry,
    Tracepoint,
    RawTracepoint,
}

impl Kind {
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Lsm => "BPF LSM",
            Kind::Fentry => "fentry",
            Kind::Tracepoint => "syscall tracepoints",
            Kind::RawTracepoint => "raw tracepoint",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Target {
    /// A BPF LSM hook and its parameter count (where the previous verdict is).
    Lsm(&'static str, u32),
    /// A kernel function (fentry/fexit by the program's type).
    Function(&'static str),
    /// A syscall's entry function, `__<arch>_sys_<name>`.
    SyscallEntry(&'static str),
    /// A tracepoint: `syscalls/<name>` (raw: the raw tracepoint's name).
    Syscall(&'static str),
}

type Programs = &'static [(&'static str, Target)];

#[derive(Clone, Copy, Debug)]
enum Way {
    Lsm(Programs),
    Fentry(Programs),
    Tracepoint(Programs),
    RawTracepoint(Programs),
}

impl Way {
    fn kind(self) -> Kind {
        match self {
            Way::Lsm(_) => Kind::Lsm,
            Way::Fentry(_) => Kind::Fentry,
            Way::Tracepoint(_) => Kind::Tracepoint,
            Way::RawTracepoint(_) => Kind::RawTracepoint,
        }
    }

    fn programs(self) -> Programs {
        match self {
            Way::Lsm(p) | Way::Fentry(p) | Way::Tracepoint(p) | Way::RawTracepoint(p) => p,
        }
    }
}

/// A probe as `moat status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProbeStatus {
    pub probe: &'static str,
    /// How it is attached; None: not attached (not needed, or no way worked).
    pub kind: Option<Kind>,
    /// `lsm/file_open`, `fentry/security_file_open`, `tracepoint/syscalls/sys_exit_openat`…
    pub hooks: Vec<String>,
    /// Why better ways were not used, or why none worked.
    pub fallbacks: Vec<String>,
    pub needed: bool,
}

/// What this kernel offers the guard, found while attaching.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GuardKernel {
    /// The active LSM list (`/sys/kernel/security/lsm`), when it could be read.
    pub lsm_list: Option<String>,
    /// `active`, `inactive: <why>`, `unknown: <why>`.
    pub bpf_lsm: String,
    /// fentry/fexit: `available`, `unavailable: <why>`, `untried`.
    pub trampolines: String,
    /// `available`, `unavailable: <why>`, `untried`.
    pub syscall_tracepoints: String,
}

/// One attached program.
enum Handle {
    /// Pinned link (BPF LSM): detaching unpins it.
    Pinned(PathBuf),
    /// fentry/fexit/raw tracepoint link owned by the program in the `Ebpf` object.
    Owned,
    /// A perf event carrying a tracepoint program.
    Perf(#[allow(dead_code)] OwnedFd),
}

/// The guard's probes: attached per the detections' needs, re-planned on config change.
pub struct GuardProbes {
    /// Per probe, the way chosen (first that worked); kept so a re-plan does not switch kind.
    chosen: BTreeMap<Probe, Kind>,
    statuses: BTreeMap<Probe, ProbeStatus>,
    /// Attached programs, with the probes using each (tracepoints can be shared).
    attached: BTreeMap<&'static str, (Handle, BTreeSet<Probe>)>,
    loaded: BTreeSet<&'static str>,
    kernel: GuardKernel,
    /// The kernel's BTF as aya parses it (~13 MB at 6.x), needed only to load LSM and fentry
    /// programs: read when `apply` first needs it and dropped when `apply` returns, so a
    /// running agent does not hold it.
    btf: Option<Btf>,
    /// Each BPF LSM hook's parameter count on this kernel (None: no such hook).
    lsm_params: BTreeMap<&'static str, Option<u32>>,
    tracepoint_ids: Option<Result<BTreeMap<String, u64>, String>>,
    links_dir: PathBuf,
    private_dir: PathBuf,
    /// Why no probe can run (no kernel layout for the programs to read structures with).
    disabled: Option<String>,
}

impl GuardProbes {
    /// Reads what the kernel offers; attaches nothing yet.
    pub fn new(dirs: &PinDirs, run_dir: &Path) -> Self {
        let (lsm_list, bpf_lsm) = bpf_lsm_state(run_dir);
        let lsm_params = match crate::kernel::btf_layout::read() {
            Ok(parsed) => lsm_hooks().map(|hook| (hook, crate::kernel::btf_layout::lsm_hook_params(&parsed, hook))).collect(),
            Err(error) => {
                tracing::warn!(%error, "kernel BTF unreadable: BPF LSM programs are not tried");
                BTreeMap::new()
            }
        };
        Self {
            chosen: BTreeMap::new(),
            statuses: BTreeMap::new(),
            attached: BTreeMap::new(),
            loaded: BTreeSet::new(),
            kernel: GuardKernel { lsm_list, bpf_lsm, trampolines: "untried".into(), syscall_tracepoints: "untried".into() },
            btf: None,
            lsm_params,
            tracepoint_ids: None,
            links_dir: dirs.links.clone(),
            private_dir: run_dir.join("tracefs"),
            disabled: None,
        }
    }

    /// No probe attaches, for `reason` (the programs could not read kernel structures).
    pub fn disable(&mut self, reason: String) {
        self.disabled = Some(reason);
    }

    pub fn kernel(&self) -> &GuardKernel {
        &self.kernel
    }

    pub fn status(&self, probe: Probe) -> ProbeStatus {
        self.statuses.get(&probe).cloned().unwrap_or(ProbeStatus { probe: probe.name(), ..Default::default() })
    }

    pub fn statuses(&self) -> Vec<ProbeStatus> {
        Probe::ALL.iter().map(|p| self.status(*p)).collect()
    }

    /// The kind a probe is attached as.
    pub fn kind(&self, probe: Probe) -> Option<Kind> {
        self.statuses.get(&probe).and_then(|s| s.kind)
    }

    /// Attaches what `wanted` needs and detaches what no wanted probe uses any more.
    pub fn apply(&mut self, ebpf: &mut Ebpf, wanted: &BTreeSet<Probe>) {
        for probe in Probe::ALL {
            if wanted.contains(&probe) {
                let tried_and_failed = self.statuses.get(&probe).is_some_and(|s| s.needed && s.kind.is_none());
                if self.kind(probe).is_none() && !tried_and_failed {
                    self.attach(ebpf, probe);
                }
            } else {
                self.release(ebpf, probe);
            }
        }
        self.retire_unused_lsm_pins();
        self.btf = None;
    }

    /// Reads the kernel's BTF unless this `apply` already has.
    fn read_kernel_btf(&mut self) -> Result<(), String> {
        if self.btf.is_none() {
            self.btf = Some(Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"))?);
        }
        Ok(())
    }

    fn attach(&mut self, ebpf: &mut Ebpf, probe: Probe) {
        let mut status = ProbeStatus { probe: probe.name(), needed: true, ..Default::default() };
        if let Some(reason) = &self.disabled {
            status.fallbacks.push(reason.clone());
            self.statuses.insert(probe, status);
            return;
        }
        let ways: Vec<Way> = match self.chosen.get(&probe) {
            Some(kind) => ways(probe).iter().copied().filter(|w| w.kind() == *kind).collect(),
            None => ways(probe).to_vec(),
        };
        for way in ways {
            if let Some(skip) = self.unavailable(way.kind()) {
                status.fallbacks.push(format!("{}: {skip}", way.kind().name()));
                continue;
            }
            match self.attach_way(ebpf, probe, way) {
                Ok(hooks) => {
                    self.note_available(way.kind());
                    status.kind = Some(way.kind());
                    status.hooks = hooks;
                    self.chosen.insert(probe, way.kind());
                    break;
                }
                Err(message) => {
                    tracing::info!(probe = probe.name(), way = way.kind().name(), %message, "guard probe: falling back");
                    self.note_failure(way.kind(), &message);
                    status.fallbacks.push(format!("{}: {message}", way.kind().name()));
                }
            }
        }
        if status.kind.is_none() {
            tracing::warn!(probe = probe.name(), fallbacks = ?status.fallbacks, "guard probe: no way to attach it on this kernel");
        }
        self.statuses.insert(probe, status);
    }

    /// Attaches every program of `way` (all or none).
    fn attach_way(&mut self, ebpf: &mut Ebpf, probe: Probe, way: Way) -> Result<Vec<String>, String> {
        let mut done: Vec<&'static str> = Vec::new();
        let mut hooks = Vec::new();
        let mut skipped = Vec::new();
        for &(program, target) in way.programs() {
            if let Some((_, users)) = self.attached.get_mut(program) {
                users.insert(probe);
                hooks.push(hook_name(way.kind(), target));
                done.push(program);
                continue;
            }
            if let (Kind::Lsm, Target::Lsm(hook, args)) = (way.kind(), target) {
                let kernel_args = self.lsm_params.get(hook).copied().flatten();
                if kernel_args != Some(args) {
                    skipped.push(format!("{program}: hook {hook} has {kernel_args:?} parameters here, the program expects {args}"));
                    continue;
                }
            }
            if let (Kind::Tracepoint, Target::Syscall(event)) = (way.kind(), target) {
                // A system call this kernel does not have (open on arm64, init_module without
                // module support) needs no watching.
                if matches!(self.tracepoint_id(event), Err(TracepointMissing::NoSuchEvent)) {
                    skipped.push(format!("{program}: no tracepoint syscalls/{event}"));
                    continue;
                }
            }
            match self.attach_program(ebpf, way.kind(), program, target) {
                Ok(handle) => {
                    self.attached.insert(program, (handle, BTreeSet::from([probe])));
                    hooks.push(hook_name(way.kind(), target));
                    done.push(program);
                }
                Err(message) => {
                    for program in done {
                        self.drop_user(ebpf, program, probe);
                    }
                    return Err(format!("{program} ({}): {message}", hook_name(way.kind(), target)));
                }
            }
        }
        if hooks.is_empty() {
            return Err(skipped.join("; "));
        }
        Ok(hooks)
    }

    fn attach_program(&mut self, ebpf: &mut Ebpf, kind: Kind, name: &'static str, target: Target) -> Result<Handle, String> {
        let needs_load = self.loaded.insert(name);
        let attached = self.load_and_attach(ebpf, kind, name, target, needs_load);
        // A failed load leaves the program unloaded; a later try loads it again.
        if attached.is_err() && needs_load && ebpf.program(name).is_none_or(|p| p.fd().is_err()) {
            self.loaded.remove(name);
        }
        attached
    }

    fn load_and_attach(&mut self, ebpf: &mut Ebpf, kind: Kind, name: &'static str, target: Target, needs_load: bool) -> Result<Handle, String> {
        if matches!(kind, Kind::Lsm | Kind::Fentry) {
            self.read_kernel_btf()?;
        }
        let btf = self.btf.as_ref();
        let program = ebpf.program_mut(name).ok_or("missing from the object")?;
        match (kind, target) {
            (Kind::Lsm, Target::Lsm(hook, _)) => {
                let btf = btf.ok_or("no kernel BTF")?;
                let program: &mut Lsm = program.try_into().map_err(|e| format!("{e}"))?;
                if needs_load {
                    program.load(hook, btf).map_err(|e| format!("load: {}", chain(&e)))?;
                }
                let id = program.attach().map_err(|e| format!("attach: {}", chain(&e)))?;
                let link: FdLink = program.take_link(id).map_err(|e| format!("{e}"))?.into();
                let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
                let pin = self.links_dir.join(format!("{name}@{stamp}"));
                link.pin(&pin).map_err(|e| format!("pin {}: {e}", pin.display()))?;
                if let Err(error) = super::loader::detach_links(&self.links_dir, name, Some(&pin)) {
                    tracing::warn!(%error, program = name, "an earlier agent's link stays attached");
                }
                Ok(Handle::Pinned(pin))
            }
            (Kind::Fentry, Target::Function(function) | Target::SyscallEntry(function)) => {
                let function = match target {
                    Target::SyscallEntry(call) => syscall_function(call),
                    _ => function.to_string(),
                };
                let btf = btf.ok_or("no kernel BTF")?;
                if let Ok(program) = <&mut FEntry>::try_from(&mut *program) {
                    if needs_load {
                        program.load(&function, btf).map_err(|e| format!("load: {}", chain(&e)))?;
                    }
                    program.attach().map_err(|e| format!("attach: {}", chain(&e)))?;
                } else {
                    let program: &mut FExit = program.try_into().map_err(|e| format!("{e}"))?;
                    if needs_load {
                        program.load(&function, btf).map_err(|e| format!("load: {}", chain(&e)))?;
                    }
                    program.attach().map_err(|e| format!("attach: {}", chain(&e)))?;
                }
                Ok(Handle::Owned)
            }
            (Kind::Tracepoint, Target::Syscall(event)) => {
                let id = self.tracepoint_id(event).map_err(|e| e.to_string())?;
                let program: &mut TracePoint = program.try_into().map_err(|e| format!("{e}"))?;
                if needs_load {
                    program.load().map_err(|e| format!("load: {}", chain(&e)))?;
                }
                let fd = program.fd().map_err(|e| format!("{e}"))?;
                let event = super::tracepoint::attach(fd.as_fd(), id)?;
                Ok(Handle::Perf(event))
            }
            (Kind::RawTracepoint, Target::Syscall(tracepoint)) => {
                let program: &mut RawTracePoint = program.try_into().map_err(|e| format!("{e}"))?;
                if needs_load {
                    program.load().map_err(|e| format!("load: {}", chain(&e)))?;
                }
                program.attach(tracepoint).map_err(|e| format!("attach: {}", chain(&e)))?;
                Ok(Handle::Owned)
            }
            _ => Err("no such attachment".into()),
        }
    }

    fn tracepoint_id(&mut self, event: &str) -> Result<u64, TracepointMissing> {
        let ids = self.tracepoint_ids.get_or_insert_with(|| super::tracepoint::ids("syscalls", SYSCALL_EVENTS, &self.private_dir));
        match ids {
            Ok(ids) => ids.get(event).copied().ok_or(TracepointMissing::NoSuchEvent),
            Err(message) => Err(TracepointMissing::NoTracefs(message.clone())),
        }
    }

    /// Stops `probe`'s programs unless another probe uses them.
    fn release(&mut self, ebpf: &mut Ebpf, probe: Probe) {
        let programs: Vec<&'static str> = self.attached.iter().filter(|(_, (_, users))| users.contains(&probe)).map(|(name, _)| *name).collect();
        for program in programs {
            self.drop_user(ebpf, program, probe);
        }
        let status = self.statuses.entry(probe).or_insert_with(|| ProbeStatus { probe: probe.name(), ..Default::default() });
        status.kind = None;
        status.hooks.clear();
        status.needed = false;
    }

    fn drop_user(&mut self, ebpf: &mut Ebpf, program: &'static str, probe: Probe) {
        let Some((_, users)) = self.attached.get_mut(program) else { return };
        users.remove(&probe);
        if !users.is_empty() {
            return;
        }
        let Some((handle, _)) = self.attached.remove(program) else { return };
        match handle {
            Handle::Pinned(pin) => {
                if let Ok(link) = PinnedLink::from_pin(&pin) {
                    drop(link.unpin());
                }
            }
            // Unloading drops the program's links (fentry, fexit, raw tracepoint).
            Handle::Owned => {
                if let Some(loaded) = ebpf.program_mut(program) {
                    if let Err(error) = unload(loaded) {
                        tracing::warn!(program, %error, "unloading a guard program failed; it stays attached");
                        return;
                    }
                }
                self.loaded.remove(program);
            }
            Handle::Perf(event) => drop(event),
        }
    }

    /// LSM links an earlier agent pinned for programs this one does not attach (a detection
    /// turned off meanwhile): unpinned, so nothing blocks that no detection asks for.
    fn retire_unused_lsm_pins(&self) {
        let Ok(entries) = std::fs::read_dir(&self.links_dir) else { return };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some((program, _)) = file.split_once('@') else { continue };
            if !program.starts_with("moat_lsm_") || self.attached.contains_key(program) {
                continue;
            }
            if let Ok(link) = PinnedLink::from_pin(entry.path()) {
                drop(link.unpin());
            }
        }
    }

    fn unavailable(&self, kind: Kind) -> Option<String> {
        match kind {
            Kind::Lsm if !self.kernel.bpf_lsm.starts_with("active") && !self.kernel.bpf_lsm.starts_with("unknown") => {
                Some(self.kernel.bpf_lsm.clone())
            }
            Kind::Fentry if self.kernel.trampolines.starts_with("unavailable") => Some(self.kernel.trampolines.clone()),
            Kind::Tracepoint if self.kernel.syscall_tracepoints.starts_with("unavailable") => Some(self.kernel.syscall_tracepoints.clone()),
            _ => None,
        }
    }

    fn note_available(&mut self, kind: Kind) {
        match kind {
            Kind::Fentry => self.kernel.trampolines = "available".into(),
            Kind::Tracepoint => self.kernel.syscall_tracepoints = "available".into(),
            Kind::Lsm => self.kernel.bpf_lsm = "active (programs attached)".into(),
            Kind::RawTracepoint => {}
        }
    }

    /// A failure that says the whole kind is missing (permission to create trampolines,
    /// no tracefs) marks it unavailable, so later probes do not try it again.
    fn note_failure(&mut self, kind: Kind, message: &str) {
        let kind_wide = message.contains("Operation not permitted")
            || message.contains("not supported")
            || message.contains("tracefs")
            || message.contains("perf_event_open:");
        if !kind_wide {
            return;
        }
        let slot = match kind {
            Kind::Fentry if self.kernel.trampolines != "available" => &mut self.kernel.trampolines,
            Kind::Tracepoint if self.kernel.syscall_tracepoints != "available" => &mut self.kernel.syscall_tracepoints,
            Kind::Lsm if !self.kernel.bpf_lsm.starts_with("active (") => &mut self.kernel.bpf_lsm,
            _ => return,
        };
        *slot = format!("unavailable: {}", first_line(message));
    }
}

/// Why a tracepoint has no id.
enum TracepointMissing {
    /// The kernel has no such system call (or no syscall tracepoints at all).
    NoSuchEvent,
    NoTracefs(String),
}

impl std::fmt::Display for TracepointMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TracepointMissing::NoSuchEvent => f.write_str("no such tracepoint"),
            TracepointMissing::NoTracefs(message) => f.write_str(message),
        }
    }
}

/// Every BPF LSM hook a probe may use.
fn lsm_hooks() -> impl Iterator<Item = &'static str> {
    Probe::ALL.into_iter().flat_map(|p| ways(p).iter()).flat_map(|w| w.programs().iter()).filter_map(|(_, target)| match target {
        Target::Lsm(hook, _) => Some(*hook),
        _ => None,
    })
}

/// Every syscall tracepoint a probe may use (their ids are read in one go).
const SYSCALL_EVENTS: &[&str] = &[
    "sys_exit_open",
    "sys_exit_openat",
    "sys_exit_openat2",
    "sys_exit_creat",
    "sys_enter_mount",
    "sys_enter_fsopen",
    "sys_enter_mknod",
    "sys_enter_mknodat",
    "sys_enter_unshare",
    "sys_enter_init_module",
    "sys_enter_finit_module",
    "sys_enter_bpf",
    "sys_enter_perf_event_open",
    "sys_enter_ptrace",
    "sys_enter_process_vm_writev",
    "sys_enter_setns",
    "sys_exit_setns",
    "sys_enter_connect",
    "sys_exit_connect",
];

/// `__x64_sys_setns` on x86_64, `__arm64_sys_setns` on arm64.
fn syscall_function(call: &str) -> String {
    let arch = if cfg!(target_arch = "aarch64") { "arm64" } else { "x64" };
    format!("__{arch}_sys_{call}")
}

fn hook_name(kind: Kind, target: Target) -> String {
    match (kind, target) {
        (_, Target::Lsm(hook, _)) => format!("lsm/{hook}"),
        (_, Target::Function(function)) => format!("fentry/{function}"),
        (_, Target::SyscallEntry(call)) => format!("fentry/{}", syscall_function(call)),
        (Kind::RawTracepoint, Target::Syscall(name)) => format!("raw_tracepoint/{name}"),
        (_, Target::Syscall(name)) => format!("tracepoint/syscalls/{name}"),
    }
}

fn unload(program: &mut aya::programs::Program) -> Result<(), aya::programs::ProgramError> {
    use aya::programs::Program as P;
    match program {
        P::FEntry(p) => p.unload(),
        P::FExit(p) => p.unload(),
        P::RawTracePoint(p) => p.unload(),
        P::TracePoint(p) => p.unload(),
        P::Lsm(p) => p.unload(),
        _ => Ok(()),
    }
}

fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or(message)
}

/// Whether BPF LSM programs will run: `bpf` must be in the active LSM list. A BPF LSM
/// program attaches even where it is not, and then never runs. The list is in securityfs;
/// where that is not mounted, it is mounted privately just to read the list.
fn bpf_lsm_state(run_dir: &Path) -> (Option<String>, String) {
    let list = std::fs::read_to_string("/sys/kernel/security/lsm").ok().or_else(|| read_lsm_list_privately(&run_dir.join("securityfs")));
    match list.map(|l| l.trim().to_string()) {
        Some(list) if list.split(',').any(|m| m == "bpf") => (Some(list), "active".into()),
        Some(list) => (Some(list.clone()), format!("inactive: bpf is not in the active LSM list ({list}); boot with lsm=...,bpf")),
        None => (None, "unknown: the active LSM list could not be read (no securityfs); BPF LSM programs are tried".into()),
    }
}

fn read_lsm_list_privately(dir: &Path) -> Option<String> {
    std::fs::create_dir_all(dir).ok()?;
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let mounted = unsafe { libc::mount(c"securityfs".as_ptr(), target.as_ptr(), c"securityfs".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, std::ptr::null()) } == 0;
    let list = if mounted { std::fs::read_to_string(dir.join("lsm")).ok() } else { None };
    if mounted {
        // SAFETY: the directory just mounted.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_dir(dir);
    list
}
