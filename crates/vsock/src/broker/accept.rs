//! The broker's accept loop: one thread polls the host-facing and the enclave-facing socket
//! (and a wake-up pipe for shutdown), takes new connections in batches so neither side starves
//! the other, and gives each its own thread, within the connection caps.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use socket2::Socket;

use super::enclave::serve_enclave;
use super::host::serve_host;
use super::shared::{lock, Shared, Side, Slot};
use crate::proto;

/// Most new connections taken from one socket per wake-up, so neither side starves the other.
pub(super) const ACCEPT_BATCH: usize = 32;

pub(super) fn accept_loop(shared: Arc<Shared>, host: Socket, enclave: Socket, wake: OwnedFd) {
    let span = tracing::info_span!("vsock_broker", cid = shared.cid);
    let _enter = span.enter();
    loop {
        let (host_ready, enclave_ready, woken) = {
            let mut fds = [
                PollFd::new(host.as_fd(), PollFlags::POLLIN),
                PollFd::new(enclave.as_fd(), PollFlags::POLLIN),
                PollFd::new(wake.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    shared.warn("broker poll failed", &e);
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]), ready(&fds[2]))
        };
        if woken || shared.stopping.load(Ordering::Acquire) {
            return;
        }
        if host_ready {
            accept_batch(&shared, &host, Side::Host);
        }
        if enclave_ready {
            accept_batch(&shared, &enclave, Side::Enclave);
        }
    }
}

pub(super) fn accept_batch(shared: &Arc<Shared>, listener: &Socket, side: Side) {
    for _ in 0..ACCEPT_BATCH {
        match listener.accept() {
            Ok((conn, _)) => {
                // Accepted sockets do not inherit O_NONBLOCK; keep them blocking.
                dispatch(shared, conn, side);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                shared.warn("broker accept failed", &e);
                std::thread::sleep(Duration::from_millis(50));
                return;
            }
        }
    }
}

pub(super) fn dispatch(shared: &Arc<Shared>, conn: Socket, side: Side) {
    let (counter, cap) = match side {
        Side::Host => (&shared.host_pending, shared.limits.max_host_pending),
        Side::Enclave => (&shared.enclave_conns, shared.limits.max_enclave_connections),
    };
    if counter.fetch_add(1, Ordering::AcqRel) >= cap {
        counter.fetch_sub(1, Ordering::AcqRel);
        shared.rejected.fetch_add(1, Ordering::Relaxed);
        if let Side::Enclave = side {
            // Best effort: tell the enclave why, without ever blocking on it.
            let _ = conn.send_with_flags(
                proto::err_line(libc::EAGAIN).as_bytes(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
        }
        shared.warn("connection cap reached; connection dropped", &cap);
        return;
    }
    shared.workers.fetch_add(1, Ordering::AcqRel);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let slot = Slot {
        shared: Arc::clone(shared),
        side,
        id,
    };
    match conn.try_clone() {
        Ok(clone) => {
            lock(&shared.live).insert(id, clone);
        }
        Err(e) => {
            shared.warn("cannot track a connection", &e);
            return;
        }
    }
    let spawned = std::thread::Builder::new()
        .name(format!("vsock-broker-{}-conn", shared.cid))
        .stack_size(256 * 1024)
        .spawn(move || {
            let shared = Arc::clone(&slot.shared);
            let span = tracing::info_span!("vsock_broker", cid = shared.cid);
            let _enter = span.enter();
            if shared.stopping.load(Ordering::Acquire) {
                return;
            }
            match side {
                Side::Host => serve_host(&shared, conn),
                Side::Enclave => serve_enclave(&shared, conn),
            }
            drop(slot);
        });
    if let Err(e) = spawned {
        shared.warn("cannot spawn a broker thread", &e);
    }
}
