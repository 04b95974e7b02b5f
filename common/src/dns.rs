//! Tenant DNS isolation: which questions to the cluster DNS a pod may ask. Compiled into the
//! eBPF programs and into the agent (`moat explain --dns`), like `verdict`.
//!
//! A question is about a namespace when its name is `[<svc>.]<ns>.svc.<zone>` or
//! `[<pod>.]<ns>.pod.<zone>` (any prefix before: ports of SRV names, search-path expansions)
//! for a configured zone; CoreDNS's kubernetes plugin reads names the same way, from the
//! zone back. Everything below is written for the verifier: fixed buffers, every index
//! masked to its buffer, loops with constant bounds.

use crate::maps::TenantPairKey;

/// Name bytes loaded from a query: a name is at most 255 bytes on the wire.
pub const NAME_BUF: usize = 256;
/// A name of 255 bytes has at most 127 labels.
pub const MAX_LABELS: usize = 128;
/// A namespace name is a DNS label (at most 63 bytes); the key is NUL-padded.
pub const NAMESPACE_KEY_LEN: usize = 64;
/// Zones the kernel compares (`DNS_ZONES` slots).
pub const ZONE_SLOTS: u32 = 4;
/// Wire length of a zone, final zero byte included.
pub const ZONE_MAX: usize = 128;
/// The DNS port the datapath inspects (UDP, and TCP: `DNS_SOCKETS`).
pub const DNS_PORT: u16 = 53;

/// `Settings::dns` values.
pub const DNS_OFF: u32 = 0;
pub const DNS_DETECT: u32 = 1;
pub const DNS_BLOCK: u32 = 2;

/// `DnsNamespace::flags`: every tenant may resolve names in this namespace.
pub const DNS_NAMESPACE_SHARED: u32 = 1;

pub mod names {
    /// Namespace name (lower case, NUL-padded) → `DnsNamespace`.
    pub const DNS_NAMESPACES: &str = "DNS_NAMESPACES";
    /// `ZONE_SLOTS` zones, longest first (`DnsZone`, `len` 0: unused).
    pub const DNS_ZONES: &str = "DNS_ZONES";
    /// Per-CPU scratch space for one question (`DnsScratch`).
    pub const DNS_SCRATCH: &str = "DNS_SCRATCH";
    /// Service ClusterIP (16 bytes, IPv4-mapped) → its namespace's `NamespaceKey`.
    pub const DNS_SERVICES: &str = "DNS_SERVICES";
    /// Pods' TCP connections to port 53, where the sk_msg program reads their questions.
    pub const DNS_SOCKETS: &str = "DNS_SOCKETS";
}

/// Capacity of `DNS_NAMESPACES`.
pub const DNS_NAMESPACES_CAPACITY: u32 = 65_536;
/// Capacity of `DNS_SERVICES` (ClusterIPs, both families).
pub const DNS_SERVICES_CAPACITY: u32 = 65_536;
/// Capacity of `DNS_SOCKETS`: open TCP connections to DNS servers on the node (a
/// connection that finds it full is not inspected).
pub const DNS_SOCKETS_CAPACITY: u32 = 16_384;

/// `DNS_SOCKETS`'s key: a connection as both the sock_ops and the sk_msg program see it (the
/// sk_msg program has no socket cookie, and redirects a refused question's answer to the
/// connection itself by this key). Addresses IPv4-mapped for IPv4; ports as the context
/// gives them (local in host order, remote in network order in the upper half).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketKey {
    pub netns: u64,
    pub local: [u32; 4],
    pub remote: [u32; 4],
    pub local_port: u32,
    pub remote_port: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespaceKey {
    pub name: [u8; NAMESPACE_KEY_LEN],
}

impl NamespaceKey {
    /// The key of a namespace name; `None` unless it is a lower-case DNS label (1-63 bytes
    /// of `a-z0-9-`, as Kubernetes requires): no question can name anything else, and two
    /// names never share a key.
    pub fn of(name: &str) -> Option<Self> {
        let bytes = name.as_bytes();
        let label = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
        if bytes.is_empty() || bytes.len() >= NAMESPACE_KEY_LEN || !bytes.iter().all(label) {
            return None;
        }
        let mut key = [0u8; NAMESPACE_KEY_LEN];
        key[..bytes.len()].copy_from_slice(bytes);
        Some(Self { name: key })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsNamespace {
    pub tenant: u64,
    /// `DNS_NAMESPACE_*` bits.
    pub flags: u32,
    pub _pad: u32,
}

/// A cluster zone in wire form (`\x07cluster\x05local\x00`), lower case.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DnsZone {
    /// Wire length, final zero byte included; 0: an unused slot.
    pub len: u32,
    pub labels: u32,
    pub name: [u8; ZONE_MAX],
}

impl DnsZone {
    pub const EMPTY: Self = Self { len: 0, labels: 0, name: [0; ZONE_MAX] };
}

/// Where a question is taken apart: the name as loaded, and for each offset that starts a
/// label (or is the final zero byte) `HAS_BEFORE | <start of the label before>`, `FIRST`
/// for the first label, 0 where no label starts. Walking back from the zone this way keeps
/// the state the verifier follows small: no label count, no per-label slots.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct DnsScratch {
    pub name: [u8; NAME_BUF],
    pub before: [u16; NAME_BUF],
    pub key: NamespaceKey,
    /// Where the name ends, kept here between the two halves of `classify`.
    pub end: u64,
}

/// `DnsScratch::before`: a label starts here, and one before it (its start in the low byte:
/// masked out of a u16 the compiler cannot narrow, so the verifier sees the bound).
const HAS_BEFORE: u16 = 0x100;
/// `DnsScratch::before` of the first label.
const FIRST: u16 = 0x200;

impl DnsScratch {
    pub const EMPTY: Self = Self {
        name: [0; NAME_BUF],
        before: [0; NAME_BUF],
        key: NamespaceKey { name: [0; NAMESPACE_KEY_LEN] },
        end: 0,
    };
}

/// Who an address belongs to, for reverse names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressOwner {
    pub tenant: u64,
    /// A shared service's pod (cluster DNS included): every tenant may name it.
    pub shared: bool,
}

/// The maps a question is decided with.
pub trait DnsMaps {
    fn zone(&self, slot: u32) -> Option<&DnsZone>;
    /// The pod holding `addr` (16 bytes, IPv4-mapped), if one tenant's pod does.
    fn address(&self, addr: &[u8; 16]) -> Option<AddressOwner>;
    /// The namespace entry of the Service whose ClusterIP is `addr`, if a Service has it.
    fn service(&self, addr: &[u8; 16]) -> Option<DnsNamespace>;
    fn namespace(&self, key: &NamespaceKey) -> Option<DnsNamespace>;
    fn tenant_pair(&self, key: &TenantPairKey) -> bool;
}

/// What a question asks about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Question {
    /// Not a name of a cluster zone's namespaces (external names, `<svc>.<zone>`, ...).
    Outside,
    /// A namespace the maps do not hold: the cluster DNS has nothing to answer.
    UnknownNamespace,
    /// `*` or `any` as the namespace or service label: enumerates namespaces or services.
    Wildcard,
    /// A name in this namespace.
    Namespace(DnsNamespace),
    /// A reverse (PTR) name of a pod address: its owner.
    Address(AddressOwner),
    /// A reverse (PTR) name of a Service ClusterIP: its namespace's entry.
    Service(DnsNamespace),
    /// A compression pointer in the question: no resolver sends one, and CoreDNS follows
    /// it, so the name could be anything the packet spells elsewhere.
    Malformed,
    /// No name a DNS server can read (running past the packet or past 255 bytes, a
    /// reserved label type, a packet too short for a question, not DNS at all): the server
    /// answers nothing about it either.
    Unreadable,
}

/// Lower-cases an ASCII letter; other bytes as they are. Arithmetic only: a branch per byte
/// in the loops below multiplies the paths the verifier walks.
#[inline(always)]
pub const fn lower(byte: u8) -> u8 {
    let b = byte as u32;
    let low7 = b & 0x7f;
    // Bit 7 of `low7 + 0x3f` is set from 'A' on, of `low7 + 0x25` from past 'Z' on.
    let upper = ((low7 + 0x3f) ^ (low7 + 0x25)) & !b & 0x80;
    (b | (upper >> 2)) as u8
}

/// All ones if `i < len`, else 0 (both below 2^32), without a branch (see `lower`): an
/// arithmetic shift in asm, which the compiler cannot turn back into a comparison.
#[inline(always)]
fn below(i: usize, len: usize) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        let mut out = i as u64;
        // SAFETY: register arithmetic only.
        unsafe { core::arch::asm!("{out} -= {len}", "{out} s>>= 63", out = inout(reg) out, len = in(reg) len as u64) };
        out
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        if i < len { u64::MAX } else { 0 }
    }
}

/// Reads the question name in `scratch.name[..len]` (`len` at most `NAME_BUF`; 0 for a
/// packet too short to hold a name).
#[inline(always)]
pub fn classify<M: DnsMaps>(scratch: &mut DnsScratch, len: usize, maps: &M) -> Question {
    clear_before(scratch);
    // Label starts, and the offset of the final zero byte.
    let mut pos = 0usize;
    let mut previous = FIRST;
    let mut end = NAME_BUF;
    for _ in 0..MAX_LABELS {
        if pos >= len || pos >= NAME_BUF - 1 {
            return Question::Unreadable;
        }
        let at = pos & (NAME_BUF - 1);
        scratch.before[at] = previous;
        let label = scratch.name[at] as usize;
        if label == 0 {
            end = at;
            break;
        }
        if label >= 0xc0 {
            return Question::Malformed;
        }
        if label > 63 {
            return Question::Unreadable;
        }
        previous = HAS_BEFORE | at as u16;
        pos = at + label + 1;
    }
    if end >= NAME_BUF {
        return Question::Unreadable;
    }
    // Through memory, which the verifier does not follow: the walk's many exits leave with
    // one and the same state, so what follows is verified once, not once per exit.
    scratch.end = end as u64;
    // SAFETY: a plain read of the field just written.
    let end = in_name(unsafe { core::ptr::read_volatile(&scratch.end) } as usize);
    if let Some(question) = reverse(scratch, end, maps) {
        return question;
    }
    for slot in 0..ZONE_SLOTS {
        let Some(zone) = maps.zone(slot) else { continue };
        let zone_len = zone.len as usize;
        if zone_len == 0 || zone_len > end + 1 {
            continue;
        }
        let zone_start = in_name(end + 1 - zone_len);
        if scratch.before[zone_start & (NAME_BUF - 1)] == 0 || !zone_matches(scratch, zone_start, zone) {
            continue;
        }
        let Some(kind) = label_before(scratch, zone_start) else { continue };
        if !is_kind_label(scratch, kind) {
            continue;
        }
        let Some(namespace) = label_before(scratch, kind) else { continue };
        if is_wildcard(scratch, namespace) {
            return Question::Wildcard;
        }
        if let Some(service) = label_before(scratch, namespace) {
            if is_wildcard(scratch, service) {
                return Question::Wildcard;
            }
        }
        namespace_key(scratch, namespace);
        return match maps.namespace(&scratch.key) {
            Some(found) => Question::Namespace(found),
            None => Question::UnknownNamespace,
        };
    }
    Question::Outside
}

/// `in-addr.arpa` and `ip6.arpa` in wire form.
const IN_ADDR_ARPA: DnsZone = wire_zone(b"\x07in-addr\x04arpa\x00", 2);
const IP6_ARPA: DnsZone = wire_zone(b"\x03ip6\x04arpa\x00", 2);

const fn wire_zone(wire: &[u8], labels: u32) -> DnsZone {
    let mut zone = DnsZone { len: wire.len() as u32, labels, name: [0; ZONE_MAX] };
    let mut i = 0;
    while i < wire.len() {
        zone.name[i] = wire[i];
        i += 1;
    }
    zone
}

/// A reverse name (`d.c.b.a.in-addr.arpa`, 32 nibbles `.ip6.arpa`) of an address a pod
/// holds; `None` for any other name (reverse names of no pod, partial ones, others).
#[inline(always)]
fn reverse<M: DnsMaps>(scratch: &mut DnsScratch, end: usize, maps: &M) -> Option<Question> {
    let mut addr = [0u8; 16];
    if end + 1 >= IN_ADDR_ARPA.len as usize {
        let zone_start = in_name(end + 1 - IN_ADDR_ARPA.len as usize);
        if scratch.before[zone_start & (NAME_BUF - 1)] != 0 && zone_matches(scratch, zone_start, &IN_ADDR_ARPA) {
            addr[10] = 0xff;
            addr[11] = 0xff;
            let mut start = zone_start;
            // The label before the zone is the address's first octet.
            for i in 0..4 {
                start = label_before(scratch, start)?;
                addr[12 + i] = decimal_octet(scratch, start)?;
            }
            if scratch.before[start & (NAME_BUF - 1)] != FIRST {
                return None;
            }
            return owner(maps, &addr);
        }
    }
    if end + 1 >= IP6_ARPA.len as usize {
        let zone_start = in_name(end + 1 - IP6_ARPA.len as usize);
        if scratch.before[zone_start & (NAME_BUF - 1)] != 0 && zone_matches(scratch, zone_start, &IP6_ARPA) {
            let mut start = zone_start;
            // From the zone back: the high nibble of byte 0 first.
            for i in 0..32 {
                start = label_before(scratch, start)?;
                let nibble = hex_nibble(scratch, start)?;
                addr[i / 2] |= if i % 2 == 0 { nibble << 4 } else { nibble };
            }
            if scratch.before[start & (NAME_BUF - 1)] != FIRST {
                return None;
            }
            return owner(maps, &addr);
        }
    }
    None
}

/// Whose address `addr` is: a pod's first (a pod holding a Service's address is the more
/// specific answer), else a Service's.
#[inline(always)]
fn owner<M: DnsMaps>(maps: &M, addr: &[u8; 16]) -> Option<Question> {
    if let Some(pod) = maps.address(addr) {
        return Some(Question::Address(pod));
    }
    maps.service(addr).map(Question::Service)
}

/// A label of 1-3 decimal digits with a value up to 255.
#[inline(always)]
fn decimal_octet(scratch: &DnsScratch, start: usize) -> Option<u8> {
    let len = scratch.name[start & (NAME_BUF - 1)] as usize;
    if len == 0 || len > 3 {
        return None;
    }
    let mut value = 0u32;
    for i in 0..3 {
        if i < len {
            let digit = (scratch.name[(start + 1 + i) & (NAME_BUF - 1)] as u32).wrapping_sub(b'0' as u32);
            if digit > 9 {
                return None;
            }
            value = value * 10 + digit;
        }
    }
    (value <= 255).then_some(value as u8)
}

/// A label of one hex digit, either case.
#[inline(always)]
fn hex_nibble(scratch: &DnsScratch, start: usize) -> Option<u8> {
    if scratch.name[start & (NAME_BUF - 1)] != 1 {
        return None;
    }
    let byte = lower(scratch.name[(start + 1) & (NAME_BUF - 1)]);
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

/// `offset & (NAME_BUF - 1)` as an instruction of its own: where the compiler proves the
/// mask redundant it drops it, and the verifier, which cannot follow that proof, then refuses
/// the access.
#[inline(always)]
fn in_name(offset: usize) -> usize {
    #[cfg(target_arch = "bpf")]
    {
        let mut out = offset as u64;
        // SAFETY: one AND on a register of our own.
        unsafe { core::arch::asm!("{out} &= 255", out = inout(reg) out) };
        out as usize
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        offset & (NAME_BUF - 1)
    }
}

const _: () = assert!(NAME_BUF == 256, "in_name masks with 255");

/// Zeroes `scratch.before`, word by word (volatile: a memset call is not a BPF helper).
#[inline(always)]
fn clear_before(scratch: &mut DnsScratch) {
    let words = scratch.before.as_mut_ptr() as *mut u64;
    for i in 0..NAME_BUF / 4 {
        // SAFETY: `before` is 2 * NAME_BUF bytes at offset NAME_BUF of an 8-aligned struct.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// The start of the label before the one starting at `start`, if there is one.
#[inline(always)]
fn label_before(scratch: &DnsScratch, start: usize) -> Option<usize> {
    let before = scratch.before[start & (NAME_BUF - 1)];
    if before & HAS_BEFORE == 0 {
        return None;
    }
    Some((before & 0xff) as usize)
}

#[inline(always)]
fn zone_matches(scratch: &DnsScratch, start: usize, zone: &DnsZone) -> bool {
    let len = zone.len as usize;
    let mut differ = 0u64;
    for i in 0..ZONE_MAX {
        let byte = lower(scratch.name[(start + i) & (NAME_BUF - 1)]) ^ zone.name[i];
        differ |= byte as u64 & below(i, len);
    }
    differ == 0
}

#[inline(always)]
fn byte_at(scratch: &DnsScratch, at: usize) -> u8 {
    lower(scratch.name[at & (NAME_BUF - 1)])
}

/// `svc` or `pod`.
#[inline(always)]
fn is_kind_label(scratch: &DnsScratch, start: usize) -> bool {
    if scratch.name[start & (NAME_BUF - 1)] != 3 {
        return false;
    }
    let word = [byte_at(scratch, start + 1), byte_at(scratch, start + 2), byte_at(scratch, start + 3)];
    word == *b"svc" || word == *b"pod"
}

/// `*` or `any`.
#[inline(always)]
fn is_wildcard(scratch: &DnsScratch, start: usize) -> bool {
    match scratch.name[start & (NAME_BUF - 1)] {
        1 => scratch.name[(start + 1) & (NAME_BUF - 1)] == b'*',
        3 => [byte_at(scratch, start + 1), byte_at(scratch, start + 2), byte_at(scratch, start + 3)] == *b"any",
        _ => false,
    }
}

/// The label at `start`, lower case and NUL-padded, into `scratch.key`.
#[inline(always)]
fn namespace_key(scratch: &mut DnsScratch, start: usize) {
    let len = scratch.name[start & (NAME_BUF - 1)] as usize;
    for i in 0..NAMESPACE_KEY_LEN {
        scratch.key.name[i] = (byte_at(scratch, start + 1 + i) as u64 & below(i, len)) as u8;
    }
}

/// What the datapath does with a question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsVerdict {
    Pass,
    /// Not answered: the queried namespace's tenant (0 for wildcards and malformed names).
    Refuse { tenant: u64, malformed: bool },
}

/// The decision for a question from a pod of `querier_tenant` (0: a pod moat cannot
/// attribute yet, which only resolves shared namespaces).
#[inline(always)]
pub fn decide<M: DnsMaps>(question: Question, querier_tenant: u64, maps: &M) -> DnsVerdict {
    match question {
        Question::Outside | Question::UnknownNamespace | Question::Unreadable => DnsVerdict::Pass,
        Question::Wildcard => DnsVerdict::Refuse { tenant: 0, malformed: false },
        Question::Malformed => DnsVerdict::Refuse { tenant: 0, malformed: true },
        Question::Namespace(found) => {
            owner_answers(found.flags & DNS_NAMESPACE_SHARED != 0, found.tenant, querier_tenant, maps)
        }
        Question::Address(owner) => owner_answers(owner.shared, owner.tenant, querier_tenant, maps),
        Question::Service(found) => {
            owner_answers(found.flags & DNS_NAMESPACE_SHARED != 0, found.tenant, querier_tenant, maps)
        }
    }
}

/// Whether a name owned by `tenant` (or shared) is answered for a pod of `querier_tenant`.
#[inline(always)]
fn owner_answers<M: DnsMaps>(shared: bool, tenant: u64, querier_tenant: u64, maps: &M) -> DnsVerdict {
    let pair = TenantPairKey { src: querier_tenant, dst: tenant };
    if shared || tenant == 0 || (querier_tenant != 0 && (tenant == querier_tenant || maps.tenant_pair(&pair))) {
        DnsVerdict::Pass
    } else {
        DnsVerdict::Refuse { tenant, malformed: false }
    }
}

/// A name (`web.ns.svc.cluster.local`, trailing dot optional) in wire form, lower case as
/// written; `None` if it is not a valid name. For the agent (zones, `moat explain`).
pub fn to_wire(name: &str, out: &mut [u8; NAME_BUF]) -> Option<usize> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut pos = 0usize;
    if !name.is_empty() {
        for label in name.split('.') {
            let bytes = label.as_bytes();
            if bytes.is_empty() || bytes.len() > 63 || pos + 1 + bytes.len() >= NAME_BUF - 1 {
                return None;
            }
            out[pos] = bytes.len() as u8;
            out[pos + 1..pos + 1 + bytes.len()].copy_from_slice(bytes);
            pos += 1 + bytes.len();
        }
    }
    out[pos] = 0;
    Some(pos + 1)
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: repr(C), integers and arrays of integers only, no implicit padding (sizes
    // asserted below).
    unsafe impl aya::Pod for NamespaceKey {}
    unsafe impl aya::Pod for DnsNamespace {}
    unsafe impl aya::Pod for DnsZone {}
    unsafe impl aya::Pod for SocketKey {}
}

const _: () = {
    assert!(core::mem::size_of::<NamespaceKey>() == 64);
    assert!(core::mem::size_of::<DnsNamespace>() == 16);
    assert!(core::mem::size_of::<SocketKey>() == 48);
    assert!(core::mem::size_of::<DnsZone>() == 8 + ZONE_MAX);
    assert!(NAME_BUF.is_power_of_two() && MAX_LABELS.is_power_of_two() && ZONE_MAX.is_power_of_two());
};

#[cfg(test)]
mod tests;
