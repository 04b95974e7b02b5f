//! `moat-lab __pod-serve`: echo servers on a pod's container ports, dual-stack (`[::]` with
//! IPV6_V6ONLY off). TCP and SCTP (one-to-one style) echo each connection until EOF; a
//! connection whose first byte is NUL is one request: echoed, then closed by the server (the
//! side that closes first keeps TIME_WAIT, so a client opening thousands of connections a
//! second does not run out of ports). UDP echoes datagrams. Runs until killed.
//!
//! Connections are served by threads that each accept and serve one connection at a time
//! and are kept for the next one, a new thread starting whenever none is waiting in
//! accept: held connections never block new ones, and a client that opens connection after
//! connection does not pay a thread start for each (it would weigh on every benchmark
//! configuration alike and hide what the datapath costs).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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

/// Threads kept waiting in accept beyond the one that must always be.
const SPARE_ACCEPTORS: usize = 4;

/// Accepts on `listener` (a TCP or one-to-one SCTP socket: both are streams).
fn spawn_stream_listener(listener: TcpListener, what: String) {
    log(&format!("echoing on [::]:{what}"));
    let pool = Arc::new(Acceptors { listener, what, idle: AtomicUsize::new(1) });
    std::thread::spawn(move || pool.serve());
}

struct Acceptors {
    listener: TcpListener,
    what: String,
    /// Threads waiting in accept (or about to).
    idle: AtomicUsize,
}

impl Acceptors {
    fn serve(self: Arc<Self>) {
        loop {
            match self.listener.accept() {
                Ok((stream, _peer)) => {
                    // The last idle thread got a connection: another one takes its place.
                    if self.idle.fetch_sub(1, Ordering::SeqCst) == 1 {
                        self.idle.fetch_add(1, Ordering::SeqCst);
                        let pool = Arc::clone(&self);
                        std::thread::spawn(move || pool.serve());
                    }
                    stream_echo(stream);
                    // Enough others wait in accept already: this thread ends.
                    if self.idle.fetch_add(1, Ordering::SeqCst) > SPARE_ACCEPTORS {
                        self.idle.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                }
                Err(error) => {
                    log(&format!("accept on {}: {error}", self.what));
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }
}

fn stream_echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut first = true;
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buffer[..n]).is_err() {
                    return;
                }
                // One request per connection: the server closes first.
                if first && buffer[0] == 0 {
                    return;
                }
                first = false;
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
