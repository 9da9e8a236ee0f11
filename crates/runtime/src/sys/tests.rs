//! Tests of the wrappers that need no privilege.

use super::*;

#[test]
fn open_regular_takes_only_regular_files_and_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cmd");
    std::fs::write(&file, b"/app\n").unwrap();
    let fd = open_regular(&file).unwrap().expect("a regular file opens");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text).unwrap();
    assert_eq!(text, "/app\n");
    assert!(open_regular(&dir.path().join("missing")).unwrap().is_none());
    assert!(open_regular(dir.path()).unwrap().is_none(), "a directory");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert!(
        open_regular(&fifo).unwrap().is_none(),
        "a FIFO, without blocking"
    );
}

#[test]
fn replace_file_creates_then_swaps_and_leaves_no_temp_file() {
    // The default temp dir and a tmpfs, where there is one: the two paths of the swap.
    let dirs = [
        tempfile::tempdir().ok(),
        tempfile::tempdir_in("/dev/shm").ok(),
    ];
    for dir in dirs.into_iter().flatten() {
        let (tmp, path) = (dir.path().join("f.tmp"), dir.path().join("f"));
        replace_file(&tmp, &path, b"first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert!(!tmp.exists());
        // A reader holding the old file keeps the old contents; the path has the new.
        let old = std::fs::File::open(&path).unwrap();
        replace_file(&tmp, &path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(std::io::read_to_string(old).unwrap(), "first");
        assert!(!tmp.exists());
        // A stale temp file from an interrupted write is simply overwritten.
        std::fs::write(&tmp, b"stale").unwrap();
        replace_file(&tmp, &path, b"third").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"third");
        assert!(!tmp.exists());
    }
}
