//! The `vm` isolation backend: an enclave is a QEMU microVM ([`cloister_vm`]).
//!
//! [`VmBackend`] implements [`Backend`]; the monitor calls, in order:
//! - [`Backend::check_host`] ([`prepare_paths`], then [`check_qemu`]): QEMU, running as the
//!   enclave's uid, must be able to reach the enclave's files (a run directory closed to other
//!   users fails here, at once, with a message saying how to fix it), and QEMU must be present;
//! - [`Backend::check_image`] ([`check_kernel`]): the image's kernel section must be a bootable
//!   bzImage (the setup header's `HdrS` magic at [`BZIMAGE_MAGIC_OFFSET`]); an image built
//!   without a kernel fails here with an image-class error;
//! - [`Backend::create`], which writes the kernel and the concatenation of every ramdisk (in
//!   order, each padded to 4 bytes, as the kernel's initramfs unpacker takes them) into the
//!   enclave's directory, mode 0400 and owned by the enclave's host uid (the launch's
//!   [`LaunchSpec::host_uid`]), the only user QEMU runs as; they are copied from the monitor's
//!   open image (the file it measured, [`OpenImage`]), never from its path, and refused if that
//!   file changed meanwhile. It then creates the enclave's cgroup (cpuset = its CPUs, memory =
//!   its memory plus [`QEMU_OVERHEAD_MIB`], pids = [`QEMU_PIDS_MAX`]) that QEMU joins before it
//!   runs;
//! - [`Pending::start`], which starts the VM: one vCPU per allocated CPU, each pinned; the
//!   enclave's memory; its cid; its NSM (served at cid 0 port 1 by the vsock device); the debug
//!   console into the enclave's console file. The vsock device joins the host fabric itself
//!   (no broker, [`HostLink::Device`]), by the broker's rules: it dials parent listeners as the
//!   enclave's host uid/gid, never as root.
//!
//! [`VmRunning`] is the [`Running`] handle: exit status, kill, cgroup cleanup, and the VM's
//! own account of how it ended (a guest kernel panic is reported as such).

use crate::backend::{Backend, BackendError, HostLink, Isolation, LaunchSpec, Pending, Running};
use crate::cgroup::{EnclaveCgroup, Layout, Limits};
use crate::imagecache::{ImageCursor, OpenImage};
use crate::sys::ExitStatus;
use cloister_vm::{Accel, HostConfig, VmConfig, VmEnclave, VmExit};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Offset of the bzImage setup header magic.
pub const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
/// The setup header magic.
pub const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
/// Memory QEMU itself may use beyond the guest's (translation cache, device state, threads),
/// added to the cgroup's memory limit.
pub const QEMU_OVERHEAD_MIB: u64 = 256;
/// Task limit of a VM enclave's cgroup (QEMU's main, RCU, vCPU and I/O worker threads).
pub const QEMU_PIDS_MAX: u32 = 256;
/// Extra time the VM's own boot watchdog waits beyond the monitor's deadline, so the monitor
/// reports the timeout first.
const WATCHDOG_GRACE: Duration = Duration::from_secs(5);
/// Kernel file in the enclave's directory.
pub const KERNEL_FILE: &str = "vm-kernel";
/// Initrd file in the enclave's directory.
pub const INITRD_FILE: &str = "vm-initrd";

/// The `vm` backend, with where QEMU and its firmware are on this host.
#[derive(Debug, Clone, Default)]
pub struct VmBackend {
    /// QEMU, its firmware, the accelerator.
    pub host: HostConfig,
}

impl VmBackend {
    /// The backend running QEMU as `host` says.
    pub fn new(host: HostConfig) -> Self {
        Self { host }
    }
}

impl Backend for VmBackend {
    fn isolation(&self) -> Isolation {
        Isolation::Vm
    }

    fn host_link(&self) -> HostLink {
        HostLink::Device
    }

    fn check_host(&self, run_dir: &Path, enclave_dir: &Path) -> Result<(), BackendError> {
        prepare_paths(run_dir, enclave_dir)?;
        check_qemu(&self.host.qemu)
    }

    fn check_image(&self, image: &OpenImage) -> Result<(), BackendError> {
        check_kernel(image)
    }

    fn create(
        &self,
        spec: &LaunchSpec,
        console: std::os::fd::OwnedFd,
    ) -> Result<Box<dyn Pending>, BackendError> {
        // QEMU writes the console file itself.
        drop(console);
        let owner = (spec.host_uid, spec.host_gid);
        let files = write_boot_files(&spec.image, &spec.enclave_dir, owner)?;
        let cgroup = EnclaveCgroup::new(Layout::detect()?, &spec.enclave_id);
        cgroup.create(&Limits {
            cpus: spec.cpus.clone(),
            memory_bytes: spec
                .memory_mib
                .saturating_add(QEMU_OVERHEAD_MIB)
                .saturating_mul(1024 * 1024),
            pids_max: QEMU_PIDS_MAX,
        })?;
        Ok(Box::new(VmPending {
            cid: u32::try_from(spec.cid).map_err(|_| BackendError::CidOutOfRange(spec.cid))?,
            files,
            host: self.host.clone(),
            spec: spec.clone(),
            cgroup: Some(cgroup),
        }))
    }
}

/// A VM enclave whose boot files and cgroup are ready, QEMU not started yet.
struct VmPending {
    cid: u32,
    files: BootFiles,
    host: HostConfig,
    spec: LaunchSpec,
    /// `None` once handed to the running VM.
    cgroup: Option<EnclaveCgroup>,
}

impl Drop for VmPending {
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            let _ = cgroup.remove();
        }
    }
}

impl VmPending {
    /// The VM's configuration for this launch: the one place a [`VmConfig`] is built.
    fn vm_config(
        &self,
        cgroup: &EnclaveCgroup,
        nsm: std::sync::Arc<dyn cloister_vsock::NsmService>,
    ) -> VmConfig {
        let spec = &self.spec;
        let owner = (spec.host_uid, spec.host_gid);
        let mut cfg = VmConfig::new(
            &self.files.kernel,
            &self.files.initrd,
            self.cid,
            &spec.run_dir,
            nsm,
        );
        cfg.cmdline = self.files.cmdline.clone();
        cfg.memory_mib = spec.memory_mib;
        cfg.cpus = spec.cpus.iter().map(|&c| c as usize).collect();
        cfg.debug = spec.debug;
        cfg.console = spec.console_path.clone();
        let beat = spec.on_heartbeat.clone();
        cfg.on_heartbeat = Some(Box::new(move || beat()));
        cfg.boot_timeout = spec.boot_timeout + WATCHDOG_GRACE;
        cfg.run_as = Some(owner);
        // The enclave's connections to parent listeners carry its host identity, never root's
        // (as the process backend's broker does).
        cfg.enclave_identity = Some(cloister_vm::HostIdentity {
            uid: owner.0,
            gid: owner.1,
        });
        cfg.cgroup_procs = cgroup
            .dirs()
            .iter()
            .map(|d| d.join("cgroup.procs"))
            .collect();
        cfg.host = self.host.clone();
        cfg
    }
}

impl Pending for VmPending {
    fn pid(&self) -> i32 {
        0
    }

    fn start(mut self: Box<Self>) -> Result<Box<dyn Running>, BackendError> {
        let nsm = self.spec.nsm.get().cloned().ok_or_else(|| {
            BackendError::Setup("the enclave's NSM was not set up before the VM started".into())
        })?;
        let cgroup = self
            .cgroup
            .take()
            .ok_or_else(|| BackendError::Setup("the VM was started twice".into()))?;
        match VmEnclave::start(self.vm_config(&cgroup, nsm)) {
            Ok(vm) => Ok(Box::new(VmRunning {
                vm,
                cgroup,
                status: None,
            })),
            Err(e) => {
                let _ = cgroup.remove();
                Err(BackendError::Vm(e))
            }
        }
    }
}

/// Fails with [`BackendError::VmUnavailable`] when the QEMU binary `qemu` cannot be found.
pub fn check_qemu(qemu: &Path) -> Result<(), BackendError> {
    if find_program(qemu).is_some() {
        return Ok(());
    }
    Err(BackendError::VmUnavailable(format!(
        "{} was not found{}; install it (Debian/Ubuntu: apt-get install qemu-system-x86) or \
         name it with CLOISTER_QEMU",
        qemu.display(),
        if qemu.components().count() > 1 {
            ""
        } else {
            " in PATH"
        }
    )))
}

/// The executable `program` resolves to (a path, or a name looked up in `PATH`).
fn find_program(program: &Path) -> Option<PathBuf> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return executable(program).then(|| program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// Directories of the run directory that QEMU passes through: `enclaves/` (to the enclave's
/// kernel and initrd) and `vm/` (to its vhost-user and QMP sockets).
const QEMU_REACHED_DIRS: [&str; 2] = ["enclaves", "vm"];

/// Makes sure QEMU, which runs as the enclave's own uid, can reach the enclave's directory and
/// its socket directory: every directory from `/` down to the run directory must be
/// searchable by other users (they are not the runtime's to change, so one that is not fails
/// at once with [`BackendError::VmPathClosed`], e.g. a run directory made by `mktemp -d`,
/// mode 0700); the directories the runtime makes below it (`enclaves/`, `vm/` and the
/// enclave's directory) are made searchable (never listable or writable) by others.
pub fn prepare_paths(run_dir: &Path, enclave_dir: &Path) -> Result<(), BackendError> {
    let setup = |what: &str, p: &Path, e| io_setup(what, p, e);
    let run = std::fs::canonicalize(run_dir).map_err(|e| setup("cannot examine", run_dir, e))?;
    for dir in run.ancestors() {
        let m = std::fs::metadata(dir).map_err(|e| setup("cannot examine", dir, e))?;
        if m.permissions().mode() & 0o001 == 0 {
            return Err(BackendError::VmPathClosed {
                dir: dir.to_owned(),
                mode: m.permissions().mode() & 0o7777,
                run: run_dir.to_owned(),
            });
        }
    }
    for sub in QEMU_REACHED_DIRS {
        let dir = run_dir.join(sub);
        std::fs::create_dir_all(&dir).map_err(|e| setup("cannot create", &dir, e))?;
        make_searchable(&dir)?;
    }
    make_searchable(enclave_dir)
}

/// Adds search permission for other users to `dir` (a directory the runtime made).
fn make_searchable(dir: &Path) -> Result<(), BackendError> {
    let m = std::fs::metadata(dir).map_err(|e| io_setup("cannot examine", dir, e))?;
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o001 == 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))
            .map_err(|e| io_setup("cannot change the mode of", dir, e))?;
    }
    Ok(())
}

/// True when `head` (the first bytes of a kernel) carries the bzImage setup header magic.
pub fn is_bzimage(head: &[u8]) -> bool {
    head.get(BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + BZIMAGE_MAGIC.len())
        == Some(&BZIMAGE_MAGIC[..])
}

fn image_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Image(e.to_string())
}

fn io_setup(what: &str, path: &Path, e: std::io::Error) -> BackendError {
    BackendError::Setup(format!("{what} {}: {e}", path.display()))
}

/// Creates `path` (mode 0400, owned by `owner`) and fills it with `fill`.
fn write_private(
    path: &Path,
    owner: (u32, u32),
    fill: impl FnOnce(&mut std::fs::File) -> Result<(), BackendError>,
) -> Result<(), BackendError> {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .map_err(|e| io_setup("cannot create", path, e))?;
    fill(&mut file)?;
    file.flush()
        .map_err(|e| io_setup("cannot write", path, e))?;
    std::os::unix::fs::fchown(&file, Some(owner.0), Some(owner.1))
        .map_err(|e| io_setup("cannot chown", path, e))
}

/// The files [`write_boot_files`] wrote.
#[derive(Debug, Clone)]
pub struct BootFiles {
    /// The kernel.
    pub kernel: PathBuf,
    /// The ramdisks, concatenated.
    pub initrd: PathBuf,
    /// The image's kernel command line.
    pub cmdline: String,
}

/// Fails with [`BackendError::Image`] unless the image's kernel is a bootable bzImage (the
/// monitor checks this before it allocates anything).
pub fn check_kernel(image: &OpenImage) -> Result<(), BackendError> {
    let mut eif = image.reader().map_err(image_err)?;
    check_kernel_of(&mut eif)
}

fn check_kernel_of(eif: &mut cloister_eif::EifReader<ImageCursor>) -> Result<(), BackendError> {
    let kernel_index = eif.kernel();
    let mut head = [0u8; BZIMAGE_MAGIC_OFFSET + 4];
    let mut got = 0;
    {
        let mut r = eif.section_reader(kernel_index).map_err(image_err)?;
        while got < head.len() {
            match r.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(image_err(e)),
            }
        }
    }
    if !is_bzimage(&head[..got]) {
        return Err(BackendError::Image(
            "the image's kernel is not a bootable bzImage (no \"HdrS\" setup header at 0x202): \
             it was built without a kernel: use `cloister blobs prepare` and \
             `build-enclave --blobs`"
                .into(),
        ));
    }
    Ok(())
}

/// Checks the image's kernel and writes the kernel and the initrd into `dir`, readable only by
/// `owner`, from the open (measured) image; fails if that file was written to meanwhile.
pub fn write_boot_files(
    image: &OpenImage,
    dir: &Path,
    owner: (u32, u32),
) -> Result<BootFiles, BackendError> {
    let mut eif = image.reader().map_err(image_err)?;
    let cmdline = eif.cmdline().map_err(image_err)?;
    check_kernel_of(&mut eif)?;
    let kernel_index = eif.kernel();
    let kernel = dir.join(KERNEL_FILE);
    write_private(&kernel, owner, |f| {
        let mut r = eif.section_reader(kernel_index).map_err(image_err)?;
        std::io::copy(&mut r, f).map_err(|e| io_setup("cannot write", &kernel, e))?;
        Ok(())
    })?;
    let initrd = dir.join(INITRD_FILE);
    write_private(&initrd, owner, |f| {
        let mut total = 0u64;
        for index in eif.ramdisks() {
            let mut r = eif.section_reader(index).map_err(image_err)?;
            total += std::io::copy(&mut r, f).map_err(|e| io_setup("cannot write", &initrd, e))?;
            let pad = (4 - total % 4) % 4;
            f.write_all(&[0u8; 3][..pad as usize])
                .map_err(|e| io_setup("cannot write", &initrd, e))?;
            total += pad;
        }
        Ok(())
    })?;
    if let Err(e) = image.check_unchanged() {
        let _ = std::fs::remove_file(&kernel);
        let _ = std::fs::remove_file(&initrd);
        return Err(image_err(e));
    }
    Ok(BootFiles {
        kernel,
        initrd,
        cmdline,
    })
}

/// A running VM enclave.
#[derive(Debug)]
pub struct VmRunning {
    vm: VmEnclave,
    cgroup: EnclaveCgroup,
    status: Option<ExitStatus>,
}

impl VmRunning {
    /// The accelerator QEMU uses.
    pub fn accel(&self) -> Accel {
        self.vm.accel()
    }

    /// How the VM ended, once it has.
    pub fn exit(&self) -> Option<VmExit> {
        self.vm.try_wait()
    }

    /// The last console bytes (kept in memory, debug mode or not).
    pub fn console_tail(&self) -> String {
        self.vm.console_tail()
    }
}

/// The exit status a VM's end is reported as.
pub fn exit_status(exit: &VmExit) -> ExitStatus {
    match exit {
        VmExit::PoweredOff => ExitStatus::Exited(0),
        VmExit::Panicked(_) | VmExit::Unbootable(_) => ExitStatus::Exited(1),
        VmExit::Killed | VmExit::BootTimeout => ExitStatus::Signaled(libc::SIGKILL),
        VmExit::QemuFailed(Some(code), _) => ExitStatus::Exited(*code),
        VmExit::QemuFailed(None, _) => ExitStatus::Signaled(libc::SIGKILL),
    }
}

impl Running for VmRunning {
    fn pid(&self) -> i32 {
        i32::try_from(self.vm.pid()).unwrap_or(0)
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>, BackendError> {
        if self.status.is_none() {
            self.status = self.vm.try_wait().map(|e| exit_status(&e));
        }
        Ok(self.status)
    }

    fn kill(&mut self) -> Result<ExitStatus, BackendError> {
        let exit = self.vm.kill();
        let status = *self.status.get_or_insert(exit_status(&exit));
        Ok(status)
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        Ok(self.cgroup.remove()?)
    }

    fn oom_kills(&self) -> u64 {
        self.cgroup.oom_kills()
    }

    fn leftovers(&self) -> Vec<PathBuf> {
        self.cgroup.dirs().to_vec()
    }

    fn exit_detail(&self) -> Option<String> {
        self.vm.try_wait().map(|e| e.to_string())
    }

    fn console_tail(&self) -> Option<String> {
        Some(self.vm.console_tail())
    }

    fn accelerator(&self) -> Option<&'static str> {
        Some(self.vm.accel().qemu_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's own uid and gid: what any user may give a file it creates.
    fn own_ids() -> (u32, u32) {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    }

    /// An owner other than the writer where the tests run as root (an enclave's uid), else
    /// the writer itself.
    fn enclave_owner() -> (u32, u32) {
        if nix::unistd::geteuid().is_root() {
            (1_000_000_123, 1_000_000_123)
        } else {
            own_ids()
        }
    }

    fn eif_with_kernel(dir: &Path, kernel: Vec<u8>) -> PathBuf {
        let path = dir.join("x.eif");
        cloister_eif::EifBuilder::new()
            .kernel_bytes(kernel)
            .cmdline("console=ttyS0 extra=1")
            .ramdisk_bytes(b"abcde".to_vec())
            .ramdisk_bytes(b"fgh".to_vec())
            .write_to_path(&path)
            .unwrap();
        path
    }

    #[test]
    fn bzimage_magic_is_checked_with_bounds() {
        let mut k = vec![0u8; 0x300];
        assert!(!is_bzimage(&k));
        k[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(is_bzimage(&k));
        assert!(!is_bzimage(&k[..0x204]));
        assert!(!is_bzimage(&[]));
    }

    #[test]
    fn an_image_without_a_kernel_is_an_image_error() {
        let dir = tempfile::tempdir().unwrap();
        let eif = eif_with_kernel(dir.path(), b"not a kernel".to_vec());
        let image = OpenImage::open(&eif).unwrap();
        assert!(matches!(check_kernel(&image), Err(BackendError::Image(_))));
        match write_boot_files(&image, dir.path(), own_ids()) {
            Err(BackendError::Image(m)) => {
                assert!(m.contains("cloister blobs prepare"), "{m}");
                assert!(m.contains("build-enclave --blobs"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!dir.path().join(KERNEL_FILE).exists());
    }

    #[test]
    fn boot_files_are_private_and_ramdisks_padded() {
        let dir = tempfile::tempdir().unwrap();
        let mut k = vec![0u8; 0x400];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        let eif = eif_with_kernel(dir.path(), k.clone());
        let owner = enclave_owner();
        let image = OpenImage::open(&eif).unwrap();
        let files = write_boot_files(&image, dir.path(), owner).unwrap();
        assert_eq!(files.cmdline, "console=ttyS0 extra=1");
        assert_eq!(std::fs::read(&files.kernel).unwrap(), k);
        assert_eq!(
            std::fs::read(&files.initrd).unwrap(),
            b"abcde\0\0\0fgh\0".to_vec()
        );
        for p in [&files.kernel, &files.initrd] {
            let m = std::fs::metadata(p).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o400);
            assert_eq!(
                (
                    std::os::unix::fs::MetadataExt::uid(&m),
                    std::os::unix::fs::MetadataExt::gid(&m)
                ),
                owner
            );
        }
        // Written again (a retry in the same directory) replaces them.
        write_boot_files(&image, dir.path(), owner).unwrap();
    }

    /// Another image renamed over the path after the monitor opened (and measured) the first:
    /// the boot files are the first one's. Rewritten in place instead: refused.
    #[test]
    fn boot_files_come_from_the_open_image() {
        let dir = tempfile::tempdir().unwrap();
        let mut k = vec![0u8; 0x400];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        let eif = eif_with_kernel(dir.path(), k.clone());
        let image = OpenImage::open(&eif).unwrap();
        let measured = image.reader().unwrap().measure().unwrap();
        let other_dir = dir.path().join("other");
        std::fs::create_dir(&other_dir).unwrap();
        let mut k2 = k.clone();
        k2[0x300] = 0xee;
        let other = eif_with_kernel(&other_dir, k2.clone());
        std::fs::rename(&other, &eif).unwrap();
        // Read from the open file: the measured image, never the one now at the path ...
        check_kernel(&image).unwrap();
        assert_eq!(image.reader().unwrap().measure().unwrap(), measured);
        // ... and since the file that was opened changed status (it was replaced), its boot
        // files are refused rather than booted.
        assert!(matches!(
            write_boot_files(&image, dir.path(), own_ids()),
            Err(BackendError::Image(m)) if m.contains("modified or replaced")
        ));
        assert!(!dir.path().join(KERNEL_FILE).exists());
        // Opened after the replacement: the new image.
        let now = OpenImage::open(&eif).unwrap();
        let files = write_boot_files(&now, dir.path(), own_ids()).unwrap();
        assert_eq!(std::fs::read(&files.kernel).unwrap(), k2);

        // In place: the open file itself changes.
        let image = OpenImage::open(&eif).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let bytes = std::fs::read(&eif).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&eif).unwrap();
        std::io::Write::write_all(&mut &f, &bytes).unwrap();
        drop(f);
        assert!(matches!(
            write_boot_files(&image, dir.path(), own_ids()),
            Err(BackendError::Image(_))
        ));
        assert!(!dir.path().join(KERNEL_FILE).exists());
    }

    #[test]
    fn a_run_directory_closed_to_qemu_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let chmod = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        // Like `mktemp -d`: mode 0700.
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        chmod(dir.path(), 0o755);
        chmod(&run, 0o700);
        let enclave = run.join("enclaves").join("e");
        std::fs::create_dir_all(&enclave).unwrap();
        match prepare_paths(&run, &enclave) {
            Err(e @ BackendError::VmPathClosed { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("{} (mode 0700)", run.display())),
                    "{msg}"
                );
                assert!(msg.contains("chmod o+x"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        // An ancestor closed to others is named too.
        chmod(&run, 0o711);
        chmod(dir.path(), 0o700);
        assert!(matches!(
            prepare_paths(&run, &enclave),
            Err(BackendError::VmPathClosed { dir: d, .. }) if d == dir.path().canonicalize().unwrap()
        ));
        // Searchable all the way: what the runtime made is made searchable, nothing more.
        chmod(dir.path(), 0o711);
        chmod(&run.join("enclaves"), 0o700);
        chmod(&enclave, 0o700);
        prepare_paths(&run, &enclave).unwrap();
        let mode = |d: &Path| std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&run.join("enclaves")), 0o701);
        assert_eq!(mode(&enclave), 0o701);
        assert_eq!(mode(&run.join("vm")) & 0o001, 0o001);
    }

    #[test]
    fn the_configured_qemu_is_the_one_checked() {
        let missing = VmBackend::new(HostConfig {
            qemu: PathBuf::from("/nonexistent/qemu-system-x86_64"),
            ..HostConfig::default()
        });
        match check_qemu(&missing.host.qemu) {
            Err(e @ BackendError::VmUnavailable(_)) => assert_eq!(
                e.to_string(),
                "VM isolation is unavailable on this host: /nonexistent/qemu-system-x86_64 was \
                 not found; install it (Debian/Ubuntu: apt-get install qemu-system-x86) or name \
                 it with CLOISTER_QEMU"
            ),
            other => panic!("{other:?}"),
        }
        match check_qemu(Path::new("no-such-qemu")) {
            Err(BackendError::VmUnavailable(m)) => assert!(m.contains("not found in PATH"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(check_qemu(Path::new("sh")).is_ok());
        assert_eq!(missing.isolation(), Isolation::Vm);
    }

    #[test]
    fn programs_are_found_by_path_or_name() {
        assert!(find_program(Path::new("/nonexistent/qemu")).is_none());
        assert!(find_program(Path::new("sh")).is_some());
    }

    #[test]
    fn exits_map_to_statuses() {
        assert_eq!(exit_status(&VmExit::PoweredOff), ExitStatus::Exited(0));
        assert_eq!(
            exit_status(&VmExit::Killed),
            ExitStatus::Signaled(libc::SIGKILL)
        );
        assert_eq!(
            exit_status(&VmExit::QemuFailed(Some(3), String::new())),
            ExitStatus::Exited(3)
        );
    }
}
