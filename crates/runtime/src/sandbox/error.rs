//! What can fail inside the process backend's child while it builds the enclave, and how an
//! error is told (its whole `source()` chain on one line: the child sends that text to the
//! monitor through the error pipe).

use crate::sys::SysError;

/// A failure of the child's setup, before the enclave's init runs.
///
/// Variants that wrap another error are transparent: their text is that error's chain, as
/// `error_chain` writes it. The others carry their cause in their message, not as a source.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A system call failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// Unpacking a ramdisk or making a directory of the enclave's tree failed.
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
    /// Reading the image failed.
    #[error(transparent)]
    Eif(#[from] cloister_eif::EifError),
    /// The image changed since the monitor measured it.
    #[error(transparent)]
    ImageChanged(#[from] crate::imagecache::ImageChanged),
    /// Dropping capabilities or setting no_new_privs failed.
    #[error(transparent)]
    Caps(#[from] cloister_confine::caps::CapsError),
    /// Building or installing the seccomp allowlist failed.
    #[error(transparent)]
    Seccomp(#[from] cloister_confine::seccomp::SeccompError),
    /// Building or installing the notification filter failed.
    #[error(transparent)]
    Notify(#[from] cloister_confine::notify::NotifyError),
    /// Joining the enclave's cgroup failed.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// Sending the notification listener to the monitor failed.
    #[error(transparent)]
    SendListener(std::io::Error),
    /// Neither the image nor the monitor provides an init.
    #[error("no init to run")]
    NoInit,
    /// `/dev/null` of the enclave cannot be opened.
    #[error("open /dev/null: {0}")]
    DevNull(std::io::Error),
    /// A kernel file (`/proc/self/uid_map`, ...) cannot be written.
    #[error("write {file}: {error}")]
    Write {
        /// The file.
        file: &'static str,
        /// Why.
        error: std::io::Error,
    },
    /// The sysfs directory's descriptor cannot be duplicated.
    #[error("sys: {0}")]
    SysDir(std::io::Error),
}

/// An error and its causes, `: `-separated.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        msg.push_str(": ");
        msg.push_str(&cause.to_string());
        src = cause.source();
    }
    msg
}
