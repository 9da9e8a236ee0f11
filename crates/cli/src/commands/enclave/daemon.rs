//! `cloister daemon`: lets the members of one group (nitro-cli's `ne`) run, describe, attach to
//! and terminate enclaves without root, and nothing else.
//!
//! nitro-cli relies on the permissions of its device (`/dev/nitro_enclaves`, group `ne`);
//! Cloister's enclaves need root (namespaces, cgroups, the run directory), so a small root
//! service stands in for the device: it listens on a Unix socket owned by `root:<group>` with
//! mode 0660 and executes only the four enclave verbs, with arguments it validates itself.
//!
//! Protocol ([`Request`], [`parse_request`]): the client sends one JSON line of at most
//! [`MAX_REQUEST`] bytes. For `RunEnclave` the client opens the image itself and passes the
//! open file with SCM_RIGHTS on the line's first byte, so the daemon never opens a path with
//! root's rights on a user's behalf: it copies the file it was handed (at most a quarter of
//! the enclave's memory, the memory rule's limit) into a root-only staging file and runs that.
//! The daemon answers with one JSON line ([`Response`]); for `Console`, the console's bytes
//! follow it until the enclave ends or the client's timeout passes.
//!
//! Who may ask: the peer's credentials (SO_PEERCRED) are checked on every connection: root,
//! or a user whose primary or supplementary groups include the configured group.
//!
//! The CLI uses the daemon by itself when it does not run as root and the socket
//! ([`SOCKET_ENV`], default [`DEFAULT_SOCKET`]) exists.

use super::records::{self as enclave, describe_json, enclave_name, run_json, TerminateOutput};
use crate::codes::{self, Code};
use crate::errors::{CliError, CliResult, Coded};
use clap::Args;
use cloister_runtime::allocator::CpuRequest;
use cloister_runtime::lifecycle::{self, MonitorCommand, RunOptions, Selector};
use cloister_runtime::{Isolation, RunDir};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The daemon's socket path variable (client and daemon).
pub const SOCKET_ENV: &str = "CLOISTER_DAEMON_SOCKET";
/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/run/cloister-daemon.sock";
/// Default group, nitro-cli's.
pub const DEFAULT_GROUP: &str = "ne";
/// Largest request line.
pub const MAX_REQUEST: usize = 16 * 1024;
/// Largest answer line the client reads.
const MAX_RESPONSE: u64 = 4 << 20;
/// Longest a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen queue.
const MAX_CLIENTS: usize = 32;
/// Longest console disconnect timeout accepted (a day).
const MAX_CONSOLE_TIMEOUT_S: u64 = 86_400;
/// Largest image the daemon stages for a client (the staging directory is in the run
/// directory, normally a tmpfs).
const MAX_STAGED_IMAGE: u64 = 8 << 30;
/// Most CPU ids in one request.
const MAX_CPU_IDS: usize = 4096;

/// `cloister daemon` flags.
#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// Socket to listen on.
    #[arg(long, value_name = "PATH", env = SOCKET_ENV, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Group whose members may use enclaves.
    #[arg(long, value_name = "GROUP", default_value = DEFAULT_GROUP)]
    pub group: String,
}

/// Which enclave a request names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Target {
    /// By id.
    Id(String),
    /// By name.
    Name(String),
    /// Every enclave (terminate only).
    All,
}

/// One request. Only these four verbs exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Request {
    /// Run an enclave from the image passed with the request.
    RunEnclave {
        /// The name asked for, if any.
        name: Option<String>,
        /// The image file's name (for the default enclave name), without directories.
        image_file_name: String,
        /// CPU count.
        cpu_count: Option<u32>,
        /// CPU ids.
        cpu_ids: Option<Vec<u32>>,
        /// Memory in MiB.
        memory_mib: u64,
        /// CID (0: assign).
        cid: u64,
        /// Debug mode.
        debug_mode: bool,
        /// `process` or `vm`.
        isolation: String,
    },
    /// List enclaves.
    DescribeEnclaves {
        /// Include image metadata.
        metadata: bool,
    },
    /// Terminate enclaves.
    TerminateEnclave {
        /// Which.
        target: Target,
    },
    /// Stream a console.
    Console {
        /// Which (not `All`).
        target: Target,
        /// Seconds after connecting to disconnect.
        disconnect_timeout_s: Option<u64>,
    },
}

/// The daemon's answer line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Response {
    /// Success, with the verb's JSON (null for `Console`, whose bytes follow).
    Ok(Value),
    /// Failure, with Cloister's code and the message.
    Err {
        /// Cloister's code.
        code: String,
        /// The whole message.
        message: String,
    },
}

/// Why a request was refused before anything ran.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// Longer than [`MAX_REQUEST`].
    #[error("request longer than {MAX_REQUEST} bytes")]
    TooLong,
    /// Not a request.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Well-formed but not allowed.
    #[error("invalid request: {0}")]
    Invalid(&'static str),
}

fn printable_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= lifecycle::MAX_NAME_LEN && !s.chars().any(char::is_control)
}

fn valid_target(t: &Target) -> bool {
    match t {
        Target::Id(s) | Target::Name(s) => printable_name(s),
        Target::All => true,
    }
}

/// Parses and validates one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() > MAX_REQUEST {
        return Err(RequestError::TooLong);
    }
    let req: Request =
        serde_json::from_slice(line).map_err(|e| RequestError::Malformed(e.to_string()))?;
    match &req {
        Request::RunEnclave {
            name,
            image_file_name,
            cpu_count,
            cpu_ids,
            memory_mib,
            isolation,
            ..
        } => {
            if name.as_deref().is_some_and(|n| !printable_name(n)) {
                return Err(RequestError::Invalid("enclave name"));
            }
            if !printable_name(image_file_name) || image_file_name.contains('/') {
                return Err(RequestError::Invalid("image file name"));
            }
            if cpu_count.is_some() == cpu_ids.is_some() {
                return Err(RequestError::Invalid("one of cpu_count and cpu_ids"));
            }
            if cpu_ids.as_ref().is_some_and(|c| c.len() > MAX_CPU_IDS) {
                return Err(RequestError::Invalid("too many CPU ids"));
            }
            if *memory_mib == 0 {
                return Err(RequestError::Invalid("memory"));
            }
            if isolation.parse::<Isolation>().is_err() {
                return Err(RequestError::Invalid("isolation"));
            }
        }
        Request::DescribeEnclaves { .. } => {}
        Request::TerminateEnclave { target } => {
            if !valid_target(target) {
                return Err(RequestError::Invalid("target"));
            }
        }
        Request::Console {
            target,
            disconnect_timeout_s,
        } => {
            if !valid_target(target) || *target == Target::All {
                return Err(RequestError::Invalid("target"));
            }
            if disconnect_timeout_s.is_some_and(|t| t > MAX_CONSOLE_TIMEOUT_S) {
                return Err(RequestError::Invalid("disconnect timeout"));
            }
        }
    }
    Ok(req)
}

/// Sends `line` and a newline, with `fd` attached to the first byte.
fn send_line(sock: &UnixStream, line: &[u8], fd: Option<&OwnedFd>) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let mut buf = line.to_vec();
    buf.push(b'\n');
    let raw = fd.map(|f| [f.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage> = raw
        .as_ref()
        .map(|r| vec![ControlMessage::ScmRights(r)])
        .unwrap_or_default();
    let n = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&buf)],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(std::io::Error::from)?;
    (&*sock).write_all(&buf[n..])
}

/// Reads one line (at most `max` bytes before the newline) and the descriptor that came with
/// its first bytes, if any. Reads byte by byte after the first message so nothing past the
/// newline is consumed.
fn recv_line(sock: &UnixStream, max: usize) -> Result<(Vec<u8>, Option<OwnedFd>), RequestError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let io_err = |e: std::io::Error| RequestError::Malformed(e.to_string());
    let mut first = [0u8; 1];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut first)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| io_err(e.into()))?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(|e| io_err(e.into()))? {
        if let ControlMessageOwned::ScmRights(rs) = c {
            for r in rs {
                // SAFETY: the kernel just installed `r` in this process for this message
                // (SCM_RIGHTS); nothing else owns it, so wrapping it transfers ownership once.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    let got = msg.bytes;
    if got == 0 {
        return Err(RequestError::Malformed("connection closed".into()));
    }
    if fds.len() > 1 {
        return Err(RequestError::Invalid("more than one descriptor"));
    }
    let mut line = Vec::new();
    let mut byte = first[0];
    // The whole line must arrive within the timeout, not each byte.
    let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        if byte == b'\n' {
            return Ok((line, fds.pop()));
        }
        if line.len() >= max {
            return Err(RequestError::TooLong);
        }
        if std::time::Instant::now() >= deadline {
            return Err(RequestError::Malformed(
                "request not received in time".into(),
            ));
        }
        line.push(byte);
        let mut b = [0u8; 1];
        match (&*sock).read(&mut b).map_err(io_err)? {
            0 => return Err(RequestError::Malformed("no newline".into())),
            _ => byte = b[0],
        }
    }
}

/// Whether the peer may use the daemon: root, or a member of `gid`.
fn peer_allowed(sock: &UnixStream, gid: nix::unistd::Gid) -> Result<bool, std::io::Error> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let cred = getsockopt(&sock.as_fd(), PeerCredentials).map_err(std::io::Error::from)?;
    if cred.uid() == 0 {
        return Ok(true);
    }
    if cred.gid() == gid.as_raw() {
        return Ok(true);
    }
    let Some(user) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(cred.uid()))
        .map_err(std::io::Error::from)?
    else {
        return Ok(false);
    };
    if user.gid == gid {
        return Ok(true);
    }
    let name = std::ffi::CString::new(user.name).map_err(std::io::Error::other)?;
    let groups = nix::unistd::getgrouplist(&name, user.gid).map_err(std::io::Error::from)?;
    Ok(groups.contains(&gid))
}

/// Runs the daemon until killed.
pub fn run_daemon(args: DaemonArgs) -> CliResult<()> {
    let group = nix::unistd::Group::from_name(&args.group)
        .map_err(std::io::Error::from)
        .code(codes::E322)?
        .ok_or_else(|| CliError::msg(codes::E322, format!("no group named {}", args.group)))?;
    if std::fs::symlink_metadata(&args.socket)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
    {
        std::fs::remove_file(&args.socket).code(codes::E322)?;
    }
    let listener = UnixListener::bind(&args.socket)
        .map_err(|e| anyhow::Error::new(e).context(format!("bind {}", args.socket.display())))
        .code(codes::E322)?;
    nix::unistd::chown(
        &args.socket,
        Some(nix::unistd::Uid::from_raw(0)),
        Some(group.gid),
    )
    .map_err(std::io::Error::from)
    .code(codes::E322)?;
    std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o660))
        .code(codes::E322)?;
    tracing::info!(socket = %args.socket.display(), group = %args.group, "daemon listening");
    let active = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        while active.load(std::sync::atomic::Ordering::Acquire) >= MAX_CLIENTS {
            std::thread::sleep(Duration::from_millis(20));
        }
        active.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let active = active.clone();
        let gid = group.gid;
        std::thread::spawn(move || {
            serve(conn, gid);
            active.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        });
    }
    Ok(())
}

fn answer(conn: &UnixStream, r: &Response) {
    if let Ok(line) = serde_json::to_vec(r) {
        let _ = send_line(conn, &line, None);
    }
}

fn answer_err(conn: &UnixStream, e: &CliError) {
    answer(
        conn,
        &Response::Err {
            code: e.code.as_str().to_owned(),
            message: format!("{:#}", e.error),
        },
    );
}

/// Serves one connection: check the peer, read and validate one request, run it.
fn serve(conn: UnixStream, gid: nix::unistd::Gid) {
    match peer_allowed(&conn, gid) {
        Ok(true) => {}
        _ => {
            answer_err(
                &conn,
                &CliError::msg(codes::E321, "not a member of the enclave group"),
            );
            return;
        }
    }
    let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
    let (line, fd) = match recv_line(&conn, MAX_REQUEST) {
        Ok(x) => x,
        Err(e) => return answer_err(&conn, &CliError::new(codes::E321, e)),
    };
    let req = match parse_request(&line) {
        Ok(r) => r,
        Err(e) => return answer_err(&conn, &CliError::new(codes::E321, e)),
    };
    let _ = conn.set_read_timeout(None);
    let run_dir = RunDir::from_env();
    let result = match req {
        Request::Console {
            target,
            disconnect_timeout_s,
        } => {
            let rec = match lifecycle::select(&run_dir, &selector(target))
                .map_err(enclave::map_err)
                .and_then(|mut v| {
                    let rec = v.remove(0);
                    if rec.debug_mode {
                        Ok(rec)
                    } else {
                        Err(enclave::map_err(lifecycle::LifecycleError::NotDebug(
                            rec.enclave_id,
                        )))
                    }
                }) {
                Ok(r) => r,
                Err(e) => return answer_err(&conn, &e),
            };
            answer(&conn, &Response::Ok(Value::Null));
            let mut out = &conn;
            let _ = enclave::stream_console(
                &run_dir,
                &rec,
                &mut out,
                disconnect_timeout_s.map(Duration::from_secs),
            );
            return;
        }
        Request::RunEnclave { .. } => run_request(&run_dir, req, fd),
        Request::DescribeEnclaves { metadata } => lifecycle::describe(&run_dir)
            .map_err(enclave::map_err)
            .map(|recs| Value::Array(recs.iter().map(|r| describe_json(r, metadata)).collect())),
        Request::TerminateEnclave { target } => terminate(&run_dir, target),
    };
    match result {
        Ok(v) => answer(&conn, &Response::Ok(v)),
        Err(e) => answer_err(&conn, &e),
    }
}

fn selector(t: Target) -> Selector {
    match t {
        Target::Id(id) => Selector::Id(id),
        Target::Name(n) => Selector::Name(n),
        Target::All => Selector::All,
    }
}

fn terminate(run_dir: &RunDir, target: Target) -> CliResult<Value> {
    let all = target == Target::All;
    let recs = lifecycle::select(run_dir, &selector(target)).map_err(enclave::map_err)?;
    let mut out = Vec::new();
    for rec in &recs {
        lifecycle::terminate(run_dir, rec).map_err(enclave::map_err)?;
        out.push(TerminateOutput::of(rec));
    }
    let v = if all {
        serde_json::to_value(&out)
    } else {
        serde_json::to_value(&out[0])
    };
    v.code(codes::E099)
}

/// Copies the client's image into a root-only staging file: at most `limit` bytes.
fn stage_image(run_dir: &RunDir, fd: OwnedFd, limit: u64) -> CliResult<PathBuf> {
    let src = std::fs::File::from(fd);
    let meta = src.metadata().code(codes::E307)?;
    if !meta.is_file() {
        return Err(CliError::msg(
            codes::E307,
            "the image passed is not a regular file",
        ));
    }
    if meta.len() > limit {
        return Err(CliError::msg(
            codes::E306,
            format!(
                "the image ({} bytes) is larger than a quarter of the enclave's memory \
                 (or {MAX_STAGED_IMAGE} bytes)",
                meta.len()
            ),
        ));
    }
    let dir = run_dir.root().join("daemon-images");
    std::fs::create_dir_all(&dir).code(codes::E315)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).code(codes::E315)?;
    let path = dir.join(format!(
        "{}-{}.eif",
        std::process::id(),
        cloister_runtime::ids::new_enclave_id()
    ));
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .code(codes::E315)?;
    let copied = std::io::copy(&mut (&src).take(limit + 1), &mut dst);
    match copied {
        Ok(n) if n <= limit => Ok(path),
        Ok(_) => {
            let _ = std::fs::remove_file(&path);
            Err(CliError::msg(
                codes::E306,
                "the image grew while it was copied",
            ))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(CliError::new(codes::E307, e))
        }
    }
}

fn run_request(run_dir: &RunDir, req: Request, fd: Option<OwnedFd>) -> CliResult<Value> {
    let Request::RunEnclave {
        name,
        image_file_name,
        cpu_count,
        cpu_ids,
        memory_mib,
        cid,
        debug_mode,
        isolation,
    } = req
    else {
        return Err(CliError::msg(codes::E099, "not a run request"));
    };
    let fd =
        fd.ok_or_else(|| CliError::msg(codes::E321, "run-enclave needs the image's descriptor"))?;
    let isolation: Isolation = isolation
        .parse()
        .map_err(|m| CliError::msg(codes::E301, m))?;
    // The memory rule bounds the image: at most a quarter of the enclave's memory.
    let limit = (memory_mib.saturating_mul(1 << 20) / 4).min(MAX_STAGED_IMAGE);
    run_dir
        .prepare()
        .map_err(|e| CliError::new(codes::E319, e))?;
    let staged = stage_image(run_dir, fd, limit)?;
    let result = (|| {
        let running: Vec<String> = lifecycle::describe(run_dir)
            .map_err(enclave::map_err)?
            .into_iter()
            .map(|r| r.enclave_name)
            .collect();
        let name = enclave_name(name.as_deref(), Path::new(&image_file_name), &running);
        let opts = RunOptions {
            eif_path: staged.clone(),
            cpus: match (cpu_count, cpu_ids) {
                (Some(n), _) => CpuRequest::Count(n),
                (None, ids) => CpuRequest::Ids(ids.unwrap_or_default()),
            },
            memory_mib,
            cid,
            debug_mode,
            name: Some(name),
            isolation,
        };
        let monitor = MonitorCommand {
            program: std::env::current_exe().code(codes::E315)?,
            args: vec![
                cloister_runtime::MONITOR_SUBCOMMAND.to_owned(),
                "--enclave-id".to_owned(),
            ],
        };
        let rec = lifecycle::run_enclave(run_dir, &opts, &monitor).map_err(enclave::map_err)?;
        Ok(run_json(&rec))
    })();
    // The monitor holds the image open from here on; the staging name is not needed.
    let _ = std::fs::remove_file(&staged);
    result
}

/// The daemon socket the CLI should use, if any: when not running as root and the socket
/// exists.
pub fn client_socket() -> Option<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return None;
    }
    let path = std::env::var_os(SOCKET_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    std::fs::symlink_metadata(&path).is_ok().then_some(path)
}

/// Sends `req` (and `fd`) to the daemon at `socket`; returns the connection (for a console's
/// bytes) and the daemon's answer.
pub fn call(socket: &Path, req: &Request, fd: Option<&OwnedFd>) -> CliResult<(UnixStream, Value)> {
    let conn = UnixStream::connect(socket)
        .map_err(|e| {
            anyhow::Error::new(e).context(format!(
                "cannot reach the enclave daemon at {}",
                socket.display()
            ))
        })
        .code(codes::E320)?;
    let line = serde_json::to_vec(req).code(codes::E099)?;
    send_line(&conn, &line, fd).code(codes::E320)?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match (&conn).read(&mut byte).code(codes::E320)? {
            0 => {
                return Err(CliError::msg(
                    codes::E320,
                    "the enclave daemon closed the connection",
                ))
            }
            _ if byte[0] == b'\n' => break,
            _ if answer.len() as u64 >= MAX_RESPONSE => {
                return Err(CliError::msg(
                    codes::E320,
                    "the enclave daemon's answer is too long",
                ))
            }
            _ => answer.push(byte[0]),
        }
    }
    let resp: Response = serde_json::from_slice(&answer).code(codes::E320)?;
    match resp {
        Response::Ok(v) => Ok((conn, v)),
        Response::Err { code, message } => Err(CliError::msg(Code::known(&code), message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_validated() {
        let ok = br#"{"DescribeEnclaves":{"metadata":true}}"#;
        assert_eq!(
            parse_request(ok),
            Ok(Request::DescribeEnclaves { metadata: true })
        );
        let run = |extra: &str| {
            format!(
                r#"{{"RunEnclave":{{"name":null,"image_file_name":"a.eif","cpu_count":1,"cpu_ids":null,"memory_mib":128,"cid":0,"debug_mode":false,"isolation":"process"{extra}}}}}"#
            )
        };
        assert!(parse_request(run("").as_bytes()).is_ok());
        assert!(matches!(
            parse_request(run(r#","extra":1"#).as_bytes()),
            Err(RequestError::Malformed(_))
        ));
        let bad_name = run("").replace(r#""a.eif""#, r#""../a.eif""#);
        assert_eq!(
            parse_request(bad_name.as_bytes()),
            Err(RequestError::Invalid("image file name"))
        );
        let both = run("").replace(r#""cpu_ids":null"#, r#""cpu_ids":[1]"#);
        assert!(matches!(
            parse_request(both.as_bytes()),
            Err(RequestError::Invalid(_))
        ));
        let console_all = br#"{"Console":{"target":"All","disconnect_timeout_s":null}}"#;
        assert!(matches!(
            parse_request(console_all),
            Err(RequestError::Invalid(_))
        ));
        assert_eq!(
            parse_request(&vec![b' '; MAX_REQUEST + 1]),
            Err(RequestError::TooLong)
        );
        assert!(parse_request(br#"{"Shell":{"cmd":"id"}}"#).is_err());
    }

    #[test]
    fn line_and_descriptor_travel_together() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = tempfile::tempfile().unwrap();
        let fd = OwnedFd::from(f);
        send_line(&a, b"hello", Some(&fd)).unwrap();
        send_line(&a, b"next", None).unwrap();
        let (line, got) = recv_line(&b, 100).unwrap();
        assert_eq!(line, b"hello");
        assert!(got.is_some());
        let (line, got) = recv_line(&b, 100).unwrap();
        assert_eq!((line.as_slice(), got.is_none()), (&b"next"[..], true));
        send_line(&a, &[b'x'; 200], None).unwrap();
        assert_eq!(recv_line(&b, 100).unwrap_err(), RequestError::TooLong);
    }
}
