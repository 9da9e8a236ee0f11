//! An unmodified parent program (`tests/apps/vsock-c/vsock_parent.c`, built here with gcc)
//! under the notification filter, served by a supervisor against the host fabric in a temp
//! directory, with this test in the role of an enclave's broker: the program's `connect` to
//! (5, 7000) must arrive as `CONNECT 7000` on `5.sock`, and its listener on port 7001 must be
//! `3_7001.sock`, whose `CONNECT-FROM` preamble the program never sees.

use cloister_supervisor::{HostFabric, Supervisor};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

fn read_line(s: &mut impl Read) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

#[test]
fn unmodified_parent_program_over_the_host_fabric() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/apps/vsock-c/vsock_parent.c");
    let bin = tmp.path().join("vsock_parent");
    let ok = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(ok.success());
    let fabric = tmp.path().join("vsock");
    // Creates the fabric directory as the fabric wants it.
    drop(cloister_vsock::VsockListener::bind_fabric(&fabric, 1).unwrap());

    // The enclave with cid 5: its broker socket answers one CONNECT.
    let broker = UnixListener::bind(fabric.join("5.sock")).unwrap();
    let broker_thread = std::thread::spawn(move || {
        let (mut s, _) = broker.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        assert_eq!(read_line(&mut s), "CONNECT 7000");
        s.write_all(b"OK 1025\n").unwrap();
        assert_eq!(read_line(&mut s), "hello");
        s.write_all(b"world\n").unwrap();
    });

    let filter = cloister_confine::notify::build().unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let chan = theirs.as_fd().try_clone_to_owned().unwrap();
    let mut cmd = Command::new(&bin);
    cmd.args(["5", "7000", "7001"]).stdout(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only makes system calls.
    unsafe {
        cmd.pre_exec(move || {
            let listener = match cloister_confine::notify::install(&filter) {
                Ok(l) => l,
                Err(_) => {
                    cloister_confine::caps::set_no_new_privs().map_err(std::io::Error::other)?;
                    cloister_confine::notify::install(&filter).map_err(std::io::Error::other)?
                }
            };
            cloister_supervisor::send_listener(chan.as_fd(), listener.as_fd())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    drop(theirs);
    let listener = cloister_supervisor::recv_listener(ours.as_fd())
        .unwrap()
        .expect("listener");
    let supervisor =
        Supervisor::spawn(listener, Arc::new(HostFabric::new(fabric.clone()))).unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "reply world\n");
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "listening\n");
    broker_thread.join().unwrap();

    // A broker passing an enclave's connection to the program's listener.
    let mut c = UnixStream::connect(fabric.join("3_7001.sock")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"CONNECT-FROM 5 2000\nping\n").unwrap();
    assert_eq!(read_line(&mut c), "echo:ping");
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "peer 5 2000\n");
    assert!(child.wait().unwrap().success());
    supervisor.stop();
}
