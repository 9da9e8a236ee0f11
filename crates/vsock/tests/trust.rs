//! Fabric trust rules, with a real unprivileged process (python3 as uid 65534): a host listener
//! ignores `CONNECT-FROM` preambles from other users, and a host client refuses a `<cid>.sock`
//! held by another user. Also transport detection from the environment.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cloister_vsock::{Transport, VsockAddr, VsockError, VsockListener, VsockStream};

fn as_nobody(script: &str, path: &Path) -> Child {
    Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import os, socket, sys, time\nos.setgid(65534)\nos.setuid(65534)\npath = sys.argv[1]\n{script}"
        ))
        .arg(path)
        .spawn()
        .expect("python3 runs")
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn unprivileged_users_cannot_impersonate_enclaves_or_brokers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let fabric = dir.path().join("vsock");

    // A listener: nobody's fake preamble is dropped, root's (ours) is accepted.
    let listener = VsockListener::bind_fabric(&fabric, 9100).unwrap();
    let sock = fabric.join("3_9100.sock");
    let mut fake = as_nobody(
        "s = socket.socket(socket.AF_UNIX)\ns.connect(path)\ns.sendall(b'CONNECT-FROM 5 5\\n')\ntime.sleep(3)",
        &sock,
    );
    std::thread::sleep(Duration::from_millis(300));
    let good = std::thread::spawn({
        let sock = sock.clone();
        move || {
            std::thread::sleep(Duration::from_millis(500));
            let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
            std::io::Write::write_all(&mut s, b"CONNECT-FROM 6 6\n").unwrap();
            s
        }
    });
    let (_s, peer) = listener.accept().unwrap();
    assert_eq!(peer, VsockAddr::new(6, 6));
    drop(good.join().unwrap());
    let _ = fake.kill();
    let _ = fake.wait();

    // A client: a broker socket held by nobody is not trusted.
    let fake_broker = fabric.join("77.sock");
    let mut squatter = as_nobody(
        "s = socket.socket(socket.AF_UNIX)\ns.bind(path)\ns.listen(4)\ntime.sleep(5)",
        &fake_broker,
    );
    wait_for(&fake_broker);
    std::thread::sleep(Duration::from_millis(100));
    let err = VsockStream::connect_fabric(&fabric, VsockAddr::new(77, 1)).unwrap_err();
    assert!(
        matches!(err, VsockError::UntrustedPeer { uid: 65534, .. }),
        "{err:?}"
    );
    let _ = squatter.kill();
    let _ = squatter.wait();
}

#[test]
fn transport_detection_follows_the_environment() {
    // This is the only test in this binary touching these variables.
    std::env::set_var("CLOISTER_VSOCK_TRANSPORT", "native");
    assert_eq!(Transport::detect(), Transport::Native);
    std::env::set_var("CLOISTER_VSOCK_TRANSPORT", "enclave");
    assert_eq!(
        Transport::detect(),
        Transport::Enclave("/dev/vsock.sock".into())
    );
    std::env::remove_var("CLOISTER_VSOCK_TRANSPORT");
    std::env::set_var("CLOISTER_RUN_DIR", "/tmp/some-run-dir");
    if !Path::new("/dev/vsock.sock").exists() {
        assert_eq!(
            Transport::detect(),
            Transport::Fabric("/tmp/some-run-dir/vsock".into())
        );
    }
    std::env::remove_var("CLOISTER_RUN_DIR");
}
