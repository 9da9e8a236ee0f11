//! The two services the muxer answers itself, each on a thread at the far end of a socket
//! pair, so the muxer treats them as any other host connection: the boot heartbeat (the
//! guest's first connection to `(3, 9000)`, one byte echoed) and the NSM on `(0, 1)`
//! (length-prefixed CBOR frames handed to an [`NsmService`]).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cloister_vsock::broker::NsmService;
use cloister_vsock::nsm_frame::{read_frame, write_frame, NSM_FRAME_HARD_CAP};
use cloister_vsock::HEARTBEAT_BYTE;

/// Longest a heartbeat connection waits for its byte.
pub const HEARTBEAT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The boot heartbeat's state, shared with the heartbeat thread and the enclave handle.
pub struct Heartbeat {
    booted: Mutex<bool>,
    cond: Condvar,
    callback: Option<Box<dyn Fn() + Send + Sync>>,
}

impl Heartbeat {
    /// A heartbeat not received yet; `callback` runs once when it arrives.
    pub fn new(callback: Option<Box<dyn Fn() + Send + Sync>>) -> Self {
        Self {
            booted: Mutex::new(false),
            cond: Condvar::new(),
            callback,
        }
    }

    fn mark(&self) {
        let mut booted = self.booted.lock().unwrap_or_else(|p| p.into_inner());
        if !*booted {
            *booted = true;
            self.cond.notify_all();
            drop(booted);
            if let Some(cb) = &self.callback {
                cb();
            }
        }
    }

    /// True once the heartbeat arrived.
    pub fn booted(&self) -> bool {
        *self.booted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `timeout` for the heartbeat; true when it arrived.
    pub fn wait(&self, timeout: Duration) -> bool {
        let guard = self.booted.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .cond
            .wait_timeout_while(guard, timeout, |b| !*b)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("booted", &self.booted())
            .finish_non_exhaustive()
    }
}

/// A connected pair: the muxer's end (non-blocking) and the service thread's.
fn service_pair() -> Option<(UnixStream, UnixStream)> {
    let (a, b) = UnixStream::pair().ok()?;
    a.set_nonblocking(true).ok()?;
    Some((a, b))
}

/// Starts the heartbeat service; returns the muxer's end of its connection.
pub(super) fn spawn_heartbeat(heartbeat: Arc<Heartbeat>) -> Option<UnixStream> {
    let (ours, mut theirs) = service_pair()?;
    std::thread::Builder::new()
        .name("vsock-heartbeat".into())
        .spawn(move || {
            let _ = theirs.set_read_timeout(Some(HEARTBEAT_READ_TIMEOUT));
            let mut b = [0u8; 1];
            if theirs.read_exact(&mut b).is_ok()
                && b[0] == HEARTBEAT_BYTE
                && theirs.write_all(&b).is_ok()
            {
                heartbeat.mark();
            }
        })
        .ok()?;
    Some(ours)
}

/// Starts an NSM session, which ends when the guest closes it or `stop` is set; returns the
/// muxer's end of its connection.
pub(super) fn spawn_nsm(nsm: Arc<dyn NsmService>, stop: Arc<AtomicBool>) -> Option<UnixStream> {
    let (ours, theirs) = service_pair()?;
    std::thread::Builder::new()
        .name("vsock-nsm".into())
        .spawn(move || {
            let mut r = &theirs;
            while !stop.load(Ordering::Relaxed) {
                match read_frame(&mut r, NSM_FRAME_HARD_CAP) {
                    Ok(Some(request)) => {
                        let response = nsm.handle(&request);
                        let mut w = &theirs;
                        if write_frame(&mut w, &response).is_err() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        })
        .ok()?;
    Some(ours)
}
