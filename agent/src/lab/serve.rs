//! `moat __pod-serve`: echo servers on a pod's container ports, dual-stack (`[::]` with
//! IPV6_V6ONLY off). TCP and SCTP (one-to-one style) echo each connection until EOF, one
//! thread per connection; UDP echoes datagrams. Runs until killed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};

use super::{sock, LabError};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// TCP port to echo on (repeatable).
    #[arg(long = "tcp")]
    pub tcp: Vec<u16>,
    /// UDP port to echo on (repeatable).
    #[arg(long = "udp")]
    pub udp: Vec<u16>,
    /// SCTP port to echo on (repeatable); skipped with a log line when the kernel has no SCTP.
    #[arg(long = "sctp")]
    pub sctp: Vec<u16>,
}

pub fn run(args: ServeArgs) -> Result<(), LabError> {
    let bind_error = |what: String, error: std::io::Error| {
        LabError::Internal(format!("__pod-serve: binding {what}: {error}"))
    };
    for port in &args.tcp {
        let fd = sock::dual_stack(libc::SOCK_STREAM, libc::IPPROTO_TCP, *port)
            .map_err(|e| bind_error(format!("{port}/TCP"), e))?;
        spawn_stream_listener(TcpListener::from(fd), format!("{port}/TCP"));
    }
    for port in &args.udp {
        let fd = sock::dual_stack(libc::SOCK_DGRAM, libc::IPPROTO_UDP, *port)
            .map_err(|e| bind_error(format!("{port}/UDP"), e))?;
        let socket = UdpSocket::from(fd);
        std::thread::spawn(move || udp_echo(socket));
        log(&format!("echoing on [::]:{port}/UDP"));
    }
    for port in &args.sctp {
        match sock::dual_stack(libc::SOCK_STREAM, libc::IPPROTO_SCTP, *port) {
            Ok(fd) => spawn_stream_listener(TcpListener::from(fd), format!("{port}/SCTP")),
            Err(error) => log(&format!(
                "skipping {port}/SCTP: {error} (no SCTP in this kernel?)"
            )),
        }
    }
    log("ready");
    loop {
        std::thread::park();
    }
}

fn log(message: &str) {
    println!("__pod-serve[{}]: {message}", std::process::id());
}

/// Accepts on `listener` (a TCP or one-to-one SCTP socket: both are streams).
fn spawn_stream_listener(listener: TcpListener, what: String) {
    log(&format!("echoing on [::]:{what}"));
    std::thread::spawn(move || loop {
        match listener.accept() {
            Ok((stream, _peer)) => {
                std::thread::spawn(move || stream_echo(stream));
            }
            Err(error) => {
                log(&format!("accept on {what}: {error}"));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    });
}

fn stream_echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buffer[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn udp_echo(socket: UdpSocket) {
    let mut buffer = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buffer) {
            Ok((n, peer)) => {
                let _ = socket.send_to(&buffer[..n], peer);
            }
            Err(error) => {
                log(&format!("udp recv: {error}"));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
