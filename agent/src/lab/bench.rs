//! `moat lab bench`: rate between two pods, measured by an in-pod client against the
//! destination's TCP echo server. `rr`: 1-byte round trips on one connection;
//! `stream`: 64 KiB writes for N seconds while the echo is read back concurrently.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::connect::open_stream;
use super::probe::{resolve, run_in_pod, Family};
use super::state::LabState;
use super::{parse_pod, LabError, NameArg, Output};
use crate::model::PodKey;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Rr,
    Stream,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub name: NameArg,
    #[arg(long, value_parser = parse_pod)]
    pub from: PodKey,
    #[arg(long, value_parser = parse_pod)]
    pub to: PodKey,
    /// A TCP port the destination pod declares.
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
}

pub fn run(args: BenchArgs) -> Result<(), LabError> {
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err(LabError::Usage("--seconds must be in (0, 3600]".into()));
    }
    let state = LabState::load(&args.name.name)?;
    let (from, to_ip) = resolve(&state, &args.from, &args.to, args.family)?;
    let mode = match args.mode {
        Mode::Rr => "rr",
        Mode::Stream => "stream",
    };
    let argv = [
        "__pod-connect".to_string(),
        "--to".into(),
        to_ip.to_string(),
        "--port".into(),
        args.port.to_string(),
        "--protocol".into(),
        "tcp".into(),
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
        super::connect::print_verdict(false, "usage: --seconds must be in (0, 3600]");
        return 2;
    }
    let duration = Duration::from_secs_f64(seconds);
    let result = open_stream(target, libc::IPPROTO_TCP, timeout).and_then(|stream| match mode {
        Mode::Rr => rr(stream, duration),
        Mode::Stream => stream_bench(stream, duration),
    });
    match result {
        Ok(result) => {
            println!("{}", serde_json::to_string(&result).unwrap_or_default());
            0
        }
        Err(detail) => {
            super::connect::print_verdict(false, &detail);
            1
        }
    }
}

fn rr(mut stream: TcpStream, duration: Duration) -> Result<BenchResult, String> {
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let start = Instant::now();
    let mut ops = 0u64;
    let mut byte = [0u8; 1];
    while start.elapsed() < duration {
        stream.write_all(b"x").map_err(|e| format!("send: {e}"))?;
        stream
            .read_exact(&mut byte)
            .map_err(|e| format!("receive: {e}"))?;
        ops += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(BenchResult {
        mode: "rr".into(),
        seconds,
        ops,
        rate: ops as f64 / seconds,
        unit: "transactions/s".into(),
    })
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
    })
}
