//! `moat __pod-burst`: from inside a pod, sends many UDP datagrams from one socket as fast as
//! possible, ignoring errors (denied sends fail with EPERM). Used to flood the event path on
//! purpose: every denied send is one event. Prints `{"sent":N,"failed":M}`.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use super::LabError;

#[derive(clap::Args, Debug)]
pub struct BurstArgs {
    #[arg(long)]
    pub to: IpAddr,
    #[arg(long)]
    pub port: u16,
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
}

pub fn run(args: BurstArgs) -> Result<(), LabError> {
    let bind: SocketAddr = if args.to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(|_| LabError::Internal("bind address".into()))?;
    let socket = UdpSocket::bind(bind).map_err(|e| LabError::io("binding a UDP socket on", bind.to_string(), e))?;
    let target = SocketAddr::new(args.to, args.port);
    let (mut sent, mut failed) = (0u64, 0u64);
    for _ in 0..args.count {
        match socket.send_to(b"moat-burst", target) {
            Ok(_) => sent += 1,
            Err(_) => failed += 1,
        }
    }
    println!("{{\"sent\":{sent},\"failed\":{failed}}}");
    Ok(())
}
