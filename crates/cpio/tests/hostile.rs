//! Hostile and malformed archives: every one is a clear error, never a panic, a hang or a huge
//! allocation; plus property tests that what the writer writes the reader reads back.

use cloister_cpio::format::{RawHeader, S_IFDIR, S_IFLNK, S_IFREG};
use cloister_cpio::{CpioReader, CpioWriter, FileKind, ReadError, ReaderLimits};
use proptest::prelude::*;
use std::io::Read;

fn entry(h: RawHeader, name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = RawHeader {
        namesize: u32::try_from(name.len() + 1).unwrap(),
        filesize: u32::try_from(data.len()).unwrap(),
        ..h
    }
    .encode()
    .to_vec();
    out.extend_from_slice(name);
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out.extend_from_slice(data);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

fn trailer() -> Vec<u8> {
    entry(
        RawHeader {
            nlink: 1,
            ..Default::default()
        },
        b"TRAILER!!!",
        b"",
    )
}

fn file_header() -> RawHeader {
    RawHeader {
        ino: 1,
        mode: S_IFREG | 0o644,
        nlink: 1,
        ..Default::default()
    }
}

fn drain(bytes: &[u8], limits: ReaderLimits) -> Result<usize, ReadError> {
    let mut r = CpioReader::with_limits(bytes, limits);
    let mut n = 0;
    while r.next_entry()?.is_some() {
        let mut sink = Vec::new();
        r.data().read_to_end(&mut sink).map_err(ReadError::Io)?;
        n += 1;
    }
    Ok(n)
}

fn drain_default(bytes: &[u8]) -> Result<usize, ReadError> {
    drain(bytes, ReaderLimits::default())
}

#[test]
fn huge_declared_name_size_is_refused_before_allocation() {
    let mut a = RawHeader {
        namesize: 0xFFFF_FFFF,
        ..file_header()
    }
    .encode()
    .to_vec();
    a.extend_from_slice(b"x");
    assert!(matches!(
        drain_default(&a),
        Err(ReadError::NameSize {
            size: 0xFFFF_FFFF,
            ..
        })
    ));
}

#[test]
fn zero_and_one_name_sizes_are_refused() {
    for size in [0, 1] {
        let a = RawHeader {
            namesize: size,
            ..file_header()
        }
        .encode()
        .to_vec();
        assert!(matches!(drain_default(&a), Err(ReadError::NameSize { .. })));
    }
}

#[test]
fn name_without_nul_or_with_inner_nul() {
    let mut a = entry(file_header(), b"abc", b"");
    a[110 + 3] = b'x'; // overwrite the NUL
    assert!(matches!(drain_default(&a), Err(ReadError::BadName { .. })));
    let mut a = entry(file_header(), b"a\0c", b"");
    a.extend(trailer());
    assert!(matches!(drain_default(&a), Err(ReadError::BadName { .. })));
}

#[test]
fn declared_size_beyond_input_is_truncation() {
    let mut a = RawHeader {
        filesize: 0xFFFF_FFFF,
        namesize: 2,
        ..file_header()
    }
    .encode()
    .to_vec();
    a.extend_from_slice(b"f\0");
    a.extend_from_slice(&[7u8; 100]);
    let err = drain_default(&a).unwrap_err();
    match err {
        ReadError::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn file_size_limit() {
    let mut a = entry(file_header(), b"f", &[1u8; 64]);
    a.extend(trailer());
    let limits = ReaderLimits {
        max_file_size: 63,
        ..Default::default()
    };
    assert!(matches!(
        drain(&a, limits),
        Err(ReadError::FileTooLarge { size: 64, .. })
    ));
    assert_eq!(drain_default(&a).unwrap(), 1);
}

#[test]
fn entry_count_limit() {
    let mut a = Vec::new();
    for i in 0..10u8 {
        a.extend(entry(file_header(), &[b'a' + i], b""));
    }
    a.extend(trailer());
    let limits = ReaderLimits {
        max_entries: 9,
        ..Default::default()
    };
    assert!(matches!(
        drain(&a, limits),
        Err(ReadError::TooManyEntries { max: 9 })
    ));
    assert_eq!(drain_default(&a).unwrap(), 10);
}

#[test]
fn total_size_limit_stops_a_gzip_bomb() {
    // 64 MiB of zeros inside one file compress to ~64 KiB.
    let size = 64u64 << 20;
    let mut w = CpioWriter::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    w.file("bomb", 0o644, 0, 0, size, std::io::repeat(0).take(size))
        .unwrap();
    let gz = w.finish().unwrap().finish().unwrap();
    assert!(gz.len() < 1 << 20);
    let limits = ReaderLimits {
        max_total_bytes: 1 << 20,
        ..Default::default()
    };
    let err = drain(&gz, limits).unwrap_err();
    let msg = format!("{err:?}");
    assert!(msg.contains("TooLarge"), "{msg}");
}

#[test]
fn endless_zero_padding_is_bounded() {
    let mut a = trailer();
    a.extend(vec![0u8; 2 << 20]);
    assert!(matches!(
        drain_default(&a),
        Err(ReadError::TooMuchPadding { .. })
    ));
}

#[test]
fn bad_hex_names_the_field() {
    let mut a = entry(file_header(), b"f", b"");
    a[6 + 8 * 3 + 2] = b'Z'; // gid
    assert!(matches!(
        drain_default(&a),
        Err(ReadError::BadField { field: "gid", .. })
    ));
    let mut a = entry(file_header(), b"f", b"");
    a[6 + 8 * 11] = b'-'; // namesize
    assert!(matches!(
        drain_default(&a),
        Err(ReadError::BadField {
            field: "namesize",
            ..
        })
    ));
}

#[test]
fn nonzero_check_unknown_type_and_data_on_dirs() {
    let mut a = entry(
        RawHeader {
            check: 5,
            ..file_header()
        },
        b"f",
        b"",
    );
    a.extend(trailer());
    assert!(matches!(
        drain_default(&a),
        Err(ReadError::NonZeroCheck { value: 5, .. })
    ));
    let mut a = entry(
        RawHeader {
            mode: 0o644,
            ..file_header()
        },
        b"f",
        b"",
    );
    a.extend(trailer());
    assert!(matches!(
        drain_default(&a),
        Err(ReadError::UnknownType { .. })
    ));
    let mut a = entry(
        RawHeader {
            mode: S_IFDIR | 0o755,
            ..file_header()
        },
        b"d",
        b"xx",
    );
    a.extend(trailer());
    assert!(matches!(
        drain_default(&a),
        Err(ReadError::UnexpectedData { .. })
    ));
    let mut a = entry(
        RawHeader {
            mode: S_IFLNK | 0o777,
            ..file_header()
        },
        b"l",
        b"",
    );
    a.extend(trailer());
    assert!(matches!(
        drain_default(&a),
        Err(ReadError::SymlinkTarget { size: 0, .. })
    ));
}

#[test]
fn raw_names_are_returned_unsanitised() {
    let mut a = entry(file_header(), b"../../etc/shadow", b"x");
    a.extend(entry(file_header(), b"/abs", b""));
    a.extend(entry(file_header(), &[0xff, 0xfe], b""));
    a.extend(trailer());
    let mut r = CpioReader::new(&a[..]);
    assert_eq!(r.next_entry().unwrap().unwrap().name, b"../../etc/shadow");
    assert_eq!(r.next_entry().unwrap().unwrap().name_str(), Some("/abs"));
    let e = r.next_entry().unwrap().unwrap();
    assert_eq!(e.name_str(), None);
    assert!(r.next_entry().unwrap().is_none());
}

#[test]
fn garbage_after_gzip_member_is_an_error() {
    let w = CpioWriter::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut gz = w.finish().unwrap().finish().unwrap();
    gz.extend_from_slice(b"junk after the archive");
    assert!(matches!(
        drain_default(&gz),
        Err(ReadError::BadMagic { .. })
    ));
    // A corrupt gzip stream is an I/O error from the decoder, not a panic.
    let w = CpioWriter::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut gz = w.finish().unwrap().finish().unwrap();
    let n = gz.len();
    gz[n / 2] ^= 0xff;
    assert!(drain_default(&gz).is_err());
}

#[derive(Debug, Clone)]
enum Item {
    Dir(u32, u32, u32),
    File(u32, u32, u32, Vec<u8>),
    Link(String),
    Hard(u8, Vec<u8>),
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        (0u32..0o7777, any::<u32>(), any::<u32>()).prop_map(|(m, u, g)| Item::Dir(m, u, g)),
        (
            0u32..0o7777,
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(m, u, g, d)| Item::File(m, u, g, d)),
        "[a-z/.]{1,40}".prop_map(Item::Link),
        (1u8..4, proptest::collection::vec(any::<u8>(), 0..50)).prop_map(|(n, d)| Item::Hard(n, d)),
    ]
}

proptest! {
    #[test]
    fn round_trip(items in proptest::collection::vec(item(), 0..20), mtime in any::<u32>()) {
        let mut w = CpioWriter::new(Vec::new());
        w.set_mtime(mtime);
        let mut expect: Vec<(String, FileKind, u32, Vec<u8>)> = Vec::new();
        for (i, it) in items.iter().enumerate() {
            let name = format!("e{i}");
            match it {
                Item::Dir(m, u, g) => {
                    w.dir(&name, *m, *u, *g).unwrap();
                    expect.push((name, FileKind::Dir, *m, vec![]));
                }
                Item::File(m, u, g, d) => {
                    w.file(&name, *m, *u, *g, d.len() as u64, &d[..]).unwrap();
                    expect.push((name, FileKind::File, *m, d.clone()));
                }
                Item::Link(t) => {
                    w.symlink(&name, t).unwrap();
                    expect.push((name, FileKind::Symlink, 0o777, t.as_bytes().to_vec()));
                }
                Item::Hard(n, d) => {
                    let names: Vec<String> = (0..*n).map(|k| format!("{name}-{k}")).collect();
                    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                    w.hardlinks(&refs, 0o644, 0, 0, d.len() as u64, &d[..]).unwrap();
                    for (k, nm) in names.iter().enumerate() {
                        let data = if k + 1 == names.len() { d.clone() } else { vec![] };
                        expect.push((nm.clone(), FileKind::File, 0o644, data));
                    }
                }
            }
        }
        let bytes = w.finish().unwrap();
        prop_assert_eq!(bytes.len() % 4, 0);
        let mut r = CpioReader::new(&bytes[..]);
        let mut got = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            prop_assert_eq!(e.mtime, mtime);
            let mut data = Vec::new();
            r.data().read_to_end(&mut data).unwrap();
            if let Some(t) = &e.symlink_target {
                data = t.clone();
            }
            got.push((e.name_str().unwrap().to_owned(), e.kind, e.permissions(), data));
        }
        prop_assert_eq!(got, expect);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = drain_default(&bytes);
    }

    #[test]
    fn mutated_archives_never_panic(pos in 0usize..400, byte in any::<u8>()) {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("d", 0o755, 0, 0).unwrap();
        w.file("d/f", 0o644, 0, 0, 10, &b"0123456789"[..]).unwrap();
        w.symlink("d/s", "f").unwrap();
        let mut bytes = w.finish().unwrap();
        let p = pos % bytes.len();
        bytes[p] = byte;
        let _ = drain_default(&bytes);
    }
}
