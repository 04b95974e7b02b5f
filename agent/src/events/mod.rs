//! Events from the kernel and the guard, in one pipeline. In the kernel each tenant's flow
//! events and each pod's detections have a budget (`config::budget`); the ring buffer is
//! drained (`reader`) into a buffer fair per tenant (`queue`); records are decoded and named
//! from the model (`deny`, `detection`, `record`; `foreign` reports pods on a node reserved
//! for another tenant), identical events within a window and floods of distinct ones are
//! folded into counted reports (`aggregate`, `flood`), and the result is fanned out to the
//! sinks and to live observers (`pipeline`). Every event dropped on the way — over budget or
//! with the ring full in the kernel, a full buffer, a slow observer or sink here — is counted
//! for whom it was dropped (`losses`) and reported.

pub mod aggregate;
pub mod deny;
pub mod detection;
pub mod filter;
pub mod flood;
pub mod foreign;
pub mod losses;
pub mod pipeline;
pub mod queue;
pub mod reader;
pub mod record;
