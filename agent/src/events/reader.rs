//! Drains the `EVENTS` ring buffer as records arrive and hands them to the pipeline. Kept
//! minimal so the ring buffer empties as fast as possible; naming happens downstream.

use aya::maps::{MapData, RingBuf};
use moat_common::event::{FlowEvent, EVENT_KIND_ALLOW, EVENT_KIND_DENY};
use moat_common::maps::names;
use tokio::io::unix::AsyncFd;

use super::pipeline::{Input, Submitter};
use crate::kernel::KernelError;

/// Submits every deny event until the ring buffer fails.
pub async fn run(ring: RingBuf<MapData>, submitter: Submitter) -> Result<(), KernelError> {
    // SAFETY: the ring buffer owns its map fd for its whole life and never swaps it.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| KernelError::map(names::EVENTS, e.to_string()))?;
    loop {
        let mut guard = fd.readable_mut().await.map_err(|e| KernelError::map(names::EVENTS, e))?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match decode(&item) {
                Some(event) if matches!(event.kind, EVENT_KIND_DENY | EVENT_KIND_ALLOW) => {
                    submitter.submit(Input::Deny(event))
                }
                _ => tracing::warn!(len = item.len(), "undecodable event from the kernel"),
            }
        }
        guard.clear_ready();
    }
}

fn decode(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() < std::mem::size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: length checked; FlowEvent is plain integers, any bit pattern is valid, and
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
}
