//! Pulls from a fake registry on the loopback: a 401 with a Bearer challenge, the token
//! endpoint, a redirected blob with a chunked body, and then a prepared build of what was
//! pulled; hostile answers (a blob longer than its descriptor, an endless head) are refused.

mod common;
use cloister_image_builder::registry::{pull_to_archive, MAX_HEAD};
use cloister_image_builder::{prepare, BuildRequest, ImageInput};
use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

type Route = dyn Fn(&str, Option<&str>) -> Vec<u8> + Send + Sync;

/// Serves one request per connection with `route(path, authorization)`; records what came.
fn serve(route: Box<Route>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            answer(stream, &*route, &log);
        }
    });
    (port, seen)
}

fn answer(stream: TcpStream, route: &Route, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
    let mut auth = None;
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                auth = Some(v.trim().to_owned());
            }
        }
    }
    log.lock()
        .unwrap()
        .push(format!("{path} {}", auth.as_deref().unwrap_or("-")));
    let mut s = stream;
    let _ = s.write_all(&route(&path, auth.as_deref()));
}

fn ok(content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut v = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for c in body.chunks(1000) {
        v.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        v.extend_from_slice(c);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}

/// An image: (manifest, config, layer blob).
fn image() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let layers = vec![gz_layer(&[E::File("hello", 0o755, 0, 0, b"hi")])];
    let cfg = config(&layers, json!({"Cmd": ["/hello"]}));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{}", sha256_hex(&cfg)), "size": cfg.len()},
        "layers": [{"mediaType": layers[0].media_type,
                    "digest": format!("sha256:{}", sha256_hex(&layers[0].blob)),
                    "size": layers[0].blob.len()}],
    }))
    .unwrap();
    let blob = layers[0].blob.clone();
    (manifest, cfg, blob)
}

#[test]
fn pulls_with_a_bearer_token_and_redirects() {
    let (manifest, cfg, blob) = image();
    let cfg_digest = format!("sha256:{}", sha256_hex(&cfg));
    let blob_digest = format!("sha256:{}", sha256_hex(&blob));
    let expected_total = (cfg.len() + blob.len()) as u64;
    let port = Arc::new(Mutex::new(0u16));
    let p = port.clone();
    let (bound, seen) = serve(Box::new(move |path, auth| {
        let port = *p.lock().unwrap();
        if path.starts_with("/token?") {
            return ok("application/json", br#"{"token":"t0k"}"#);
        }
        if path.starts_with("/storage/") {
            return chunked(&cfg);
        }
        if auth != Some("Bearer t0k") {
            return format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\"\r\nContent-Length: 0\r\n\r\n"
            )
            .into_bytes();
        }
        if path == "/v2/team/app/manifests/1.0" {
            ok("application/vnd.oci.image.manifest.v1+json", &manifest)
        } else if path == format!("/v2/team/app/blobs/{cfg_digest}") {
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /storage/cfg\r\nContent-Length: 0\r\n\r\n".to_vec()
        } else if path == format!("/v2/team/app/blobs/{blob_digest}") {
            ok("application/octet-stream", &blob)
        } else {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 31\r\n\r\n{\"errors\":[{\"message\":\"nope\"}]}".to_vec()
        }
    }));
    *port.lock().unwrap() = bound;

    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("image.tar");
    let mut out = std::fs::File::create(&archive).unwrap();
    let image = format!("127.0.0.1:{bound}/team/app:1.0");
    let total = pull_to_archive(&image, &mut out, 1 << 30).unwrap();
    assert_eq!(total, expected_total);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0], "/v2/team/app/manifests/1.0 -");
    assert!(
        seen[1].starts_with("/token?service=fake&scope=repository%3Ateam%2Fapp%3Apull"),
        "{seen:?}"
    );
    assert!(
        seen[2..].iter().all(|s| s.ends_with(" Bearer t0k")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.starts_with("/storage/cfg ")),
        "{seen:?}"
    );

    let p = prepare(&BuildRequest::new(
        ImageInput::DockerArchive {
            file: archive,
            tag: None,
        },
        blobs_dir(&t.path().join("blobs"), true),
        t.path().join("o.eif"),
    ))
    .unwrap();
    let c = read_cpio(p.customer.path());
    assert!(c.iter().any(|e| e.0 == "rootfs/hello" && e.6 == b"hi"));

    // A tag the registry does not have: its message comes through.
    let e = pull_to_archive(
        &format!("127.0.0.1:{bound}/team/app:2.0"),
        &mut std::io::sink(),
        1 << 30,
    )
    .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn hostile_registries_are_bounded() {
    let (manifest, cfg, _) = image();
    let cfg_digest = format!("sha256:{}", sha256_hex(&cfg));
    let (bound, _) = serve(Box::new(move |path, _| {
        if path.ends_with("/manifests/long") {
            // A head longer than the limit.
            format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD)).into_bytes()
        } else if path.ends_with("/manifests/1.0") {
            ok("application/vnd.oci.image.manifest.v1+json", &manifest)
        } else if path == format!("/v2/app/blobs/{cfg_digest}") {
            // More bytes than the descriptor's size.
            ok("application/octet-stream", &[0u8; 1 << 16])
        } else {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()
        }
    }));
    let e = pull_to_archive(
        &format!("127.0.0.1:{bound}/app:long"),
        &mut std::io::sink(),
        1 << 30,
    )
    .unwrap_err();
    assert!(e.to_string().contains("response head too long"), "{e}");
    let e = pull_to_archive(
        &format!("127.0.0.1:{bound}/app:1.0"),
        &mut std::io::sink(),
        1 << 30,
    )
    .unwrap_err();
    assert!(e.to_string().contains("larger than"), "{e}");
}
