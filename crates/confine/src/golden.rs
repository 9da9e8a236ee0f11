//! The compiled filters, instruction by instruction, checked against the files under
//! `tests/golden/`: a change to the rules that changes the BPF the kernel runs shows up here as
//! a diff to review. After a deliberate change, `UPDATE_GOLDEN=1 cargo test -p cloister-confine
//! --lib golden` rewrites the files.

use std::fmt::Write as _;
use std::path::PathBuf;

/// One instruction per line: `code jt jf k`, in hex.
fn listing<'a>(code: impl Iterator<Item = (u16, u8, u8, u32)> + 'a) -> String {
    let mut out = String::new();
    for (code, jt, jf, k) in code {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{code:04x} {jt:02x} {jf:02x} {k:08x}");
    }
    out
}

fn seccomp_listing(filters: &[crate::seccomp::BpfProgram]) -> String {
    let mut out = String::new();
    for (i, f) in filters.iter().enumerate() {
        let _ = writeln!(out, "# filter {i}: {} instructions", f.len());
        out.push_str(&listing(f.iter().map(|i| (i.code, i.jt, i.jf, i.k))));
    }
    out
}

fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{}-{name}.bpf.txt", std::env::consts::ARCH));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        expected == actual,
        "the compiled {name} filter differs from {} (UPDATE_GOLDEN=1 rewrites it after a \
         deliberate change)",
        path.display()
    );
}

#[test]
fn baseline_filter_is_unchanged() {
    check(
        "baseline",
        &seccomp_listing(&crate::seccomp::build().unwrap()),
    );
}

#[test]
fn supervised_filter_is_unchanged() {
    check(
        "supervised",
        &seccomp_listing(&crate::seccomp::build_supervised().unwrap()),
    );
}

#[test]
fn notify_filter_is_unchanged() {
    let f = crate::notify::build().unwrap();
    check(
        "notify",
        &listing(f.0.iter().map(|i| (i.code, i.jt, i.jf, i.k))),
    );
}
