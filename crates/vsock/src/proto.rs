//! The fabric's line protocol: parsers and formatters for every handshake line, and a bounded
//! line reader.
//!
//! Lines are ASCII, fields separated by exactly one space, numbers in canonical decimal (no sign,
//! no leading zeros) that fit in a u32, terminated by `\n`. A line, newline included, is at most
//! [`MAX_LINE_LEN`] bytes; the reader stops there, so a peer cannot make us buffer more.
//!
//! | who -> whom | line |
//! | --- | --- |
//! | host client -> broker (`<cid>.sock`) | `CONNECT <port>` |
//! | broker -> host client | `OK <host_port>` |
//! | broker -> host listener (`3_<port>.sock`) | `CONNECT-FROM <cid> <port>` |
//! | enclave -> broker (`/dev/vsock.sock`) | `CONNECT <cid> <port>` or `LISTEN <port>` |
//! | broker -> enclave | `OK <port>`, `OK`, `ERR <errno-name>`, `ACCEPT <cid> <port>` |

use std::io::{self, Read};

use crate::addr::VsockAddr;

/// Longest line, newline included.
pub const MAX_LINE_LEN: usize = 64;

/// Errors reading or parsing a protocol line.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The peer closed the connection before a full line arrived.
    #[error("connection closed before a full line ({got} bytes)")]
    Closed {
        /// Bytes received before the end of the stream.
        got: usize,
    },
    /// No newline within the first [`MAX_LINE_LEN`] bytes.
    #[error("line longer than {MAX_LINE_LEN} bytes")]
    TooLong,
    /// The line is not one the protocol allows here.
    #[error("malformed line: {0}")]
    Malformed(&'static str),
    /// The transport failed (a timeout shows up here as WouldBlock or TimedOut).
    #[error("reading a protocol line")]
    Io(#[source] io::Error),
}

/// A request an enclave sends on a fresh connection to its broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnclaveRequest {
    /// `CONNECT <cid> <port>`.
    Connect(VsockAddr),
    /// `LISTEN <port>`.
    Listen(u32),
}

/// A line the broker sends to the enclave side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerReply {
    /// `OK <port>` (answer to CONNECT: the local port) or `OK` (answer to LISTEN).
    Ok(Option<u32>),
    /// `ERR <errno-name>`, carried as the errno value.
    Err(i32),
    /// `ACCEPT <cid> <port>`: a connection from that peer (its fd comes with the line).
    Accept(VsockAddr),
}

/// Errno names that may appear in `ERR` lines, with their values.
const ERRNO_NAMES: &[(&str, i32)] = &[
    ("ECONNREFUSED", libc::ECONNREFUSED),
    ("EACCES", libc::EACCES),
    ("EADDRINUSE", libc::EADDRINUSE),
    ("EINVAL", libc::EINVAL),
    ("EAGAIN", libc::EAGAIN),
    ("ENOBUFS", libc::ENOBUFS),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("ECONNRESET", libc::ECONNRESET),
    ("EHOSTUNREACH", libc::EHOSTUNREACH),
    ("EIO", libc::EIO),
];

/// The name of `errno` for an `ERR` line (`EIO` for values without a name here).
pub fn errno_name(errno: i32) -> &'static str {
    ERRNO_NAMES
        .iter()
        .find(|(_, v)| *v == errno)
        .map_or("EIO", |(n, _)| n)
}

fn errno_from_name(name: &[u8]) -> Option<i32> {
    ERRNO_NAMES
        .iter()
        .find(|(n, _)| n.as_bytes() == name)
        .map(|(_, v)| *v)
}

/// Parses a canonical decimal u32: 1 to 10 digits, no leading zero unless the number is 0.
pub fn parse_u32(field: &[u8]) -> Result<u32, ProtoError> {
    if field.is_empty() || field.len() > 10 {
        return Err(ProtoError::Malformed("number of 1 to 10 digits expected"));
    }
    if field.len() > 1 && field[0] == b'0' {
        return Err(ProtoError::Malformed("number with a leading zero"));
    }
    let mut value: u64 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return Err(ProtoError::Malformed("non-digit in a number"));
        }
        value = value * 10 + u64::from(b - b'0');
    }
    u32::try_from(value).map_err(|_| ProtoError::Malformed("number larger than u32"))
}

/// Splits a line (without its newline) into at most `N` space-separated fields; more fields,
/// empty fields or non-printable bytes are errors.
fn fields<const N: usize>(line: &[u8]) -> Result<([&[u8]; N], usize), ProtoError> {
    if line.len() >= MAX_LINE_LEN {
        return Err(ProtoError::TooLong);
    }
    if !line.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return Err(ProtoError::Malformed("non-printable byte"));
    }
    let mut out: [&[u8]; N] = [&[]; N];
    let mut count = 0;
    for field in line.split(|b| *b == b' ') {
        if field.is_empty() {
            return Err(ProtoError::Malformed("empty field"));
        }
        if count == N {
            return Err(ProtoError::Malformed("too many fields"));
        }
        out[count] = field;
        count += 1;
    }
    Ok((out, count))
}

/// Parses the host client's `CONNECT <port>`; returns the port.
pub fn parse_host_connect(line: &[u8]) -> Result<u32, ProtoError> {
    match fields::<2>(line)? {
        ([b"CONNECT", port], 2) => parse_u32(port),
        _ => Err(ProtoError::Malformed("expected CONNECT <port>")),
    }
}

/// Parses `CONNECT-FROM <cid> <port>`, the broker's preamble to a host listener.
pub fn parse_connect_from(line: &[u8]) -> Result<VsockAddr, ProtoError> {
    match fields::<3>(line)? {
        ([b"CONNECT-FROM", cid, port], 3) => Ok(VsockAddr::new(parse_u32(cid)?, parse_u32(port)?)),
        _ => Err(ProtoError::Malformed("expected CONNECT-FROM <cid> <port>")),
    }
}

/// Parses the request line an enclave sends to its broker.
pub fn parse_enclave_request(line: &[u8]) -> Result<EnclaveRequest, ProtoError> {
    match fields::<3>(line)? {
        ([b"CONNECT", cid, port], 3) => Ok(EnclaveRequest::Connect(VsockAddr::new(
            parse_u32(cid)?,
            parse_u32(port)?,
        ))),
        ([b"LISTEN", port, _], 2) => Ok(EnclaveRequest::Listen(parse_u32(port)?)),
        _ => Err(ProtoError::Malformed(
            "expected CONNECT <cid> <port> or LISTEN <port>",
        )),
    }
}

/// Parses a broker reply (`OK`, `OK <port>`, `ERR <name>`, `ACCEPT <cid> <port>`). The host
/// client's `OK <host_port>` uses the same parser.
pub fn parse_reply(line: &[u8]) -> Result<BrokerReply, ProtoError> {
    match fields::<3>(line)? {
        ([b"OK", _, _], 1) => Ok(BrokerReply::Ok(None)),
        ([b"OK", port, _], 2) => Ok(BrokerReply::Ok(Some(parse_u32(port)?))),
        ([b"ERR", name, _], 2) => errno_from_name(name)
            .map(BrokerReply::Err)
            .ok_or(ProtoError::Malformed("unknown errno name")),
        ([b"ACCEPT", cid, port], 3) => Ok(BrokerReply::Accept(VsockAddr::new(
            parse_u32(cid)?,
            parse_u32(port)?,
        ))),
        _ => Err(ProtoError::Malformed("expected OK, ERR or ACCEPT")),
    }
}

/// `CONNECT <port>\n` (host client to broker).
pub fn host_connect_line(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// `CONNECT <cid> <port>\n` (enclave to broker).
pub fn enclave_connect_line(addr: VsockAddr) -> String {
    format!("CONNECT {} {}\n", addr.cid, addr.port)
}

/// `LISTEN <port>\n` (enclave to broker).
pub fn listen_line(port: u32) -> String {
    format!("LISTEN {port}\n")
}

/// `CONNECT-FROM <cid> <port>\n` (broker to host listener).
pub fn connect_from_line(peer: VsockAddr) -> String {
    format!("CONNECT-FROM {} {}\n", peer.cid, peer.port)
}

/// `OK <port>\n` or `OK\n`.
pub fn ok_line(port: Option<u32>) -> String {
    match port {
        Some(p) => format!("OK {p}\n"),
        None => "OK\n".to_owned(),
    }
}

/// `ERR <errno-name>\n`.
pub fn err_line(errno: i32) -> String {
    format!("ERR {}\n", errno_name(errno))
}

/// `ACCEPT <cid> <port>\n`.
pub fn accept_line(peer: VsockAddr) -> String {
    format!("ACCEPT {} {}\n", peer.cid, peer.port)
}

/// A line being assembled, at most [`MAX_LINE_LEN`] bytes.
#[derive(Debug, Clone)]
pub struct LineBuf {
    buf: [u8; MAX_LINE_LEN],
    len: usize,
}

impl Default for LineBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl LineBuf {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; MAX_LINE_LEN],
            len: 0,
        }
    }

    /// Adds one byte; returns `Ok(true)` when it was the newline that ends the line.
    pub fn push(&mut self, byte: u8) -> Result<bool, ProtoError> {
        if self.len >= MAX_LINE_LEN {
            return Err(ProtoError::TooLong);
        }
        self.buf[self.len] = byte;
        self.len += 1;
        if byte == b'\n' {
            return Ok(true);
        }
        if self.len >= MAX_LINE_LEN {
            return Err(ProtoError::TooLong);
        }
        Ok(false)
    }

    /// Bytes received so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was received yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The finished line without its newline (or the partial bytes so far).
    pub fn line(&self) -> &[u8] {
        let end = self.len.min(MAX_LINE_LEN);
        let bytes = &self.buf[..end];
        bytes.strip_suffix(b"\n").unwrap_or(bytes)
    }

    /// Forgets the content.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// Reads one line, byte by byte (never consuming anything after the newline, which belongs to
/// the stream that follows). Returns the line without its newline.
pub fn read_line<R: Read>(reader: &mut R, line: &mut LineBuf) -> Result<(), ProtoError> {
    line.clear();
    loop {
        let mut byte = [0u8; 1];
        match reader.read(&mut byte) {
            Ok(0) => return Err(ProtoError::Closed { got: line.len() }),
            Ok(_) => {
                if line.push(byte[0])? {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtoError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_canonical() {
        assert_eq!(parse_u32(b"0").unwrap(), 0);
        assert_eq!(parse_u32(b"4294967295").unwrap(), u32::MAX);
        assert!(parse_u32(b"4294967296").is_err());
        assert!(parse_u32(b"99999999999").is_err());
        assert!(parse_u32(b"007").is_err());
        assert!(parse_u32(b"+7").is_err());
        assert!(parse_u32(b"").is_err());
        assert!(parse_u32(b"1a").is_err());
    }

    #[test]
    fn host_lines() {
        assert_eq!(parse_host_connect(b"CONNECT 5000").unwrap(), 5000);
        assert!(parse_host_connect(b"CONNECT  5000").is_err());
        assert!(parse_host_connect(b"CONNECT 5000 ").is_err());
        assert!(parse_host_connect(b"connect 5000").is_err());
        assert!(parse_host_connect(b"CONNECT 3 5000").is_err());
        assert_eq!(
            parse_connect_from(b"CONNECT-FROM 16 1025").unwrap(),
            VsockAddr::new(16, 1025)
        );
        assert!(parse_connect_from(b"CONNECT-FROM 16").is_err());
    }

    #[test]
    fn enclave_lines() {
        assert_eq!(
            parse_enclave_request(b"CONNECT 3 9000").unwrap(),
            EnclaveRequest::Connect(VsockAddr::new(3, 9000))
        );
        assert_eq!(
            parse_enclave_request(b"LISTEN 5005").unwrap(),
            EnclaveRequest::Listen(5005)
        );
        assert!(parse_enclave_request(b"LISTEN 5005 1").is_err());
        assert!(parse_enclave_request(b"CONNECT 3").is_err());
        assert!(parse_enclave_request(b"CONNECT 3 9000\r").is_err());
        assert!(parse_enclave_request(b"").is_err());
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            BrokerReply::Ok(None),
            BrokerReply::Ok(Some(1025)),
            BrokerReply::Err(libc::ECONNREFUSED),
            BrokerReply::Accept(VsockAddr::new(3, 77)),
        ] {
            let line = match reply {
                BrokerReply::Ok(p) => ok_line(p),
                BrokerReply::Err(e) => err_line(e),
                BrokerReply::Accept(a) => accept_line(a),
            };
            let mut r = line.as_bytes();
            let mut buf = LineBuf::new();
            read_line(&mut r, &mut buf).unwrap();
            assert_eq!(parse_reply(buf.line()).unwrap(), reply);
        }
        assert!(parse_reply(b"ERR ENOTANERRNO").is_err());
    }

    #[test]
    fn reader_is_bounded_and_stops_at_newline() {
        let mut data: &[u8] = b"OK 5\nrest";
        let mut buf = LineBuf::new();
        read_line(&mut data, &mut buf).unwrap();
        assert_eq!(buf.line(), b"OK 5");
        assert_eq!(data, b"rest");

        let long = vec![b'A'; 1000];
        let mut r = long.as_slice();
        assert!(matches!(
            read_line(&mut r, &mut buf),
            Err(ProtoError::TooLong)
        ));
        assert_eq!(r.len(), 1000 - MAX_LINE_LEN);

        let exact = [vec![b'A'; MAX_LINE_LEN - 1], vec![b'\n']].concat();
        let mut r = exact.as_slice();
        read_line(&mut r, &mut buf).unwrap();
        assert_eq!(buf.line().len(), MAX_LINE_LEN - 1);
        // ...but a line that long is never valid protocol.
        assert!(parse_enclave_request(buf.line()).is_err());
        assert!(matches!(
            parse_enclave_request(&[b'A'; MAX_LINE_LEN]),
            Err(ProtoError::TooLong)
        ));

        let mut r: &[u8] = b"CONN";
        assert!(matches!(
            read_line(&mut r, &mut buf),
            Err(ProtoError::Closed { got: 4 })
        ));
    }
}
