//! Connection techniques: a unix stream socket (container runtime sockets) and TCP (kubelet
//! API). Refused or timed-out connections still made the call: the errno says which.

use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::time::Duration;

use crate::args::UnixAddress;
use crate::report::Report;

const TCP_TIMEOUT: Duration = Duration::from_secs(1);

/// `connect-unix PATH [--address FORM]`.
pub fn connect_unix(path: &Path, address: UnixAddress) -> Report {
    const T: &str = "connect-unix";
    let result = match address {
        UnixAddress::Terminated => UnixStream::connect(path).map(drop),
        form => connect_unix_raw(path.as_os_str().as_bytes(), form),
    };
    match result {
        Ok(()) => Report::done(T, format!("connected to {}", path.display())),
        Err(error) => Report::failed(T, &error, format!("{}", path.display())),
    }
}

/// connect(2) with a `sockaddr_un` built by hand: the path without its NUL, the address
/// length ending it (and a non-NUL byte right after it, outside the length), or the path, its
/// NUL and bytes after it inside the length.
fn connect_unix_raw(path: &[u8], form: UnixAddress) -> std::io::Result<()> {
    const PADDING: &[u8] = b"\0trailing";
    // SAFETY: sockaddr_un is plain data; all zero is a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let room = address.sun_path.len();
    let named = match form {
        UnixAddress::Padded => path.len() + PADDING.len(),
        _ => path.len(),
    };
    if path.is_empty() || named >= room {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, byte) in address.sun_path.iter_mut().zip(path.iter().chain(PADDING.iter().filter(|_| form == UnixAddress::Padded))) {
        *slot = *byte as libc::c_char;
    }
    if form == UnixAddress::Unterminated {
        address.sun_path[path.len()] = b'X' as libc::c_char;
    }
    let length = std::mem::offset_of!(libc::sockaddr_un, sun_path) + named;
    // SAFETY: plain system calls on a descriptor this function owns; the address outlives
    // the call and `length` lies within it.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let status = libc::connect(fd, &address as *const libc::sockaddr_un as *const libc::sockaddr, length as libc::socklen_t);
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if status < 0 { Err(error) } else { Ok(()) }
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
