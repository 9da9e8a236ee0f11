//! Choosing QEMU's accelerator, and the host facts a TCG guest needs.
//!
//! Detection method: `/dev/kvm` existing is not enough. Some hosts expose a KVM that only runs
//! paravirtualized guests (PVM, the `kvm_pvm` module: nested hosts without VMX/SVM), where
//! QEMU dies setting up a normal vCPU (seen on such a host: "failed to set MSR 0x10a",
//! assertion in `kvm_buf_set_msrs`). KVM is chosen only when both hold:
//! 1. a hardware KVM vendor module is loaded (`/sys/module/kvm_intel` or `/sys/module/kvm_amd`)
//!    and `kvm_pvm` is not. This is the check that rejects a PVM host: its KVM does run the
//!    probe guest below (it emulates real mode), so the probe alone cannot tell;
//! 2. a real guest runs: the probe creates a VM with one page of memory at the top of the
//!    4 GiB space (where an x86 vCPU fetches its first instruction after reset, 0xFFFFFFF0, in
//!    real mode), fills the page with `hlt`, and runs one vCPU; `KVM_RUN` must return with
//!    exit reason `KVM_EXIT_HLT` within [`PROBE_TIMEOUT`]. This catches a /dev/kvm that cannot
//!    create VMs or vCPUs (permissions, nested virtualization off, ...).
//!
//! Anything else selects TCG. The result is computed once per process.
//! `CLOISTER_VM_ACCEL=kvm|tcg` overrides the detection.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// QEMU's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's binary translator.
    Tcg,
}

impl Accel {
    /// The `-accel` argument.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Environment override of the probe.
pub const ACCEL_ENV: &str = "CLOISTER_VM_ACCEL";
/// Longest the KVM probe may run.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_GET_VCPU_MMAP_SIZE: libc::c_ulong = 0xAE04;
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
/// `_IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)` (32 bytes).
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_AE46;
const KVM_RUN: libc::c_ulong = 0xAE80;
const KVM_EXIT_HLT: u32 = 5;
/// Offset of `exit_reason` in `struct kvm_run`.
const EXIT_REASON_OFFSET: usize = 8;
const PAGE: usize = 4096;
/// Guest-physical page holding the reset vector.
const RESET_PAGE_GPA: u64 = 0xFFFF_F000;

#[repr(C)]
struct KvmUserspaceMemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

fn ioctl(fd: &OwnedFd, req: libc::c_ulong, arg: libc::c_ulong) -> Result<libc::c_int, String> {
    // SAFETY: every request used here takes an integer or a pointer to a live, correctly sized
    // structure owned by the caller; the kernel validates the rest.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if rc < 0 {
        Err(format!(
            "ioctl {req:#x}: {}",
            std::io::Error::last_os_error()
        ))
    } else {
        Ok(rc)
    }
}

/// An anonymous mapping, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(len: usize, fd: Option<&OwnedFd>) -> Result<Mapping, String> {
        let (flags, raw) = match fd {
            Some(f) => (libc::MAP_SHARED, f.as_raw_fd()),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
        };
        // SAFETY: a fresh mapping of `len` bytes; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region this value mapped.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

/// Runs the one-page `hlt` guest; Ok(exit reason).
fn run_probe() -> Result<u32, String> {
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    let kvm = OwnedFd::from(kvm);
    let vm_fd = ioctl(&kvm, KVM_CREATE_VM, 0)?;
    // SAFETY: KVM_CREATE_VM returned a new descriptor that nothing else owns.
    let vm = unsafe { OwnedFd::from_raw_fd(vm_fd) };
    let mem = Mapping::new(PAGE, None)?;
    // SAFETY: `mem` is a writable mapping of PAGE bytes.
    unsafe { std::ptr::write_bytes(mem.ptr.cast::<u8>(), 0xF4, PAGE) };
    let region = KvmUserspaceMemoryRegion {
        slot: 0,
        flags: 0,
        guest_phys_addr: RESET_PAGE_GPA,
        memory_size: PAGE as u64,
        userspace_addr: mem.ptr as u64,
    };
    ioctl(
        &vm,
        KVM_SET_USER_MEMORY_REGION,
        std::ptr::addr_of!(region) as libc::c_ulong,
    )?;
    let vcpu_fd = ioctl(&vm, KVM_CREATE_VCPU, 0)?;
    // SAFETY: KVM_CREATE_VCPU returned a new descriptor that nothing else owns.
    let vcpu = unsafe { OwnedFd::from_raw_fd(vcpu_fd) };
    let run_size = usize::try_from(ioctl(&kvm, KVM_GET_VCPU_MMAP_SIZE, 0)?)
        .map_err(|_| "bad kvm_run size".to_owned())?;
    if run_size < EXIT_REASON_OFFSET + 4 {
        return Err("kvm_run too small".into());
    }
    let run = Mapping::new(run_size, Some(&vcpu))?;
    ioctl(&vcpu, KVM_RUN, 0)?;
    // SAFETY: the kvm_run mapping is at least EXIT_REASON_OFFSET + 4 bytes (checked above);
    // exit_reason is a naturally aligned u32 written by the kernel before KVM_RUN returned.
    let reason = unsafe {
        std::ptr::read_volatile(run.ptr.cast::<u8>().add(EXIT_REASON_OFFSET).cast::<u32>())
    };
    drop(run);
    drop(mem);
    Ok(reason)
}

/// Step 1 of the detection: the kernel's KVM is a hardware one, not PVM.
pub fn hardware_kvm_module() -> Result<(), String> {
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    if module("kvm_pvm") {
        return Err("KVM is PVM (kvm_pvm loaded): it runs only PVM-aware guests".into());
    }
    if !module("kvm_intel") && !module("kvm_amd") {
        return Err("no hardware KVM module (kvm_intel, kvm_amd) loaded".into());
    }
    Ok(())
}

/// Probes KVM (see the module docs); the reason when it is not usable.
pub fn probe_kvm() -> Result<(), String> {
    hardware_kvm_module()?;
    run_test_guest()
}

/// Step 2 of the detection: runs the one-page `hlt` guest in a thread, bounded in time.
pub fn run_test_guest() -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            let _ = tx.send(run_probe());
        })
        .map_err(|e| format!("spawning the probe: {e}"))?;
    match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(Ok(KVM_EXIT_HLT)) => Ok(()),
        Ok(Ok(other)) => Err(format!(
            "a real-mode test guest exited with reason {other} instead of HLT (a PVM-only KVM?)"
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the test guest did not halt in time".into()),
    }
}

/// The accelerator to use on this host (probed once).
pub fn detect() -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    *ACCEL.get_or_init(|| match std::env::var(ACCEL_ENV).as_deref() {
        Ok("kvm") => Accel::Kvm,
        Ok("tcg") => Accel::Tcg,
        _ => match probe_kvm() {
            Ok(()) => Accel::Kvm,
            Err(reason) => {
                tracing::info!(%reason, "KVM cannot run a normal guest here; using TCG");
                Accel::Tcg
            }
        },
    })
}

/// The host's TSC frequency in kHz: `/sys/devices/system/cpu/cpu0/tsc_freq_khz` when the kernel
/// exports it, else measured against CLOCK_MONOTONIC over 50 ms. Under TCG the guest's TSC runs
/// at the host's rate; telling the guest kernel (`tsc_early_khz=`) spares it a calibration that
/// can hang under an emulated PIT.
pub fn host_tsc_khz() -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz") {
        if let Ok(v) = s.trim().parse::<u64>() {
            return Some(v);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        let t0 = Instant::now();
        // SAFETY: rdtsc has no memory effects; every x86_64 CPU has it.
        let c0 = unsafe { core::arch::x86_64::_rdtsc() };
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: as above.
        let c1 = unsafe { core::arch::x86_64::_rdtsc() };
        let ns = t0.elapsed().as_nanos();
        let cycles = u128::from(c1.wrapping_sub(c0));
        if ns == 0 {
            return None;
        }
        let khz = cycles * 1_000_000 / ns;
        // Round to 1 MHz: the measurement is not more precise than that.
        return u64::try_from((khz + 500) / 1000 * 1000)
            .ok()
            .filter(|k| *k > 0);
    }
    #[allow(unreachable_code)]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_is_plausible() {
        let khz = host_tsc_khz().unwrap();
        assert!((100_000..10_000_000).contains(&khz), "{khz}");
    }

    #[test]
    fn probe_answers() {
        // Whatever the host, the probe must decide without hanging.
        let _ = detect();
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert!(hardware_kvm_module().is_err());
            assert!(probe_kvm().is_err());
        }
    }
}
