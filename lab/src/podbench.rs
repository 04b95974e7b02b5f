//! `moat lab bench`: rate between two pods, measured by an in-pod client against the
//! destination's echo server. `rr`: 1-byte round trips on one TCP connection; `crr`: a new
//! TCP connection per 1-byte round trip (connect, request, reply, the server closes, close);
//! `udp`: 1-byte datagram round trips from an unconnected UDP socket (`sendto`/`recvfrom`,
//! as the server answers); `stream`: 64 KiB writes for N seconds while the echo is read back
//! concurrently.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::probe::{resolve, run_in_pod};
use super::sock::open_stream;
use super::verdict::print_verdict;
use super::state::LabState;
use super::{parse_pod, LabError, NameArg, Output};
use moat_agent::model::flow::Family;
use moat_agent::model::PodKey;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Rr,
    Crr,
    Udp,
    Stream,
}

impl Mode {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Rr => "rr",
            Self::Crr => "crr",
            Self::Udp => "udp",
            Self::Stream => "stream",
        }
    }

    /// The protocol the destination port must serve.
    pub const fn protocol(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            _ => "tcp",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub name: NameArg,
    #[arg(long, value_parser = parse_pod)]
    pub from: PodKey,
    #[arg(long, value_parser = parse_pod)]
    pub to: PodKey,
    /// A port the destination pod declares (UDP for `--mode udp`, else TCP).
    #[arg(long)]
    pub port: u16,
    #[arg(long, value_enum)]
    pub mode: Mode,
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    #[arg(long, value_enum, default_value = "4")]
    pub family: Family,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct BenchResult {
    pub mode: String,
    pub seconds: f64,
    /// rr: transactions; stream: bytes sent.
    pub ops: u64,
    pub rate: f64,
    pub unit: String,
    /// Transaction modes: the rate of the fastest batch of transactions (the part of the run
    /// least disturbed by other work on the machine); 0 for `stream`.
    #[serde(default)]
    pub best_rate: f64,
}

pub fn run(args: BenchArgs) -> Result<(), LabError> {
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err(LabError::Usage("--seconds must be in (0, 3600]".into()));
    }
    let state = LabState::load(&args.name.name)?;
    let (from, to_ip) = resolve(&state, &args.from, &args.to, args.family)?;
    let mode = args.mode.name();
    let argv = [
        "__pod-connect".to_string(),
        "--to".into(),
        to_ip.to_string(),
        "--port".into(),
        args.port.to_string(),
        "--protocol".into(),
        args.mode.protocol().into(),
        "--bench".into(),
        mode.into(),
        "--seconds".into(),
        args.seconds.to_string(),
    ];
    let output = run_in_pod(from, &argv)?;
    let line = output.lines().last().unwrap_or_default();
    let result: BenchResult = serde_json::from_str(line).map_err(|_| LabError::InPod {
        pod: args.from.to_string(),
        message: format!("bench failed: {}", output.trim()),
    })?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string(&result).unwrap_or_default()),
        Output::Text => println!(
            "{} -> {} port {}: {} {:.1} {} ({} {} in {:.1} s)",
            args.from,
            args.to,
            args.port,
            result.mode,
            result.rate,
            result.unit,
            result.ops,
            if result.mode == "stream" { "bytes" } else { "transactions" },
            result.seconds
        ),
    }
    Ok(())
}

/// The in-pod side (`__pod-connect --bench`): prints a `BenchResult` line, or a deny verdict.
pub fn client(mode: Mode, target: SocketAddr, timeout: Duration, seconds: f64) -> i32 {
    if !(seconds > 0.0 && seconds <= 3600.0) {
        print_verdict(false, "usage: --seconds must be in (0, 3600]");
        return 2;
    }
    let duration = Duration::from_secs_f64(seconds);
    let result = match mode {
        Mode::Rr => open_stream(target, libc::IPPROTO_TCP, timeout).and_then(|stream| rr(stream, duration)),
        Mode::Stream => open_stream(target, libc::IPPROTO_TCP, timeout).and_then(|stream| stream_bench(stream, duration)),
        Mode::Crr => crr(target, timeout, duration),
        Mode::Udp => udp_rr(target, timeout, duration),
    };
    match result {
        Ok(result) => {
            println!("{}", serde_json::to_string(&result).unwrap_or_default());
            0
        }
        Err(detail) => {
            print_verdict(false, &detail);
            1
        }
    }
}

fn rr(mut stream: TcpStream, duration: Duration) -> Result<BenchResult, String> {
    stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let mut pace = Pace::new(FAST_BATCH);
    let mut byte = [0u8; 1];
    while pace.running(duration) {
        stream.write_all(b"x").map_err(|e| format!("send: {e}"))?;
        stream.read_exact(&mut byte).map_err(|e| format!("receive: {e}"))?;
        pace.tick();
    }
    Ok(pace.result(Mode::Rr))
}

/// Transactions per batch: a few tens of milliseconds of each mode.
const FAST_BATCH: u64 = 500;
const CONNECT_BATCH: u64 = 100;

/// Counts transactions, and the rate of the fastest batch of them.
struct Pace {
    start: Instant,
    batch_start: Instant,
    batch: u64,
    ops: u64,
    best: f64,
}

impl Pace {
    fn new(batch: u64) -> Self {
        let now = Instant::now();
        Self { start: now, batch_start: now, batch, ops: 0, best: 0.0 }
    }

    fn running(&self, duration: Duration) -> bool {
        self.start.elapsed() < duration
    }

    fn tick(&mut self) {
        self.ops += 1;
        if self.ops.is_multiple_of(self.batch) {
            let now = Instant::now();
            let rate = self.batch as f64 / now.duration_since(self.batch_start).as_secs_f64();
            self.best = self.best.max(rate);
            self.batch_start = now;
        }
    }

    fn result(self, mode: Mode) -> BenchResult {
        let seconds = self.start.elapsed().as_secs_f64();
        let rate = self.ops as f64 / seconds;
        BenchResult {
            mode: mode.name().into(),
            seconds,
            ops: self.ops,
            rate,
            unit: "transactions/s".into(),
            // A run shorter than one batch has only its mean.
            best_rate: if self.best > 0.0 { self.best } else { rate },
        }
    }
}

/// A connection per round trip. The request is a NUL byte, which tells the echo server to
/// close after its reply; reading to EOF before closing leaves TIME_WAIT on the server's side.
fn crr(target: SocketAddr, timeout: Duration, duration: Duration) -> Result<BenchResult, String> {
    let mut pace = Pace::new(CONNECT_BATCH);
    let mut reply = [0u8; 2];
    while pace.running(duration) {
        let mut stream = open_stream(target, libc::IPPROTO_TCP, timeout)?;
        stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        stream.write_all(&[0]).map_err(|e| format!("send: {e}"))?;
        stream.read_exact(&mut reply[..1]).map_err(|e| format!("receive: {e}"))?;
        match stream.read(&mut reply) {
            Ok(0) => {}
            Ok(_) => return Err("the server sent more than its reply".into()),
            Err(e) => return Err(format!("waiting for the server to close: {e}")),
        }
        pace.tick();
    }
    Ok(pace.result(Mode::Crr))
}

/// Datagram round trips from an unbound-address socket, each to `target` by `sendto`.
fn udp_rr(target: SocketAddr, timeout: Duration, duration: Duration) -> Result<BenchResult, String> {
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any).map_err(|e| format!("bind: {e}"))?;
    socket.set_read_timeout(Some(timeout)).map_err(|e| format!("setsockopt: {e}"))?;
    let mut pace = Pace::new(FAST_BATCH);
    let mut reply = [0u8; 16];
    while pace.running(duration) {
        socket.send_to(b"x", target).map_err(|e| format!("send: {e}"))?;
        let (n, from) = socket.recv_from(&mut reply).map_err(|e| format!("receive: {e}"))?;
        if n != 1 || from != target {
            return Err(format!("unexpected reply: {n} bytes from {from}"));
        }
        pace.tick();
    }
    Ok(pace.result(Mode::Udp))
}

fn stream_bench(mut stream: TcpStream, duration: Duration) -> Result<BenchResult, String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| format!("{e}"))?;
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| format!("{e}"))?;
    let mut reader = stream.try_clone().map_err(|e| format!("clone: {e}"))?;
    let drain = std::thread::spawn(move || -> Result<u64, String> {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n as u64,
                Err(e) => return Err(format!("receive: {e}")),
            }
        }
    });
    let chunk = vec![0x6du8; 64 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        stream.write_all(&chunk).map_err(|e| format!("send: {e}"))?;
        sent += chunk.len() as u64;
    }
    let seconds = start.elapsed().as_secs_f64();
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let echoed = drain
        .join()
        .map_err(|_| "reader thread panicked".to_string())??;
    if echoed != sent {
        return Err(format!("sent {sent} bytes, {echoed} came back"));
    }
    Ok(BenchResult {
        mode: "stream".into(),
        seconds,
        ops: sent,
        rate: sent as f64 / seconds / 1e6,
        unit: "MB/s".into(),
        best_rate: 0.0,
    })
}
