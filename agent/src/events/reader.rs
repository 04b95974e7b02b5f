//! Drains the `EVENTS` ring buffer as records arrive.

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use moat_common::event::{DenyEvent, EVENT_KIND_DENY};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::deny::DenyRecord;
use crate::compiler::Index;
use crate::kernel::KernelError;

/// Logs every deny event as a JSON line until the ring buffer fails.
pub async fn run(ring: RingBuf<MapData>, index: watch::Receiver<Arc<Index>>) -> Result<(), KernelError> {
    // SAFETY: the ring buffer owns its map fd for its whole life and never swaps it.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| KernelError::map("EVENTS", e.to_string()))?;
    loop {
        let mut guard = fd.readable_mut().await.map_err(|e| KernelError::map("EVENTS", e))?;
        let ring = guard.get_inner_mut();
        let current = index.borrow().clone();
        while let Some(item) = ring.next() {
            match decode(&item) {
                Some(event) if event.kind == EVENT_KIND_DENY => log(&DenyRecord::from_event(&event, &current)),
                _ => tracing::warn!(len = item.len(), "undecodable event from the kernel"),
            }
        }
        guard.clear_ready();
    }
}

fn decode(bytes: &[u8]) -> Option<DenyEvent> {
    if bytes.len() < std::mem::size_of::<DenyEvent>() {
        return None;
    }
    // SAFETY: length checked; DenyEvent is plain integers, any bit pattern is valid, and
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DenyEvent>()) })
}

fn log(record: &DenyRecord) {
    let src = &record.src;
    let dst = &record.dst;
    tracing::info!(
        target: "moat::flow",
        verdict = record.verdict,
        direction = record.direction,
        hook = record.hook,
        protocol = %record.protocol,
        rule = record.rule,
        policies = (!record.policies.is_empty()).then(|| record.policies.join(",")),
        src_tenant = src.tenant.as_deref(),
        src_namespace = src.namespace.as_deref(),
        src_pod = src.pod.as_deref(),
        src_ip = src.ip.map(tracing::field::display),
        src_port = src.port,
        dst_tenant = dst.tenant.as_deref(),
        dst_namespace = dst.namespace.as_deref(),
        dst_pod = dst.pod.as_deref(),
        dst_ip = dst.ip.map(tracing::field::display),
        dst_port = dst.port,
        "deny"
    );
}
