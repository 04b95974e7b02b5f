//! The real eBPF object in a private pin directory, driven through BPF_PROG_TEST_RUN: what
//! `moat-lab __bench-datapath` measures with, and what the datapath's integration tests check
//! verdicts with. Nothing is attached to any cgroup or device.
//!
//! A test-run skb carries a dummy socket that the kernel charges to the calling task's
//! cgroup, so `bpf_skb_cgroup_id` returns this process's cgroup id (`own_cgroup_id`; on
//! kernels whose test run gives the skb no full socket it would be 0): map both to the pod
//! the packets are to come from.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData, ProgramArray};
use aya::programs::{CgroupSkb, SchedClassifier};
use aya::Ebpf;
use moat_common::maps::{names, Settings};

use super::testrun::{self, Outcome};
use super::BenchError;
use moat_agent::kernel::bpffs::{self, PinDirs};
use moat_agent::kernel::maps::KernelMaps;
use moat_agent::kernel::{loader, tc};
use moat_agent::node::mounts;

/// The loaded object and its maps, pinned under `<bpffs>/moat/<instance>`, which is
/// removed when this is dropped, whatever happened.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps: KernelMaps,
    pub dirs: PinDirs,
    /// Last, so the pins go after the handles on them.
    _pins: PinGuard,
}

impl Loaded {
    pub fn new(bpffs: &Path, instance: &str) -> Result<Self, BenchError> {
        let dirs = bpffs::pin_dirs(bpffs, instance);
        bpffs::prepare(bpffs, &dirs)?;
        // From here on the pins are ours to remove, even if loading fails.
        let pins = PinGuard(dirs.instance.clone());
        let mut ebpf = loader::load(&dirs, &moat_common::layout::KernelLayout::default())?;
        // The packet programs' later stages (the decider, the DNS check), by tail call.
        loader::arm_stages(&mut ebpf)?;
        let maps = KernelMaps::take(&mut ebpf)?;
        Ok(Self { ebpf, maps, dirs, _pins: pins })
    }

    /// Loads a cgroup_skb program (`moat_egress`, `moat_ingress`, `moat_noop`).
    pub fn skb_program(&mut self, name: &'static str) -> Result<RawFd, BenchError> {
        let fail = |message: String| BenchError::Program { program: name, message };
        let program = self.ebpf.program_mut(name).ok_or_else(|| fail("missing from the object".into()))?;
        let program: &mut CgroupSkb = program.try_into().map_err(|e| fail(format!("{e}")))?;
        program.load().map_err(|e| fail(format!("load: {e}")))?;
        let fd = program.fd().map_err(|e| fail(format!("{e}")))?;
        Ok(fd.as_fd().as_raw_fd())
    }

    /// Loads the tc program (`moat_icmp_ingress`).
    pub fn tc_program(&mut self) -> Result<RawFd, BenchError> {
        let fail = |message: String| BenchError::Program { program: tc::PROGRAM, message };
        tc::load(&mut self.ebpf)?;
        let program: &mut SchedClassifier = tc::program(&mut self.ebpf)?;
        let fd = program.fd().map_err(|e| fail(format!("{e}")))?;
        Ok(fd.as_fd().as_raw_fd())
    }

    /// Empties `slot` of a packet program's stage array (`EGRESS_STAGES`, `INGRESS_STAGES`), as
    /// while the pins are being removed: what the programs do then is a tested fail-safe.
    pub fn clear_stage(&mut self, array: &'static str, slot: u32) -> Result<(), BenchError> {
        let fail = |message: String| BenchError::Program { program: array, message };
        let map = self.ebpf.map_mut(array).ok_or_else(|| fail("missing from the object".into()))?;
        let mut slots = ProgramArray::try_from(map).map_err(|e| fail(format!("{e}")))?;
        slots.clear_index(&slot).map_err(|e| fail(format!("clearing slot {slot}: {e}")))
    }

    /// Writes `SETTINGS` with the next generation, as an agent applying a change would.
    pub fn generation_bump(&self) -> Result<GenerationBump, BenchError> {
        GenerationBump::open(&self.dirs.maps)
    }
}

/// Removes a private pin directory when dropped.
struct PinGuard(PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        if self.0.exists() {
            if let Err(error) = std::fs::remove_dir_all(&self.0) {
                eprintln!("warning: removing {}: {error}", self.0.display());
            }
        }
        // The shared `moat` directory, once nothing else is pinned there (as `lab down` does);
        // remove_dir fails harmlessly while an agent or a lab still uses it.
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Runs `program` `repeat` times on `packet` (an Ethernet frame).
pub fn test_run(program: &'static str, fd: RawFd, packet: &[u8], repeat: u32) -> Result<Outcome, BenchError> {
    testrun::run(fd, packet, repeat).map_err(|source| BenchError::TestRun { program, source })
}

/// Writes `SETTINGS` with the next generation.
pub struct GenerationBump(Array<MapData, Settings>);

impl GenerationBump {
    fn open(maps: &Path) -> Result<Self, BenchError> {
        let fail = |message: String| BenchError::Setup(format!("{}: {message}", names::SETTINGS));
        let data = MapData::from_pin(maps.join(names::SETTINGS)).map_err(|e| fail(e.to_string()))?;
        Array::try_from(Map::Array(data)).map(Self).map_err(|e| fail(e.to_string()))
    }

    pub fn bump(&mut self) -> Result<(), BenchError> {
        let fail = |e: aya::maps::MapError| BenchError::Setup(format!("{}: {e}", names::SETTINGS));
        let mut settings = self.0.get(&0, 0).map_err(fail)?;
        settings.generation += 1;
        self.0.set(0, settings, 0).map_err(fail)
    }
}

/// This process's cgroup v2 id: the inode number of its cgroup directory.
pub fn own_cgroup_id() -> Result<u64, BenchError> {
    let text = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| BenchError::Setup(format!("/proc/self/cgroup: {e}")))?;
    let relative = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or_else(|| BenchError::Setup("no cgroup v2 entry in /proc/self/cgroup".into()))?;
    let mount = mounts::cgroup2().map_err(|e| BenchError::Setup(e.to_string()))?;
    let path = mount.join(Path::new(relative.trim_start_matches('/')));
    let meta = std::fs::metadata(&path).map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))?;
    Ok(meta.ino())
}
