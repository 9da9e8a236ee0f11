//! `xtask pcr1 DIR`: the PCR1 that images built with a blobs directory have, printed the same
//! on every run. (Also makes `cargo test --workspace` build the xtask binary, which
//! scripts/package-test.sh then runs without another cargo build.)

use std::process::Command;

#[test]
fn pcr1_of_the_shipped_blobs_is_printed_the_same_every_time() {
    let init = cloister_init::static_build::build_static_init().expect("static init");
    let d = std::env::temp_dir().join(format!("xtask-pcr1-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(init, d.join("init")).unwrap();
    std::fs::write(
        d.join("cmdline"),
        cloister_image_builder::blobs::shipped_cmdline() + "\n",
    )
    .unwrap();
    let pcr1 = || {
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .arg("pcr1")
            .arg(&d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let a = pcr1();
    assert_eq!(a.len(), 96, "{a}");
    assert!(a.bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
    assert_eq!(pcr1(), a);
    std::fs::remove_dir_all(&d).unwrap();
}
