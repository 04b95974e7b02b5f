//! `moat-dns`: the lab's cluster DNS and a DNS client, for the DNS isolation tests.
//!
//! * `moat-dns serve DATA.json [--port 53]`: answers like CoreDNS's kubernetes plugin (see
//!   `server`), over UDP and TCP.
//! * `moat-dns query NAME --server IP [--type A] [--tcp [--split] [--then NAME2]] [--raw HEX]`:
//!   one question (TCP: `--split` sends the length prefix alone first; `--then` pipelines a
//!   second question in the same write, and the last answer is printed, with every answer's
//!   rcode), as one JSON line: `{"outcome":"answer","rcode":..,"authoritative":..,"rcodes":[..],"answers":N,"ms":..}`, or
//!   `"send-error"` (with `errno`), `"reset"` (TCP), `"timeout"`. Exit 0 whatever the outcome,
//!   2 on usage errors.
//! * `moat-dns bench NAME --server IP [--tcp] [--seconds 5]`: asks NAME (A) back to back,
//!   one question in flight (UDP: one connected socket; TCP: one connection), and prints
//!   `{"mode":..,"seconds":..,"ops":N,"rate":..,"unit":"queries/s"}` (`cargo xtask bench`).

mod server;
mod wire;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "moat-dns")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Serve {
        data: PathBuf,
        #[arg(long, default_value_t = 53)]
        port: u16,
    },
    Query {
        /// The name asked about; with `--type PTR`, an address is turned into its reverse name.
        name: String,
        #[arg(long)]
        server: IpAddr,
        #[arg(long, default_value_t = 53)]
        port: u16,
        #[arg(long = "type", default_value = "A")]
        qtype: String,
        #[arg(long)]
        tcp: bool,
        /// TCP: the 2-byte length prefix in a write of its own, then the message.
        #[arg(long, requires = "tcp")]
        split: bool,
        /// TCP: a second question (same type) in the same write; the last answer is printed.
        #[arg(long, requires = "tcp")]
        then: Option<String>,
        /// Send these bytes (hex) as the whole message instead of a query for NAME.
        #[arg(long)]
        raw: Option<String>,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    Bench {
        name: String,
        #[arg(long)]
        server: IpAddr,
        #[arg(long, default_value_t = 53)]
        port: u16,
        #[arg(long)]
        tcp: bool,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve { data, port } => match server::serve(&data, port) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("moat-dns serve: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Query { name, server, port, qtype, tcp, split, then, raw, timeout_ms } => {
            let built = build(&name, &qtype, raw.as_deref()).and_then(|first| {
                let mut framed = frame(&first);
                if let Some(second) = &then {
                    framed.extend(frame(&build(second, &qtype, None)?));
                }
                Ok((first, framed, if then.is_some() { 2 } else { 1 }))
            });
            let (message, framed, answers) = match built {
                Ok(built) => built,
                Err(error) => {
                    eprintln!("moat-dns query: {error}");
                    return ExitCode::from(2);
                }
            };
            let target = SocketAddr::new(server, port);
            let timeout = Duration::from_millis(timeout_ms);
            let start = Instant::now();
            let outcome = if tcp { ask_tcp(target, &framed, answers, split, timeout) } else { ask_udp(target, &message, timeout) };
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            let line = match outcome {
                Outcome::Answer(reply, rcodes) => serde_json::json!({
                    "outcome": "answer",
                    "rcode": wire::rcode_name(rcode(&reply).0),
                    "authoritative": rcode(&reply).1,
                    // "/noaa": AA clear (the lab's server sets it on every answer).
                    "rcodes": rcodes.iter().map(|(r, aa)| format!("{}{}", wire::rcode_name(*r), if *aa { "" } else { "/noaa" })).collect::<Vec<_>>(),
                    "answers": reply.get(6..8).map_or(0, |b| u16::from_be_bytes([b[0], b[1]])),
                    "ms": ms,
                }),
                Outcome::SendError(error) => serde_json::json!({"outcome": "send-error", "errno": errno_name(&error), "detail": error.to_string(), "ms": ms}),
                Outcome::Reset(error) => serde_json::json!({"outcome": "reset", "detail": error, "ms": ms}),
                Outcome::Timeout => serde_json::json!({"outcome": "timeout", "ms": ms}),
            };
            println!("{line}");
            ExitCode::SUCCESS
        }
        Command::Bench { name, server, port, tcp, seconds } => match bench(&name, SocketAddr::new(server, port), tcp, seconds) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("moat-dns bench: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Questions answered per second, one in flight; an error or timeout ends the run with it.
fn bench(name: &str, target: SocketAddr, tcp: bool, seconds: u64) -> Result<serde_json::Value, String> {
    let query = wire::query(1, name, wire::TYPE_A)?;
    let framed = frame(&query);
    let timeout = Some(Duration::from_secs(2));
    let mut buffer = [0u8; 4096];
    let mut ask: Box<dyn FnMut() -> std::io::Result<()>> = if tcp {
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(timeout).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Box::new(move || {
            stream.write_all(&framed)?;
            let mut length = [0u8; 2];
            stream.read_exact(&mut length)?;
            stream.read_exact(&mut buffer[..u16::from_be_bytes(length) as usize])
        })
    } else {
        let bind: SocketAddr = if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
        let socket = UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
        socket.connect(target).map_err(|e| format!("connect: {e}"))?;
        socket.set_read_timeout(timeout).map_err(|e| e.to_string())?;
        Box::new(move || {
            socket.send(&query)?;
            socket.recv(&mut buffer).map(|_| ())
        })
    };
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        ask().map_err(|e| format!("question {}: {e}", ops + 1))?;
        ops += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "mode": if tcp { "tcp" } else { "udp" },
        "seconds": elapsed,
        "ops": ops,
        "rate": ops as f64 / elapsed,
        "unit": "queries/s",
    }))
}

fn build(name: &str, qtype: &str, raw: Option<&str>) -> Result<Vec<u8>, String> {
    if let Some(hex) = raw {
        return (0..hex.len())
            .step_by(2)
            .map(|i| hex.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()).ok_or(format!("--raw: bad hex at {i}")))
            .collect();
    }
    let code = wire::type_code(qtype).ok_or(format!("unknown type {qtype:?}"))?;
    let name = match (code, name.parse::<IpAddr>()) {
        (wire::TYPE_PTR, Ok(ip)) => wire::reverse_name(ip),
        _ => name.to_string(),
    };
    wire::query(std::process::id() as u16, &name, code)
}

enum Outcome {
    /// The last answer read, and every answer's rcode and AA bit, in order.
    Answer(Vec<u8>, Vec<(u8, bool)>),
    SendError(std::io::Error),
    Reset(String),
    Timeout,
}

fn ask_udp(target: SocketAddr, message: &[u8], timeout: Duration) -> Outcome {
    let bind: SocketAddr = if target.is_ipv4() { "0.0.0.0:0".parse().unwrap_or(target) } else { "[::]:0".parse().unwrap_or(target) };
    let socket = match UdpSocket::bind(bind) {
        Ok(socket) => socket,
        Err(error) => return Outcome::SendError(error),
    };
    if let Err(error) = socket.set_read_timeout(Some(timeout)) {
        return Outcome::SendError(error);
    }
    if let Err(error) = socket.send_to(message, target) {
        return Outcome::SendError(error);
    }
    let mut buffer = [0u8; 4096];
    match socket.recv(&mut buffer) {
        Ok(len) => Outcome::Answer(buffer[..len].to_vec(), vec![rcode(&buffer[..len])]),
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Outcome::Timeout,
        Err(error) => Outcome::Reset(error.to_string()),
    }
}

/// A message with its TCP length prefix.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = (message.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    framed
}

/// Sends `framed` (one or more prefixed messages) and reads `answers` answers: the last, and
/// every one's rcode (a refused question's REFUSED may come before an earlier one's answer).
fn ask_tcp(target: SocketAddr, framed: &[u8], answers: usize, split: bool, timeout: Duration) -> Outcome {
    let mut stream = match TcpStream::connect_timeout(&target, timeout) {
        Ok(stream) => stream,
        Err(error) if error.kind() == ErrorKind::TimedOut => return Outcome::Timeout,
        Err(error) => return Outcome::SendError(error),
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let at = if split { 2.min(framed.len()) } else { 0 };
    for part in [&framed[..at], &framed[at..]] {
        if let Err(error) = stream.write_all(part) {
            return Outcome::SendError(error);
        }
    }
    let mut last = Outcome::Timeout;
    let mut rcodes = Vec::new();
    for _ in 0..answers {
        let mut length = [0u8; 2];
        match stream.read_exact(&mut length) {
            Ok(()) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Outcome::Timeout,
            Err(error) => return Outcome::Reset(error.to_string()),
        }
        let mut reply = vec![0u8; u16::from_be_bytes(length) as usize];
        last = match stream.read_exact(&mut reply) {
            Ok(()) => {
                rcodes.push(rcode(&reply));
                Outcome::Answer(reply, rcodes.clone())
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Outcome::Timeout,
            Err(error) => return Outcome::Reset(error.to_string()),
        };
    }
    last
}

/// A reply's RCODE (0xff: too short to have one) and whether AA is set.
fn rcode(reply: &[u8]) -> (u8, bool) {
    (reply.get(3).map_or(0xff, |b| b & 0x0f), reply.get(2).is_some_and(|b| b & 0x04 != 0))
}

fn errno_name(error: &std::io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(code) => format!("errno {code}"),
        None => error.kind().to_string(),
    }
}
