//! `build-enclave --docker-dir` picks a Docker engine over buildah when one answers on
//! `DOCKER_HOST`. No engine runs on test machines, so a Unix socket server stands in for one:
//! it answers `GET /_ping` like an engine and checks the build request the CLI sends through the
//! engine's API (the tag, the Dockerfile, the context as a tar stream), then fails the build the
//! way an engine reports a failed step, so the test sees which builder ran. Without an engine and
//! without buildah, the error names both.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;

/// Serves one connection per request: pings answer `OK`; a `POST /build` gets a progress
/// stream whose error lists the request line and the context's files.
fn fake_engine(socket: &Path) {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let mut reader = BufReader::new(conn);
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let mut conn = reader.into_inner();
            let answer = if request_line.starts_with("GET /_ping ") {
                "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nOK".to_string()
            } else if request_line.starts_with("POST /build?") {
                let mut names: Vec<String> = tar::Archive::new(body.as_slice())
                    .entries()
                    .map(|entries| {
                        entries
                            .filter_map(|e| Some(e.ok()?.path().ok()?.display().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                names.sort();
                let error = format!(
                    "engine got {} with {}",
                    request_line.split(' ').nth(1).unwrap_or(""),
                    names.join(",")
                );
                let stream =
                    serde_json::json!({ "error": error, "errorDetail": { "message": error } });
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{{\"stream\":\"Step 1/2\"}}\r\n{stream}\r\n"
                )
            } else {
                "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
            };
            let _ = conn.write_all(answer.as_bytes());
        }
    });
}

fn context(dir: &Path) -> std::path::PathBuf {
    let ctx = dir.join("context");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY app /app\nCMD [\"/app\"]\n",
    )
    .unwrap();
    std::fs::write(ctx.join("app"), "not a program").unwrap();
    ctx
}

/// A PATH holding none of docker and buildah.
fn bare_path(dir: &Path) -> std::path::PathBuf {
    let bin = dir.join("empty-bin");
    std::fs::create_dir_all(&bin).unwrap();
    bin
}

#[test]
fn docker_dir_builds_with_the_engine_when_one_answers() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    fake_engine(&socket);
    let ctx = context(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(["build-enclave", "--docker-dir"])
        .arg(&ctx)
        .args(["--docker-uri", "hello:latest", "--output-file"])
        .arg(dir.path().join("out.eif"))
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        // Without the docker command the CLI speaks the engine's API itself.
        .env("PATH", bare_path(dir.path()))
        .env_remove("CLOISTER_ERROR_STYLE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("[E612]"), "{err}");
    assert!(
        err.contains("the Docker engine's build failed: engine got /build?t=hello:latest&dockerfile=Dockerfile"),
        "{err}"
    );
    assert!(err.contains("Dockerfile") && err.contains("app"), "{err}");
    assert!(!dir.path().join("out.eif").exists());
}

#[test]
fn docker_dir_without_engine_or_buildah_names_both() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let missing = dir.path().join("no-engine.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(["build-enclave", "--docker-dir"])
        .arg(&ctx)
        .arg("--output-file")
        .arg(dir.path().join("out.eif"))
        .env("DOCKER_HOST", format!("unix://{}", missing.display()))
        .env("PATH", bare_path(dir.path()))
        .env_remove("CLOISTER_ERROR_STYLE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("[E612]"), "{err}");
    assert!(
        err.contains(&format!(
            "no Docker engine answers on {}",
            missing.display()
        )) && err.contains("buildah is not installed"),
        "{err}"
    );
}
