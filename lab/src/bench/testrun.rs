//! BPF_PROG_TEST_RUN through the raw bpf(2) syscall, and the packets fed to it.
//!
//! For tc (sched_cls) the program sees the frame from its Ethernet header, as on a device.
//!
//! For cgroup_skb the kernel (`bpf_prog_test_run_skb`) builds an skb from `data_in`, runs
//! `eth_type_trans` on it and leaves the data pointer at the network header, so `data_in`
//! holds an Ethernet header and the program sees the packet from its IP header on, as on a
//! real cgroup_skb hook. No `ctx_in` is needed: skb->protocol comes from the ethertype. The
//! skb gets a dummy socket allocated by the test-run code, charged to the calling task's
//! cgroup, so `bpf_skb_cgroup_id` returns this process's cgroup id (see `datapath.rs`).

use std::net::Ipv4Addr;
use std::os::fd::RawFd;

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `union bpf_attr`'s `test` member (include/uapi/linux/bpf.h), up to `batch_size`.
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// What one test run reports: the program's return value and the kernel's mean run time.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub retval: u32,
    /// Nanoseconds per run, averaged by the kernel over `repeat` runs.
    pub duration_ns: u32,
}

/// Runs the program `repeat` times on `packet` (on the loopback device, the kernel's default).
pub fn run(prog_fd: RawFd, packet: &[u8], repeat: u32) -> std::io::Result<Outcome> {
    run_on(prog_fd, packet, repeat, None)
}

/// `struct __sk_buff` up to `ifindex` (offset 40) and `tc_index`: the kernel takes a shorter
/// `ctx_in` and zero-fills the rest.
const SKB_CTX_IFINDEX: usize = 40;
const SKB_CTX_LEN: usize = 48;

/// Like [`run`], the packet on device `ifindex` of this network namespace where given (it
/// must exist: the kernel looks it up; nothing is sent on it).
pub fn run_on(prog_fd: RawFd, packet: &[u8], repeat: u32, ifindex: Option<u32>) -> std::io::Result<Outcome> {
    let mut ctx = [0u8; SKB_CTX_LEN];
    let mut attr = TestAttr {
        prog_fd: prog_fd as u32,
        data_size_in: packet.len() as u32,
        data_in: packet.as_ptr() as u64,
        repeat,
        ..TestAttr::default()
    };
    if let Some(ifindex) = ifindex {
        ctx[SKB_CTX_IFINDEX..SKB_CTX_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
        attr.ctx_size_in = SKB_CTX_LEN as u32;
        attr.ctx_in = ctx.as_ptr() as u64;
    }
    // SAFETY: `attr` is a valid, fully initialised `bpf_attr` prefix of the size passed; the
    // kernel reads `data_size_in` bytes from `packet` and `ctx_size_in` from `ctx`, both of
    // which outlive the call, and writes nothing through the null output pointers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Outcome { retval: attr.retval, duration_ns: attr.duration })
}

/// A cgroup_skb program's verdicts, as `Outcome::retval`.
pub const PASS: u32 = 1;
pub const DROP: u32 = 0;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// An Ethernet + IPv4 + TCP frame (no payload) from `src:sport` to `dst:dport`.
pub fn tcp_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut frame = Vec::with_capacity(54);
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // destination MAC
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_start = frame.len();
    frame.extend_from_slice(&[0x45, 0]); // version 4, IHL 5; TOS
    frame.extend_from_slice(&40u16.to_be_bytes()); // total length: IP + TCP headers
    frame.extend_from_slice(&[0, 1, 0x40, 0]); // id; DF, offset 0
    frame.extend_from_slice(&[64, 6, 0, 0]); // TTL, TCP, checksum (filled below)
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    let checksum = ipv4_checksum(&frame[ip_start..]);
    frame[ip_start + 10..ip_start + 12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&sport.to_be_bytes());
    frame.extend_from_slice(&dport.to_be_bytes());
    frame.extend_from_slice(&1u32.to_be_bytes()); // sequence
    frame.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment
    frame.extend_from_slice(&[0x50, flags]); // data offset 5; flags
    frame.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum (unchecked), urgent
    frame
}

/// An Ethernet + IPv4 + ICMP echo request frame from `src` to `dst` with identifier `id`.
pub fn echo_request_frame(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
    let mut frame = tcp_frame(src, 0, dst, 0, 0);
    frame.truncate(34);
    frame[16..18].copy_from_slice(&28u16.to_be_bytes()); // total length: IP + ICMP headers
    frame[23] = moat_common::IPPROTO_ICMP;
    frame[24..26].copy_from_slice(&[0, 0]);
    let checksum = ipv4_checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&[8, 0, 0, 0]); // echo request, code 0, checksum (unchecked)
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&1u16.to_be_bytes()); // sequence
    frame
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout() {
        let frame = tcp_frame(Ipv4Addr::new(10, 0, 0, 1), 1234, Ipv4Addr::new(10, 0, 0, 2), 80, TCP_SYN);
        assert_eq!(frame.len(), 14 + 20 + 20);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        assert_eq!(&frame[26..30], &[10, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([frame[34], frame[35]]), 1234);
        assert_eq!(frame[47], TCP_SYN);
        assert_eq!(ipv4_checksum(&frame[14..34]), 0, "a valid header sums to zero");
        let echo = echo_request_frame(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 7);
        assert_eq!(echo.len(), 14 + 20 + 8);
        assert_eq!((echo[23], echo[34]), (1, 8), "ICMP, echo request");
        assert_eq!(u16::from_be_bytes([echo[38], echo[39]]), 7);
        assert_eq!(ipv4_checksum(&echo[14..34]), 0);
    }
}
