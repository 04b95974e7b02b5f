//! `moat-lab __pod-burst`: from inside a pod, as fast as possible: UDP datagrams from a few
//! sockets, or TCP connect attempts, to one port or cycling over a range of ports. Errors are
//! counted, not fatal (a denied send or connect fails with EPERM). Used to flood the event
//! path (every denied attempt is one event) and the flow table (every allowed datagram to a
//! new port is a new flow). Prints `{"sent":N,"failed":M,"seconds":S,"rate":R}`.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::{sock, LabError};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BurstProtocol {
    Udp,
    Tcp,
}

#[derive(clap::Args, Debug)]
pub struct BurstArgs {
    #[arg(long)]
    pub to: IpAddr,
    /// The first port.
    #[arg(long)]
    pub port: u16,
    /// Ports cycled over, from `--port` on.
    #[arg(long, default_value_t = 1)]
    pub ports: u16,
    #[arg(long, value_enum, default_value = "udp")]
    pub protocol: BurstProtocol,
    /// UDP: sockets (source ports) the datagrams are spread over.
    #[arg(long, default_value_t = 1)]
    pub sockets: u16,
    /// Attempts in all (unless `--seconds` ends it first).
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Stop after this many seconds.
    #[arg(long)]
    pub seconds: Option<f64>,
}

pub fn run(args: BurstArgs) -> Result<(), LabError> {
    if args.ports == 0 || args.sockets == 0 {
        return Err(LabError::Usage(
            "--ports and --sockets must be at least 1".into(),
        ));
    }
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s.clamp(0.0, 3600.0)));
    let start = Instant::now();
    let (sent, failed) = match args.protocol {
        BurstProtocol::Udp => udp(&args, deadline)?,
        BurstProtocol::Tcp => tcp(&args, deadline),
    };
    let seconds = start.elapsed().as_secs_f64();
    let rate = (sent + failed) as f64 / seconds.max(1e-9);
    println!("{{\"sent\":{sent},\"failed\":{failed},\"seconds\":{seconds:.3},\"rate\":{rate:.0}}}");
    Ok(())
}

/// The `i`th target port.
fn port(args: &BurstArgs, i: u64) -> u16 {
    args.port.wrapping_add((i % u64::from(args.ports)) as u16)
}

/// Checks the clock every 1024 attempts only.
fn done(deadline: Option<Instant>, i: u64) -> bool {
    i.is_multiple_of(1024) && deadline.is_some_and(|d| Instant::now() >= d)
}

fn udp(args: &BurstArgs, deadline: Option<Instant>) -> Result<(u64, u64), LabError> {
    let bind: SocketAddr = if args.to.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|_| LabError::Internal("bind address".into()))?;
    let sockets = (0..args.sockets)
        .map(|_| {
            UdpSocket::bind(bind)
                .map_err(|e| LabError::io("binding a UDP socket on", bind.to_string(), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (mut sent, mut failed) = (0u64, 0u64);
    for i in 0..args.count {
        if done(deadline, i) {
            break;
        }
        let socket = &sockets[(i / u64::from(args.ports)) as usize % sockets.len()];
        match socket.send_to(b"moat-burst", SocketAddr::new(args.to, port(args, i))) {
            Ok(_) => sent += 1,
            Err(_) => failed += 1,
        }
    }
    Ok((sent, failed))
}

/// Connect attempts; a socket whose connect was refused (EPERM: denied before anything
/// happened) is reused, any other outcome takes a new socket.
fn tcp(args: &BurstArgs, deadline: Option<Instant>) -> (u64, u64) {
    let family = if args.to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let (mut sent, mut failed) = (0u64, 0u64);
    let mut socket = None;
    for i in 0..args.count {
        if done(deadline, i) {
            break;
        }
        let fd = match socket.take() {
            Some(fd) => fd,
            None => match sock::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) {
                Ok(fd) => fd,
                Err(_) => {
                    failed += 1;
                    continue;
                }
            },
        };
        let refused = sock::connect(&fd, SocketAddr::new(args.to, port(args, i)))
            .err()
            .is_some_and(|e| e.raw_os_error() == Some(libc::EPERM));
        if refused {
            failed += 1;
            socket = Some(fd);
        } else {
            sent += 1;
        }
    }
    (sent, failed)
}
