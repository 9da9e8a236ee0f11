//! The error of a wrapped system call, and the conversions every wrapper shares.

use nix::errno::Errno;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A failed system call: which call, on what, and the errno.
#[derive(Debug, thiserror::Error)]
#[error("{call}({context}) failed")]
pub struct SysError {
    /// The system call (or libc function) that failed.
    pub call: &'static str,
    /// What it was applied to (a path, a pid, flags).
    pub context: String,
    /// The kernel's answer.
    #[source]
    pub errno: Errno,
}

impl SysError {
    /// Builds an error from the current `errno`.
    pub fn last(call: &'static str, context: impl Into<String>) -> Self {
        Self {
            call,
            context: context.into(),
            errno: Errno::last(),
        }
    }

    /// Builds an error from an explicit errno.
    pub fn new(call: &'static str, context: impl Into<String>, errno: Errno) -> Self {
        Self {
            call,
            context: context.into(),
            errno,
        }
    }
}

/// Result of a wrapped system call.
pub type SysResult<T> = Result<T, SysError>;

/// A path as a C string; a NUL in it is `EINVAL` for `call`.
pub(super) fn cpath(call: &'static str, path: &Path) -> SysResult<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SysError::new(call, path.display().to_string(), Errno::EINVAL))
}

/// A name as a C string; a NUL in it is `EINVAL` for `call`.
pub(super) fn cname(call: &'static str, name: &[u8]) -> SysResult<CString> {
    CString::new(name).map_err(|_| {
        SysError::new(
            call,
            String::from_utf8_lossy(name).into_owned(),
            Errno::EINVAL,
        )
    })
}

/// `ret`, or the error of `call` on `name` when it is negative.
pub(super) fn check(call: &'static str, name: &[u8], ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 {
        Err(SysError::last(
            call,
            String::from_utf8_lossy(name).into_owned(),
        ))
    } else {
        Ok(ret)
    }
}
