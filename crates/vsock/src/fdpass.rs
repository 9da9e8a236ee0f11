//! Passing connected sockets between processes (SCM_RIGHTS over Unix stream sockets), and
//! reading a protocol line that may carry one.
//!
//! The sender attaches the descriptor to the first byte of the line, in one `sendmsg`. The
//! receiver reads the line one byte per `recvmsg`, always with room for one descriptor, so the
//! descriptor is picked up with the byte it travels with and nothing after the newline is
//! consumed.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::proto::{LineBuf, ProtoError};

/// Sends `data`; the first chunk carries `fd` when given. Retries partial writes.
pub(crate) fn send_with_fd(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let raw: [RawFd; 1] = [fd.map_or(-1, |f| f.as_raw_fd())];
    let mut sent = 0;
    while sent < data.len() {
        let iov = [IoSlice::new(&data[sent..])];
        let with_fd = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if sent == 0 && fd.is_some() {
            &with_fd
        } else {
            &[]
        };
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    Ok(())
}

/// Receives one byte and any descriptor that travels with it. `Ok(None)` at end of stream.
fn recv_byte(sock: BorrowedFd<'_>, dontwait: bool) -> io::Result<Option<(u8, Option<OwnedFd>)>> {
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if dontwait {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    loop {
        let mut iov = [IoSliceMut::new(&mut byte)];
        let msg = match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), flags) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        };
        let mut received: Option<OwnedFd> = None;
        for cmsg in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for fd in fds {
                    // SAFETY: the kernel just installed `fd` in our table for this message;
                    // nothing else owns it, so taking ownership (and closing extras) is sound.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    if received.is_none() {
                        received = Some(owned);
                    }
                }
            }
        }
        if msg.bytes == 0 {
            return Ok(None);
        }
        return Ok(Some((byte[0], received)));
    }
}

/// A line (and the descriptor that came with it) being read from a control connection;
/// survives `WouldBlock` so a non-blocking reader can resume.
#[derive(Debug, Default)]
pub(crate) struct FdLine {
    pub(crate) line: LineBuf,
    pub(crate) fd: Option<OwnedFd>,
}

impl FdLine {
    /// Reads until the newline. With `dontwait`, returns `ProtoError::Io(WouldBlock)` when no
    /// byte is ready; the partial line is kept for the next call. On success the caller takes
    /// the line and fd and calls `reset`.
    pub(crate) fn read(&mut self, sock: BorrowedFd<'_>, dontwait: bool) -> Result<(), ProtoError> {
        loop {
            match recv_byte(sock, dontwait) {
                Ok(None) => {
                    return Err(ProtoError::Closed {
                        got: self.line.len(),
                    })
                }
                Ok(Some((byte, fd))) => {
                    if let Some(fd) = fd {
                        if self.fd.is_some() {
                            return Err(ProtoError::Malformed("two descriptors in one line"));
                        }
                        self.fd = Some(fd);
                    }
                    if self.line.push(byte)? {
                        return Ok(());
                    }
                }
                Err(e) => return Err(ProtoError::Io(e)),
            }
        }
    }

    /// Forgets the line and closes an unclaimed descriptor.
    pub(crate) fn reset(&mut self) {
        self.line.clear();
        self.fd = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn line_with_fd_then_stream_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (p1, mut p2) = UnixStream::pair().unwrap();
        send_with_fd(a.as_fd(), b"OK 7\n", Some(p1.as_fd())).unwrap();
        (&a).write_all(b"after").unwrap();
        let mut line = FdLine::default();
        line.read(b.as_fd(), false).unwrap();
        assert_eq!(line.line.line(), b"OK 7");
        let fd = line.fd.take().expect("descriptor");
        let mut passed = UnixStream::from(fd);
        passed.write_all(b"x").unwrap();
        let mut got = [0u8; 1];
        p2.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
        let mut rest = [0u8; 5];
        (&b).read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"after");
    }

    #[test]
    fn nonblocking_resumes() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut line = FdLine::default();
        (&a).write_all(b"ACC").unwrap();
        assert!(matches!(
            line.read(b.as_fd(), true),
            Err(ProtoError::Io(ref e)) if e.kind() == io::ErrorKind::WouldBlock
        ));
        (&a).write_all(b"EPT 3 1\n").unwrap();
        line.read(b.as_fd(), true).unwrap();
        assert_eq!(line.line.line(), b"ACCEPT 3 1");
        assert!(line.fd.is_none());
    }
}
