//! Cloister's build tooling. `cargo xtask dist` builds the release artifacts into
//! `target/dist/`:
//!
//! - `cloister/`: the installation tree, relocatable (`bin/cloister`,
//!   `share/cloister/blobs/{init,cmdline}`, `share/cloister/cloister-sample-app`, man pages,
//!   shell completions, systemd units, `etc/cloister/` defaults, `SHA256SUMS` of its files);
//! - `cloister-<version>-x86_64-linux.tar.gz`: that tree, under `cloister-<version>/`;
//! - `cloister_<version>_amd64.deb`: the same files at their system paths (`/usr/bin`,
//!   `/usr/share/cloister`, `/lib/systemd/system`, `/etc/cloister` as conffiles), built with
//!   `dpkg-deb`;
//! - `SHA256SUMS` of the two archives, and `PCR1`: the PCR1 that images built with the shipped
//!   blobs have (without `SOURCE_DATE_EPOCH`, which also stamps the bootstrap ramdisk).
//!
//! Reproducible: the toolchain is pinned (`rust-toolchain.toml`); the enclave binaries are
//! built by [`cloister_init::static_build`] (init on static musl, the sample app on static
//! glibc, build paths remapped) and checked to be static ([`elf::check_static`]); every
//! archive entry has owner root, mode from a fixed table and mtime `SOURCE_DATE_EPOCH`
//! (default: the commit's time), in sorted order; gzip headers carry no time or name. `cargo xtask reproduce` builds init a second time from a
//! copy of the source tree at another path and checks that the bytes and PCR1 are the same.
//!
//! The `cloister` binary is built with `cargo build --release -p cloister` and shipped without
//! its debug info. `dist --no-build` packages target/release/cloister as it is instead: in CI
//! (scripts/package-test.sh) the one `cargo test --workspace --release` built and tested, with
//! no further compiling.

mod elf;

use anyhow::{bail, ensure, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use cloister_image_builder::blobs::{self, Blobs};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The architecture the artifacts are for.
const ARCH_DEB: &str = "amd64";
const ARCH_TAR: &str = "x86_64-linux";

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "Cloister's build tooling")]
struct Args {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build the release artifacts into target/dist (tarball, .deb, SHA256SUMS, PCR1).
    Dist {
        /// Output directory (default: <workspace>/target/dist).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Skip the .deb (no dpkg-deb on this host).
        #[arg(long)]
        no_deb: bool,
        /// Package a debug build of `cloister` (a quick check of the packaging; not a
        /// release). The enclave binaries are release builds either way.
        #[arg(long)]
        debug: bool,
        /// Package the `cloister` already in target/release (or target/debug) as it is,
        /// without running cargo for it: the one `cargo test --workspace --release` built
        /// and tested (scripts/package-test.sh). Its features are the test build's, which
        /// dev-dependencies widen (regex-syntax's unicode tables, through proptest), so a
        /// plain `cargo build -p cloister` would rebuild the command's crates.
        #[arg(long)]
        no_build: bool,
    },
    /// Build the static init a second time from a copy of the source tree at another path,
    /// and check that it is byte-identical to target/static's and gives the same PCR1.
    Reproduce,
    /// Print the PCR1 that images built with the blobs in DIR have.
    Pcr1 {
        /// The blobs directory.
        dir: PathBuf,
    },
}

fn main() -> Result<()> {
    match Args::parse().command {
        Task::Dist {
            out,
            no_deb,
            debug,
            no_build,
        } => dist(out, no_deb, debug, no_build),
        Task::Reproduce => reproduce(),
        Task::Pcr1 { dir } => {
            println!("{}", pcr1_of(&Blobs::load(&dir)?)?);
            Ok(())
        }
    }
}

fn workspace() -> PathBuf {
    cloister_init::static_build::workspace_root()
}

/// `SOURCE_DATE_EPOCH`, else the time of the checked-out commit, else 0.
fn source_date_epoch(root: &Path) -> u64 {
    if let Some(e) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return e;
    }
    Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

/// PCR1 of images built from `blobs` (kernel, cmdline, bootstrap ramdisk with mtime 0).
fn pcr1_of(b: &Blobs) -> Result<String> {
    let boot = cloister_image_builder::build::write_bootstrap_ramdisk(b, 0, Vec::new())?;
    let kernel = match &b.kernel {
        Some(k) => fs::read(k)?,
        None => Vec::new(),
    };
    let empty = cloister_cpio::CpioWriter::new(Vec::new()).finish()?;
    let mut eif = Vec::new();
    let m = cloister_eif::EifBuilder::new()
        .kernel_bytes(kernel)
        .cmdline(b.cmdline.clone())
        .ramdisk_bytes(boot)
        .ramdisk_bytes(empty)
        .write_to(&mut std::io::Cursor::new(&mut eif))?;
    Ok(m.pcr1_hex())
}

/// One file of the installation tree: its path below the prefix, contents and mode.
struct Entry {
    contents: Vec<u8>,
    mode: u32,
}

/// The installation tree, by path below the prefix (sorted).
type Tree = BTreeMap<String, Entry>;

fn add(tree: &mut Tree, path: &str, contents: Vec<u8>, mode: u32) {
    tree.insert(path.to_owned(), Entry { contents, mode });
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    // No name and mtime 0 in the header: the same input gives the same bytes.
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes)?;
    Ok(gz.finish()?)
}

/// Man pages for the command and each subcommand (`cloister-build-enclave.1`, ...).
fn man_pages(tree: &mut Tree, version: &str) -> Result<()> {
    fn walk(cmd: &clap::Command, name: &str, version: &str, tree: &mut Tree) -> Result<()> {
        // clap's names are &'static str (without its "string" feature, which would rebuild
        // clap for the whole workspace): a handful of pages, leaked once.
        let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
        let version: &'static str = Box::leak(version.to_owned().into_boxed_str());
        let cmd = cmd.clone().name(name).version(version);
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .date("")
            .render(&mut page)?;
        add(
            tree,
            &format!("share/man/man1/{name}.1.gz"),
            gzip(&page)?,
            0o644,
        );
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            walk(sub, &format!("{name}-{}", sub.get_name()), version, tree)?;
        }
        Ok(())
    }
    let mut cmd = cloister::Cli::command();
    cmd.build();
    walk(&cmd, "cloister", version, tree)
}

/// Shell completions (bash, zsh, fish) from the clap tree.
fn completions(tree: &mut Tree) -> Result<()> {
    use clap_complete::Shell;
    for (shell, path) in [
        (Shell::Bash, "share/bash-completion/completions/cloister"),
        (Shell::Zsh, "share/zsh/vendor-completions/_cloister"),
        (Shell::Fish, "share/fish/vendor_completions.d/cloister.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cloister::Cli::command(), "cloister", &mut out);
        add(tree, path, out, 0o644);
    }
    Ok(())
}

/// `bin`'s bytes without its debug info (`objcopy --strip-debug`, binutils): the release
/// profile keeps line tables for the tests' backtraces, which would make the package six
/// times larger; the symbol table stays, so a backtrace still names functions.
fn strip_debug(bin: &Path, scratch: &Path) -> Result<Vec<u8>> {
    let tmp = scratch.join(".cloister.stripped");
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(bin)
        .arg(&tmp))
    .context("stripping the debug info (objcopy, from binutils)")?;
    let bytes = fs::read(&tmp)?;
    fs::remove_file(&tmp)?;
    Ok(bytes)
}

/// Builds and checks a static enclave binary; returns its bytes.
fn static_binary(package: &str, bin: &str) -> Result<Vec<u8>> {
    let path = cloister_init::static_build::build_static_binary(package, bin)
        .with_context(|| format!("building the static {bin}"))?;
    let bytes = fs::read(&path)?;
    let kind =
        elf::check_static(&bytes).with_context(|| format!("{} is not static", path.display()))?;
    println!(
        "  {bin}: {kind}, {} bytes, sha256 {}",
        bytes.len(),
        sha256_hex(&bytes)
    );
    Ok(bytes)
}

/// The version of an installed Debian package, for the build record.
fn dpkg_version(package: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn rustc_version() -> String {
    Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Builds `cloister` (unless `no_build`: then the one in target/ must be there) and returns it
/// without its debug info.
fn build_cloister(root: &Path, out: &Path, debug: bool, no_build: bool) -> Result<Vec<u8>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let (profile_flag, profile_dir) = if debug {
        (None, "debug")
    } else {
        (Some("--release"), "release")
    };
    // Not SOURCE_DATE_EPOCH here: rustc does not read it, and C build scripts that watch it
    // (aws-lc-sys, zstd-sys) would rebuild what the release tests already built.
    let built = root.join("target").join(profile_dir).join("cloister");
    if no_build {
        ensure!(
            built.is_file(),
            "{} is missing: build it first (cargo test --workspace --release --no-run)",
            built.display()
        );
    } else {
        run(Command::new(&cargo)
            .current_dir(root)
            .env_remove("SOURCE_DATE_EPOCH")
            .arg("build")
            .args(profile_flag)
            .args(["-p", "cloister", "--bin", "cloister"]))?;
    }
    fs::create_dir_all(out)?;
    strip_debug(&built, out)
}

/// Adds the systemd units and the default configuration of packaging/ to `tree`; returns the
/// configuration files' installed paths (the package's conffiles).
fn add_packaging(tree: &mut Tree, root: &Path) -> Result<Vec<String>> {
    let packaging = root.join("packaging");
    for unit in ["cloister-allocator", "cloister-kms", "cloister-vsock-proxy"] {
        let name = format!("{unit}.service");
        let text = fs::read(packaging.join("systemd").join(&name))?;
        add(tree, &format!("lib/systemd/system/{name}"), text, 0o644);
    }
    let mut conffiles = Vec::new();
    for name in [
        "kms.yaml",
        "vsock-proxy.yaml",
        "vsock-proxy.env",
        "allocator.yaml.example",
    ] {
        let text = fs::read(packaging.join("etc").join(name))?;
        add(tree, &format!("etc/cloister/{name}"), text, 0o644);
        conffiles.push(format!("/etc/cloister/{name}"));
    }
    Ok(conffiles)
}

fn dist(out: Option<PathBuf>, no_deb: bool, debug: bool, no_build: bool) -> Result<()> {
    let started = Instant::now();
    let root = workspace();
    let out = out.unwrap_or_else(|| root.join("target/dist"));
    let epoch = source_date_epoch(&root);
    let version = env!("CARGO_PKG_VERSION");
    println!("cargo xtask dist: Cloister {version}, SOURCE_DATE_EPOCH={epoch}");

    // 1. The binaries.
    let t = Instant::now();
    let cloister_bin = build_cloister(&root, &out, debug, no_build)?;
    println!(
        "  cloister: {} bytes without debug info ({} s)",
        cloister_bin.len(),
        t.elapsed().as_secs()
    );
    let t = Instant::now();
    let init = static_binary("cloister-init", "cloister-init")?;
    let app = static_binary("cloister-sample-app", "cloister-sample-app")?;
    println!("  static binaries: {} s", t.elapsed().as_secs());

    // 2. The installation tree.
    let mut tree = Tree::new();
    add(&mut tree, "bin/cloister", cloister_bin, 0o755);
    add(&mut tree, "share/cloister/blobs/init", init, 0o755);
    let cmdline = format!("{}\n", blobs::shipped_cmdline());
    add(
        &mut tree,
        "share/cloister/blobs/cmdline",
        cmdline.into_bytes(),
        0o644,
    );
    add(&mut tree, "share/cloister/cloister-sample-app", app, 0o755);
    man_pages(&mut tree, version)?;
    completions(&mut tree)?;
    let conffiles = add_packaging(&mut tree, &root)?;
    add(
        &mut tree,
        "share/doc/cloister/README.md",
        fs::read(root.join("README.md"))?,
        0o644,
    );

    // 3. What the shipped blobs measure to, and the build record.
    let staged = out.join("cloister");
    if staged.exists() {
        fs::remove_dir_all(&staged)?;
    }
    write_tree(&staged, &tree, epoch)?;
    let pcr1 = pcr1_of(&Blobs::load(&staged.join("share/cloister/blobs"))?)?;
    let buildinfo = format!(
        "Cloister {version}\nSOURCE_DATE_EPOCH={epoch}\nrustc: {} (init: static musl of its \
         x86_64-unknown-linux-musl target)\nlibc6-dev (static glibc in the sample app): \
         {}\nPCR1 of the shipped blobs (images built without \
         SOURCE_DATE_EPOCH): {pcr1}\n",
        rustc_version(),
        dpkg_version("libc6-dev"),
    );
    add(
        &mut tree,
        "share/doc/cloister/BUILDINFO",
        buildinfo.into_bytes(),
        0o644,
    );
    let sums: String = tree
        .iter()
        .map(|(p, e)| format!("{}  {p}\n", sha256_hex(&e.contents)))
        .collect();
    add(
        &mut tree,
        "share/doc/cloister/SHA256SUMS",
        sums.into_bytes(),
        0o644,
    );
    fs::remove_dir_all(&staged)?;
    write_tree(&staged, &tree, epoch)?;

    // 4. The archives.
    let tar_name = format!("cloister-{version}-{ARCH_TAR}.tar.gz");
    let tar_path = out.join(&tar_name);
    fs::write(
        &tar_path,
        tarball(&tree, &format!("cloister-{version}"), epoch)?,
    )?;
    let mut artifacts = vec![tar_name];
    if !no_deb {
        let deb_name = format!("cloister_{version}_{ARCH_DEB}.deb");
        deb(&tree, &conffiles, version, epoch, &out.join(&deb_name))?;
        artifacts.push(deb_name);
    }
    let mut sums = String::new();
    for a in &artifacts {
        sums.push_str(&format!("{}  {a}\n", sha256_hex(&fs::read(out.join(a))?)));
    }
    fs::write(out.join("SHA256SUMS"), &sums)?;
    fs::write(out.join("PCR1"), format!("{pcr1}\n"))?;
    println!("  artifacts in {}:", out.display());
    for line in sums.lines() {
        println!("    {line}");
    }
    println!("  PCR1 of the shipped blobs: {pcr1}");
    println!("  installation tree: {}", staged.display());
    println!("dist done in {} s", started.elapsed().as_secs());
    Ok(())
}

/// Sets `path`'s mtime to `epoch`.
fn set_mtime(path: &Path, epoch: u64) -> Result<()> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    fs::File::open(path)?
        .set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .with_context(|| format!("setting the time of {}", path.display()))
}

/// Writes `tree` under `dir` with its modes, every file and directory dated `epoch`.
fn write_tree(dir: &Path, tree: &Tree, epoch: u64) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs = std::collections::BTreeSet::new();
    for (path, e) in tree {
        let p = dir.join(path);
        let parent = p.parent().context("no parent")?;
        fs::create_dir_all(parent)?;
        fs::write(&p, &e.contents)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(e.mode))?;
        set_mtime(&p, epoch)?;
        let mut d = Path::new(path).parent();
        while let Some(x) = d.filter(|x| !x.as_os_str().is_empty()) {
            dirs.insert(x.to_path_buf());
            d = x.parent();
        }
    }
    for d in dirs.iter().rev() {
        fs::set_permissions(dir.join(d), fs::Permissions::from_mode(0o755))?;
        set_mtime(&dir.join(d), epoch)?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    set_mtime(dir, epoch)
}

/// The tree as a deterministic `.tar.gz` under `top/`.
fn tarball(tree: &Tree, top: &str, epoch: u64) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, size: u64, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(epoch);
        let _ = h.set_username("root");
        let _ = h.set_groupname("root");
        h
    };
    let mut dirs = std::collections::BTreeSet::new();
    for path in tree.keys() {
        let mut d = Path::new(path).parent();
        while let Some(x) = d.filter(|x| !x.as_os_str().is_empty()) {
            dirs.insert(x.to_string_lossy().into_owned());
            d = x.parent();
        }
    }
    let mut entries: Vec<(String, Option<&Entry>)> = vec![(String::new(), None)];
    entries.extend(dirs.into_iter().map(|d| (d, None)));
    entries.extend(tree.iter().map(|(p, e)| (p.clone(), Some(e))));
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, entry) in entries {
        let name = if path.is_empty() {
            format!("{top}/")
        } else {
            format!("{top}/{path}")
        };
        match entry {
            None => {
                let mut h = header(tar::EntryType::Directory, 0, 0o755);
                b.append_data(&mut h, &name, std::io::empty())?;
            }
            Some(e) => {
                let mut h = header(tar::EntryType::Regular, e.contents.len() as u64, e.mode);
                b.append_data(&mut h, &name, &e.contents[..])?;
            }
        }
    }
    gzip(&b.into_inner()?)
}

/// Where a path of the installation tree goes on a Debian system.
fn deb_path(path: &str) -> String {
    if path.starts_with("etc/") || path.starts_with("lib/") {
        path.to_owned()
    } else {
        format!("usr/{path}")
    }
}

/// Builds the `.deb` with `dpkg-deb` from a staged tree dated `epoch`.
fn deb(tree: &Tree, conffiles: &[String], version: &str, epoch: u64, out: &Path) -> Result<()> {
    let stage = out.with_extension("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    let mut debtree = Tree::new();
    let mut size = 0u64;
    let mut md5sums = String::new();
    for (p, e) in tree {
        let dp = deb_path(p);
        size += e.contents.len() as u64;
        if !dp.starts_with("etc/") {
            md5sums.push_str(&format!("{}  {dp}\n", hex::encode(md5(&e.contents))));
        }
        debtree.insert(
            dp,
            Entry {
                contents: e.contents.clone(),
                mode: e.mode,
            },
        );
    }
    let control = format!(
        "Package: cloister\nVersion: {version}\nArchitecture: {ARCH_DEB}\nMaintainer: Cloister \
         developers <cloister@example.invalid>\nInstalled-Size: {}\nDepends: libc6 (>= 2.36), libgcc-s1\n\
         Recommends: qemu-system-x86\nSuggests: umoci\nSection: admin\nPriority: optional\n\
         Homepage: https://example.invalid/cloister\nDescription: self-hostable AWS Nitro \
         Enclaves\n Cloister carves isolated enclaves out of a Linux host's CPUs and memory, \
         runs\n AWS enclave images (EIF) in them with process or VM isolation, attests them\n \
         with an NSM and releases keys to them from an AWS-KMS-compatible key service.\n",
        size.div_ceil(1024)
    );
    add(&mut debtree, "DEBIAN/control", control.into_bytes(), 0o644);
    let conf: String = conffiles.iter().map(|c| format!("{c}\n")).collect();
    add(&mut debtree, "DEBIAN/conffiles", conf.into_bytes(), 0o644);
    add(&mut debtree, "DEBIAN/md5sums", md5sums.into_bytes(), 0o644);
    write_tree(&stage, &debtree, epoch)?;
    run(Command::new("dpkg-deb")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(out)
        .stdout(std::process::Stdio::null()))?;
    fs::remove_dir_all(&stage)?;
    Ok(())
}

/// MD5 for `DEBIAN/md5sums` (dpkg's integrity list, not a security check).
fn md5(bytes: &[u8]) -> Vec<u8> {
    let out = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            if let Some(mut i) = c.stdin.take() {
                i.write_all(bytes)?;
            }
            c.wait_with_output()
        });
    out.ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            hex::decode(text.split_whitespace().next()?).ok()
        })
        .unwrap_or_default()
}

/// Builds init from a copy of the source tree at another path (`target/reproduce/src`, with
/// its own target directory, kept so that the next check rebuilds only what changed), and
/// compares it with target/static's build: the same bytes and PCR1. Two checks at once are
/// safe: cargo locks the target directory, and the copy's files are replaced atomically with
/// the same contents.
fn reproduce() -> Result<()> {
    let started = Instant::now();
    let root = workspace();
    let base = root.join("target/reproduce");
    fs::create_dir_all(&base)?;
    let here = cloister_init::static_build::build_static_init()?;
    let src = base.join("src");
    sync_sources(&root, &src)?;
    let there = cloister_init::static_build::build_static_binary_in(
        &src,
        &base.join("target"),
        "cloister-init",
        "cloister-init",
    )?;
    let (a, b) = (fs::read(&here)?, fs::read(&there)?);
    let (pa, pb) = (pcr1_of_init(&here)?, pcr1_of_init(&there)?);
    println!(
        "init at {}: sha256 {}, PCR1 {pa}",
        root.display(),
        sha256_hex(&a)
    );
    println!(
        "init at {}: sha256 {}, PCR1 {pb}",
        src.display(),
        sha256_hex(&b)
    );
    for (what, bytes) in [
        ("workspace", root.to_string_lossy()),
        ("copy", src.to_string_lossy()),
        ("cargo registry", "/.cargo/registry".into()),
    ] {
        ensure!(
            !contains(&b, bytes.as_bytes()) && !contains(&a, bytes.as_bytes()),
            "init holds the {what} path {bytes}"
        );
    }
    if a != b {
        bail!("the two builds of init differ (PCR1 {pa} vs {pb})");
    }
    println!(
        "reproducible: byte-identical init and PCR1 from two source paths ({} s)",
        started.elapsed().as_secs()
    );
    Ok(())
}

/// PCR1 of images built with `init` and the shipped cmdline (no kernel).
fn pcr1_of_init(init: &Path) -> Result<String> {
    pcr1_of(&Blobs {
        kernel: None,
        cmdline: blobs::shipped_cmdline(),
        init: init.to_owned(),
        nsm_ko: None,
        modules: Vec::new(),
    })
}

/// Makes `dst` hold what a clone of `root` holds: its tracked files and the untracked ones git
/// does not ignore. Files already equal are left alone (cargo then rebuilds only what
/// changed); files that are no longer in the tree are removed.
fn sync_sources(root: &Path, dst: &Path) -> Result<()> {
    let files = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root)
        .output()
        .context("running git ls-files")?;
    ensure!(files.status.success(), "git ls-files failed");
    let mut keep = std::collections::BTreeSet::new();
    for f in files.stdout.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let rel = PathBuf::from(std::str::from_utf8(f)?);
        let from = root.join(&rel);
        if !from.is_file() {
            continue;
        }
        let to = dst.join(&rel);
        let bytes = fs::read(&from)?;
        if fs::read(&to).ok().as_deref() != Some(&bytes[..]) {
            let dir = to.parent().context("no parent")?;
            fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(".xtask-{}.tmp", std::process::id()));
            fs::write(&tmp, &bytes)?;
            fs::set_permissions(&tmp, fs::metadata(&from)?.permissions())?;
            fs::rename(&tmp, &to)?;
        }
        keep.insert(rel);
    }
    remove_others(dst, Path::new(""), &keep)
}

/// Removes the files under `dir/rel` that are not in `keep` (but not another check's
/// `.xtask-*` file being written).
fn remove_others(dir: &Path, rel: &Path, keep: &std::collections::BTreeSet<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir.join(rel))? {
        let entry = entry?;
        let r = rel.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            remove_others(dir, &r, keep)?;
        } else if !keep.contains(&r) && !entry.file_name().to_string_lossy().starts_with(".xtask-")
        {
            fs::remove_file(dir.join(&r))?;
        }
    }
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_files_parse() {
        let etc = workspace().join("packaging/etc");
        cloister_kms::config::Config::load(&etc.join("kms.yaml")).unwrap();
        let proxy = fs::read(etc.join("vsock-proxy.yaml")).unwrap();
        let allow = cloister_proxy::Allowlist::from_yaml(&proxy).unwrap();
        let env = fs::read_to_string(etc.join("vsock-proxy.env")).unwrap();
        let port: u16 = env
            .lines()
            .find_map(|l| l.strip_prefix("VSOCK_PROXY_REMOTE_PORT="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(allow.allowlist.iter().any(|e| e.port == port));
        let example = fs::read_to_string(etc.join("allocator.yaml.example")).unwrap();
        cloister_runtime::allocator::Pool::parse_with(
            &example,
            &cloister_runtime::allocator::Topology::from_cores(vec![vec![0], vec![1], vec![2]])
                .unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn archives_are_deterministic() {
        let mut tree = Tree::new();
        add(&mut tree, "bin/cloister", b"x".to_vec(), 0o755);
        add(
            &mut tree,
            "share/cloister/blobs/cmdline",
            b"c\n".to_vec(),
            0o644,
        );
        let a = tarball(&tree, "cloister-0", 1_700_000_000).unwrap();
        let b = tarball(&tree, "cloister-0", 1_700_000_000).unwrap();
        assert_eq!(a, b);
        let raw = {
            let mut d = flate2::read::GzDecoder::new(&a[..]);
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut d, &mut v).unwrap();
            v
        };
        let mut ar = tar::Archive::new(&raw[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "cloister-0/",
                "cloister-0/bin",
                "cloister-0/bin/cloister",
                "cloister-0/share",
                "cloister-0/share/cloister",
                "cloister-0/share/cloister/blobs",
                "cloister-0/share/cloister/blobs/cmdline"
            ]
        );
        assert_eq!(deb_path("bin/cloister"), "usr/bin/cloister");
        assert_eq!(deb_path("etc/cloister/kms.yaml"), "etc/cloister/kms.yaml");
        assert_eq!(deb_path("lib/systemd/system/x"), "lib/systemd/system/x");
    }

    /// The init the release ships is static (no interpreter, no shared library), holds no build
    /// path, and what it measures to does not depend on when or how often it is measured.
    /// (`cargo xtask reproduce`, run by scripts/package-test.sh, builds it a second time from
    /// another path and compares the bytes.)
    #[test]
    fn the_shipped_init_is_static_and_its_pcr1_is_deterministic() {
        let init = cloister_init::static_build::build_static_init().unwrap();
        let bytes = fs::read(&init).unwrap();
        assert_eq!(elf::check_static(&bytes).unwrap(), "static-pie");
        let root = workspace();
        assert!(!contains(&bytes, root.to_string_lossy().as_bytes()));
        assert!(!contains(&bytes, b"/.cargo/registry"));
        let a = pcr1_of_init(&init).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = pcr1_of_init(&init).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 96, "{a}");
        let flags = cloister_init::static_build::static_rustflags(&root);
        let flags = flags.to_string_lossy();
        assert!(flags.contains(&format!("--remap-path-prefix={}=/cloister", root.display())));
    }

    #[test]
    fn sources_sync_incrementally() {
        let d = std::env::temp_dir().join(format!("xtask-sync-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let dst = d.join("copy");
        fs::create_dir_all(dst.join("stale")).unwrap();
        fs::write(dst.join("stale/file"), b"old").unwrap();
        sync_sources(&workspace(), &dst).unwrap();
        assert!(!dst.join("stale/file").exists());
        let manifest = dst.join("xtask/Cargo.toml");
        let before = fs::metadata(&manifest).unwrap().modified().unwrap();
        sync_sources(&workspace(), &dst).unwrap();
        assert_eq!(fs::metadata(&manifest).unwrap().modified().unwrap(), before);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn man_pages_and_completions_cover_the_commands() {
        let mut tree = Tree::new();
        man_pages(&mut tree, "0").unwrap();
        completions(&mut tree).unwrap();
        for p in [
            "share/man/man1/cloister.1.gz",
            "share/man/man1/cloister-build-enclave.1.gz",
            "share/man/man1/cloister-run-enclave.1.gz",
            "share/man/man1/cloister-demo.1.gz",
            "share/bash-completion/completions/cloister",
        ] {
            assert!(tree.contains_key(p), "{p} missing: {:?}", tree.keys());
        }
    }
}
