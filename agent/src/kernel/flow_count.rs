//! Counts the live slots of the pinned flow table (`FLOWS`, an mmapable array of
//! `FlowSlot`s) by reading its pages: 262,144 slots in one pass over 16 MiB, where a
//! lookup per slot would be as many system calls.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::ptr::NonNull;

use aya::maps::MapData;
use moat_common::flow_table::FlowSlot;
use moat_common::maps::names;

use super::KernelError;

/// A read-only mapping of `FLOWS`, unmapped on drop.
pub struct FlowTableView {
    base: NonNull<FlowSlot>,
    slots: usize,
    bytes: usize,
    // Holds the map's fd open while mapped.
    _map: MapData,
}

// SAFETY: the mapping is read-only from this side and only read through `&self`.
unsafe impl Send for FlowTableView {}
// SAFETY: as above.
unsafe impl Sync for FlowTableView {}

impl FlowTableView {
    pub fn open(pin: &Path) -> Result<Self, KernelError> {
        let name = names::FLOWS;
        let map = MapData::from_pin(pin).map_err(|e| KernelError::map(name, format!("opening pin {}: {e}", pin.display())))?;
        let info = map.info().map_err(|e| KernelError::map(name, e))?;
        if info.value_size() as usize != size_of::<FlowSlot>() {
            return Err(KernelError::map(name, format!("value size {} where a slot is {}", info.value_size(), size_of::<FlowSlot>())));
        }
        let slots = info.max_entries() as usize;
        let bytes = slots * size_of::<FlowSlot>();
        // SAFETY: a fresh shared read-only mapping of the map's fd; the kernel refuses it
        // unless the array was created mmapable, and bounds it by the array's size.
        let base = unsafe {
            libc::mmap(std::ptr::null_mut(), bytes, libc::PROT_READ, libc::MAP_SHARED, map.fd().as_fd().as_raw_fd(), 0)
        };
        if base == libc::MAP_FAILED {
            return Err(KernelError::map(name, format!("mmap of {bytes} bytes: {}", std::io::Error::last_os_error())));
        }
        let base = NonNull::new(base.cast::<FlowSlot>()).ok_or_else(|| KernelError::map(name, "mmap returned null"))?;
        Ok(Self { base, slots, bytes, _map: map })
    }

    /// Slots that hold a flow whole (`FlowSlot::is_live`). Programs write slots meanwhile:
    /// each is read once, by volatile copy, and a slot torn by a write counts as empty, as it
    /// does for the programs.
    pub fn live(&self) -> u64 {
        (0..self.slots)
            // SAFETY: index within the mapping; the copy is of plain data.
            .filter(|&i| unsafe { std::ptr::read_volatile(self.base.as_ptr().add(i)) }.is_live())
            .count() as u64
    }

    pub fn capacity(&self) -> u64 {
        self.slots as u64
    }
}

impl Drop for FlowTableView {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
