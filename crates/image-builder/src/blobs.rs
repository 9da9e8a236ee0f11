//! Boot blobs: the kernel, its command line, the init binary and kernel modules that go into
//! every enclave image, read from a blobs directory; [`locate`], which finds the installed
//! directory; and [`prepare`], which assembles a VM blobs directory from a Debian cloud kernel
//! package.
//!
//! A blobs directory holds `cmdline` and `init`, optionally `bzImage` (or `vmlinuz`: only VM
//! enclaves boot a kernel, so the blobs Cloister installs for process enclaves have none),
//! optionally `nsm.ko` (AWS's blobs: the image is then laid out as nitro-cli does) and
//! optionally `modules/` with `*.ko` files (for VM enclaves) and an optional
//! `modules/load_order` (one file name per line; otherwise name order).
//!
//! An image built from blobs without a kernel carries an empty kernel section: the EIF keeps
//! its fixed layout (kernel, cmdline, ramdisks, as nitro-cli writes it), and PCR0 and PCR1 are
//! measured over the sections' bytes exactly as with a kernel (the kernel contributing none).
//! Such an image runs under process isolation; the VM backend refuses it before it allocates
//! anything. An image built with a kernel is unchanged, byte for byte.
//!
//! Lookup ([`locate`]), first match wins: `--blobs DIR`; `CLOISTER_BLOBS`; `NITRO_CLI_BLOBS`
//! (nitro-cli's variable); `<dir of the executable>/../share/cloister/blobs` (an unpacked
//! release tarball, or any prefix the package is installed under); `/usr/share/cloister/blobs`
//! (the Debian package). A directory named by a flag or a variable is used as given (a wrong
//! one is an error, not a reason to look further).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// AWS's blobs directory (nitro-cli's default). Cloister does not look there on its own: its
/// `init` is AWS's; name it with `--blobs` or `NITRO_CLI_BLOBS` to build images with it.
pub const DEFAULT_BLOBS_DIR: &str = "/usr/share/nitro_enclaves/blobs";
/// Environment variable naming a blobs directory.
pub const BLOBS_ENV: &str = "CLOISTER_BLOBS";
/// nitro-cli's environment variable naming a blobs directory (honoured after [`BLOBS_ENV`]).
pub const NITRO_BLOBS_ENV: &str = "NITRO_CLI_BLOBS";
/// Cloister's data directory below an installation prefix (`<prefix>/share/cloister`).
pub const SHARE_SUBDIR: &str = "share/cloister";
/// The data directory of the Debian package.
pub const SYSTEM_SHARE_DIR: &str = "/usr/share/cloister";
/// The blobs directory inside a data directory.
pub const BLOBS_SUBDIR: &str = "blobs";
/// How to get blobs, for error messages.
pub const INSTALL_HINT: &str = "install Cloister's package (cloister_*.deb puts them in \
     /usr/share/cloister/blobs) or unpack its release tarball (they are in \
     share/cloister/blobs, found next to bin/cloister), or name a directory with --blobs DIR or \
     CLOISTER_BLOBS; in a source tree, `cargo xtask dist` builds them into \
     target/dist/cloister/share/cloister/blobs";
/// Largest `cmdline` file.
pub const MAX_CMDLINE_FILE: u64 = 4096;
/// The virtio transport of QEMU's microvm machine. Debian builds it as a module; a kernel that
/// has it built in simply does not ship it, so it is taken only when the package has it.
pub const TRANSPORT_MODULES: &[&str] = &["virtio_mmio.ko"];
/// The vsock modules a VM enclave needs, in load order (dependencies are added before them).
pub const VSOCK_MODULES: &[&str] = &[
    "vsock.ko",
    "vmw_vsock_virtio_transport_common.ko",
    "vmw_vsock_virtio_transport.ko",
];

/// Errors reading or preparing blobs.
#[derive(Debug, thiserror::Error)]
pub enum BlobsError {
    /// A required blob is missing.
    #[error("blobs directory {dir}: {what} is missing")]
    Missing {
        /// The directory.
        dir: String,
        /// Which blob.
        what: &'static str,
    },
    /// A blob could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The cmdline file is unusable.
    #[error("{path}: {reason}")]
    BadCmdline {
        /// The path.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// An external tool failed.
    #[error("{tool} failed: {message}")]
    Tool {
        /// Tool name.
        tool: &'static str,
        /// Its stderr or the error.
        message: String,
    },
    /// The kernel package lacks something.
    #[error("kernel package: {0}")]
    Package(String),
    /// No blobs directory was named and none is installed.
    #[error("no blobs directory found (looked in {}): {}", searched_list(.searched), INSTALL_HINT)]
    NotInstalled {
        /// The directories looked at, in order.
        searched: Vec<PathBuf>,
    },
    /// A blobs directory was named but does not exist.
    #[error(
        "blobs directory {dir} (from {origin}) does not exist: {}",
        INSTALL_HINT
    )]
    NamedMissing {
        /// The directory.
        dir: String,
        /// Where its name came from.
        origin: BlobsOrigin,
    },
}

fn searched_list(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlobsError + '_ {
    move |source| BlobsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A loaded blobs directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blobs {
    /// Kernel image; `None` in blobs for process enclaves (the image gets an empty kernel
    /// section).
    pub kernel: Option<PathBuf>,
    /// Kernel command line (trailing whitespace removed).
    pub cmdline: String,
    /// The init binary.
    pub init: PathBuf,
    /// AWS's NSM driver, when present (AWS layout).
    pub nsm_ko: Option<PathBuf>,
    /// Kernel modules, in load order.
    pub modules: Vec<PathBuf>,
}

impl Blobs {
    /// Loads and checks a blobs directory.
    pub fn load(dir: &Path) -> Result<Self, BlobsError> {
        let d = dir.display().to_string();
        let missing = |what| BlobsError::Missing {
            dir: d.clone(),
            what,
        };
        if !dir.is_dir() {
            return Err(missing("the directory itself"));
        }
        let kernel = ["bzImage", "vmlinuz", "Image"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file());
        let init = dir.join("init");
        if !init.is_file() {
            return Err(missing("init"));
        }
        let cmdline_path = dir.join("cmdline");
        if !cmdline_path.is_file() {
            return Err(missing("cmdline"));
        }
        let mut raw = Vec::new();
        fs::File::open(&cmdline_path)
            .map_err(io_err(&cmdline_path))?
            .take(MAX_CMDLINE_FILE + 1)
            .read_to_end(&mut raw)
            .map_err(io_err(&cmdline_path))?;
        let bad = |reason| BlobsError::BadCmdline {
            path: cmdline_path.display().to_string(),
            reason,
        };
        if raw.len() as u64 > MAX_CMDLINE_FILE {
            return Err(bad("larger than 4096 bytes"));
        }
        let cmdline = String::from_utf8(raw).map_err(|_| bad("not UTF-8"))?;
        let cmdline = cmdline.trim_end().to_owned();
        if cmdline.contains('\0') || cmdline.contains('\n') {
            return Err(bad("contains a NUL or a line break"));
        }
        let nsm = dir.join("nsm.ko");
        let nsm_ko = nsm.is_file().then_some(nsm);
        let mdir = dir.join("modules");
        let mut modules = Vec::new();
        if mdir.is_dir() {
            let order = mdir.join("load_order");
            if order.is_file() {
                let text = fs::read_to_string(&order).map_err(io_err(&order))?;
                for name in text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                {
                    if name.contains('/') || name.starts_with('.') {
                        return Err(BlobsError::Package(format!(
                            "bad module name {name:?} in load_order"
                        )));
                    }
                    let p = mdir.join(name);
                    if !p.is_file() {
                        return Err(BlobsError::Package(format!(
                            "module {name} in load_order is missing"
                        )));
                    }
                    modules.push(p);
                }
            } else {
                let mut names: Vec<PathBuf> = fs::read_dir(&mdir)
                    .map_err(io_err(&mdir))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "ko") && p.is_file())
                    .collect();
                names.sort();
                modules = names;
            }
        }
        Ok(Self {
            kernel,
            cmdline,
            init,
            nsm_ko,
            modules,
        })
    }

    /// Whether these are AWS-style blobs (with `nsm.ko`).
    pub fn is_aws_layout(&self) -> bool {
        self.nsm_ko.is_some()
    }

    /// The kernel, or [`BlobsError::Missing`] naming `dir` (for VM images, which boot one).
    pub fn require_kernel(&self, dir: &Path) -> Result<&Path, BlobsError> {
        self.kernel.as_deref().ok_or_else(|| BlobsError::Missing {
            dir: dir.display().to_string(),
            what: "bzImage (or vmlinuz): VM enclaves boot a kernel; `cloister blobs prepare \
                   --kernel-version V` makes a blobs directory with one",
        })
    }
}

/// Where a blobs directory's name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobsOrigin {
    /// `--blobs DIR`.
    Flag,
    /// An environment variable.
    Env(&'static str),
    /// `<dir of the executable>/../share/cloister/blobs`.
    NextToExecutable,
    /// `/usr/share/cloister/blobs`.
    System,
}

impl std::fmt::Display for BlobsOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobsOrigin::Flag => f.write_str("--blobs"),
            BlobsOrigin::Env(var) => f.write_str(var),
            BlobsOrigin::NextToExecutable => f.write_str("next to the executable"),
            BlobsOrigin::System => f.write_str(SYSTEM_SHARE_DIR),
        }
    }
}

/// A blobs directory found by [`locate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The directory.
    pub dir: PathBuf,
    /// Where its name came from.
    pub origin: BlobsOrigin,
}

/// Cloister's installed data directories, in lookup order: `<dir of the executable>/../share/
/// cloister` (when the executable's path is known) and `/usr/share/cloister`.
pub fn share_dirs() -> Vec<(PathBuf, BlobsOrigin)> {
    let mut dirs = Vec::new();
    if let Some(prefix) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).map(Path::to_path_buf))
    {
        dirs.push((prefix.join(SHARE_SUBDIR), BlobsOrigin::NextToExecutable));
    }
    let system = PathBuf::from(SYSTEM_SHARE_DIR);
    if !dirs.iter().any(|(d, _)| *d == system) {
        dirs.push((system, BlobsOrigin::System));
    }
    dirs
}

/// Finds the blobs directory: `explicit` (`--blobs`), else [`BLOBS_ENV`], else
/// [`NITRO_BLOBS_ENV`], else the first of [`share_dirs`]' `blobs/` that exists. A named
/// directory must exist ([`BlobsError::NamedMissing`]); with none named and none installed the
/// error is [`BlobsError::NotInstalled`], which says how to install them.
pub fn locate(explicit: Option<&Path>) -> Result<Located, BlobsError> {
    let env = |var: &'static str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(|v| (PathBuf::from(v), BlobsOrigin::Env(var)))
    };
    let named = explicit
        .map(|d| (d.to_path_buf(), BlobsOrigin::Flag))
        .or_else(|| env(BLOBS_ENV))
        .or_else(|| env(NITRO_BLOBS_ENV));
    locate_in(named, &share_dirs())
}

/// [`locate`] over given candidates (for tests).
pub fn locate_in(
    named: Option<(PathBuf, BlobsOrigin)>,
    share: &[(PathBuf, BlobsOrigin)],
) -> Result<Located, BlobsError> {
    if let Some((dir, origin)) = named {
        if !dir.is_dir() {
            return Err(BlobsError::NamedMissing {
                dir: dir.display().to_string(),
                origin,
            });
        }
        return Ok(Located { dir, origin });
    }
    let candidates: Vec<(PathBuf, BlobsOrigin)> = share
        .iter()
        .map(|(d, o)| (d.join(BLOBS_SUBDIR), *o))
        .collect();
    candidates
        .iter()
        .find(|(d, _)| d.is_dir())
        .map(|(dir, origin)| Located {
            dir: dir.clone(),
            origin: *origin,
        })
        .ok_or_else(|| BlobsError::NotInstalled {
            searched: candidates.into_iter().map(|(d, _)| d).collect(),
        })
}

/// The command line of the blobs Cloister ships (for process enclaves, which boot no kernel;
/// measured into PCR0 and PCR1 all the same). Host-independent, unlike [`default_cmdline`]
/// with a TSC frequency, so the shipped blobs give the same PCR1 on every machine.
pub fn shipped_cmdline() -> String {
    default_cmdline(None)
}

/// What [`prepare`] builds from.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Output directory (created).
    pub output: PathBuf,
    /// A `linux-image-*` .deb already on disk.
    pub kernel_deb: Option<PathBuf>,
    /// Or a kernel version to fetch with `apt-get download linux-image-<ver>-cloud-amd64-unsigned`.
    pub kernel_version: Option<String>,
    /// The static init binary to install.
    pub init: PathBuf,
    /// TSC frequency in kHz for the command line; detected from the host when absent.
    pub tsc_khz: Option<u64>,
}

/// What [`prepare`] produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PrepareReport {
    /// The blobs directory.
    #[serde(rename = "BlobsDir")]
    pub output: PathBuf,
    /// Kernel version (from the package).
    #[serde(rename = "KernelVersion")]
    pub kernel_version: String,
    /// The command line written.
    #[serde(rename = "Cmdline")]
    pub cmdline: String,
    /// Module files installed, in load order.
    #[serde(rename = "Modules")]
    pub modules: Vec<String>,
}

/// The TSC frequency of this host in kHz, from `/proc/cpuinfo` (`cpu MHz` of the first CPU; on
/// hosts with an invariant TSC this is its nominal rate).
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the rounded kHz is checked to lie in (0, 1e8), which u64 holds exactly"
)]
pub fn host_tsc_khz() -> Option<u64> {
    let text = fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    let khz = (mhz * 1000.0).round();
    (khz > 0.0 && khz < 1e8).then_some(khz as u64)
}

/// The default command line for a VM enclave kernel.
pub fn default_cmdline(tsc_khz: Option<u64>) -> String {
    let mut c = String::from(
        "console=ttyS0 reboot=k panic=30 pci=off i8042.noaux i8042.nomux i8042.nopnp \
         i8042.dumbkbd random.trust_cpu=on",
    );
    if let Some(k) = tsc_khz {
        c.push_str(&format!(" tsc_early_khz={k}"));
    }
    c
}

fn run(tool: &'static str, cmd: &mut Command) -> Result<(), BlobsError> {
    let out = cmd.output().map_err(|e| BlobsError::Tool {
        tool,
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(BlobsError::Tool {
            tool,
            message: String::from_utf8_lossy(&out.stderr)
                .trim()
                .chars()
                .take(2000)
                .collect(),
        });
    }
    Ok(())
}

/// The `depends=` list in a module's `.modinfo`.
pub fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    ko.windows(key.len())
        .position(|w| w == key)
        .map(|i| {
            let rest = &ko[i + key.len()..];
            let end = rest
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(rest.len())
                .min(4096);
            String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a module file, decompressing `.ko.zst` and `.ko.xz` (the latter with `xz`).
fn read_module(path: &Path) -> Result<Vec<u8>, BlobsError> {
    let name = path.to_string_lossy();
    if name.ends_with(".zst") {
        let f = fs::File::open(path).map_err(io_err(path))?;
        let mut out = Vec::new();
        zstd::stream::read::Decoder::new(f)
            .and_then(|mut d| d.read_to_end(&mut out))
            .map_err(io_err(path))?;
        Ok(out)
    } else if name.ends_with(".xz") {
        let out = Command::new("xz")
            .arg("-dc")
            .arg(path)
            .output()
            .map_err(|e| BlobsError::Tool {
                tool: "xz",
                message: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(BlobsError::Tool {
                tool: "xz",
                message: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(out.stdout)
    } else {
        fs::read(path).map_err(io_err(path))
    }
}

fn find_files(dir: &Path, out: &mut Vec<PathBuf>, depth: u32) -> io::Result<()> {
    if depth > 16 {
        return Ok(());
    }
    for e in fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            find_files(&e.path(), out, depth + 1)?;
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

/// Package names of Debian's cloud kernels: `linux-image-<version>-cloud-amd64-unsigned`.
const CLOUD_KERNEL_PREFIX: &str = "linux-image-";
const CLOUD_KERNEL_SUFFIX: &str = "-cloud-amd64-unsigned";

/// The newest cloud kernel version apt knows of (`apt-cache search`), e.g. `6.1.0-28`.
fn latest_cloud_kernel() -> Result<String, BlobsError> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only"])
        .arg(format!(
            "^{CLOUD_KERNEL_PREFIX}[0-9][0-9.]*-[0-9]+{CLOUD_KERNEL_SUFFIX}$"
        ))
        .output()
        .map_err(|e| BlobsError::Tool {
            tool: "apt-cache search",
            message: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    newest_cloud_kernel(&text).ok_or_else(|| {
        BlobsError::Package(
            "apt knows no linux-image-*-cloud-amd64-unsigned package (run apt-get update, or \
             give --kernel-deb)"
                .into(),
        )
    })
}

/// The newest version among `apt-cache search` lines naming cloud kernel packages.
fn newest_cloud_kernel(search_output: &str) -> Option<String> {
    // Numeric runs compare as numbers, so 6.1.0-10 sorts after 6.1.0-9.
    fn key(v: &str) -> Vec<u64> {
        v.split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().unwrap_or(u64::MAX))
            .collect()
    }
    search_output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            name.strip_prefix(CLOUD_KERNEL_PREFIX)?
                .strip_suffix(CLOUD_KERNEL_SUFFIX)
        })
        .max_by_key(|v| key(v))
        .map(str::to_owned)
}

/// The kernel package: the one given, or the version given downloaded with `apt-get` into
/// `work`.
fn kernel_deb(opts: &PrepareOptions, work: &Path) -> Result<PathBuf, BlobsError> {
    Ok(match (&opts.kernel_deb, &opts.kernel_version) {
        (Some(d), _) => d.clone(),
        (None, Some(v)) => {
            let latest;
            let v = if v == "latest" {
                latest = latest_cloud_kernel()?;
                &latest
            } else {
                v
            };
            if !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-+~".contains(c))
            {
                return Err(BlobsError::Package(format!("bad kernel version {v:?}")));
            }
            let pkg = format!("{CLOUD_KERNEL_PREFIX}{v}{CLOUD_KERNEL_SUFFIX}");
            run(
                "apt-get download",
                Command::new("apt-get")
                    .arg("download")
                    .arg(&pkg)
                    .current_dir(work),
            )?;
            let mut found = Vec::new();
            find_files(work, &mut found, 0).map_err(io_err(work))?;
            found
                .into_iter()
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
                .ok_or_else(|| {
                    BlobsError::Package(format!("apt-get download {pkg} produced no .deb"))
                })?
        }
        (None, None) => {
            return Err(BlobsError::Package(
                "give a kernel .deb or a kernel version".into(),
            ))
        }
    })
}

/// Module contents by name.
type ModuleContents = std::collections::HashMap<String, Vec<u8>>;

/// The transport and vsock modules in `files` with what they depend on, in load order, and
/// their contents.
fn module_closure(files: &[PathBuf]) -> Result<(Vec<String>, ModuleContents), BlobsError> {
    // Index the modules by their base name (without .ko[.xz|.zst]).
    let module_name = |p: &Path| -> Option<String> {
        let n = p.file_name()?.to_string_lossy().into_owned();
        let stem = n
            .strip_suffix(".xz")
            .or_else(|| n.strip_suffix(".zst"))
            .unwrap_or(&n)
            .to_owned();
        stem.strip_suffix(".ko").map(|s| s.replace('-', "_"))
    };
    let by_name: std::collections::HashMap<String, &PathBuf> = files
        .iter()
        .filter_map(|p| module_name(p).map(|n| (n, p)))
        .collect();
    let mut order: Vec<String> = Vec::new();
    let mut contents: std::collections::HashMap<String, Vec<u8>> = std::collections::HashMap::new();
    fn visit(
        name: &str,
        by_name: &std::collections::HashMap<String, &PathBuf>,
        order: &mut Vec<String>,
        contents: &mut std::collections::HashMap<String, Vec<u8>>,
        depth: u32,
    ) -> Result<(), BlobsError> {
        if order.iter().any(|o| o == name) || depth > 32 {
            return Ok(());
        }
        let path = by_name
            .get(name)
            .ok_or_else(|| BlobsError::Package(format!("module {name} is not in the package")))?;
        let bytes = read_module(path)?;
        for dep in module_depends(&bytes) {
            visit(&dep.replace('-', "_"), by_name, order, contents, depth + 1)?;
        }
        if !order.iter().any(|o| o == name) {
            order.push(name.to_owned());
            contents.insert(name.to_owned(), bytes);
        }
        Ok(())
    }
    for m in TRANSPORT_MODULES {
        let name = m.trim_end_matches(".ko");
        if by_name.contains_key(name) {
            visit(name, &by_name, &mut order, &mut contents, 0)?;
        }
    }
    for m in VSOCK_MODULES {
        visit(
            m.trim_end_matches(".ko"),
            &by_name,
            &mut order,
            &mut contents,
            0,
        )?;
    }
    Ok((order, contents))
}

/// Builds a blobs directory from a Debian kernel package and an init binary.
pub fn prepare(opts: &PrepareOptions) -> Result<PrepareReport, BlobsError> {
    let work = tempfile::tempdir().map_err(io_err(Path::new("temporary directory")))?;
    let deb = kernel_deb(opts, work.path())?;
    let root = work.path().join("root");
    run(
        "dpkg -x",
        Command::new("dpkg").arg("-x").arg(&deb).arg(&root),
    )?;
    let mut files = Vec::new();
    find_files(&root, &mut files, 0).map_err(io_err(&root))?;
    let vmlinuz = files
        .iter()
        .find(|p| {
            p.parent().is_some_and(|d| d.ends_with("boot"))
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| BlobsError::Package("no boot/vmlinuz-* in the package".into()))?;
    let kernel_version = vmlinuz
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_start_matches("vmlinuz-")
                .to_owned()
        })
        .unwrap_or_default();
    let (order, contents) = module_closure(&files)?;

    let out = &opts.output;
    let mdir = out.join("modules");
    fs::create_dir_all(&mdir).map_err(io_err(&mdir))?;
    fs::copy(vmlinuz, out.join("bzImage")).map_err(io_err(vmlinuz))?;
    fs::copy(&opts.init, out.join("init")).map_err(io_err(&opts.init))?;
    let mut load_order = String::new();
    let mut modules = Vec::new();
    for name in &order {
        let file = format!("{name}.ko");
        let p = mdir.join(&file);
        fs::write(&p, &contents[name]).map_err(io_err(&p))?;
        load_order.push_str(&file);
        load_order.push('\n');
        modules.push(file);
    }
    let lo = mdir.join("load_order");
    fs::write(&lo, load_order).map_err(io_err(&lo))?;
    let cmdline = default_cmdline(opts.tsc_khz.or_else(host_tsc_khz));
    let cp = out.join("cmdline");
    let mut f = fs::File::create(&cp).map_err(io_err(&cp))?;
    writeln!(f, "{cmdline}").map_err(io_err(&cp))?;
    Ok(PrepareReport {
        output: out.clone(),
        kernel_version,
        cmdline,
        modules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_synthetic_aws_dir() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("bzImage"), b"kernel").unwrap();
        fs::write(d.path().join("init"), b"init").unwrap();
        fs::write(d.path().join("nsm.ko"), b"nsm").unwrap();
        fs::write(d.path().join("cmdline"), b"console=ttyS0 quiet\n").unwrap();
        let b = Blobs::load(d.path()).unwrap();
        assert_eq!(b.cmdline, "console=ttyS0 quiet");
        assert!(b.is_aws_layout());
        assert!(b.modules.is_empty());
        fs::remove_file(d.path().join("init")).unwrap();
        assert!(matches!(
            Blobs::load(d.path()),
            Err(BlobsError::Missing { what: "init", .. })
        ));
    }

    #[test]
    fn module_order_and_deps() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("bzImage"), b"k").unwrap();
        fs::write(d.path().join("init"), b"i").unwrap();
        fs::write(d.path().join("cmdline"), b"x").unwrap();
        fs::create_dir(d.path().join("modules")).unwrap();
        fs::write(d.path().join("modules/b.ko"), b"b").unwrap();
        fs::write(d.path().join("modules/a.ko"), b"a").unwrap();
        let b = Blobs::load(d.path()).unwrap();
        assert_eq!(b.modules.len(), 2);
        assert!(b.modules[0].ends_with("a.ko"));
        fs::write(d.path().join("modules/load_order"), b"b.ko\na.ko\n").unwrap();
        let b = Blobs::load(d.path()).unwrap();
        assert!(b.modules[0].ends_with("b.ko"));
        fs::write(d.path().join("modules/load_order"), b"../x.ko\n").unwrap();
        assert!(Blobs::load(d.path()).is_err());
        assert_eq!(
            module_depends(b"\0license=GPL\0depends=vsock,virtio_ring\0name=x\0"),
            ["vsock", "virtio_ring"]
        );
        assert!(module_depends(b"nothing").is_empty());
        assert!(default_cmdline(Some(2_999_999)).ends_with("tsc_early_khz=2999999"));
    }

    #[test]
    fn blobs_without_a_kernel_load() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("init"), b"i").unwrap();
        fs::write(d.path().join("cmdline"), shipped_cmdline()).unwrap();
        let b = Blobs::load(d.path()).unwrap();
        assert_eq!(b.kernel, None);
        assert_eq!(b.cmdline, shipped_cmdline());
        assert!(!shipped_cmdline().contains("tsc"), "host-dependent");
        let e = b.require_kernel(d.path()).unwrap_err().to_string();
        assert!(e.contains("blobs prepare"), "{e}");
        fs::write(d.path().join("vmlinuz"), b"k").unwrap();
        let b = Blobs::load(d.path()).unwrap();
        assert_eq!(
            b.require_kernel(d.path()).unwrap(),
            d.path().join("vmlinuz")
        );
        assert!(matches!(
            Blobs::load(&d.path().join("absent")),
            Err(BlobsError::Missing { .. })
        ));
    }

    #[test]
    fn newest_cloud_kernel_sorts_numerically() {
        let out = "linux-image-6.1.0-9-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud\n\
                   linux-image-6.1.0-10-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud\n\
                   linux-image-5.10.0-30-cloud-amd64-unsigned - Linux 5.10\n";
        assert_eq!(newest_cloud_kernel(out).as_deref(), Some("6.1.0-10"));
        assert_eq!(newest_cloud_kernel(""), None);
    }

    #[test]
    fn lookup_order() {
        let d = tempfile::tempdir().unwrap();
        let flag = d.path().join("flag");
        let exe_share = d.path().join("prefix/share/cloister");
        let system = d.path().join("usr/share/cloister");
        let share = [
            (exe_share.clone(), BlobsOrigin::NextToExecutable),
            (system.clone(), BlobsOrigin::System),
        ];
        // Nothing installed: the error lists where it looked and how to install.
        let e = locate_in(None, &share).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, BlobsError::NotInstalled { ref searched } if searched.len() == 2));
        assert!(
            text.contains(&exe_share.join("blobs").display().to_string()),
            "{text}"
        );
        assert!(text.contains("/usr/share/cloister/blobs") && text.contains("--blobs"));
        // The system directory, then the one next to the executable, which wins.
        fs::create_dir_all(system.join("blobs")).unwrap();
        let l = locate_in(None, &share).unwrap();
        assert_eq!(
            (l.dir, l.origin),
            (system.join("blobs"), BlobsOrigin::System)
        );
        fs::create_dir_all(exe_share.join("blobs")).unwrap();
        let l = locate_in(None, &share).unwrap();
        assert_eq!(l.origin, BlobsOrigin::NextToExecutable);
        // A named directory wins, and must exist: no falling back to an installed one.
        let e = locate_in(Some((flag.clone(), BlobsOrigin::Env(BLOBS_ENV))), &share).unwrap_err();
        assert!(e.to_string().contains("CLOISTER_BLOBS"), "{e}");
        fs::create_dir_all(&flag).unwrap();
        let l = locate_in(Some((flag.clone(), BlobsOrigin::Flag)), &share).unwrap();
        assert_eq!((l.dir, l.origin), (flag, BlobsOrigin::Flag));
    }
}
