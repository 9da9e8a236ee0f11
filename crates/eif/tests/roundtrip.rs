//! Property: whatever the builder writes, the reader reads back with the same sections and
//! the same PCRs, the CRC checks, and the PCRs equal an independent computation from the
//! inputs.

use cloister_eif::{pcr_of, EifBuilder, EifReader, Metadata, SectionKind};
use proptest::prelude::*;
use std::io::{Cursor, Read};

fn inputs() -> impl Strategy<Value = (Vec<u8>, String, Vec<Vec<u8>>)> {
    (
        proptest::collection::vec(any::<u8>(), 0..3000),
        "[ -~]{0,200}",
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2000), 1..6),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn write_then_read_gives_the_same_sections_and_pcrs((kernel, cmdline, ramdisks) in inputs(), signed in any::<bool>()) {
        let mut b = EifBuilder::new()
            .kernel_bytes(kernel.clone())
            .cmdline(cmdline.clone())
            .metadata(Metadata::new("p", "t", "1", "2024-01-01T00:00:00Z"));
        for r in &ramdisks {
            // Mix in-memory and reader inputs.
            if r.len() % 2 == 0 {
                b = b.ramdisk_bytes(r.clone());
            } else {
                b = b.ramdisk_reader(Cursor::new(r.clone()));
            }
        }
        if signed {
            let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/eif");
            let s = cloister_eif::EifSigner::from_files(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
            b = b.signer(s);
        }
        let mut out = Cursor::new(Vec::new());
        let written = b.write_to(&mut out).unwrap();

        let mut r = EifReader::new(Cursor::new(out.into_inner())).unwrap();
        prop_assert!(r.check_crc().unwrap().ok());
        prop_assert_eq!(r.measure().unwrap(), written);
        prop_assert_eq!(r.cmdline().unwrap(), cmdline.clone());
        prop_assert_eq!(r.ramdisks().len(), ramdisks.len());
        for (i, idx) in r.ramdisks().into_iter().enumerate() {
            let mut data = Vec::new();
            r.section_reader(idx).unwrap().read_to_end(&mut data).unwrap();
            prop_assert_eq!(&data, &ramdisks[i]);
        }
        let mut k = Vec::new();
        let ki = r.kernel();
        r.section_reader(ki).unwrap().read_to_end(&mut k).unwrap();
        prop_assert_eq!(&k, &kernel);
        prop_assert_eq!(r.is_signed(), signed);
        prop_assert_eq!(r.sections().last().unwrap().kind == SectionKind::Signature, signed);
        if signed {
            r.verify_signature().unwrap();
        }

        // Independent computation of the PCRs from the inputs.
        let mut all = kernel.clone();
        all.extend_from_slice(cmdline.as_bytes());
        let mut boot = all.clone();
        boot.extend_from_slice(&ramdisks[0]);
        let mut customer = Vec::new();
        for rd in &ramdisks {
            all.extend_from_slice(rd);
        }
        for rd in &ramdisks[1..] {
            customer.extend_from_slice(rd);
        }
        prop_assert_eq!(written.pcr0, pcr_of(&all));
        prop_assert_eq!(written.pcr1, pcr_of(&boot));
        prop_assert_eq!(written.pcr2, pcr_of(&customer));
    }
}

#[test]
fn large_customer_ramdisks_take_the_threaded_path_and_agree() {
    // Over the parallel threshold, PCR2 is hashed on a second thread.
    let big: Vec<u8> = (0..(9u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut out = Cursor::new(Vec::new());
    let written = EifBuilder::new()
        .kernel_bytes(vec![1u8; 1000])
        .cmdline("c")
        .ramdisk_bytes(vec![2u8; 5000])
        .ramdisk_bytes(big.clone())
        .ramdisk_bytes(vec![3u8; 777])
        .write_to(&mut out)
        .unwrap();
    let mut r = EifReader::new(Cursor::new(out.into_inner())).unwrap();
    assert_eq!(r.measure().unwrap(), written);
    let mut customer = big;
    customer.extend_from_slice(&[3u8; 777]);
    assert_eq!(written.pcr2, pcr_of(&customer));
    assert!(r.check_crc().unwrap().ok());
}
