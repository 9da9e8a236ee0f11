//! The Docker engine input against a fake engine: an HTTP/1.1 server on a Unix socket that
//! answers `GET /images/<name>/get` with a docker-save archive (chunked), or an error.

mod common;
use cloister_image_builder::{prepare, BuildRequest, ImageInput};
use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;

fn serve_once(listener: UnixListener, archive: Vec<u8>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).unwrap();
            if l == "\r\n" || l.is_empty() {
                break;
            }
        }
        let mut s = stream;
        if request_line.starts_with("GET /images/app:1.0/get ") {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
            for chunk in archive.chunks(7000) {
                write!(s, "{:x}\r\n", chunk.len()).unwrap();
                s.write_all(chunk).unwrap();
                s.write_all(b"\r\n").unwrap();
            }
            s.write_all(b"0\r\n\r\n").unwrap();
        } else {
            let body = br#"{"message":"reference does not exist"}"#;
            write!(
                s,
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .unwrap();
            s.write_all(body).unwrap();
        }
        request_line
    })
}

#[test]
fn builds_from_a_fake_engine_and_reports_its_errors() {
    let t = tempfile::tempdir().unwrap();
    let layers = vec![plain_layer(&[E::File("hello", 0o755, 0, 0, b"hi")])];
    let cfg = config(&layers, json!({"Cmd": ["/hello"], "Env": ["A=1"]}));
    let archive_path = t.path().join("a.tar");
    docker_archive_old(&archive_path, &layers, &cfg, "app:1.0");
    let archive = std::fs::read(&archive_path).unwrap();
    let blobs = blobs_dir(&t.path().join("blobs"), true);
    let socket = t.path().join("docker.sock");

    let server = serve_once(UnixListener::bind(&socket).unwrap(), archive.clone());
    let p = prepare(&BuildRequest::new(
        ImageInput::DockerEngine {
            image: "app:1.0".into(),
            socket: socket.clone(),
        },
        blobs.clone(),
        t.path().join("o.eif"),
    ))
    .unwrap();
    assert!(server
        .join()
        .unwrap()
        .starts_with("GET /images/app:1.0/get HTTP/1.1"));
    assert_eq!(p.metadata.image_name, "app");
    let c = read_cpio(p.customer.path());
    assert!(c.iter().any(|e| e.0 == "rootfs/hello" && e.6 == b"hi"));

    std::fs::remove_file(&socket).unwrap();
    let server = serve_once(UnixListener::bind(&socket).unwrap(), archive);
    let e = prepare(&BuildRequest::new(
        ImageInput::DockerEngine {
            image: "missing".into(),
            socket: socket.clone(),
        },
        blobs.clone(),
        t.path().join("o.eif"),
    ))
    .unwrap_err();
    server.join().unwrap();
    assert!(
        e.to_string().contains("404") && e.to_string().contains("reference does not exist"),
        "{e}"
    );

    // No engine at all (the situation on this machine): a clear error pointing elsewhere.
    let e = prepare(&BuildRequest::new(
        ImageInput::DockerEngine {
            image: "app".into(),
            socket: t.path().join("nothing.sock"),
        },
        blobs,
        t.path().join("o.eif"),
    ))
    .unwrap_err();
    assert!(
        e.to_string().contains("no Docker engine") && e.to_string().contains("--docker-archive"),
        "{e}"
    );
}
