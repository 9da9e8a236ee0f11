//! Compatibility with GNU cpio: archives this crate writes are extracted by `cpio -idm`, and
//! archives `cpio -o -H newc` writes (plain, gzip-compressed, concatenated) are read back.
//! Skipped (with a message) when the `cpio` binary is not installed.

use cloister_cpio::{CpioReader, CpioWriter, FileKind};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

fn have_cpio() -> bool {
    let ok = Command::new("cpio")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("GNU cpio not installed; skipping");
    }
    ok
}

fn big_content() -> Vec<u8> {
    (0..300_001u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

fn our_archive() -> Vec<u8> {
    let big = big_content();
    let mut w = CpioWriter::new(Vec::new());
    w.dir("d", 0o755, 0, 0).unwrap();
    w.dir_with_nlink("d/sub", 0o700, 1234, 5678, 2).unwrap();
    w.file("d/big", 0o644, 0, 0, big.len() as u64, &big[..])
        .unwrap();
    w.file("d/empty", 0o600, 0, 0, 0, std::io::empty()).unwrap();
    w.file("d/suid", 0o4755, 0, 0, 3, &b"sh\n"[..]).unwrap();
    w.file("d/sub/owned", 0o640, 1234, 5678, 2, &b"hi"[..])
        .unwrap();
    w.hardlinks(
        &["d/link1", "d/link2", "d/link3"],
        0o644,
        0,
        0,
        5,
        &b"link\n"[..],
    )
    .unwrap();
    w.symlink("d/sym", "big").unwrap();
    w.symlink("d/abs", "/etc/passwd").unwrap();
    w.finish().unwrap()
}

#[test]
fn gnu_cpio_extracts_our_archive() {
    if !have_cpio() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("cpio")
        .args(["-idmv", "--no-absolute-filenames", "--quiet"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&our_archive())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cpio failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let d = dir.path().join("d");
    assert_eq!(std::fs::read(d.join("big")).unwrap(), big_content());
    assert_eq!(std::fs::read(d.join("empty")).unwrap(), b"");
    let suid = std::fs::metadata(d.join("suid")).unwrap();
    assert_eq!(suid.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(suid.mtime(), 0, "-m keeps the archive's mtime 0");
    let owned = std::fs::metadata(d.join("sub/owned")).unwrap();
    let running_as_root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    if running_as_root {
        assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
    }
    assert_eq!(owned.permissions().mode() & 0o7777, 0o640);
    let l1 = std::fs::metadata(d.join("link1")).unwrap();
    let l3 = std::fs::metadata(d.join("link3")).unwrap();
    assert_eq!(l1.ino(), l3.ino(), "hard links share an inode");
    assert_eq!(l1.nlink(), 3);
    assert_eq!(std::fs::read(d.join("link2")).unwrap(), b"link\n");
    assert_eq!(std::fs::read_link(d.join("sym")).unwrap(), Path::new("big"));
    assert_eq!(
        std::fs::read_link(d.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
}

#[test]
fn gnu_cpio_lists_our_archive() {
    if !have_cpio() {
        return;
    }
    let mut child = Command::new("cpio")
        .args(["-it", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&our_archive())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let names: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(
        names,
        [
            "d",
            "d/sub",
            "d/big",
            "d/empty",
            "d/suid",
            "d/sub/owned",
            "d/link1",
            "d/link2",
            "d/link3",
            "d/sym",
            "d/abs"
        ]
    );
}

/// Builds a tree, archives it with `cpio -o -H newc`, returns (archive, tree dir).
fn gnu_archive() -> (Vec<u8>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("a/file"), b"content\n").unwrap();
    std::fs::write(root.join("a/b/big"), big_content()).unwrap();
    std::fs::set_permissions(root.join("a/file"), std::fs::Permissions::from_mode(0o2751)).unwrap();
    std::os::unix::fs::symlink("../file", root.join("a/b/sym")).unwrap();
    std::fs::hard_link(root.join("a/file"), root.join("a/hard")).unwrap();
    let names = "a\na/b\na/file\na/hard\na/b/big\na/b/sym\n";
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(names.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.stdout, dir)
}

fn read_all(bytes: &[u8]) -> BTreeMap<String, (cloister_cpio::Entry, Vec<u8>)> {
    let mut r = CpioReader::new(bytes);
    let mut map = BTreeMap::new();
    while let Some(e) = r.next_entry().unwrap() {
        let mut data = Vec::new();
        r.data().read_to_end(&mut data).unwrap();
        map.insert(e.name_str().unwrap().to_owned(), (e, data));
    }
    map
}

fn check_gnu_entries(map: &BTreeMap<String, (cloister_cpio::Entry, Vec<u8>)>, root: &Path) {
    assert_eq!(map.len(), 6);
    assert_eq!(map["a"].0.kind, FileKind::Dir);
    assert_eq!(map["a/b/big"].1, big_content());
    assert_eq!(
        map["a/b/sym"].0.symlink_target.as_deref(),
        Some(&b"../file"[..])
    );
    let file = &map["a/file"];
    let hard = &map["a/hard"];
    assert_eq!(file.0.ino, hard.0.ino);
    assert_eq!(file.0.nlink, 2);
    assert_eq!(file.0.permissions(), 0o2751);
    // newc puts the data on the last link only.
    let with_data: Vec<&Vec<u8>> = [&file.1, &hard.1]
        .into_iter()
        .filter(|d| !d.is_empty())
        .collect();
    assert_eq!(with_data, [&b"content\n".to_vec()]);
    let meta = std::fs::metadata(root.join("a/b/big")).unwrap();
    assert_eq!(i64::from(map["a/b/big"].0.mtime), meta.mtime());
}

#[test]
fn reads_gnu_cpio_archive() {
    if !have_cpio() {
        return;
    }
    let (archive, dir) = gnu_archive();
    check_gnu_entries(&read_all(&archive), dir.path());
}

#[test]
fn reads_gzip_and_concatenated_archives() {
    if !have_cpio() {
        return;
    }
    let (archive, dir) = gnu_archive();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&archive).unwrap();
    let gz = gz.finish().unwrap();
    check_gnu_entries(&read_all(&gz), dir.path());

    // A plain archive (padded to 512 bytes by GNU cpio), then a gzip one, then a plain one
    // after extra zero padding: what a kernel would accept as an initramfs.
    let mut first = CpioWriter::new(Vec::new());
    first
        .file("early/ucode", 0o644, 0, 0, 4, &b"ucod"[..])
        .unwrap();
    let mut combined = first.finish().unwrap();
    combined.resize(combined.len().div_ceil(512) * 512, 0);
    combined.extend_from_slice(&gz);
    combined.extend_from_slice(&[0u8; 16]);
    let mut last = CpioWriter::new(Vec::new());
    last.file("zz", 0o644, 0, 0, 1, &b"z"[..]).unwrap();
    combined.extend_from_slice(&last.finish().unwrap());
    let map = read_all(&combined);
    assert_eq!(map.len(), 8);
    assert_eq!(map["early/ucode"].1, b"ucod");
    assert_eq!(map["zz"].1, b"z");
    check_gnu_entries(
        &map.into_iter()
            .filter(|(k, _)| k.starts_with("a"))
            .collect(),
        dir.path(),
    );
}
