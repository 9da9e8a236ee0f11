//! The QEMU microvm command line, the firmware it boots with, a minimal QMP client (vCPU thread
//! ids, `cont`), vCPU pinning and a bounded console capture that spots a guest that cannot boot.
//!
//! Firmware ([`select_firmware`]): qboot (`qboot.rom`, shipped with QEMU in its data directory)
//! where it exists: it boots the kernel straight from fw_cfg, with no option ROM, on every QEMU
//! from 7.2 (Debian 12) to 10.0 (Debian 13). Cloister first used the microvm's default
//! firmware with option ROMs off (`x-option-roms=off`), which QEMU 7.2's SeaBIOS boots but
//! QEMU 10's does not ("No bootable device."): without qboot, the default firmware keeps its
//! option ROMs (linuxboot_dma), which boots everywhere, a little slower. The data directory is
//! looked for as QEMU does, but also next to a binary that is not where it was built for (an
//! extracted package: `<prefix>/usr/bin/qemu-system-x86_64` -> `<prefix>/usr/share/qemu`),
//! and is then passed with `-L`. `CLOISTER_QEMU_DATADIR` names it; `CLOISTER_VM_FIRMWARE`
//! (`auto`, `qboot`, `seabios`, `seabios-no-option-roms`) overrides the choice.
//!
//! A guest whose firmware finds nothing to boot prints so on the console and would wait there
//! until the boot timeout: [`ConsoleTail::boot_failure`] reports the line as soon as it appears,
//! and the VM is stopped at once.
//!
//! The guest gets: no network, no disk, no display, no firmware option ROMs, no default
//! devices; a serial console (QEMU's stdout, captured through a pipe into a capped file);
//! memory from a memfd shared with the vhost-user device (huge pages when the host has enough
//! free); one vhost-user-vsock device. QEMU runs under its seccomp sandbox
//! (`-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny`), starts
//! paused (`-S`) so the vCPU threads are pinned before the first guest instruction, and is
//! resumed with QMP `cont`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::accel::Accel;

/// QEMU binary (`CLOISTER_QEMU` overrides, through [`HostConfig::qemu`]).
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// Most console bytes written to the console file; the rest is dropped (and counted).
pub const MAX_CONSOLE_BYTES: u64 = 4 * 1024 * 1024;
/// Console tail kept in memory for diagnostics (panic detection, error messages).
pub const CONSOLE_TAIL_BYTES: usize = 64 * 1024;
/// TCG translation cache size in MiB.
pub const TCG_TB_SIZE_MIB: u32 = 64;
/// Longest QMP reply line read.
const MAX_QMP_LINE: u64 = 256 * 1024;
/// Longest wait for QEMU's QMP socket.
pub const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Environment variable naming QEMU's data directory (where `qboot.rom` is).
pub const DATADIR_ENV: &str = "CLOISTER_QEMU_DATADIR";
/// Environment override of the firmware: `auto`, `qboot`, `seabios`, `seabios-no-option-roms`.
pub const FIRMWARE_ENV: &str = "CLOISTER_VM_FIRMWARE";
/// qboot's file name in QEMU's data directory.
pub const QBOOT_ROM: &str = "qboot.rom";
/// Data directories distributions install QEMU's firmware in (after the binary's own).
pub const STANDARD_DATADIRS: &[&str] = &["/usr/share/qemu", "/usr/local/share/qemu"];
/// Console lines of a firmware that found nothing to boot (SeaBIOS), which then waits
/// forever. The first one seen ends the VM.
pub const BOOT_FAILURE_MARKERS: &[&str] = &["No bootable device"];

/// The firmware a VM boots with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// qboot (`-bios <rom>`): direct Linux boot from fw_cfg, no option ROMs. `datadir` is
    /// passed with `-L` (the binary's own data directory, where it is not the built-in one).
    Qboot {
        /// The ROM.
        rom: PathBuf,
        /// Its directory.
        datadir: Option<PathBuf>,
    },
    /// The microvm's default firmware (SeaBIOS) with its option ROMs (linuxboot_dma).
    Default {
        /// Data directory passed with `-L`, when found.
        datadir: Option<PathBuf>,
    },
    /// The default firmware with option ROMs off: what Cloister used before qboot. QEMU 7.2
    /// boots with it; QEMU 10 (its SeaBIOS 1.16.3) stops at "No bootable device" (kept to
    /// test that detection).
    DefaultNoOptionRoms {
        /// Data directory passed with `-L`, when found.
        datadir: Option<PathBuf>,
    },
}

impl Firmware {
    /// The `-M` machine options and the extra arguments (`-L`, `-bios`).
    fn args(&self) -> (&'static str, Vec<OsString>) {
        let mut extra: Vec<OsString> = Vec::new();
        let mut datadir = |d: &Option<PathBuf>| {
            if let Some(d) = d {
                extra.push("-L".into());
                extra.push(d.as_os_str().to_owned());
            }
        };
        match self {
            Firmware::Qboot { rom, datadir: d } => {
                datadir(d);
                extra.push("-bios".into());
                extra.push(rom.as_os_str().to_owned());
                (
                    "microvm,x-option-roms=off,isa-serial=on,memory-backend=mem",
                    extra,
                )
            }
            Firmware::Default { datadir: d } => {
                datadir(d);
                ("microvm,isa-serial=on,memory-backend=mem", extra)
            }
            Firmware::DefaultNoOptionRoms { datadir: d } => {
                datadir(d);
                (
                    "microvm,x-option-roms=off,isa-serial=on,memory-backend=mem",
                    extra,
                )
            }
        }
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Firmware::Qboot { .. } => "qboot",
            Firmware::Default { .. } => "seabios",
            Firmware::DefaultNoOptionRoms { .. } => "seabios-no-option-roms",
        }
    }
}

/// `bin` as a path: itself when it names a directory part, else its first match on `PATH`.
fn resolve_binary(bin: &Path) -> Option<PathBuf> {
    if bin.components().count() > 1 {
        return Some(bin.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// QEMU's data directories for `bin`, in lookup order: `named` ([`DATADIR_ENV`]), the
/// binary's own (`<dir of the resolved binary>/../share/qemu`), then [`STANDARD_DATADIRS`].
pub fn datadir_candidates(bin: &Path, named: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = named.filter(|d| !d.as_os_str().is_empty()) {
        dirs.push(d.to_owned());
    }
    if let Some(real) = resolve_binary(bin).and_then(|b| std::fs::canonicalize(b).ok()) {
        if let Some(prefix) = real.parent().and_then(Path::parent) {
            dirs.push(prefix.join("share/qemu"));
        }
    }
    for d in STANDARD_DATADIRS {
        let d = PathBuf::from(d);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// The data directories `bin -L help` lists (its built-in ones), for installs the standard
/// places miss. Runs QEMU, so it is the last resort.
fn datadirs_from_qemu(bin: &Path) -> Vec<PathBuf> {
    let Ok(out) = std::process::Command::new(bin)
        .args(["-L", "help"])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .take(16)
        .map(|l| PathBuf::from(l.trim()))
        .filter(|p| p.is_absolute())
        .collect()
}

/// The firmware choice of [`HostConfig::firmware`] (the runtime reads it from
/// `CLOISTER_VM_FIRMWARE`, [`FIRMWARE_ENV`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirmwareChoice {
    /// qboot when a data directory has it, else the default firmware with its option ROMs.
    #[default]
    Auto,
    /// qboot, even when no data directory is found to have it (QEMU then looks itself).
    Qboot,
    /// The default firmware with its option ROMs.
    Seabios,
    /// The default firmware with option ROMs off.
    SeabiosNoOptionRoms,
}

impl FirmwareChoice {
    /// The choice a setting names (`qboot`, `seabios`, `seabios-no-option-roms`, surrounding
    /// white space ignored); anything else (`auto`, empty) is [`FirmwareChoice::Auto`].
    pub fn from_setting(s: &str) -> Self {
        match s.trim() {
            "qboot" => FirmwareChoice::Qboot,
            "seabios" => FirmwareChoice::Seabios,
            "seabios-no-option-roms" => FirmwareChoice::SeabiosNoOptionRoms,
            _ => FirmwareChoice::Auto,
        }
    }
}

/// Where QEMU and its firmware are on this host, and which accelerator to force: the host half
/// of the VM backend's configuration, filled by the runtime's configuration (the environment
/// is read there, never in this crate).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The QEMU binary: a path, or a name looked up in `PATH` (default [`QEMU_BINARY`]).
    pub qemu: PathBuf,
    /// QEMU's data directory, looked at first ([`DATADIR_ENV`]).
    pub datadir: Option<PathBuf>,
    /// The firmware ([`select_firmware`]).
    pub firmware: FirmwareChoice,
    /// The accelerator, forced; `None`: [`crate::accel::detect`].
    pub accel: Option<Accel>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            qemu: PathBuf::from(QEMU_BINARY),
            datadir: None,
            firmware: FirmwareChoice::Auto,
            accel: None,
        }
    }
}

/// The firmware for `host.qemu` (see the module comment): `host.firmware` when forced, else
/// qboot when a data directory has it, else the default firmware with its option ROMs.
pub fn select_firmware(host: &HostConfig) -> Firmware {
    let bin = host.qemu.as_path();
    let candidates = datadir_candidates(bin, host.datadir.as_deref());
    let find_qboot = || {
        candidates
            .iter()
            .find(|d| d.join(QBOOT_ROM).is_file())
            .cloned()
            .or_else(|| {
                datadirs_from_qemu(bin)
                    .into_iter()
                    .find(|d| d.join(QBOOT_ROM).is_file())
            })
    };
    let qboot = |d: PathBuf| Firmware::Qboot {
        rom: d.join(QBOOT_ROM),
        datadir: Some(d),
    };
    match host.firmware {
        FirmwareChoice::SeabiosNoOptionRoms => Firmware::DefaultNoOptionRoms {
            datadir: candidates.into_iter().find(|d| d.is_dir()),
        },
        FirmwareChoice::Seabios => Firmware::Default {
            datadir: candidates.into_iter().find(|d| d.is_dir()),
        },
        // Forced: without a ROM on disk, QEMU looks for it in its own directories and says
        // so clearly when it is not there.
        FirmwareChoice::Qboot => find_qboot().map_or_else(
            || Firmware::Qboot {
                rom: PathBuf::from(QBOOT_ROM),
                datadir: None,
            },
            qboot,
        ),
        FirmwareChoice::Auto => find_qboot().map_or_else(
            || Firmware::Default {
                datadir: candidates.into_iter().find(|d| d.is_dir()),
            },
            qboot,
        ),
    }
}

/// Errors of the launcher.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// QMP did not answer as expected.
    #[error("QMP: {0}")]
    Qmp(String),
    /// A system call or I/O failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What [`command_line`] needs.
#[derive(Debug, Clone)]
pub struct QemuArgs<'a> {
    /// Accelerator.
    pub accel: Accel,
    /// Kernel image.
    pub kernel: &'a Path,
    /// Initial ramdisk (all of the image's ramdisks, concatenated).
    pub initrd: &'a Path,
    /// Kernel command line (complete).
    pub cmdline: &'a str,
    /// Guest memory.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: usize,
    /// vhost-user socket of the vsock device.
    pub vhost_socket: &'a Path,
    /// QMP socket (QEMU binds it).
    pub qmp_socket: &'a Path,
    /// Back guest memory with 2 MiB huge pages.
    pub hugepages: bool,
    /// Apply `-sandbox` (off only for debugging).
    pub sandbox: bool,
    /// Firmware ([`select_firmware`]).
    pub firmware: &'a Firmware,
}

/// The arguments after the binary.
pub fn command_line(a: &QemuArgs<'_>) -> Vec<OsString> {
    let mut v: Vec<OsString> = Vec::new();
    let mut push = |s: &str| v.push(s.into());
    let mem = format!("{}M", a.memory_mib);
    let (machine, firmware) = a.firmware.args();
    push("-M");
    push(machine);
    push("-accel");
    if a.accel == Accel::Tcg {
        // Bounds the translation cache (QEMU's default is 1 GiB), part of QEMU's memory
        // overhead charged to the enclave's cgroup.
        push(&format!("tcg,tb-size={TCG_TB_SIZE_MIB}"));
    } else {
        push(a.accel.qemu_name());
    }
    if a.accel == Accel::Kvm {
        push("-cpu");
        push("host");
    } else {
        push("-cpu");
        push("max");
    }
    push("-smp");
    push(&a.vcpus.max(1).to_string());
    push("-m");
    push(&mem);
    push("-object");
    let mut backend = format!("memory-backend-memfd,id=mem,size={mem},share=on");
    if a.hugepages {
        backend.push_str(",hugetlb=on,hugetlbsize=2M");
    }
    push(&backend);
    for s in [
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-S",
        "-monitor",
        "none",
        "-chardev",
        "stdio,id=con,signal=off",
        "-serial",
        "chardev:con",
        "-chardev",
    ] {
        push(s);
    }
    let vsock = format!("socket,id=vsock,path={}", a.vhost_socket.display());
    push(&vsock);
    push("-device");
    push("vhost-user-vsock-device,chardev=vsock");
    push("-qmp");
    let qmp = format!("unix:{},server=on,wait=off", a.qmp_socket.display());
    push(&qmp);
    if a.sandbox {
        push("-sandbox");
        push("on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
    }
    v.extend(firmware);
    v.push("-kernel".into());
    v.push(a.kernel.as_os_str().to_owned());
    v.push("-initrd".into());
    v.push(a.initrd.as_os_str().to_owned());
    v.push("-append".into());
    v.push(a.cmdline.into());
    v
}

/// True when the host has enough free 2 MiB huge pages for `memory_mib`.
pub fn hugepages_available(memory_mib: u64) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return false;
    };
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    matches!(
        (field("HugePages_Free:"), field("Hugepagesize:")),
        (Some(free), Some(2048)) if free * 2 >= memory_mib
    )
}

/// The console: a capped file plus an in-memory tail, watched for [`BOOT_FAILURE_MARKERS`].
#[derive(Debug, Clone, Default)]
pub struct ConsoleTail(Arc<Mutex<TailState>>);

#[derive(Debug, Default)]
struct TailState {
    bytes: Vec<u8>,
    boot_failure: Option<String>,
}

/// Longest boot-failure line kept.
const MAX_FAILURE_LINE: usize = 200;

impl ConsoleTail {
    /// The last bytes of console output, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().bytes).into_owned()
    }

    /// The console line of a firmware that found nothing to boot, once one was printed.
    pub fn boot_failure(&self) -> Option<String> {
        self.lock().boot_failure.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TailState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, bytes: &[u8]) {
        let mut t = self.lock();
        let before = t.bytes.len();
        t.bytes.extend_from_slice(bytes);
        if t.boot_failure.is_none() {
            // The new bytes and enough before them to hold a marker split across reads.
            let longest = BOOT_FAILURE_MARKERS
                .iter()
                .map(|m| m.len())
                .max()
                .unwrap_or(0);
            let from = before.saturating_sub(longest);
            let found = BOOT_FAILURE_MARKERS.iter().find_map(|m| {
                t.bytes[from..]
                    .windows(m.len())
                    .position(|w| w == m.as_bytes())
                    .map(|at| from + at)
            });
            if let Some(at) = found {
                let line: Vec<u8> = t.bytes[at..]
                    .iter()
                    .take_while(|&&b| b != b'\n' && b != b'\r')
                    .take(MAX_FAILURE_LINE)
                    .copied()
                    .collect();
                t.boot_failure = Some(String::from_utf8_lossy(&line).trim().to_owned());
            }
        }
        if t.bytes.len() > CONSOLE_TAIL_BYTES {
            let cut = t.bytes.len() - CONSOLE_TAIL_BYTES;
            t.bytes.drain(..cut);
        }
    }
}

/// Copies QEMU's stdout (the serial console) into `path`, at most [`MAX_CONSOLE_BYTES`].
pub fn capture_console(
    mut from: impl Read + Send + 'static,
    path: &Path,
    tail: ConsoleTail,
) -> Result<std::thread::JoinHandle<()>, QemuError> {
    let mut file = File::create(path).map_err(|source| QemuError::Io {
        context: "creating the console file",
        source,
    })?;
    std::thread::Builder::new()
        .name("vm-console".into())
        .spawn(move || {
            let mut written = 0u64;
            let mut dropped = 0u64;
            let mut buf = [0u8; 8192];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                tail.push(&buf[..n]);
                let room = MAX_CONSOLE_BYTES.saturating_sub(written);
                // At most `n`, a buffer length.
                let take = usize::try_from(room).map_or(n, |room| n.min(room));
                if take > 0 && file.write_all(&buf[..take]).is_ok() {
                    written += take as u64;
                }
                dropped += (n - take) as u64;
            }
            if dropped > 0 {
                let _ = writeln!(file, "\n[console capped: {dropped} bytes dropped]");
            }
        })
        .map_err(|source| QemuError::Io {
            context: "spawning the console thread",
            source,
        })
}

/// A QMP connection (capabilities negotiated).
pub struct Qmp {
    reader: BufReader<std::io::Take<UnixStream>>,
    writer: UnixStream,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp").finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connects (retrying until QEMU has bound the socket or `deadline`) and negotiates.
    pub fn connect(
        path: &Path,
        deadline: Instant,
        alive: impl Fn() -> bool,
    ) -> Result<Qmp, QemuError> {
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    if Instant::now() >= deadline || !alive() {
                        return Err(QemuError::Io {
                            context: "connecting to QEMU's QMP socket",
                            source: e,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let io = |source| QemuError::Io {
            context: "QMP socket",
            source,
        };
        stream
            .set_read_timeout(Some(QMP_CONNECT_TIMEOUT))
            .map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream.take(u64::MAX)),
            writer,
        };
        qmp.read_message()?; // greeting
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<serde_json::Value, QemuError> {
        let mut line = Vec::new();
        self.reader.get_mut().set_limit(MAX_QMP_LINE);
        self.reader
            .read_until(b'\n', &mut line)
            .map_err(|source| QemuError::Io {
                context: "reading from QMP",
                source,
            })?;
        if line.is_empty() {
            return Err(QemuError::Qmp("connection closed".into()));
        }
        serde_json::from_slice(&line).map_err(|e| QemuError::Qmp(format!("bad reply: {e}")))
    }

    /// Runs a command and returns its `return` value (events in between are skipped).
    pub fn execute(&mut self, command: &str) -> Result<serde_json::Value, QemuError> {
        let req = serde_json::json!({ "execute": command });
        let mut bytes = serde_json::to_vec(&req).map_err(|e| QemuError::Qmp(e.to_string()))?;
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .map_err(|source| QemuError::Io {
                context: "writing to QMP",
                source,
            })?;
        for _ in 0..64 {
            let mut msg = self.read_message()?;
            if msg.get("event").is_some() {
                continue;
            }
            if let Some(r) = msg.get_mut("return") {
                return Ok(r.take());
            }
            if let Some(e) = msg.get("error") {
                return Err(QemuError::Qmp(format!("{command}: {e}")));
            }
        }
        Err(QemuError::Qmp(format!("{command}: no reply")))
    }

    /// The vCPU threads' host thread ids, by vCPU index.
    pub fn vcpu_threads(&mut self) -> Result<Vec<i32>, QemuError> {
        let r = self.execute("query-cpus-fast")?;
        let cpus = r
            .as_array()
            .ok_or_else(|| QemuError::Qmp("query-cpus-fast: not a list".into()))?;
        let mut out = vec![0; cpus.len()];
        for c in cpus {
            let idx = c
                .get("cpu-index")
                .and_then(serde_json::Value::as_u64)
                .and_then(|i| usize::try_from(i).ok());
            let tid = c.get("thread-id").and_then(serde_json::Value::as_i64);
            match (idx, tid) {
                (Some(i), Some(t)) if i < out.len() => {
                    out[i] = i32::try_from(t)
                        .map_err(|_| QemuError::Qmp("thread id out of range".into()))?;
                }
                _ => return Err(QemuError::Qmp("query-cpus-fast: malformed entry".into())),
            }
        }
        Ok(out)
    }
}

/// Pins thread `tid` to `cpus`.
pub fn pin_thread(tid: i32, cpus: &[usize]) -> Result<(), QemuError> {
    let mut set = nix::sched::CpuSet::new();
    for &c in cpus {
        set.set(c).map_err(|e| QemuError::Io {
            context: "building a CPU set",
            source: io::Error::from(e),
        })?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set).map_err(|e| {
        QemuError::Io {
            context: "sched_setaffinity on a QEMU thread",
            source: io::Error::from(e),
        }
    })
}

/// Every thread of process `pid`.
pub fn threads_of(pid: u32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_the_hardening() {
        let args = QemuArgs {
            accel: Accel::Tcg,
            kernel: Path::new("/k"),
            initrd: Path::new("/i"),
            cmdline: "console=ttyS0",
            memory_mib: 256,
            vcpus: 2,
            vhost_socket: Path::new("/run/v.sock"),
            qmp_socket: Path::new("/run/q.sock"),
            hugepages: false,
            sandbox: true,
            firmware: &Firmware::Qboot {
                rom: PathBuf::from("/q/qboot.rom"),
                datadir: Some(PathBuf::from("/q")),
            },
        };
        let line: Vec<String> = command_line(&args)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = line.join(" ");
        for needle in [
            "-nodefaults",
            "-no-user-config",
            "-accel tcg",
            "memory-backend-memfd,id=mem,size=256M,share=on",
            "vhost-user-vsock-device,chardev=vsock",
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-smp 2",
            "-append console=ttyS0",
            "-M microvm,x-option-roms=off,isa-serial=on,memory-backend=mem",
            "-L /q -bios /q/qboot.rom",
        ] {
            assert!(joined.contains(needle), "{needle} missing from {joined}");
        }
        assert!(!joined.contains("-netdev") && !joined.contains("-drive"));
        // Without qboot, the default firmware keeps the option ROM that boots Linux.
        let seabios = Firmware::Default { datadir: None };
        let line = command_line(&QemuArgs {
            firmware: &seabios,
            ..args
        });
        let joined: Vec<String> = line.into_iter().map(|s| s.into_string().unwrap()).collect();
        let joined = joined.join(" ");
        assert!(
            joined.contains("-M microvm,isa-serial=on,memory-backend=mem"),
            "{joined}"
        );
        assert!(!joined.contains("x-option-roms") && !joined.contains("-bios"));
    }

    #[test]
    fn qboot_is_found_next_to_an_extracted_binary() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("usr/bin/qemu-system-x86_64");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::write(&bin, b"").unwrap();
        let data = d.path().join("usr/share/qemu");
        assert_eq!(datadir_candidates(&bin, None).first(), Some(&data));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join(QBOOT_ROM), b"rom").unwrap();
        let host = HostConfig {
            qemu: bin.clone(),
            ..HostConfig::default()
        };
        assert_eq!(
            select_firmware(&host),
            Firmware::Qboot {
                rom: data.join(QBOOT_ROM),
                datadir: Some(data)
            }
        );
    }

    #[test]
    fn a_firmware_that_finds_nothing_to_boot_is_spotted() {
        let t = ConsoleTail::default();
        t.push(b"SeaBIOS (version 1.16.3)\r\nBooting from Hard Disk...\r\nBoot failed\r\n");
        assert_eq!(t.boot_failure(), None);
        // Split across two reads.
        t.push(b"No boota");
        t.push(b"ble device.\r\nRetrying in 60 seconds.");
        assert_eq!(t.boot_failure().as_deref(), Some("No bootable device."));
        let k = ConsoleTail::default();
        k.push(b"[    0.000000] Linux version 6.1.0\n");
        assert_eq!(k.boot_failure(), None);
    }

    #[test]
    fn console_tail_is_bounded() {
        let t = ConsoleTail::default();
        for _ in 0..100 {
            t.push(&[b'x'; 4096]);
        }
        t.push(b"Kernel panic");
        let text = t.text();
        assert_eq!(text.len(), CONSOLE_TAIL_BYTES);
        assert!(text.ends_with("Kernel panic"));
    }
}
