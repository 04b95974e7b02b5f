//! `moat-lab __pod-connect`: one connection attempt from inside a pod. Prints one JSON line
//! `{"verdict":"allow"|"deny","detail":"..."}`; exits 0 on allow, 1 on deny, 2 on usage or
//! internal errors. `--hold` keeps a TCP connection and echoes stdin lines over it; `--bench`
//! measures instead (see `bench`).

use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use super::sock::{self, open_stream};
use super::verdict::print_verdict;
use super::{podbench, LabError};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeProtocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
}

#[derive(clap::Args, Debug)]
pub struct ConnectArgs {
    #[arg(long)]
    pub to: IpAddr,
    /// Destination port (ignored for ICMP).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    #[arg(long, value_enum, default_value = "tcp")]
    pub protocol: ProbeProtocol,
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// After connecting (TCP; UDP: one socket, after a first echo), echo each stdin line over
    /// the connection, printing `ok` or `fail: <error>`; exit at stdin EOF.
    #[arg(long, conflicts_with = "bench")]
    pub hold: bool,
    /// Measure instead of probing: `rr`, `crr` or `stream` over TCP, `udp` round trips.
    #[arg(long, value_enum)]
    pub bench: Option<podbench::Mode>,
    /// How long `--bench` runs.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
}

const PAYLOAD: &[u8] = b"moat-probe\n";

pub fn run(args: ConnectArgs) -> Result<i32, LabError> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let target = SocketAddr::new(args.to, args.port);
    if let Some(mode) = args.bench {
        let protocol = if mode == podbench::Mode::Udp { ProbeProtocol::Udp } else { ProbeProtocol::Tcp };
        if args.protocol != protocol {
            return usage(&format!("--bench {} needs --protocol {}", mode.name(), mode.protocol()));
        }
        return Ok(podbench::client(mode, target, timeout, args.seconds));
    }
    if args.hold && !matches!(args.protocol, ProbeProtocol::Tcp | ProbeProtocol::Udp) {
        return usage("--hold needs --protocol tcp or udp");
    }
    if args.protocol != ProbeProtocol::Icmp && args.port == 0 {
        return usage("--port is required for tcp, udp and sctp");
    }
    let result = match args.protocol {
        ProbeProtocol::Tcp if args.hold => return Ok(hold(target, timeout)),
        ProbeProtocol::Udp if args.hold => return Ok(hold_udp(target, timeout)),
        ProbeProtocol::Tcp => stream_probe(target, libc::IPPROTO_TCP, timeout),
        ProbeProtocol::Sctp => stream_probe(target, libc::IPPROTO_SCTP, timeout),
        ProbeProtocol::Udp => udp_probe(target, timeout),
        ProbeProtocol::Icmp => icmp_probe(args.to, timeout),
    };
    Ok(report(result))
}

fn usage(message: &str) -> Result<i32, LabError> {
    print_verdict(false, &format!("usage: {message}"));
    Ok(2)
}

fn report(result: Result<String, String>) -> i32 {
    match result {
        Ok(detail) => {
            print_verdict(true, &detail);
            0
        }
        Err(detail) => {
            print_verdict(false, &detail);
            1
        }
    }
}

fn echo_round(stream: &mut TcpStream, payload: &[u8]) -> Result<(), String> {
    stream
        .write_all(payload)
        .map_err(|e| format!("send: {e}"))?;
    let mut back = vec![0u8; payload.len()];
    stream
        .read_exact(&mut back)
        .map_err(|e| format!("receive: {e}"))?;
    if back != payload {
        return Err("echo differs from what was sent".into());
    }
    Ok(())
}

fn stream_probe(
    target: SocketAddr,
    protocol: libc::c_int,
    timeout: Duration,
) -> Result<String, String> {
    let mut stream = open_stream(target, protocol, timeout)?;
    echo_round(&mut stream, PAYLOAD)?;
    Ok(format!("echo from {target}"))
}

fn udp_probe(target: SocketAddr, timeout: Duration) -> Result<String, String> {
    let local: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|e| format!("{e}"))?;
    let socket = UdpSocket::bind(local).map_err(|e| format!("bind: {e}"))?;
    socket
        .connect(target)
        .map_err(|e| format!("connect: {e}"))?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| format!("setsockopt: {e}"))?;
    socket.send(PAYLOAD).map_err(|e| format!("send: {e}"))?;
    let mut buffer = [0u8; 64];
    let n = socket
        .recv(&mut buffer)
        .map_err(|e| format!("receive: {e}"))?;
    if &buffer[..n] != PAYLOAD {
        return Err("echo differs from what was sent".into());
    }
    Ok(format!("echo from {target}"))
}

fn random_u16() -> u16 {
    let mut bytes = [0u8; 2];
    // SAFETY: getrandom writes at most bytes.len() bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 2 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return (nanos ^ std::process::id()) as u16;
    }
    u16::from_ne_bytes(bytes)
}

/// ICMP echo over an unprivileged ping socket. The kernel uses the bound "port" as the echo
/// identifier and fills in checksums; it delivers only replies with our identifier.
fn icmp_probe(to: IpAddr, timeout: Duration) -> Result<String, String> {
    let (domain, protocol, request, reply) = match to {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8, 129u8),
    };
    let fd =
        sock::socket(domain, libc::SOCK_DGRAM, protocol).map_err(|e| format!("socket: {e}"))?;
    let id = random_u16().max(1);
    let local = match to {
        IpAddr::V4(_) => SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), id),
        IpAddr::V6(_) => SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), id),
    };
    sock::bind(&fd, local).map_err(|e| format!("bind: {e}"))?;
    let socket = UdpSocket::from(fd);
    socket
        .connect(SocketAddr::new(to, 0))
        .map_err(|e| format!("connect: {e}"))?;
    let sequence = random_u16();
    let mut packet = vec![request, 0, 0, 0];
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(b"moat-probe");
    socket.send(&packet).map_err(|e| format!("send: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut buffer = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("receive: timed out".into());
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(|e| format!("setsockopt: {e}"))?;
        let n = socket
            .recv(&mut buffer)
            .map_err(|e| format!("receive: {e}"))?;
        if n >= 8 && buffer[0] == reply && buffer[6..8] == sequence.to_be_bytes() {
            return Ok(format!("echo reply from {to}"));
        }
    }
}

/// `--hold`: one TCP connection, one echo per stdin line.
/// A UDP session: one socket connected to `target`, a first echo, then an echo per stdin line.
fn hold_udp(target: SocketAddr, timeout: Duration) -> i32 {
    let bind: SocketAddr = if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = match std::net::UdpSocket::bind(bind).and_then(|s| s.connect(target).and(s.set_read_timeout(Some(timeout))).map(|()| s)) {
        Ok(socket) => socket,
        Err(error) => return report(Err(format!("UDP socket to {target}: {error}"))),
    };
    let round = |payload: &[u8]| -> Result<(), String> {
        socket.send(payload).map_err(|e| format!("send: {e}"))?;
        let mut answer = [0u8; 1500];
        let n = socket.recv(&mut answer).map_err(|e| format!("receive: {e}"))?;
        if &answer[..n] == payload { Ok(()) } else { Err(format!("echo differs: {:?}", String::from_utf8_lossy(&answer[..n]))) }
    };
    if let Err(detail) = round(PAYLOAD) {
        return report(Err(detail));
    }
    print_verdict(true, &format!("UDP session with {target}"));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match round(format!("{line}\n").as_bytes()) {
            Ok(()) => println!("ok"),
            Err(error) => println!("fail: {error}"),
        }
        let _ = std::io::stdout().flush();
    }
    0
}

fn hold(target: SocketAddr, timeout: Duration) -> i32 {
    let mut stream = match open_stream(target, libc::IPPROTO_TCP, timeout) {
        Ok(stream) => stream,
        Err(detail) => return report(Err(detail)),
    };
    print_verdict(true, &format!("connected to {target}"));
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let mut payload = line.into_bytes();
        payload.push(b'\n');
        match echo_round(&mut stream, &payload) {
            Ok(()) => println!("ok"),
            Err(error) => println!("fail: {error}"),
        }
        let _ = std::io::stdout().flush();
    }
    0
}
