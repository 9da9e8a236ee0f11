//! Which init a process enclave runs: the image's own, or Cloister's in its place.
//!
//! An image built by nitro-cli carries AWS's init and the NSM driver (`nsm.ko`) in its
//! bootstrap ramdisk. That init loads the driver and mounts devtmpfs, proc and cgroups, none
//! of which a process enclave allows, so it cannot run there; the rest of the image (`cmd`,
//! `env`, `rootfs/`) follows the contract Cloister's init reads. [`inspect`] reads the
//! bootstrap ramdisk of the measured image (its first ramdisk) and finds:
//! - whether its `init` is Cloister's: Cloister's init carries [`INIT_MARKER`] (a byte string
//!   its `main` refers to, so every build keeps it);
//! - whether it holds `nsm.ko` at its top, nitro-cli's layout.
//!
//! A foreign init in nitro-cli's layout is replaced ([`InitChoice::Replace`]): the runtime
//! opens Cloister's own init from the blobs directory ([`find_cloister_init`]) and the enclave
//! execs that instead; the ramdisks are used as they are and the documents carry the image's
//! PCR0/1/2 unchanged, while `describe-enclaves` (`InitReplaced`) and the enclave's leaf
//! certificate (OU `init=replaced`) say that the init that runs is not the one PCR1 measured.
//! Any other image runs its own `/init` (a foreign init outside that layout is the image's
//! business: the host's confinement binds it as it binds anything else).

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::imagecache::OpenImage;

/// The byte string every build of Cloister's init carries (it must equal the init crate's
/// `INIT_MARKER`; a test checks it).
pub const INIT_MARKER: &[u8] = b"cloister-init:pid1:7c3e9a51d04b";
/// Largest init that is scanned for the marker; a larger one is foreign.
pub const MAX_INIT_SCAN: u64 = 64 << 20;
/// The blobs directory variable (as `build-enclave` reads it).
pub const BLOBS_ENV: &str = crate::config::BLOBS_ENV;
/// Where installed blobs are looked for, after [`BLOBS_ENV`] and the directory next to the
/// executable (`../share/cloister/blobs`).
pub const INSTALLED_BLOBS: [&str; 2] = [
    "/usr/share/cloister/blobs",
    "/usr/share/nitro_enclaves/blobs",
];

/// Errors choosing the init.
#[derive(Debug, thiserror::Error)]
pub enum InitSwapError {
    /// The image's bootstrap ramdisk could not be read.
    #[error("reading the image's bootstrap ramdisk: {0}")]
    Image(String),
    /// The image needs Cloister's init in place of its own, and none was found.
    #[error(
        "the image's init is not Cloister's (an image built by nitro-cli: its init loads \
         nsm.ko and mounts file systems, which a process enclave does not allow), and no \
         Cloister init was found to run in its place (looked at {looked}): set {BLOBS_ENV} \
         to a blobs directory holding Cloister's init"
    )]
    NoCloisterInit {
        /// The paths tried.
        looked: String,
    },
}

/// What [`inspect`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BootstrapInit {
    /// The bootstrap ramdisk's `init` is Cloister's.
    pub cloister: bool,
    /// It holds `nsm.ko` at its top (nitro-cli's layout).
    pub nitro_cli_layout: bool,
}

impl BootstrapInit {
    /// Whether Cloister's init must run in place of the image's.
    pub fn needs_replacement(self) -> bool {
        !self.cloister && self.nitro_cli_layout
    }
}

/// The init a process enclave runs.
#[derive(Debug)]
pub enum InitChoice {
    /// The image's own `/init`.
    Image,
    /// Cloister's init, opened from `path`.
    Replace {
        /// The open init (read-only, close-on-exec), executed by descriptor.
        file: OwnedFd,
        /// Where it was found.
        path: PathBuf,
    },
}

impl InitChoice {
    /// Whether the image's init is replaced.
    pub fn replaced(&self) -> bool {
        matches!(self, InitChoice::Replace { .. })
    }
}

/// Whether `r` holds [`INIT_MARKER`] in its first [`MAX_INIT_SCAN`] bytes.
pub fn has_marker(r: impl Read) -> io::Result<bool> {
    let n = INIT_MARKER.len();
    let mut r = r.take(MAX_INIT_SCAN);
    let mut buf = vec![0u8; 64 * 1024 + n];
    let mut kept = 0usize;
    loop {
        let got = match r.read(&mut buf[kept..]) {
            Ok(0) => return Ok(false),
            Ok(g) => g,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let end = kept + got;
        if buf[..end].windows(n).any(|w| w == INIT_MARKER) {
            return Ok(true);
        }
        // Keep the tail that a marker straddling the next read could start in.
        let keep = end.min(n - 1);
        buf.copy_within(end - keep..end, 0);
        kept = keep;
    }
}

/// Reads the image's bootstrap ramdisk (its first): is its `init` Cloister's, and is it laid
/// out as nitro-cli lays images out?
pub fn inspect(image: &OpenImage) -> Result<BootstrapInit, InitSwapError> {
    let err = |e: &dyn std::fmt::Display| InitSwapError::Image(e.to_string());
    let mut eif = image.reader().map_err(|e| err(&e))?;
    let Some(&first) = eif.ramdisks().first() else {
        return Ok(BootstrapInit::default());
    };
    let reader = eif.section_reader(first).map_err(|e| err(&e))?;
    let mut cpio = cloister_cpio::CpioReader::new(reader);
    let mut found = BootstrapInit::default();
    while let Some(entry) = cpio.next_entry().map_err(|e| err(&e))? {
        let Ok(comps) = crate::rootfs::sanitize(&entry.name) else {
            continue;
        };
        match (comps.as_slice(), entry.kind) {
            ([b"init"], cloister_cpio::FileKind::File) => {
                found.cloister = has_marker(cpio.data()).map_err(|e| err(&e))?;
            }
            ([b"init"], _) => found.cloister = false,
            ([b"nsm.ko"], _) => found.nitro_cli_layout = true,
            _ => {}
        }
    }
    Ok(found)
}

/// The places Cloister's init is looked for, in order: `$CLOISTER_BLOBS/init` (the
/// configuration's [`crate::config::RuntimeConfig::blobs_dir`]), the blobs
/// next to the executable (`<bin>/../share/cloister/blobs/init`), then [`INSTALLED_BLOBS`].
pub fn init_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = &crate::config::RuntimeConfig::current().blobs_dir {
        out.push(dir.join("init"));
    }
    if let Some(prefix) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
    {
        out.push(prefix.join("share/cloister/blobs/init"));
    }
    out.extend(INSTALLED_BLOBS.iter().map(|d| Path::new(d).join("init")));
    out
}

/// Opens the first of `candidates` that is a regular file carrying [`INIT_MARKER`] (AWS's
/// blobs directory holds AWS's init, which does not).
pub fn find_cloister_init(candidates: &[PathBuf]) -> Result<(OwnedFd, PathBuf), InitSwapError> {
    for path in candidates {
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
        else {
            continue;
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            continue;
        }
        if has_marker(&file).unwrap_or(false) {
            return Ok((OwnedFd::from(file), path.clone()));
        }
    }
    Err(InitSwapError::NoCloisterInit {
        looked: candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Chooses the init of a process enclave running `image`.
pub fn choose(image: &OpenImage) -> Result<InitChoice, InitSwapError> {
    if !inspect(image)?.needs_replacement() {
        return Ok(InitChoice::Image);
    }
    let (file, path) = find_cloister_init(&init_candidates())?;
    tracing::info!(init = %path.display(), "the image's init is replaced by Cloister's");
    Ok(InitChoice::Replace { file, path })
}

/// Reads `file` from its start (tests).
#[cfg(test)]
fn read_all(mut file: std::fs::File) -> Vec<u8> {
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(0)).unwrap();
    let mut v = Vec::new();
    file.read_to_end(&mut v).unwrap();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_the_init_crates() {
        assert_eq!(INIT_MARKER, cloister_init::INIT_MARKER);
    }

    #[test]
    fn marker_found_anywhere_even_across_reads() {
        let mut data = vec![0u8; 200_000];
        assert!(!has_marker(&data[..]).unwrap());
        // Straddling the 64 KiB read boundary.
        let at = 64 * 1024 - 5;
        data[at..at + INIT_MARKER.len()].copy_from_slice(INIT_MARKER);
        assert!(has_marker(&data[..]).unwrap());
        // One byte at a time.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let Some((b, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                buf[0] = *b;
                self.0 = rest;
                Ok(1)
            }
        }
        assert!(has_marker(Trickle(&data[at - 10..at + 40])).unwrap());
        assert!(!has_marker(Trickle(&data[..at + 10])).unwrap());
    }

    #[test]
    fn layout_decides_and_only_a_marked_init_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let eif = |name: &str, init: &[u8], nsm_ko: bool| {
            let mut boot = cloister_cpio::CpioWriter::new(Vec::new());
            boot.dir("dev", 0o755, 0, 0).unwrap();
            boot.file("init", 0o755, 0, 0, init.len() as u64, init)
                .unwrap();
            if nsm_ko {
                boot.file("nsm.ko", 0o755, 0, 0, 3, &b"elf"[..]).unwrap();
            }
            let path = dir.path().join(name);
            cloister_eif::EifBuilder::new()
                .kernel_bytes(b"k".to_vec())
                .cmdline("x")
                .ramdisk_bytes(boot.finish().unwrap())
                .write_to_path(&path)
                .unwrap();
            OpenImage::open(&path).unwrap()
        };
        let mut ours = b"\x7fELF...".to_vec();
        ours.extend_from_slice(INIT_MARKER);
        let aws = eif("aws.eif", b"\x7fELF aws init", true);
        let found = inspect(&aws).unwrap();
        assert!(!found.cloister && found.nitro_cli_layout && found.needs_replacement());
        let cloister = inspect(&eif("c.eif", &ours, false)).unwrap();
        assert!(cloister.cloister && !cloister.needs_replacement());
        // Cloister's init next to nsm.ko (AWS blobs with Cloister's init): kept.
        assert!(!inspect(&eif("c2.eif", &ours, true))
            .unwrap()
            .needs_replacement());
        // A foreign init outside nitro-cli's layout runs as it is.
        assert!(!inspect(&eif("f.eif", b"other", false))
            .unwrap()
            .needs_replacement());

        // Only a file with the marker is taken as Cloister's init.
        let blobs = dir.path().join("blobs");
        std::fs::create_dir(&blobs).unwrap();
        let aws_init = blobs.join("aws-init");
        std::fs::write(&aws_init, b"\x7fELF aws init").unwrap();
        let good = blobs.join("init");
        std::fs::write(&good, &ours).unwrap();
        let missing = blobs.join("missing");
        let e = find_cloister_init(std::slice::from_ref(&aws_init)).unwrap_err();
        assert!(e.to_string().contains("CLOISTER_BLOBS"), "{e}");
        let (fd, path) = find_cloister_init(&[missing, aws_init, good.clone()]).unwrap();
        assert_eq!(path, good);
        assert_eq!(read_all(std::fs::File::from(fd)), ours);
    }
}
