//! DNS messages: just enough of RFC 1035 for one question and plain answers.

use std::net::IpAddr;

pub const TYPE_A: u16 = 1;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_ANY: u16 = 255;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_REFUSED: u8 = 5;

pub fn type_code(name: &str) -> Option<u16> {
    Some(match name.to_ascii_uppercase().as_str() {
        "A" => TYPE_A,
        "AAAA" => TYPE_AAAA,
        "SRV" => TYPE_SRV,
        "PTR" => TYPE_PTR,
        "TXT" => TYPE_TXT,
        "ANY" => TYPE_ANY,
        _ => return None,
    })
}

pub fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        RCODE_NOERROR => "NOERROR",
        RCODE_FORMERR => "FORMERR",
        2 => "SERVFAIL",
        RCODE_NXDOMAIN => "NXDOMAIN",
        4 => "NOTIMP",
        RCODE_REFUSED => "REFUSED",
        _ => "OTHER",
    }
}

/// `name` in wire form (labels as written: the case of a question is kept).
pub fn encode_name(name: &str, out: &mut Vec<u8>) -> Result<(), String> {
    for label in name.trim_end_matches('.').split('.').filter(|label| !label.is_empty()) {
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 bytes"));
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    Ok(())
}

/// A query: id, RD set, one question of class IN.
pub fn query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    encode_name(name, &mut out)?;
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    Ok(out)
}

/// The question of a message: name (lower case, dotted), type, and where it ends.
/// No compression pointers (a query has none).
pub fn question(message: &[u8]) -> Option<(String, u16, usize)> {
    if message.len() < 12 || u16::from_be_bytes([message[4], message[5]]) != 1 {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *message.get(pos)? as usize;
        if len == 0 {
            pos += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        let label = message.get(pos + 1..pos + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += 1 + len;
    }
    let qtype = u16::from_be_bytes([*message.get(pos)?, *message.get(pos + 1)?]);
    message.get(pos + 3)?;
    Some((labels.join("."), qtype, pos + 4))
}

/// One answer record's data.
pub enum Record {
    Address(IpAddr),
    /// PTR target, or SRV target (port 0 for a service without ports).
    Name(String),
    Srv(String),
}

/// A reply to `request` (whose question ends at `question_end`) with `rcode` and answers.
pub fn reply(request: &[u8], question_end: usize, rcode: u8, answers: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(question_end + answers.len() * 32);
    out.extend_from_slice(&request[..2]);
    // QR, opcode 0, AA, RD copied; RA clear.
    out.push(0x84 | (request[2] & 0x01));
    out.push(rcode);
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&request[12..question_end]);
    for answer in answers {
        out.extend_from_slice(&[0xc0, 0x0c]);
        let (rtype, data) = match answer {
            Record::Address(IpAddr::V4(ip)) => (TYPE_A, ip.octets().to_vec()),
            Record::Address(IpAddr::V6(ip)) => (TYPE_AAAA, ip.octets().to_vec()),
            Record::Name(name) => {
                let mut data = Vec::new();
                let _ = encode_name(name, &mut data);
                (TYPE_PTR, data)
            }
            Record::Srv(target) => {
                let mut data = vec![0, 0, 0, 100, 0, 0];
                let _ = encode_name(target, &mut data);
                (TYPE_SRV, data)
            }
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&5u32.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    out
}

/// The reverse name of `ip` (`d.c.b.a.in-addr.arpa`, nibbles for IPv6).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, c, d] = ip.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(ip) => {
            let mut labels: Vec<String> = Vec::new();
            for byte in ip.octets().iter().rev() {
                labels.push(format!("{:x}", byte & 0x0f));
                labels.push(format!("{:x}", byte >> 4));
            }
            format!("{}.ip6.arpa", labels.join("."))
        }
    }
}
