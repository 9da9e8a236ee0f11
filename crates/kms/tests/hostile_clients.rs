//! The key service under hostile clients: oversized declared bodies, stalled heads and bodies,
//! idle connections, a flood of connections, and the modes of the files it keeps.
//!
//! Every test starts the real server on a loopback port and talks raw HTTP/1.1 over a
//! `TcpStream`, since well-behaved clients cannot misbehave on purpose. Reads carry a generous
//! timeout ([`READ_TIMEOUT`]); a test fails when the server does not answer or close within it.
//! The descriptor-limit test runs the server in a child process (this test binary, re-run with
//! `--ignored --exact hostile_child_server`) whose descriptor limit it lowers.

mod common;

use common::{RawClient, TestServer};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long a test waits for an answer or a close before failing.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A timeout short enough for tests (the defaults are tens of seconds).
const SHORT_MS: u64 = 1000;
/// Names the data directory of the child server.
const CHILD_ENV: &str = "CLOISTER_KMS_HOSTILE_CHILD_DIR";
/// The child server's descriptor limit.
const CHILD_NOFILE: u64 = 256;
/// Idle connections opened against the child: well past its descriptor limit.
const FLOOD: u64 = CHILD_NOFILE + 100;

fn start(dir: &Path, edit: impl FnOnce(&mut cloister_kms::Config)) -> TestServer {
    let mut cfg = common::config(None);
    edit(&mut cfg);
    TestServer::start(&dir.join("data"), cfg, 2)
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    BufReader::new(s)
}

fn send(s: &mut BufReader<TcpStream>, bytes: &[u8]) {
    s.get_mut().write_all(bytes).expect("send");
}

/// Reads one response: status, headers (lower-case names), body.
fn read_response(s: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut line = String::new();
    let n = s
        .read_line(&mut line)
        .expect("status line (no answer in time)");
    assert!(n > 0, "connection closed without an answer");
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        s.read_line(&mut h).expect("header line");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').expect("header");
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("body");
    (status, headers, body)
}

/// Reads until the server closes the connection; false if it is still open after
/// [`READ_TIMEOUT`].
fn closed_by_server(s: &mut BufReader<TcpStream>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// True if nothing arrives and the connection stays open for `wait`.
fn still_open(s: &mut BufReader<TcpStream>, wait: Duration) -> bool {
    s.get_ref().set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1];
    let open = matches!(
        s.read(&mut buf),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
    );
    s.get_ref().set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    open
}

/// A request head with an unsigned POST and the given extra header lines.
fn head(addr: SocketAddr, extra: &str) -> String {
    format!(
        "POST / HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-amz-json-1.1\r\nx-amz-target: TrentService.ListKeys\r\n{extra}\r\n"
    )
}

fn list_keys(server: &TestServer) -> u16 {
    let mut c = RawClient::connect(
        server.addr,
        &server.admin.access_key_id,
        &server.admin.secret_access_key,
    );
    c.call("ListKeys", b"{}").0
}

#[test]
fn declared_oversized_body_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), |_| {});
    let mut s = connect(server.addr);
    send(
        &mut s,
        head(server.addr, "content-length: 1000000000000\r\n").as_bytes(),
    );
    let (status, headers, body) = read_response(&mut s);
    assert_eq!(status, 413);
    assert!(headers.contains(&("connection".into(), "close".into())));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["__type"], "RequestEntityTooLargeException");
    assert!(closed_by_server(&mut s), "connection left open after 413");
}

#[test]
fn declared_oversized_body_with_expect_continue_gets_413_not_100() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), |_| {});
    let mut s = connect(server.addr);
    send(
        &mut s,
        head(
            server.addr,
            "content-length: 1000000000000\r\nexpect: 100-continue\r\n",
        )
        .as_bytes(),
    );
    let (status, _, _) = read_response(&mut s);
    assert_eq!(status, 413, "the first response must be the refusal");
    assert!(closed_by_server(&mut s));
    // The server still serves.
    assert_eq!(list_keys(&server), 200);
}

#[test]
fn oversized_body_sent_anyway_still_reads_413() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), |_| {});
    let body = vec![b'x'; 600 * 1024];
    // Declared: refused before reading, the upload is discarded while the connection closes.
    let mut s = connect(server.addr);
    let h = head(server.addr, &format!("content-length: {}\r\n", body.len()));
    let _ = s.get_mut().write_all(h.as_bytes());
    let _ = s.get_mut().write_all(&body);
    assert_eq!(read_response(&mut s).0, 413);
    // Chunked: refused once the cap is passed.
    let mut s = connect(server.addr);
    let h = head(server.addr, "transfer-encoding: chunked\r\n");
    let _ = s.get_mut().write_all(h.as_bytes());
    for chunk in body.chunks(64 * 1024) {
        let _ = s
            .get_mut()
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
        let _ = s.get_mut().write_all(chunk);
        let _ = s.get_mut().write_all(b"\r\n");
    }
    let _ = s.get_mut().write_all(b"0\r\n\r\n");
    assert_eq!(read_response(&mut s).0, 413);
    assert!(closed_by_server(&mut s));
}

#[test]
fn stalled_partial_head_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), |c| {
        c.server.header_read_timeout_ms = Some(SHORT_MS);
    });
    let mut s = connect(server.addr);
    send(
        &mut s,
        format!("POST / HTTP/1.1\r\nhost: {}\r\nx-amz-tar", server.addr).as_bytes(),
    );
    assert!(
        closed_by_server(&mut s),
        "a stalled request head was held open"
    );
    assert_eq!(list_keys(&server), 200);
}

#[test]
fn stalled_partial_body_is_answered_408_and_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), |c| {
        c.server.body_read_timeout_ms = Some(SHORT_MS);
    });
    let mut s = connect(server.addr);
    send(
        &mut s,
        format!("{}{{\"Lim", head(server.addr, "content-length: 100\r\n")).as_bytes(),
    );
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 408);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["__type"], "RequestTimeoutException");
    assert!(
        closed_by_server(&mut s),
        "a stalled request body was held open"
    );
}

#[test]
fn idle_connections_are_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), |c| {
        c.server.idle_timeout_ms = Some(SHORT_MS);
    });
    // Never sent a byte.
    let mut silent = connect(server.addr);
    // Kept alive after a complete request.
    let mut kept = connect(server.addr);
    send(
        &mut kept,
        format!("{}{{}}", head(server.addr, "content-length: 2\r\n")).as_bytes(),
    );
    let (status, headers, _) = read_response(&mut kept);
    assert_eq!(status, 400, "unsigned request");
    assert!(!headers.iter().any(|(k, _)| k == "connection"));
    assert!(
        closed_by_server(&mut kept),
        "idle keep-alive connection held open"
    );
    assert!(closed_by_server(&mut silent), "silent connection held open");
    // A client that keeps talking is served across the idle timeout's span.
    let mut c = RawClient::connect(
        server.addr,
        &server.admin.access_key_id,
        &server.admin.secret_access_key,
    );
    for _ in 0..3 {
        assert_eq!(c.call("ListKeys", b"{}").0, 200);
        std::thread::sleep(Duration::from_millis(SHORT_MS / 4));
    }
}

#[test]
fn connection_cap_sheds_the_oldest_idle_connections() {
    const CAP: usize = 20;
    const IDLE: usize = 25;
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), |c| {
        c.server.max_connections = Some(CAP);
    });
    // A connection in the middle of a request: head and part of its body sent.
    let mut busy = connect(server.addr);
    let body = b"{\"Limit\":1}";
    send(
        &mut busy,
        format!(
            "{}{}",
            head(server.addr, &format!("content-length: {}\r\n", body.len())),
            std::str::from_utf8(&body[..3]).unwrap()
        )
        .as_bytes(),
    );
    std::thread::sleep(Duration::from_millis(200));
    let mut idle: Vec<_> = (0..IDLE)
        .map(|_| {
            let s = connect(server.addr);
            std::thread::sleep(Duration::from_millis(10));
            s
        })
        .collect();
    // A real client still gets in, taking the place of an idle connection.
    assert_eq!(list_keys(&server), 200);
    // busy + IDLE idle + the client = CAP + shed; the oldest idle ones went.
    let shed = 1 + IDLE + 1 - CAP;
    for (i, s) in idle.iter_mut().enumerate().take(shed) {
        assert!(closed_by_server(s), "idle connection {i} was not shed");
    }
    for (i, s) in idle.iter_mut().enumerate().skip(shed) {
        assert!(
            still_open(s, Duration::from_millis(100)),
            "idle connection {i} was shed before older ones"
        );
    }
    // The connection in the middle of its request was kept: it finishes and is answered.
    send(&mut busy, &body[3..]);
    let (status, _, _) = read_response(&mut busy);
    assert_eq!(status, 400, "unsigned request answered");
}

#[test]
fn new_connection_is_closed_when_every_connection_is_busy() {
    const CAP: usize = 3;
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), |c| {
        c.server.max_connections = Some(CAP);
    });
    let mut busy: Vec<_> = (0..CAP)
        .map(|_| {
            let mut s = connect(server.addr);
            send(
                &mut s,
                format!("{}{{", head(server.addr, "content-length: 2\r\n")).as_bytes(),
            );
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut refused = connect(server.addr);
    assert!(
        closed_by_server(&mut refused),
        "a connection beyond the cap was kept"
    );
    // Busy connections were not touched; once one is done, a new client gets its place.
    for s in &mut busy {
        send(s, b"}");
        assert_eq!(read_response(s).0, 400);
    }
    assert_eq!(list_keys(&server), 200);
}

#[test]
fn store_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    {
        let _server = start(tmp.path(), |_| {});
        assert_eq!(mode(&data.join("kms.redb")), 0o600);
        assert_eq!(mode(&data.join("master.key")), 0o600);
        assert_eq!(mode(&data.join("admin-credentials.json")), 0o600);
        assert_eq!(mode(&data), 0o700);
    }
    // A store left readable by others (as earlier versions made it) is closed at the next start.
    std::fs::set_permissions(
        data.join("kms.redb"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = start(tmp.path(), |_| {});
    assert_eq!(mode(&data.join("kms.redb")), 0o600);
    assert_eq!(mode(&data) & 0o007, 0);
    assert_eq!(list_keys(&server), 200);
}

/// Child entry point: serves the data directory named in the environment, with at most
/// [`CHILD_NOFILE`] descriptors, until killed.
#[test]
#[ignore = "entry point of the descriptor-limit test's child process"]
fn hostile_child_server() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, CHILD_NOFILE.min(hard), hard).unwrap();
    let opts = cloister_kms::server::ServeOptions {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.into(),
        tls: None,
        config: common::config(None),
    };
    cloister_kms::server::serve_blocking(opts, |s| println!("LISTEN {}", s.listen)).expect("serve");
}

#[test]
fn idle_flood_past_the_descriptor_limit_does_not_lock_clients_out() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // This process holds the flood's sockets: make sure it may.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let want = FLOOD + 256;
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "hostile_child_server",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: Option<SocketAddr> = lines.by_ref().map_while(Result::ok).find_map(|l| {
        // libtest prints "test hostile_child_server ... " before the line on the same row.
        let i = l.find("LISTEN ")?;
        l[i + 7..].trim().parse().ok()
    });
    std::thread::spawn(move || for _ in lines {});
    let Some(addr) = addr else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("child server did not start");
    };
    let flood: Vec<_> = (0..FLOOD).map(|_| connect(addr)).collect();
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("admin-credentials.json")).unwrap())
            .unwrap();
    let status = RawClient::try_connect(
        addr,
        creds["AccessKeyId"].as_str().unwrap(),
        creds["SecretAccessKey"].as_str().unwrap(),
    )
    .and_then(|mut c| c.try_call("ListKeys", b"{}"));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(flood);
    assert_eq!(
        status
            .expect("a real client was locked out by idle connections")
            .0,
        200
    );
}
