//! Types shared by the eBPF programs and the agent.
//!
//! Everything that crosses the user/kernel boundary is `#[repr(C)]`, has no implicit padding
//! (explicit `_pad` fields keep map keys hashable byte-for-byte) and is checked for size below.
//! The verdict logic lives here too, so the kernel and `moat explain` run the same code.
#![no_std]
// Inline asm, for masks the verifier must see (see dns::in_name).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

pub mod budget;
pub mod dns;
pub mod event;
pub mod flow_table;
pub mod guard;
pub mod layout;
pub mod maps;
pub mod verdict;

/// Bumped whenever a pinned map's key or value layout changes. Pins live under a directory
/// named after it, so an agent never reuses maps of a layout it does not understand.
pub const LAYOUT_VERSION: u32 = 11;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;
