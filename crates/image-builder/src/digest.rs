//! Content digests (`sha256:<64 hex>`) and readers that check them while bytes flow through.

use aws_lc_rs::digest::{Context, SHA256};
use std::cell::RefCell;
use std::fmt;
use std::io::{self, Read};
use std::rc::Rc;

/// Errors parsing a digest string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// Not `algorithm:hex`.
    #[error("digest {0:?} is not of the form sha256:<64 hex digits>")]
    Malformed(String),
    /// An algorithm other than sha256.
    #[error("digest algorithm {0:?} is not supported (only sha256)")]
    Unsupported(String),
}

/// A SHA-256 content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Parses `sha256:<64 lowercase or uppercase hex digits>`.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let Some((alg, hex_part)) = s.split_once(':') else {
            return Err(DigestError::Malformed(s.chars().take(100).collect()));
        };
        if alg != "sha256" {
            return Err(DigestError::Unsupported(alg.chars().take(40).collect()));
        }
        let mut out = [0u8; 32];
        if hex_part.len() != 64 || hex::decode_to_slice(hex_part, &mut out).is_err() {
            return Err(DigestError::Malformed(s.chars().take(100).collect()));
        }
        Ok(Self(out))
    }

    /// Digest of a byte string.
    pub fn of(data: &[u8]) -> Self {
        let mut c = Context::new(&SHA256);
        c.update(data);
        Self::from_context(c)
    }

    fn from_context(c: Context) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(c.finish().as_ref());
        Self(out)
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a [`Metered`] reader has seen.
#[derive(Default)]
pub struct MeterState {
    /// Bytes passed through.
    pub bytes: u64,
    hasher: Option<Context>,
}

impl MeterState {
    /// The SHA-256 of everything passed through (if hashing was on).
    pub fn digest(&mut self) -> Option<Sha256Digest> {
        self.hasher.take().map(Sha256Digest::from_context)
    }
}

impl std::fmt::Debug for MeterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeterState")
            .field("bytes", &self.bytes)
            .field("hashing", &self.hasher.is_some())
            .finish()
    }
}

/// Counts (and optionally hashes) bytes, refusing to pass more than `max` of them.
pub struct Metered<R> {
    inner: R,
    state: Rc<RefCell<MeterState>>,
    max: u64,
    on_bytes: Option<Box<dyn FnMut(u64)>>,
}

impl<R> std::fmt::Debug for Metered<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metered")
            .field("state", &self.state)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Metered<R> {
    /// Wraps `inner`; `hash` turns SHA-256 on; more than `max` bytes is an I/O error of kind
    /// `InvalidData`.
    pub fn new(inner: R, hash: bool, max: u64) -> (Self, Rc<RefCell<MeterState>>) {
        let state = Rc::new(RefCell::new(MeterState {
            bytes: 0,
            hasher: hash.then(|| Context::new(&SHA256)),
        }));
        (
            Self {
                inner,
                state: state.clone(),
                max,
                on_bytes: None,
            },
            state,
        )
    }

    /// Calls `f` with the number of bytes of each read (progress).
    pub fn on_bytes(mut self, f: Box<dyn FnMut(u64)>) -> Self {
        self.on_bytes = Some(f);
        self
    }
}

/// Marker error carried inside `io::Error` when a [`Metered`] limit is hit.
#[derive(Debug, thiserror::Error)]
#[error("more than {0} bytes")]
pub struct OverLimit(pub u64);

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut st = self.state.borrow_mut();
        st.bytes += n as u64;
        if st.bytes > self.max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                OverLimit(self.max),
            ));
        }
        if let Some(h) = st.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        drop(st);
        if let Some(f) = self.on_bytes.as_mut() {
            f(n as u64);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let d = Sha256Digest::of(b"");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Sha256Digest::parse(&s), Ok(d));
        assert!(matches!(
            Sha256Digest::parse("sha256:00"),
            Err(DigestError::Malformed(_))
        ));
        assert!(matches!(
            Sha256Digest::parse("nocolon"),
            Err(DigestError::Malformed(_))
        ));
        assert!(matches!(
            Sha256Digest::parse("sha512:00"),
            Err(DigestError::Unsupported(_))
        ));
        assert!(Sha256Digest::parse(&format!("sha256:{}", "g".repeat(64))).is_err());
    }

    #[test]
    fn metered_counts_hashes_and_limits() {
        let (mut m, st) = Metered::new(&b"hello"[..], true, 10);
        let mut out = Vec::new();
        m.read_to_end(&mut out).unwrap();
        assert_eq!(st.borrow().bytes, 5);
        assert_eq!(st.borrow_mut().digest(), Some(Sha256Digest::of(b"hello")));
        let (mut m, _) = Metered::new(&b"hello"[..], false, 4);
        let e = m.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.get_ref().unwrap().is::<OverLimit>());
    }
}
