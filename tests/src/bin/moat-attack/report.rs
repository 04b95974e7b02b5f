//! The one JSON line every technique prints, and errno names.

use std::io;

/// What one technique's system call did.
#[derive(Debug)]
pub struct Report {
    pub technique: &'static str,
    pub ok: bool,
    /// Raw errno when the call failed (`None` when it succeeded, or failed without one).
    pub errno: Option<i32>,
    pub detail: String,
}

impl Report {
    pub fn done(technique: &'static str, detail: impl Into<String>) -> Self {
        Self { technique, ok: true, errno: None, detail: detail.into() }
    }

    pub fn failed(technique: &'static str, error: &io::Error, detail: impl Into<String>) -> Self {
        // connect_timeout reports a timeout without an errno; the kernel's name for it is
        // the useful one here.
        let errno = error.raw_os_error().or(match error.kind() {
            io::ErrorKind::TimedOut => Some(libc::ETIMEDOUT),
            _ => None,
        });
        Self { technique, ok: false, errno, detail: detail.into() }
    }

    /// `done(detail)` when `ret` is not negative, else `failed` with the current errno.
    pub fn from_ret(technique: &'static str, ret: i64, detail: impl Into<String>) -> Self {
        if ret < 0 {
            Self::failed(technique, &io::Error::last_os_error(), detail)
        } else {
            Self::done(technique, detail)
        }
    }

    pub fn json(&self) -> String {
        // Field order as documented: technique, ok, errno, detail.
        #[derive(serde::Serialize)]
        struct Line<'a> {
            technique: &'a str,
            ok: bool,
            errno: Option<String>,
            detail: &'a str,
        }
        let line = Line { technique: self.technique, ok: self.ok, errno: self.errno.map(errno_name), detail: &self.detail };
        // Serializing plain strings and booleans cannot fail.
        serde_json::to_string(&line).unwrap_or_default()
    }

    /// 0 when the system call succeeded, 1 when it failed.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.ok)
    }
}

/// `EPERM` for 1; `E<n>` for numbers outside the table.
pub fn errno_name(errno: i32) -> String {
    const NAMES: &[(i32, &str)] = &[
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::ESRCH, "ESRCH"),
        (libc::EINTR, "EINTR"),
        (libc::EIO, "EIO"),
        (libc::ENXIO, "ENXIO"),
        (libc::E2BIG, "E2BIG"),
        (libc::ENOEXEC, "ENOEXEC"),
        (libc::EBADF, "EBADF"),
        (libc::ECHILD, "ECHILD"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::ENOMEM, "ENOMEM"),
        (libc::EACCES, "EACCES"),
        (libc::EFAULT, "EFAULT"),
        (libc::ENOTBLK, "ENOTBLK"),
        (libc::EBUSY, "EBUSY"),
        (libc::EEXIST, "EEXIST"),
        (libc::EXDEV, "EXDEV"),
        (libc::ENODEV, "ENODEV"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::EISDIR, "EISDIR"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENFILE, "ENFILE"),
        (libc::EMFILE, "EMFILE"),
        (libc::ENOTTY, "ENOTTY"),
        (libc::ETXTBSY, "ETXTBSY"),
        (libc::EFBIG, "EFBIG"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::ESPIPE, "ESPIPE"),
        (libc::EROFS, "EROFS"),
        (libc::EMLINK, "EMLINK"),
        (libc::EPIPE, "EPIPE"),
        (libc::ERANGE, "ERANGE"),
        (libc::ENAMETOOLONG, "ENAMETOOLONG"),
        (libc::ENOSYS, "ENOSYS"),
        (libc::ELOOP, "ELOOP"),
        (libc::ENOTSOCK, "ENOTSOCK"),
        (libc::EPROTOTYPE, "EPROTOTYPE"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::EAFNOSUPPORT, "EAFNOSUPPORT"),
        (libc::EADDRINUSE, "EADDRINUSE"),
        (libc::EADDRNOTAVAIL, "EADDRNOTAVAIL"),
        (libc::ENETUNREACH, "ENETUNREACH"),
        (libc::ECONNRESET, "ECONNRESET"),
        (libc::ETIMEDOUT, "ETIMEDOUT"),
        (libc::ECONNREFUSED, "ECONNREFUSED"),
        (libc::EHOSTUNREACH, "EHOSTUNREACH"),
        (libc::EALREADY, "EALREADY"),
        (libc::EINPROGRESS, "EINPROGRESS"),
        (libc::EUSERS, "EUSERS"),
        (libc::EKEYREJECTED, "EKEYREJECTED"),
    ];
    NAMES
        .iter()
        .find(|(number, _)| *number == errno)
        .map(|(_, name)| (*name).to_string())
        .unwrap_or_else(|| format!("E{errno}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_has_the_four_fields() {
        let report = Report::failed("open", &io::Error::from_raw_os_error(libc::EPERM), "/x");
        assert_eq!(report.json(), r#"{"technique":"open","ok":false,"errno":"EPERM","detail":"/x"}"#);
        assert_eq!(report.exit_code(), 1);
        let done = Report::done("bpf", "map created");
        assert_eq!(done.json(), r#"{"technique":"bpf","ok":true,"errno":null,"detail":"map created"}"#);
        assert_eq!(done.exit_code(), 0);
    }

    #[test]
    fn timeouts_are_named_even_without_an_errno() {
        let timeout = io::Error::new(io::ErrorKind::TimedOut, "connection timed out");
        assert_eq!(Report::failed("connect-tcp", &timeout, "").errno, Some(libc::ETIMEDOUT));
        assert_eq!(errno_name(libc::ECONNREFUSED), "ECONNREFUSED");
        assert_eq!(errno_name(4095), "E4095");
    }
}
