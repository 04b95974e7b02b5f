//! Small libc socket helpers for what std cannot do: SCTP, ICMP ping sockets, dual-stack
//! listeners, connect with a timeout on any stream protocol.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

pub fn socket(
    domain: libc::c_int,
    kind: libc::c_int,
    protocol: libc::c_int,
) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) returns a fresh fd we own.
    let fd = check(unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: fd is valid and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn set_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe a live c_int.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A C socket address for `addr`.
pub fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

pub fn bind(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage/len come from sockaddr().
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    })
    .map(drop)
}

/// A socket bound to `[::]:port` that also takes IPv4 (IPV6_V6ONLY off); listening when it
/// is a stream socket.
pub fn dual_stack(kind: libc::c_int, protocol: libc::c_int, port: u16) -> io::Result<OwnedFd> {
    let fd = socket(libc::AF_INET6, kind, protocol)?;
    set_int(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(
        &fd,
        SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), port),
    )?;
    if kind == libc::SOCK_STREAM {
        // SAFETY: listen(2) on an fd we own.
        check(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
    }
    Ok(fd)
}

/// One connect(2) call (on a non-blocking socket: EINPROGRESS while it goes on).
pub fn connect(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage/len come from sockaddr().
    check(unsafe { libc::connect(fd.as_raw_fd(), (&storage as *const libc::sockaddr_storage).cast(), len) }).map(drop)
}

/// Connects a stream socket of `protocol` (TCP or SCTP) to `addr` within `timeout`; the
/// returned socket is blocking.
pub fn connect_stream(
    addr: SocketAddr,
    protocol: libc::c_int,
    timeout: Duration,
) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = socket(domain, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, protocol)?;
    if let Err(error) = connect(&fd, addr) {
        if error.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(error);
        }
        let mut poll = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let millis = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let ready = check(unsafe { libc::poll(&mut poll, 1, millis) })?;
        if ready == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        let mut so_error: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the pointers describe a live c_int and its length.
        check(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut so_error as *mut libc::c_int).cast(),
                &mut len,
            )
        })?;
        if so_error != 0 {
            return Err(io::Error::from_raw_os_error(so_error));
        }
    }
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = check(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        check(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            flags & !libc::O_NONBLOCK,
        ))?;
    }
    Ok(fd)
}

/// A connected stream socket (TCP or SCTP) with read/write timeouts.
pub fn open_stream(
    target: SocketAddr,
    protocol: libc::c_int,
    timeout: Duration,
) -> Result<TcpStream, String> {
    let fd =
        connect_stream(target, protocol, timeout).map_err(|e| format!("connect: {e}"))?;
    let stream = TcpStream::from(fd);
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| format!("setsockopt: {e}"))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| format!("setsockopt: {e}"))?;
    Ok(stream)
}
