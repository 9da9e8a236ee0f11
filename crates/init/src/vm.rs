//! VM-mode set-up (a real kernel boots `init` from the bootstrap ramdisk): mount the pseudo
//! filesystems, load the kernel modules the image carries, prepare `/rootfs`, and power off
//! when the command ends.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

/// Optional list of modules to load, one path per line (relative to `/`), in order.
pub const MODULES_LIST: &str = "/modules.list";
/// Where modules are looked for when there is no list (every `.ko`, sorted by path).
pub const MODULES_DIR: &str = "/lib/modules";
/// Most modules loaded.
pub const MAX_MODULES: usize = 512;
/// Largest modules list.
pub const MAX_MODULES_LIST_BYTES: u64 = 64 * 1024;

/// Errors of VM-mode set-up.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A mount failed.
    #[error("mounting {fstype} on {target}")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        target: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A module could not be loaded.
    #[error("loading kernel module {0}")]
    Module(PathBuf, #[source] io::Error),
    /// The module list is unreadable or too long.
    #[error("module list")]
    List(#[source] crate::config::ConfigError),
    /// Too many modules.
    #[error("more than {MAX_MODULES} kernel modules")]
    TooManyModules,
}

fn mount_fs(
    source: &'static str,
    target: &Path,
    fstype: &'static str,
    flags: MsFlags,
) -> Result<(), VmError> {
    let _ = fs::create_dir_all(target);
    match mount(Some(source), target, Some(fstype), flags, None::<&str>) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(VmError::Mount {
            fstype,
            target: target.to_owned(),
            source: io::Error::from(e),
        }),
    }
}

/// Mounts /proc, /sys and /dev (devtmpfs).
pub fn mount_pseudo_filesystems() -> Result<(), VmError> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", Path::new("/proc"), "proc", nosuid)?;
    mount_fs("sysfs", Path::new("/sys"), "sysfs", nosuid)?;
    mount_fs(
        "devtmpfs",
        Path::new("/dev"),
        "devtmpfs",
        MsFlags::MS_NOSUID,
    )?;
    Ok(())
}

/// The modules to load: `/modules.list` when present, else every `.ko` under `/lib/modules`
/// sorted by path.
pub fn module_paths(root: &Path) -> Result<Vec<PathBuf>, VmError> {
    let list = root.join(MODULES_LIST.trim_start_matches('/'));
    if list.exists() {
        let bytes =
            crate::config::read_bounded(&list, MAX_MODULES_LIST_BYTES).map_err(VmError::List)?;
        let mut out = Vec::new();
        for line in bytes.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            if out.len() == MAX_MODULES {
                return Err(VmError::TooManyModules);
            }
            let rel = String::from_utf8_lossy(line);
            out.push(root.join(rel.trim_start_matches('/')));
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    let mut stack = vec![root.join(MODULES_DIR.trim_start_matches('/'))];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() && path.extension().is_some_and(|e| e == "ko") => {
                    if out.len() == MAX_MODULES {
                        return Err(VmError::TooManyModules);
                    }
                    out.push(path);
                }
                _ => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Loads one module with finit_module (already loaded is fine).
pub fn load_module(path: &Path) -> Result<(), VmError> {
    let file = fs::File::open(path).map_err(|e| VmError::Module(path.to_owned(), e))?;
    let params = CString::default();
    // SAFETY: a valid open descriptor and a valid empty parameter string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(VmError::Module(path.to_owned(), e));
        }
    }
    Ok(())
}

/// Gives `/rootfs` its own /proc, /sys, /dev and /tmp before init chroots into it.
pub fn prepare_rootfs() -> Result<(), VmError> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", Path::new("/rootfs/proc"), "proc", nosuid)?;
    mount_fs("sysfs", Path::new("/rootfs/sys"), "sysfs", nosuid)?;
    mount_fs(
        "devtmpfs",
        Path::new("/rootfs/dev"),
        "devtmpfs",
        MsFlags::MS_NOSUID,
    )?;
    mount_fs(
        "tmpfs",
        Path::new("/rootfs/tmp"),
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    Ok(())
}

/// Ends every remaining process, syncs and powers the VM off. Never returns.
pub fn power_off() -> ! {
    // SAFETY: plain syscalls; init is PID 1 of the VM, signalling everything else is intended.
    unsafe {
        libc::kill(-1, libc::SIGTERM);
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
        // Unreachable unless reboot failed; exiting PID 1 then panics the kernel, which also
        // stops the VM.
        libc::_exit(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_from_list_or_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("lib/modules/6.1/kernel");
        fs::create_dir_all(dir.join("b")).unwrap();
        fs::write(dir.join("b/virtio_vsock.ko"), b"").unwrap();
        fs::write(dir.join("a.ko"), b"").unwrap();
        fs::write(dir.join("notes.txt"), b"").unwrap();
        let found = module_paths(root.path()).unwrap();
        assert_eq!(found, vec![dir.join("a.ko"), dir.join("b/virtio_vsock.ko")]);
        fs::write(
            root.path().join("modules.list"),
            b"# order matters\n/lib/modules/6.1/kernel/b/virtio_vsock.ko\nlib/modules/6.1/kernel/a.ko\n",
        )
        .unwrap();
        let listed = module_paths(root.path()).unwrap();
        assert_eq!(
            listed,
            vec![dir.join("b/virtio_vsock.ko"), dir.join("a.ko")]
        );
    }
}
