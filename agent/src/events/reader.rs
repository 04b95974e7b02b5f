//! Drains the `EVENTS` ring buffer as records arrive and hands them to the pipeline. Kept
//! minimal so the ring buffer empties as fast as possible; naming happens downstream.

use aya::maps::{MapData, RingBuf};
use moat_common::event::{FlowEvent, GuardEvent, EVENT_KIND_ALLOW, EVENT_KIND_DENY, EVENT_KIND_DETECTION};
use moat_common::maps::names;
use tokio::io::unix::AsyncFd;

use super::pipeline::{Input, Submitter};
use crate::kernel::KernelError;

/// Records drained before the reader yields to the runtime.
const YIELD_EVERY: u32 = 1024;

/// Submits every flow event and detection until the ring buffer fails.
pub async fn run(ring: RingBuf<MapData>, submitter: Submitter) -> Result<(), KernelError> {
    // SAFETY: the ring buffer owns its map fd for its whole life and never swaps it.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| KernelError::map(names::EVENTS, e.to_string()))?;
    loop {
        let mut guard = fd.readable_mut().await.map_err(|e| KernelError::map(names::EVENTS, e))?;
        let ring = guard.get_inner_mut();
        let mut drained = 0u32;
        loop {
            // A long drain under a storm lets the other tasks (admin socket, metrics) run.
            drained = drained.wrapping_add(1);
            if drained.is_multiple_of(YIELD_EVERY) {
                tokio::task::yield_now().await;
            }
            let Some(item) = ring.next() else { break };
            match decode_record(&item) {
                Some(input) => submitter.submit(input),
                None => {
                    submitter.undecodable();
                    tracing::debug!(len = item.len(), "undecodable event from the kernel");
                }
            }
        }
        guard.clear_ready();
    }
}

/// One ring-buffer record: every record starts with its kind byte. None for a record of
/// no known kind or too short for its kind.
pub fn decode_record(bytes: &[u8]) -> Option<Input> {
    match bytes.first() {
        Some(&(EVENT_KIND_DENY | EVENT_KIND_ALLOW)) => decode::<FlowEvent>(bytes).map(Input::Deny),
        Some(&EVENT_KIND_DETECTION) => decode::<GuardEvent>(bytes).map(Input::Guard),
        _ => None,
    }
}

fn decode<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; a Pod record is plain integers, any bit pattern is valid, and
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}
