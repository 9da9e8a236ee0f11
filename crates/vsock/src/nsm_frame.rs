//! Framing of the NSM channel (cid 0, port 1): a u32 big-endian length, then that many bytes of
//! CBOR. Used by the broker (server side) and by the sdk (client side).
//!
//! Requests up to [`NSM_FRAME_HARD_CAP`] bytes are read and handed to the NSM service, which
//! answers `InputTooLarge` for anything over [`NSM_REQUEST_MAX`] (as AWS's NSM does); a length
//! prefix above the hard cap closes the connection without reading the body.

use std::io::{self, Read, Write};

/// Largest request the NSM accepts (larger ones get an `InputTooLarge` response).
pub const NSM_REQUEST_MAX: usize = 4096;
/// Size of the response buffer of AWS's driver; responses are never larger.
pub const NSM_RESPONSE_MAX: usize = 12288;
/// Largest frame read at all; a larger length prefix closes the connection.
pub const NSM_FRAME_HARD_CAP: usize = 64 * 1024;

/// Errors reading or writing an NSM frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds the cap.
    #[error("NSM frame of {len} bytes exceeds the cap of {cap} bytes")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The cap in force.
        cap: usize,
    },
    /// The stream ended inside a frame.
    #[error("NSM frame truncated: {got} of {want} bytes")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// The transport failed.
    #[error("NSM channel I/O")]
    Io(#[source] io::Error),
}

fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(got)
}

/// Reads one frame whose payload is at most `cap` bytes. `Ok(None)` on a clean end of stream
/// (no byte of a new frame).
pub fn read_frame<R: Read>(reader: &mut R, cap: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    let got = read_full(reader, &mut header)?;
    if got == 0 {
        return Ok(None);
    }
    if got < header.len() {
        return Err(FrameError::Truncated { got, want: 4 });
    }
    let len = u32::from_be_bytes(header);
    let len_usize = usize::try_from(len).map_err(|_| FrameError::TooLarge {
        len: u64::from(len),
        cap,
    })?;
    if len_usize > cap {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            cap,
        });
    }
    let mut body = vec![0u8; len_usize];
    let got = read_full(reader, &mut body)?;
    if got < len_usize {
        return Err(FrameError::Truncated {
            got,
            want: len_usize,
        });
    }
    Ok(Some(body))
}

/// Writes one frame (header and payload in one write where the transport allows).
pub fn write_frame<W: Write>(writer: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        len: payload.len() as u64,
        cap: u32::MAX as usize,
    })?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    writer.write_all(&frame).map_err(FrameError::Io)?;
    writer.flush().map_err(FrameError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        write_frame(&mut out, b"hello").unwrap();
        write_frame(&mut out, b"").unwrap();
        let mut r = out.as_slice();
        assert_eq!(read_frame(&mut r, 10).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 10).unwrap().unwrap(), b"");
        assert!(read_frame(&mut r, 10).unwrap().is_none());
    }

    #[test]
    fn caps_and_truncation() {
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2];
        assert!(matches!(
            read_frame(&mut r, NSM_FRAME_HARD_CAP),
            Err(FrameError::TooLarge { .. })
        ));
        let mut r: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame(&mut r, 10),
            Err(FrameError::Truncated { got: 2, want: 4 })
        ));
        let mut r: &[u8] = &[0, 0, 0, 5, 1, 2];
        assert!(matches!(
            read_frame(&mut r, 10),
            Err(FrameError::Truncated { got: 2, want: 5 })
        ));
    }
}
