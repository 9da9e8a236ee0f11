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
//!    create VMs or vCPUs (permissions, nested virtualization off, ...). The VM, the vCPU and
//!    `KVM_RUN` are `kvm-ioctls`' handles; only the guest page is mapped here.
//!
//! Anything else selects TCG. The result is computed once per process.
//! `CLOISTER_VM_ACCEL=kvm|tcg` overrides the detection (the runtime reads it into
//! [`crate::HostConfig::accel`]).

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// QEMU's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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

    /// The accelerator a setting ([`ACCEL_ENV`]) forces: `kvm` or `tcg`; anything else forces
    /// none.
    pub fn from_setting(s: &str) -> Option<Accel> {
        match s {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }
}

/// Why KVM cannot run a normal guest on this host.
#[derive(Debug, thiserror::Error)]
pub enum KvmProbeError {
    /// The host's KVM is PVM.
    #[error("KVM is PVM (kvm_pvm loaded): it runs only PVM-aware guests")]
    Pvm,
    /// No hardware KVM vendor module is loaded.
    #[error("no hardware KVM module (kvm_intel, kvm_amd) loaded")]
    NoHardwareModule,
    /// `/dev/kvm` cannot be opened.
    #[error("/dev/kvm: {0}")]
    Open(std::io::Error),
    /// A KVM ioctl failed.
    #[error("ioctl {request:#x}: {source}")]
    Ioctl {
        /// The request.
        request: libc::c_ulong,
        /// The error.
        source: std::io::Error,
    },
    /// Mapping memory failed.
    #[error("mmap: {0}")]
    Mmap(std::io::Error),
    /// The probe thread could not be started.
    #[error("spawning the probe: {0}")]
    Spawn(std::io::Error),
    /// The test guest exited for another reason than `hlt`.
    #[error("a real-mode test guest exited with reason {0} instead of HLT (a PVM-only KVM?)")]
    NotHalted(u32),
    /// The test guest did not halt within [`PROBE_TIMEOUT`].
    #[error("the test guest did not halt in time")]
    Timeout,
}

/// Environment override of the probe (read by the runtime's configuration).
pub const ACCEL_ENV: &str = "CLOISTER_VM_ACCEL";
/// Longest the KVM probe may run.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `KVM_CREATE_VM`, named in errors.
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
/// `KVM_CREATE_VCPU`, named in errors.
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
/// `KVM_SET_USER_MEMORY_REGION`, named in errors.
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_AE46;
/// `KVM_RUN`, named in errors.
const KVM_RUN: libc::c_ulong = 0xAE80;
/// `KVM_EXIT_HLT`.
const KVM_EXIT_HLT: u32 = kvm_bindings::KVM_EXIT_HLT;
const PAGE: usize = 4096;
/// Guest-physical page holding the reset vector.
const RESET_PAGE_GPA: u64 = 0xFFFF_F000;

/// A failed KVM ioctl `request`.
fn ioctl_err(request: libc::c_ulong) -> impl FnOnce(kvm_ioctls::Error) -> KvmProbeError {
    move |e| KvmProbeError::Ioctl {
        request,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

/// An anonymous mapping, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Result<Mapping, KvmProbeError> {
        // SAFETY: a fresh mapping of `len` bytes; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(KvmProbeError::Mmap(std::io::Error::last_os_error()));
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
fn run_probe() -> Result<u32, KvmProbeError> {
    use kvm_ioctls::{Kvm, VcpuExit};
    let kvm = Kvm::new()
        .map_err(|e| KvmProbeError::Open(std::io::Error::from_raw_os_error(e.errno())))?;
    let vm = kvm.create_vm().map_err(ioctl_err(KVM_CREATE_VM))?;
    let mem = Mapping::new(PAGE)?;
    // SAFETY: `mem` is a writable mapping of PAGE bytes.
    unsafe { std::ptr::write_bytes(mem.ptr.cast::<u8>(), 0xF4, PAGE) };
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: RESET_PAGE_GPA,
        memory_size: PAGE as u64,
        userspace_addr: mem.ptr as u64,
    };
    // SAFETY: the region is `mem`, a live mapping of PAGE bytes that outlives the VM (the VM
    // is dropped at the end of this function, before `mem`, which was created earlier).
    unsafe { vm.set_user_memory_region(region) }.map_err(ioctl_err(KVM_SET_USER_MEMORY_REGION))?;
    let mut vcpu = vm.create_vcpu(0).map_err(ioctl_err(KVM_CREATE_VCPU))?;
    let halted = matches!(vcpu.run().map_err(ioctl_err(KVM_RUN))?, VcpuExit::Hlt);
    let reason = if halted {
        KVM_EXIT_HLT
    } else {
        vcpu.get_kvm_run().exit_reason
    };
    drop(vcpu);
    drop(vm);
    drop(mem);
    Ok(reason)
}

/// Step 1 of the detection: the kernel's KVM is a hardware one, not PVM.
pub fn hardware_kvm_module() -> Result<(), KvmProbeError> {
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    if module("kvm_pvm") {
        return Err(KvmProbeError::Pvm);
    }
    if !module("kvm_intel") && !module("kvm_amd") {
        return Err(KvmProbeError::NoHardwareModule);
    }
    Ok(())
}

/// Probes KVM (see the module docs); the reason when it is not usable.
pub fn probe_kvm() -> Result<(), KvmProbeError> {
    hardware_kvm_module()?;
    run_test_guest()
}

/// Step 2 of the detection: runs the one-page `hlt` guest in a thread, bounded in time.
pub fn run_test_guest() -> Result<(), KvmProbeError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            let _ = tx.send(run_probe());
        })
        .map_err(KvmProbeError::Spawn)?;
    match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(Ok(KVM_EXIT_HLT)) => Ok(()),
        Ok(Ok(other)) => Err(KvmProbeError::NotHalted(other)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(KvmProbeError::Timeout),
    }
}

/// The accelerator to use on this host (probed once); [`crate::HostConfig::accel`] forces one
/// without probing.
pub fn detect() -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    *ACCEL.get_or_init(|| match probe_kvm() {
        Ok(()) => Accel::Kvm,
        Err(reason) => {
            tracing::info!(%reason, "KVM cannot run a normal guest here; using TCG");
            Accel::Tcg
        }
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
