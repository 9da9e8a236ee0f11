//! The enclave-facing side: one request line per connection (`CONNECT <cid> <port>` or
//! `LISTEN <port>`), routed to the parent's listeners, the boot heartbeat, the NSM channel or a
//! refusal; a `LISTEN` connection then carries the `ACCEPT`s of the port.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use socket2::Socket;

use super::shared::{
    lock, pin_current_thread, remove_listener, reply, set_timeouts, Listener, Shared,
};
use crate::addr::{
    VsockAddr, HEARTBEAT_BYTE, HEARTBEAT_PORT, NSM_PORT, PARENT_CID, VMADDR_CID_HYPERVISOR,
};
use crate::fdpass::send_with_fd;
use crate::hostfs::FabricError;
use crate::nsm_frame::{read_frame, write_frame, FrameError, NSM_FRAME_HARD_CAP};
use crate::proto::{self, EnclaveRequest, LineBuf};

/// An enclave connection on the enclave-facing socket.
pub(super) fn serve_enclave(shared: &Arc<Shared>, conn: Socket) {
    if let Err(e) = set_timeouts(&conn, Some(shared.limits.handshake_timeout)) {
        shared.warn("enclave connection setup failed", &e);
        return;
    }
    let mut line = LineBuf::new();
    if let Err(e) = proto::read_line(&mut &conn, &mut line) {
        shared.warn("bad enclave request", &e);
        return;
    }
    let request = match proto::parse_enclave_request(line.line()) {
        Ok(r) => r,
        Err(e) => {
            shared.warn("bad enclave request line", &e);
            reply(shared, &conn, &proto::err_line(libc::EINVAL));
            return;
        }
    };
    match request {
        EnclaveRequest::Connect(addr) if addr.cid == PARENT_CID => {
            if addr.port == HEARTBEAT_PORT && !shared.heartbeat_claimed.swap(true, Ordering::AcqRel)
            {
                heartbeat(shared, &conn);
            } else {
                connect_parent(shared, &conn, addr.port);
            }
        }
        EnclaveRequest::Connect(addr) if addr.cid == VMADDR_CID_HYPERVISOR => {
            if addr.port == NSM_PORT {
                let src = shared.ephemeral_port();
                if reply(shared, &conn, &proto::ok_line(Some(src))) {
                    serve_nsm(shared, &conn);
                }
            } else {
                reply(shared, &conn, &proto::err_line(libc::ECONNREFUSED));
            }
        }
        EnclaveRequest::Connect(addr) => {
            tracing::debug!(%addr, "enclave tried to reach a cid other than 3 or 0");
            reply(shared, &conn, &proto::err_line(libc::EACCES));
        }
        EnclaveRequest::Listen(port) => listen(shared, conn, port),
    }
}

/// The boot heartbeat: `OK`, then 0xB7 in and out on this same connection.
pub(super) fn heartbeat(shared: &Arc<Shared>, conn: &Socket) {
    let src = shared.ephemeral_port();
    if !reply(shared, conn, &proto::ok_line(Some(src))) {
        return;
    }
    let mut byte = [0u8; 1];
    match (&*conn).read(&mut byte) {
        Ok(1) if byte[0] == HEARTBEAT_BYTE => {
            if let Err(e) = (&*conn).write_all(&[HEARTBEAT_BYTE]) {
                shared.warn("cannot echo the heartbeat", &e);
            }
            shared.mark_booted();
        }
        Ok(1) => shared.warn("wrong heartbeat byte", &byte[0]),
        Ok(_) => shared.warn("heartbeat connection closed", &"no byte"),
        Err(e) => shared.warn("heartbeat read failed", &e),
    }
}

/// `CONNECT 3 <port>`: dial `3_<port>.sock` (checked, as the enclave's host identity), send
/// the preamble, pass the socket back.
pub(super) fn connect_parent(shared: &Arc<Shared>, conn: &Socket, port: u32) {
    let name = format!("{PARENT_CID}_{port}.sock");
    let timeout = shared.limits.handshake_timeout;
    let host = match shared.fabric.connect(&name, shared.identity, Some(timeout)) {
        Ok(s) => s,
        Err(e) => {
            match e {
                FabricError::Missing(_) | FabricError::Io { .. } => {
                    tracing::debug!(port, error = %e, "enclave connect to the parent failed");
                }
                // Something planted in the fabric, or a broken setup: worth a (rate-limited)
                // warning.
                _ => shared.warn("refused a fabric entry", &e),
            }
            reply(shared, conn, &proto::err_line(e.errno()));
            return;
        }
    };
    let src = shared.ephemeral_port();
    let preamble = proto::connect_from_line(VsockAddr::new(shared.cid, src));
    let sent = set_timeouts(&host, Some(timeout))
        .and_then(|()| (&host).write_all(preamble.as_bytes()))
        .and_then(|()| set_timeouts(&host, None));
    if let Err(e) = sent {
        shared.warn("cannot send CONNECT-FROM to a host listener", &e);
        reply(shared, conn, &proto::err_line(libc::ECONNRESET));
        return;
    }
    match send_with_fd(
        conn.as_fd(),
        proto::ok_line(Some(src)).as_bytes(),
        Some(host.as_fd()),
    ) {
        Ok(()) => {
            shared.streams.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => shared.warn("cannot pass a connection to the enclave", &e),
    }
}

/// The NSM channel: frames until the enclave closes it.
pub(super) fn serve_nsm(shared: &Arc<Shared>, conn: &Socket) {
    // Idle NSM channels may stay open (they count against the connection cap); a frame that
    // has started must finish within the handshake timeout is not enforced separately: the
    // whole frame is read with no timeout, which is bounded by the cap on connections.
    if let Err(e) = conn.set_read_timeout(None) {
        shared.warn("NSM channel setup failed", &e);
        return;
    }
    // This thread serves the enclave's NSM requests from now on: on the enclave's CPUs.
    if !shared.nsm_cpus.is_empty() {
        if let Err(e) = pin_current_thread(&shared.nsm_cpus) {
            shared.warn("cannot pin an NSM channel to the enclave's CPUs", &e);
        }
    }
    loop {
        let request = match read_frame(&mut &*conn, NSM_FRAME_HARD_CAP) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(FrameError::TooLarge { len, .. }) => {
                shared.warn("NSM frame over the hard cap; closing", &len);
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "NSM channel ended");
                return;
            }
        };
        let response = {
            let _turn = shared.nsm_gate.acquire();
            shared.nsm.handle(&request)
        };
        if let Err(e) = write_frame(&mut &*conn, &response) {
            shared.warn("cannot send an NSM response", &e);
            return;
        }
    }
}

/// `LISTEN <port>`: register the control connection, then hold it until it closes.
pub(super) fn listen(shared: &Arc<Shared>, conn: Socket, port: u32) {
    let ctl = match conn.try_clone() {
        Ok(c) => c,
        Err(e) => {
            shared.warn("cannot register a listener", &e);
            return;
        }
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let listener = Arc::new(Listener {
        id,
        ctl: Mutex::new(ctl),
    });
    {
        // Hold the control lock until OK is written, so no ACCEPT can overtake it.
        let guard = lock(&listener.ctl);
        {
            let mut listeners = lock(&shared.listeners);
            if listeners.contains_key(&port) {
                drop(listeners);
                reply(shared, &conn, &proto::err_line(libc::EADDRINUSE));
                return;
            }
            if listeners.len() >= shared.limits.max_listeners {
                drop(listeners);
                shared.rejected.fetch_add(1, Ordering::Relaxed);
                shared.warn("listener cap reached", &shared.limits.max_listeners);
                reply(shared, &conn, &proto::err_line(libc::ENOBUFS));
                return;
            }
            listeners.insert(port, Arc::clone(&listener));
        }
        if !reply(shared, &guard, &proto::ok_line(None)) {
            drop(guard);
            remove_listener(shared, port, id);
            return;
        }
    }
    tracing::debug!(port, "enclave listening");
    // The enclave sends nothing more on a listener connection: any byte or the end of the
    // stream ends the listener. A stalled enclave that stops reading makes the broker's
    // `ACCEPT` sends time out, which also ends the listener.
    let _ = conn.set_read_timeout(None);
    let mut byte = [0u8; 1];
    loop {
        match (&conn).read(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(n) if n > 0 => shared.warn("unexpected bytes on a listener connection", &port),
            _ => {}
        }
        break;
    }
    remove_listener(shared, port, id);
    tracing::debug!(port, "enclave listener closed");
}
