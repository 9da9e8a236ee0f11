//! The VM backend on two QEMU versions: the system's (Debian 12's 7.2) and 10.0 (Debian 13's,
//! from bookworm-backports, extracted into target/qemu-10 by scripts/fetch-qemu.sh, whose data
//! directory the backend finds next to the binary and passes with -L). Both boot the guest with
//! qboot and send the heartbeat. On QEMU 10 the firmware Cloister used before (SeaBIOS with
//! option ROMs off) stops at "No bootable device": the VM must end at once with
//! [`VmExit::Unbootable`], not at the boot timeout. Run as root.
//!
//! One test function: the VMs share the serial lock of the VM tests; the QEMU binary and the
//! firmware are chosen through [`HostConfig`] (what `CLOISTER_QEMU` and `CLOISTER_VM_FIRMWARE`
//! fill in the runtime).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cloister_vm::qemu::{select_firmware, Firmware};
use cloister_vm::{FirmwareChoice, HostConfig, VmConfig, VmEnclave, VmError, VmExit};

/// Generous: TCG on a shared two-core machine.
const BOOT: Duration = Duration::from_secs(180);
/// How soon an unbootable guest must be reported (SeaBIOS probes the floppy and the disk
/// first, a few seconds under TCG).
const UNBOOTABLE_WITHIN: Duration = Duration::from_secs(60);

/// QEMU 10's binary: `CLOISTER_QEMU10`, else target/qemu-10 (fetched when missing).
fn qemu10() -> PathBuf {
    if let Some(p) = std::env::var_os("CLOISTER_QEMU10") {
        return PathBuf::from(p);
    }
    let bin = common::workspace_root().join("target/qemu-10/usr/bin/qemu-system-x86_64");
    if !bin.is_file() {
        let status =
            std::process::Command::new(common::workspace_root().join("scripts/fetch-qemu.sh"))
                .stdout(std::process::Stdio::null())
                .status()
                .expect("running scripts/fetch-qemu.sh");
        assert!(status.success(), "scripts/fetch-qemu.sh failed");
    }
    bin
}

fn version(bin: &std::path::Path) -> String {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .expect("qemu --version");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn start(
    cid: u32,
    run: &tempfile::TempDir,
    img: &common::Image,
    host: &HostConfig,
) -> Result<VmEnclave, VmError> {
    let mut cfg = VmConfig::new(
        &img.kernel,
        &img.initrd,
        cid,
        run.path(),
        common::fake_nsm(),
    );
    cfg.debug = true;
    cfg.boot_timeout = BOOT;
    cfg.run_as = Some(common::VM_USER);
    cfg.cpus = vec![0];
    cfg.host = host.clone();
    VmEnclave::start(cfg)
}

#[test]
fn boots_on_qemu_7_2_and_10_and_reports_an_unbootable_guest_at_once() {
    let _g = common::serial();
    let img = common::image(&["sleep", "600"]);
    let q10 = qemu10();
    let system = PathBuf::from(cloister_vm::qemu::QEMU_BINARY);
    for (cid, bin) in [(31, system), (32, q10.clone())] {
        let host = HostConfig {
            qemu: bin.clone(),
            ..HostConfig::default()
        };
        let v = version(&bin);
        let firmware = select_firmware(&host);
        assert!(
            matches!(firmware, Firmware::Qboot { .. }),
            "{v}: {firmware:?}"
        );
        let run = tempfile::tempdir().unwrap();
        let mut vm = start(cid, &run, &img, &host).expect("VM start");
        match vm.wait_heartbeat(BOOT) {
            Ok(t) => eprintln!("{v}: heartbeat after {t:?} ({:?}, qboot)", vm.accel()),
            Err(e) => panic!("{v}: no heartbeat: {e}\nconsole:\n{}", vm.console_tail()),
        }
        assert_eq!(vm.kill(), VmExit::Killed);
    }

    // QEMU 10 with the old firmware setting: "No bootable device", reported at once.
    let host = HostConfig {
        qemu: q10.clone(),
        firmware: FirmwareChoice::SeabiosNoOptionRoms,
        ..HostConfig::default()
    };
    let run = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let result = start(33, &run, &img, &host).and_then(|vm| {
        let r = vm.wait_heartbeat(BOOT);
        drop(vm);
        r
    });
    let took = t.elapsed();
    match result {
        Err(VmError::Exited(VmExit::Unbootable(line))) => {
            assert!(line.contains("No bootable device"), "{line}");
            assert!(
                took < UNBOOTABLE_WITHIN,
                "reported after {took:?}, not at once"
            );
            eprintln!("unbootable guest reported after {took:?}: {line}");
        }
        other => panic!("expected an unbootable guest, got {other:?}"),
    }
}
