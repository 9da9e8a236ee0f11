//! One connection between a guest port and a host socket: where it is in its life
//! (connecting, established, half-closed, closing), the bytes waiting for the host socket, and
//! the virtio-vsock credit accounting in both directions.
//!
//! Credit: the guest may have at most [`BUF_ALLOC`] bytes of ours unforwarded (`to_host`
//! minus our own handshake line); `fwd_cnt` counts what reached the host socket and is
//! advertised to the guest in every header we send. In the other direction we send the guest
//! no more than its `buf_alloc` minus what it has not consumed (`tx_cnt - peer_fwd_cnt`).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use nix::sys::epoll::EpollFlags;

/// Receive buffer this device offers the guest per connection (bytes it may send unacknowledged).
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Consumed bytes after which an unsolicited CREDIT_UPDATE is sent.
pub const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

/// Identifies a connection: the host-side address and the guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub(super) host_cid: u32,
    pub(super) host_port: u32,
    pub(super) guest_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Host-initiated: REQUEST sent to the guest, waiting for RESPONSE.
    Connecting(Instant),
    Established,
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) sock: UnixStream,
    pub(super) token: u64,
    pub(super) state: State,
    /// Bytes for the host socket; the first `preamble` of them are our handshake line, not
    /// guest data.
    pub(super) to_host: VecDeque<u8>,
    preamble: usize,
    pub(super) fwd_cnt: u32,
    pub(super) fwd_cnt_sent: u32,
    pub(super) credit_update_queued: bool,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    /// The host socket may have data (or EOF) for the guest.
    pub(super) readable: bool,
    /// Registered interest, `None` once deregistered after a hang-up.
    pub(super) interest: Option<EpollFlags>,
    pub(super) host_eof: bool,
    pub(super) guest_no_send: bool,
    pub(super) guest_no_recv: bool,
    /// Remove once `to_host` has drained.
    pub(super) closing: bool,
}

impl Conn {
    pub(super) fn new(sock: UnixStream, token: u64, state: State) -> Self {
        Self {
            sock,
            token,
            state,
            to_host: VecDeque::new(),
            preamble: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            credit_update_queued: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            readable: false,
            interest: Some(EpollFlags::empty()),
            host_eof: false,
            guest_no_send: false,
            guest_no_recv: false,
            closing: false,
        }
    }

    /// Records the guest's receive buffer and what it consumed (every guest header has them).
    pub(super) fn set_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// Bytes the guest can still take from us.
    pub(super) fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Accounts `n` bytes sent to the guest (the header that carries them advertises
    /// `fwd_cnt`).
    pub(super) fn sent_to_guest(&mut self, n: u32) {
        self.tx_cnt = self.tx_cnt.wrapping_add(n);
        self.fwd_cnt_sent = self.fwd_cnt;
    }

    /// Whether `len` more guest bytes fit in the buffer we advertised ([`BUF_ALLOC`]).
    pub(super) fn fits(&self, len: usize) -> bool {
        let room = (BUF_ALLOC as usize).saturating_sub(self.to_host.len() - self.preamble);
        len <= room
    }

    /// Whether the guest should get an unsolicited CREDIT_UPDATE: enough was forwarded since
    /// the last header it got, and none is queued.
    pub(super) fn credit_update_due(&self) -> bool {
        !self.credit_update_queued
            && self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD
    }

    /// Queues our handshake line for the host socket, ahead of guest data and outside the
    /// credit accounting.
    pub(super) fn push_preamble(&mut self, line: &[u8]) {
        self.preamble += line.len();
        self.to_host.extend(line);
    }

    pub(super) fn wants_read(&self) -> bool {
        self.state == State::Established && !self.host_eof && !self.guest_no_recv
    }

    pub(super) fn desired_interest(&self) -> EpollFlags {
        let mut f = EpollFlags::empty();
        if self.wants_read() && !self.readable {
            f |= EpollFlags::EPOLLIN;
        }
        if !self.to_host.is_empty() {
            f |= EpollFlags::EPOLLOUT;
        }
        f
    }

    /// Writes what it can of `to_host`. Err: the host end is gone.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        while !self.to_host.is_empty() {
            let (a, _) = self.to_host.as_slices();
            match self.sock.write(a) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    let from_preamble = n.min(self.preamble);
                    self.preamble -= from_preamble;
                    let data = u32::try_from(n - from_preamble).unwrap_or(u32::MAX);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(data);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.guest_no_send {
            let _ = self.sock.shutdown(Shutdown::Write);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn conn() -> (Conn, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (Conn::new(ours, 7, State::Established), theirs)
    }

    #[test]
    fn peer_credit_is_what_the_guest_has_not_consumed() {
        let (mut c, _peer) = conn();
        assert_eq!(
            c.peer_credit(),
            0,
            "no credit before the guest says its buffer"
        );
        c.set_peer_credit(1000, 0);
        assert_eq!(c.peer_credit(), 1000);
        c.sent_to_guest(300);
        assert_eq!(c.peer_credit(), 700);
        c.set_peer_credit(1000, 100);
        assert_eq!(c.peer_credit(), 800);
        // A guest that shrinks its buffer below what is in flight gets nothing, not a wrap.
        c.set_peer_credit(100, 100);
        assert_eq!(c.peer_credit(), 0);
        // The counters wrap as the protocol's do.
        let (mut c, _peer) = conn();
        c.set_peer_credit(1000, u32::MAX - 10);
        c.tx_cnt = u32::MAX - 10;
        c.sent_to_guest(20);
        assert_eq!(c.peer_credit(), 980);
    }

    #[test]
    fn credit_update_after_a_quarter_of_the_buffer_is_forwarded() {
        let (mut c, mut peer) = conn();
        c.push_preamble(b"OK 1024\n");
        c.to_host
            .extend(vec![1u8; CREDIT_UPDATE_THRESHOLD as usize - 1]);
        let drain = std::thread::spawn(move || {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).unwrap();
            all.len()
        });
        while !c.to_host.is_empty() {
            c.flush().unwrap();
        }
        // The handshake line is ours, not the guest's: it does not count as forwarded.
        assert_eq!(c.fwd_cnt, CREDIT_UPDATE_THRESHOLD - 1);
        assert!(!c.credit_update_due());
        c.to_host.push_back(2);
        while !c.to_host.is_empty() {
            c.flush().unwrap();
        }
        assert!(c.credit_update_due());
        c.credit_update_queued = true;
        assert!(!c.credit_update_due(), "one update queued at a time");
        c.credit_update_queued = false;
        // Sending the guest a header advertises fwd_cnt: nothing is due any more.
        c.sent_to_guest(0);
        assert!(!c.credit_update_due());
        drop(c);
        assert_eq!(drain.join().unwrap(), CREDIT_UPDATE_THRESHOLD as usize + 8);
    }

    #[test]
    fn the_guest_may_fill_the_advertised_buffer_and_no_more() {
        let (mut c, _peer) = conn();
        c.push_preamble(b"CONNECT-FROM 9 1025\n");
        assert!(
            c.fits(BUF_ALLOC as usize),
            "our line takes none of the guest's room"
        );
        c.to_host.extend(vec![0u8; BUF_ALLOC as usize - 10]);
        assert!(c.fits(10));
        assert!(!c.fits(11));
    }

    #[test]
    fn interest_follows_the_state() {
        let (mut c, _peer) = conn();
        assert_eq!(c.desired_interest(), EpollFlags::EPOLLIN);
        c.to_host.push_back(1);
        assert_eq!(
            c.desired_interest(),
            EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT
        );
        c.readable = true;
        assert_eq!(c.desired_interest(), EpollFlags::EPOLLOUT);
        c.readable = false;
        c.guest_no_recv = true;
        assert!(!c.wants_read());
        assert_eq!(c.desired_interest(), EpollFlags::EPOLLOUT);
        let (mut c, _peer) = conn();
        c.state = State::Connecting(Instant::now());
        assert!(!c.wants_read(), "no data before the guest accepts");
        assert_eq!(c.desired_interest(), EpollFlags::empty());
    }

    #[test]
    fn a_guest_half_close_reaches_the_host_after_the_buffered_bytes() {
        let (mut c, mut peer) = conn();
        c.to_host.extend(b"last");
        c.guest_no_send = true;
        c.flush().unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"last");
        assert_eq!(c.fwd_cnt, 4);
    }
}
