//! Connection techniques: a unix stream socket (container runtime sockets) and TCP (kubelet
//! API). Refused or timed-out connections still made the call: the errno says which.

use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::report::Report;

const TCP_TIMEOUT: Duration = Duration::from_secs(1);

/// `connect-unix PATH`.
pub fn connect_unix(path: &Path) -> Report {
    const T: &str = "connect-unix";
    match UnixStream::connect(path) {
        Ok(_) => Report::done(T, format!("connected to {}", path.display())),
        Err(error) => Report::failed(T, &error, format!("{}", path.display())),
    }
}

/// `connect-tcp HOST PORT`: the first address HOST resolves to.
pub fn connect_tcp(host: &str, port: u16) -> Report {
    const T: &str = "connect-tcp";
    let address = match (host, port).to_socket_addrs().map(|mut all| all.next()) {
        Ok(Some(address)) => address,
        Ok(None) => {
            let error = std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
            return Report::failed(T, &error, format!("{host} resolves to no address; no connect made"));
        }
        Err(error) => return Report::failed(T, &error, format!("resolving {host}; no connect made")),
    };
    match TcpStream::connect_timeout(&address, TCP_TIMEOUT) {
        Ok(_) => Report::done(T, format!("connected to {address}")),
        Err(error) => Report::failed(T, &error, format!("{address}")),
    }
}
