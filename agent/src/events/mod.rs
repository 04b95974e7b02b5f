//! Events from the kernel and the guard, in one pipeline: the ring buffer is drained
//! (`reader`), records are decoded and named from the model (`deny`, `record`), identical
//! events within a window are folded into one with a count (`aggregate`), and the result is
//! fanned out to the sinks and to live observers (`pipeline`). Every event dropped on the way
//! — in the kernel (ring buffer full) or here (a full buffer, a slow observer) — is counted.

pub mod aggregate;
pub mod deny;
pub mod filter;
pub mod pipeline;
pub mod reader;
pub mod record;
