//! The muxer's host side, on the Cloister fabric: `<fabric>/<cid>.sock`, where parents dial
//! the enclave (each new connection first sends a `CONNECT <port>` line, read without blocking
//! and under a deadline, before it becomes a connection), and dialling parent listeners
//! (`<fabric>/3_<port>.sock`) for the guest's requests, with the fabric's filesystem checks and
//! the enclave's host identity.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use cloister_vsock::hostfs::{EnclaveHostSocket, FabricDir, FabricError, HostSocketError};
use cloister_vsock::proto::{self, LineBuf};
use cloister_vsock::{HostIdentity, VsockAddr, PARENT_CID};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

use super::error::{io_err, nix_err, MuxerError};

/// First port handed to host-initiated connections (below are the well-known ports).
const FIRST_HOST_PORT: u32 = 1024;

/// A host connection still sending its `CONNECT` line.
#[derive(Debug)]
struct PendingHost {
    sock: UnixStream,
    line: LineBuf,
    deadline: Instant,
}

/// Why a guest's connection to a parent port was refused.
#[derive(Debug)]
pub(super) enum Refusal {
    /// Nothing (or nothing live) listens: the guest's ordinary refusal.
    NotListening,
    /// Something planted in the fabric, or a broken setup: worth a (rate-limited) warning.
    Rejected {
        /// The socket's name in the fabric.
        name: String,
        /// What was wrong with it.
        error: FabricError,
    },
}

/// The fabric directory, the enclave's host socket and the host handshakes in progress.
#[derive(Debug)]
pub(super) struct HostSide {
    cid: u32,
    fabric: FabricDir,
    identity: Option<HostIdentity>,
    listener: Option<EnclaveHostSocket>,
    pending: HashMap<u64, PendingHost>,
    next_host_port: u32,
}

/// Binds `<fabric>/<cid>.sock` (non-blocking), replacing a stale socket of ours but nothing
/// else.
fn bind_host_socket(
    fabric_dir: &Path,
    cid: u32,
    identity: Option<HostIdentity>,
) -> Result<EnclaveHostSocket, MuxerError> {
    let socket = EnclaveHostSocket::bind(fabric_dir, cid, identity).map_err(|e| match e {
        HostSocketError::InUse(path) => MuxerError::CidInUse { cid, path },
        HostSocketError::Io { context, source } => MuxerError::Io { context, source },
    })?;
    socket
        .socket()
        .set_nonblocking(true)
        .map_err(io_err("setting the host socket non-blocking"))?;
    Ok(socket)
}

impl HostSide {
    /// Opens the fabric directory and, when `bind`, binds `<cid>.sock` and registers it with
    /// `epoll` under `listener_token`.
    pub(super) fn new(
        fabric_dir: &Path,
        cid: u32,
        identity: Option<HostIdentity>,
        bind: bool,
        epoll: &Epoll,
        listener_token: u64,
    ) -> Result<Self, MuxerError> {
        let fabric = FabricDir::open(fabric_dir).map_err(MuxerError::Fabric)?;
        if identity.is_none() && nix::unistd::geteuid().is_root() {
            tracing::warn!(
                cid,
                "vsock device runs as root without the enclave's host identity: host listeners \
                 will see root's credentials on the enclave's connections"
            );
        }
        let listener = if bind {
            let l = bind_host_socket(fabric_dir, cid, identity)?;
            epoll
                .add(
                    l.socket(),
                    EpollEvent::new(EpollFlags::EPOLLIN, listener_token),
                )
                .map_err(nix_err("epoll_ctl listener"))?;
            Some(l)
        } else {
            None
        };
        Ok(Self {
            cid,
            fabric,
            identity,
            listener,
            pending: HashMap::new(),
            next_host_port: FIRST_HOST_PORT,
        })
    }

    /// The host socket's path, when bound.
    pub(super) fn socket_path(&self) -> Option<&Path> {
        self.listener.as_ref().map(EnclaveHostSocket::path)
    }

    /// Host handshakes in progress.
    pub(super) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub(super) fn is_pending(&self, token: u64) -> bool {
        self.pending.contains_key(&token)
    }

    /// The next connection waiting on the host socket (non-blocking); `None` when there is
    /// none, or no socket.
    pub(super) fn accept(&self) -> Option<UnixStream> {
        let listener = self.listener.as_ref()?;
        loop {
            match listener.socket().accept() {
                Ok((s, _)) => return Some(UnixStream::from(OwnedFd::from(s))),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// Starts reading a new connection's `CONNECT` line: registers it with `epoll` under
    /// `token`, with `timeout` to finish.
    pub(super) fn start_handshake(
        &mut self,
        epoll: &Epoll,
        token: u64,
        sock: UnixStream,
        timeout: Duration,
    ) {
        if epoll
            .add(&sock, EpollEvent::new(EpollFlags::EPOLLIN, token))
            .is_err()
        {
            return;
        }
        self.pending.insert(
            token,
            PendingHost {
                sock,
                line: LineBuf::new(),
                deadline: Instant::now() + timeout,
            },
        );
    }

    /// Reads what has arrived of a handshake's line. `None` while it is incomplete; once it
    /// ends, the connection leaves `epoll` and the pending set and comes back with the port it
    /// asks for, or `None` for a malformed line or a closed connection.
    pub(super) fn progress_handshake(
        &mut self,
        epoll: &Epoll,
        token: u64,
    ) -> Option<(UnixStream, Option<u32>)> {
        let p = self.pending.get_mut(&token)?;
        let mut byte = [0u8; 1];
        let port = loop {
            match p.sock.read(&mut byte) {
                Ok(0) => break None,
                Ok(_) => match p.line.push(byte[0]) {
                    Ok(true) => break proto::parse_host_connect(p.line.line()).ok(),
                    Ok(false) => {}
                    Err(_) => break None,
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break None,
            }
        };
        let p = self.pending.remove(&token)?;
        let _ = epoll.delete(&p.sock);
        Some((p.sock, port))
    }

    /// A host port for a new host-initiated connection to `guest_port`, skipping those
    /// `in_use`; gives up after `attempts + 1` tries.
    pub(super) fn allocate_port(
        &mut self,
        attempts: usize,
        in_use: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        for _ in 0..=attempts {
            let p = self.next_host_port;
            self.next_host_port = match p.checked_add(1) {
                Some(n) if n < u32::MAX => n,
                _ => FIRST_HOST_PORT,
            };
            if !in_use(p) {
                return Some(p);
            }
        }
        None
    }

    /// Drops the handshakes whose deadline has passed (closed without an answer).
    pub(super) fn expire(&mut self, epoll: &Epoll, now: Instant) {
        let stale: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in stale {
            if let Some(p) = self.pending.remove(&t) {
                let _ = epoll.delete(&p.sock);
            }
        }
    }

    /// Stops accepting host connections, removes `<fabric>/<cid>.sock` and drops the
    /// handshakes in progress.
    pub(super) fn close(&mut self, epoll: &Epoll) {
        if let Some(listener) = self.listener.take() {
            let _ = epoll.delete(listener.socket());
            // Dropping it removes the file (when it is still ours).
        }
        let pending: Vec<u64> = self.pending.keys().copied().collect();
        for t in pending {
            if let Some(p) = self.pending.remove(&t) {
                let _ = epoll.delete(&p.sock);
            }
        }
    }

    /// Connects `<fabric>/3_<port>.sock` without blocking (a full backlog is a refusal), with
    /// the fabric's checks and as the enclave's host identity; returns the stream and the
    /// `CONNECT-FROM` line to send first.
    pub(super) fn connect_parent(
        &self,
        port: u32,
        guest_port: u32,
    ) -> Result<(UnixStream, String), Refusal> {
        let name = format!("{PARENT_CID}_{port}.sock");
        let sock = match self.fabric.connect(&name, self.identity, None) {
            Ok(sock) => sock,
            Err(FabricError::Missing(_) | FabricError::Io { .. }) => {
                return Err(Refusal::NotListening)
            }
            Err(error) => return Err(Refusal::Rejected { name, error }),
        };
        let stream = UnixStream::from(OwnedFd::from(sock));
        let line = proto::connect_from_line(VsockAddr::new(self.cid, guest_port));
        Ok((stream, line))
    }
}
