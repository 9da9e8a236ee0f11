//! Building `--docker-dir` with a Docker engine when one runs, as nitro-cli does.
//!
//! [`choose_builder`] picks who builds the Dockerfile: the engine on `DOCKER_HOST=unix://PATH`
//! (else `/var/run/docker.sock`) when it answers `GET /_ping` with `OK`, else `buildah` when it
//! is installed, else nobody (the caller reports both missing). With an engine, [`engine_build`]
//! runs `docker build` when the `docker` command exists (it honours `.dockerignore` and the
//! user's settings), else sends the context to the engine's API itself (`POST /build`, the
//! directory as a tar stream); either way the image is then read from the engine as
//! `--docker-uri` reads one. The API is spoken with the image builder's HTTP client
//! ([`cloister_image_builder::http`]).

use cloister_image_builder::http::{self, Http, HttpError, RequestBody};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long the engine has to answer a ping.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes of a ping answer's head, and of its body, read.
const MAX_PING_RESPONSE: u64 = 4096;
/// Most bytes of a build answer's head, and of its progress stream, read (the stream is
/// discarded but for errors).
const MAX_BUILD_OUTPUT: u64 = 256 * 1024 * 1024;
/// The headers every request to the engine carries.
const HEADERS: [(&str, &str); 3] = [
    ("host", "docker"),
    ("user-agent", "cloister"),
    ("connection", "close"),
];
/// How much of an error message is kept.
const MAX_ERROR_CHARS: usize = 2000;

/// Why a Dockerfile build with the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineBuildError {
    /// Neither an engine nor buildah.
    #[error(
        "no Docker engine answers on {socket} and buildah is not installed: start a Docker \
         engine (or set DOCKER_HOST=unix://PATH) or install buildah (apt-get install buildah)"
    )]
    NoBuilder {
        /// The engine socket tried.
        socket: String,
    },
    /// The context has no Dockerfile.
    #[error("{0} has no Dockerfile")]
    NoDockerfile(String),
    /// The tag is not usable.
    #[error("invalid image tag {0:?}")]
    BadTag(String),
    /// The context could not be packed or sent, or the answer not read.
    #[error("cannot {what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `docker build` failed.
    #[error("docker build failed (exit status {status}): {stderr}")]
    Cli {
        /// Its exit status.
        status: i32,
        /// The end of its error output.
        stderr: String,
    },
    /// The engine refused or the build failed.
    #[error("the Docker engine's build failed: {0}")]
    Engine(String),
}

/// Who builds a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Builder {
    /// The Docker engine listening on this socket.
    Engine(PathBuf),
    /// buildah.
    Buildah,
    /// Neither is available.
    None,
}

/// The engine when it answers on `socket`, else buildah when `buildah_available`, else none.
pub fn choose_builder(socket: &Path, buildah_available: impl FnOnce() -> bool) -> Builder {
    if engine_answers(socket) {
        Builder::Engine(socket.to_owned())
    } else if buildah_available() {
        Builder::Buildah
    } else {
        Builder::None
    }
}

/// Whether a Docker engine answers `GET /_ping` on `socket` with `200 OK`.
pub fn engine_answers(socket: &Path) -> bool {
    // Every wait of the exchange is bounded by the ping's timeout.
    let Ok(client) = Http::new(Some(PING_TIMEOUT)) else {
        return false;
    };
    let Ok(stream) = client.block_on(tokio::net::UnixStream::connect(socket)) else {
        return false;
    };
    let Ok(request) = http::get("/_ping", &HEADERS) else {
        return false;
    };
    let Ok(response) = client.send(stream, request, bound(MAX_PING_RESPONSE)) else {
        return false;
    };
    let mut body = Vec::new();
    if response
        .body
        .take(MAX_PING_RESPONSE)
        .read_to_end(&mut body)
        .is_err()
    {
        return false;
    }
    response.status == 200 && body.trim_ascii() == b"OK"
}

/// A byte bound as the head limit [`Http::send`] takes.
fn bound(max: u64) -> usize {
    usize::try_from(max).unwrap_or(usize::MAX)
}

/// The Dockerfile of a context: `Dockerfile`, else `Containerfile`.
pub fn dockerfile_of(context: &Path) -> Result<&'static str, EngineBuildError> {
    ["Dockerfile", "Containerfile"]
        .into_iter()
        .find(|f| context.join(f).is_file())
        .ok_or_else(|| EngineBuildError::NoDockerfile(context.display().to_string()))
}

fn check_tag(tag: &str) -> Result<(), EngineBuildError> {
    if tag.is_empty()
        || tag.len() > 256
        || tag.starts_with('-')
        || !tag.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'@')
        })
    {
        return Err(EngineBuildError::BadTag(tag.to_owned()));
    }
    Ok(())
}

fn tail(text: &str) -> String {
    let chars: Vec<char> = text.trim().chars().collect();
    chars[chars.len().saturating_sub(MAX_ERROR_CHARS)..]
        .iter()
        .collect()
}

/// Whether the `docker` command can be run.
fn docker_cli_available() -> bool {
    Command::new("docker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Builds `context`'s Dockerfile with the engine on `socket`, tagged `tag`: with `docker
/// build` when the command exists, else through the engine's API.
pub fn engine_build(socket: &Path, context: &Path, tag: &str) -> Result<(), EngineBuildError> {
    check_tag(tag)?;
    let dockerfile = dockerfile_of(context)?;
    if docker_cli_available() {
        let out = Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", socket.display()))
            .args(["build", "--quiet", "--tag", tag, "--file"])
            .arg(context.join(dockerfile))
            .arg("--")
            .arg(context)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| EngineBuildError::Io {
                what: "run docker build",
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        return Err(EngineBuildError::Cli {
            status: out.status.code().unwrap_or(-1),
            stderr: tail(&String::from_utf8_lossy(&out.stderr)),
        });
    }
    api_build(socket, context, dockerfile, tag)
}

/// Packs `context` as the tar stream the engine's build API takes (symlinks stored as links).
fn pack_context(context: &Path) -> Result<std::fs::File, EngineBuildError> {
    let io = |what| move |source| EngineBuildError::Io { what, source };
    let file = tempfile::tempfile().map_err(io("create a temporary file"))?;
    let mut tar = tar::Builder::new(file);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.append_dir_all(".", context)
        .map_err(io("pack the build context"))?;
    let mut file = tar.into_inner().map_err(io("pack the build context"))?;
    file.rewind().map_err(io("pack the build context"))?;
    Ok(file)
}

/// `POST /build?t=TAG&dockerfile=F` with the context, then the progress stream: any `error`
/// in it fails the build.
fn api_build(
    socket: &Path,
    context: &Path,
    dockerfile: &str,
    tag: &str,
) -> Result<(), EngineBuildError> {
    let body = pack_context(context)?;
    let io = |what| move |source| EngineBuildError::Io { what, source };
    let length = body.metadata().map_err(io("pack the build context"))?.len();
    // A build takes as long as it takes: no timeout.
    let client = Http::new(None).map_err(io("connect to the Docker engine"))?;
    let stream = client
        .block_on(tokio::net::UnixStream::connect(socket))
        .map_err(io("connect to the Docker engine"))?;
    // The tag holds only URL-safe characters (check_tag).
    let path = format!("/build?t={tag}&dockerfile={dockerfile}&rm=1");
    let mut headers = HEADERS.to_vec();
    headers.push(("content-type", "application/x-tar"));
    let request = http::post(&path, &headers, RequestBody::file(body, length))
        .map_err(|_| EngineBuildError::BadTag(tag.to_owned()))?;
    let response = client
        .send(stream, request, bound(MAX_BUILD_OUTPUT))
        .map_err(|e| match e {
            HttpError::Io(source) => io("send the build context to the Docker engine")(source),
            HttpError::HeadTooLarge | HttpError::Truncated | HttpError::Malformed(_) => {
                EngineBuildError::Engine("malformed HTTP answer".into())
            }
        })?;
    let status = response.status;
    let mut answer = Vec::new();
    response
        .body
        .take(MAX_BUILD_OUTPUT)
        .read_to_end(&mut answer)
        .map_err(io("read the Docker engine's answer"))?;
    if status != 200 {
        let message = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&answer).into_owned());
        return Err(EngineBuildError::Engine(tail(&format!(
            "HTTP {status}: {message}"
        ))));
    }
    build_stream_error(&answer).map_or(Ok(()), |e| Err(EngineBuildError::Engine(tail(&e))))
}

/// The first error of a build's progress stream (one JSON object per line).
fn build_stream_error(body: &[u8]) -> Option<String> {
    let de = serde_json::Deserializer::from_slice(body).into_iter::<serde_json::Value>();
    for value in de {
        let Ok(value) = value else {
            return Some("malformed progress stream".into());
        };
        if let Some(e) = value.get("error") {
            return Some(e.as_str().map_or_else(|| e.to_string(), str::to_owned));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    /// A Unix socket server that answers each connection with `answer` after reading its
    /// request head.
    fn fake_engine(dir: &Path, answer: &'static [u8]) -> PathBuf {
        let path = dir.join("docker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                if head.starts_with(b"GET /_ping ") {
                    let _ = conn.write_all(answer);
                }
            }
        });
        path
    }

    #[test]
    fn an_engine_that_answers_the_ping_is_chosen() {
        let dir = tempfile::tempdir().unwrap();
        let socket = fake_engine(
            dir.path(),
            b"HTTP/1.0 200 OK\r\nApi-Version: 1.45\r\nContent-Length: 2\r\n\r\nOK",
        );
        assert!(engine_answers(&socket));
        assert_eq!(
            choose_builder(&socket, || panic!("buildah is not asked")),
            Builder::Engine(socket.clone())
        );
    }

    #[test]
    fn without_an_engine_buildah_then_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.sock");
        assert!(!engine_answers(&missing));
        assert_eq!(choose_builder(&missing, || true), Builder::Buildah);
        assert_eq!(choose_builder(&missing, || false), Builder::None);
        // A socket that answers something else is not an engine.
        let other = tempfile::tempdir().unwrap();
        let socket = fake_engine(other.path(), b"HTTP/1.1 404 Not Found\r\n\r\nnope");
        assert!(!engine_answers(&socket));
        assert_eq!(choose_builder(&socket, || true), Builder::Buildah);
        let garbage = tempfile::tempdir().unwrap();
        let socket = fake_engine(garbage.path(), b"SSH-2.0-OpenSSH\r\n");
        assert!(!engine_answers(&socket));
    }

    #[test]
    fn a_silent_socket_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::time::Instant::now();
        assert!(!engine_answers(&path));
        assert!(t.elapsed() < PING_TIMEOUT * 3);
        drop(listener);
    }

    /// A Unix socket server that answers one request with `answer` after reading its head and
    /// its body (by `Content-Length`).
    fn fake_build_engine(dir: &Path, answer: &'static [u8]) -> PathBuf {
        let path = dir.join("docker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let Ok((conn, _)) = listener.accept() else {
                return;
            };
            let mut reader = std::io::BufReader::new(conn);
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) == 0
                    || line == "\r\n"
                {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_ok() {
                let _ = reader.into_inner().write_all(answer);
            }
        });
        path
    }

    #[test]
    fn build_answers_are_read_through_the_api() {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        let build = |answer: &'static [u8]| {
            let dir = tempfile::tempdir().unwrap();
            let socket = fake_build_engine(dir.path(), answer);
            api_build(&socket, ctx.path(), "Dockerfile", "app:1")
        };
        build(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"stream\":\"ok\"}\n\r\n0\r\n\r\n")
            .unwrap();
        let e = build(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"stream\":\"ok\"}\n\r\n11\r\n{\"error\":\"boom\"}\n\r\n0\r\n\r\n",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "the Docker engine's build failed: boom");
        let e = build(b"HTTP/1.0 500 Internal Server Error\r\n\r\n{\"message\":\"no space\"}")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the Docker engine's build failed: HTTP 500: no space"
        );
        for garbage in [&b"SSH-2.0-OpenSSH\r\n"[..], b"HTTP/1.1 200 OK\r\n", b""] {
            let e = build(garbage).unwrap_err();
            assert_eq!(
                e.to_string(),
                "the Docker engine's build failed: malformed HTTP answer"
            );
        }
        let missing = ctx.path().join("none.sock");
        let e = api_build(&missing, ctx.path(), "Dockerfile", "app:1").unwrap_err();
        assert_eq!(e.to_string(), "cannot connect to the Docker engine");
    }

    #[test]
    fn build_progress_errors_are_found() {
        let ok =
            b"{\"stream\":\"Step 1/2 : FROM scratch\\n\"}\r\n{\"aux\":{\"ID\":\"sha256:ab\"}}\r\n";
        assert_eq!(build_stream_error(ok), None);
        let failed = b"{\"stream\":\"Step 1/2\"}\n{\"errorDetail\":{\"message\":\"boom\"},\"error\":\"boom\"}\n";
        assert_eq!(build_stream_error(failed).as_deref(), Some("boom"));
        assert!(build_stream_error(b"{\"stream\":").is_some());
    }

    #[test]
    fn tags_and_contexts_are_checked() {
        for bad in ["", "-x", "a b", "a?b", "a&b=c"] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
        check_tag("localhost/app:1.0").unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            dockerfile_of(dir.path()),
            Err(EngineBuildError::NoDockerfile(_))
        ));
        std::fs::write(dir.path().join("Containerfile"), "FROM scratch\n").unwrap();
        assert_eq!(dockerfile_of(dir.path()).unwrap(), "Containerfile");
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        assert_eq!(dockerfile_of(dir.path()).unwrap(), "Dockerfile");
    }

    #[test]
    fn the_context_is_packed_as_a_tar_stream() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/file"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let file = pack_context(dir.path()).unwrap();
        let mut archive = tar::Archive::new(file);
        let mut names: Vec<(String, bool)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type().is_symlink(),
                )
            })
            .collect();
        names.sort();
        assert!(names.contains(&("Dockerfile".into(), false)), "{names:?}");
        assert!(names.contains(&("sub/file".into(), false)), "{names:?}");
        assert!(names.contains(&("link".into(), true)), "{names:?}");
    }
}
