//! The host-facing side: a parent process on `<fabric>/<cid>.sock` sends `CONNECT <port>`; when
//! the enclave listens on that port its connection is handed to the enclave's listener.

use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use socket2::Socket;

use super::shared::{lock, remove_listener, set_timeouts, Shared};
use crate::addr::{VsockAddr, PARENT_CID};
use crate::fdpass::send_with_fd;
use crate::proto::{self, LineBuf};

/// A host client on `<cid>.sock`: `CONNECT <port>`, then hand its connection to the listener.
pub(super) fn serve_host(shared: &Arc<Shared>, conn: Socket) {
    if let Err(e) = set_timeouts(&conn, Some(shared.limits.handshake_timeout)) {
        shared.warn("host connection setup failed", &e);
        return;
    }
    let mut line = LineBuf::new();
    if let Err(e) = proto::read_line(&mut &conn, &mut line) {
        shared.warn("bad host handshake", &e);
        return;
    }
    let port = match proto::parse_host_connect(line.line()) {
        Ok(p) => p,
        Err(e) => {
            shared.warn("bad host CONNECT line", &e);
            return;
        }
    };
    let Some(listener) = lock(&shared.listeners).get(&port).cloned() else {
        tracing::debug!(port, "host connect to a port nobody listens on");
        return;
    };
    let host_port = shared.ephemeral_port();
    if let Err(e) = (&conn).write_all(proto::ok_line(Some(host_port)).as_bytes()) {
        shared.warn("cannot answer a host client", &e);
        return;
    }
    if let Err(e) = set_timeouts(&conn, None) {
        shared.warn("host connection setup failed", &e);
        return;
    }
    let ctl = lock(&listener.ctl);
    let accept = proto::accept_line(VsockAddr::new(PARENT_CID, host_port));
    match send_with_fd(ctl.as_fd(), accept.as_bytes(), Some(conn.as_fd())) {
        Ok(()) => {
            shared.streams.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            drop(ctl);
            shared.warn("cannot pass a connection to the enclave listener", &e);
            remove_listener(shared, port, listener.id);
        }
    }
}
