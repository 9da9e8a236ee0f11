//! cloister-sample-app: the enclave application of `cloister demo`.
//!
//! The binary (`main.rs`) runs inside an enclave as `cloister-sample-app serve PORT`. It listens
//! on vsock `PORT`; for each connection from the parent it reads one [`SecretRequest`] (a JSON
//! line), asks KMS to decrypt the ciphertext with `Recipient` (an attestation document from the
//! enclave's NSM carrying a fresh RSA public key) through the parent's vsock-proxy, opens
//! `CiphertextForRecipient`, and answers one [`SecretReply`] line: either the proof that it
//! holds the secret, `HMAC-SHA256(key = secret, message = challenge)` ([`proof`]), with an
//! attestation document whose `nonce` is the challenge and whose `user_data` is that HMAC, or
//! the KMS error (`AccessDeniedException` for an image the key policy does not name).
//!
//! This library half holds the wire types shared with the demo and [`build_static_sample_app`],
//! which builds the binary statically (glibc with `+crt-static`) for enclave images.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{self, BufRead, Read};
use std::path::PathBuf;
use zeroize::Zeroize;

/// The vsock port the demo image listens on.
pub const DEFAULT_PORT: u32 = 5005;
/// Largest request or reply line (a ciphertext blob and an attestation document are a few KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest challenge accepted.
pub const MAX_CHALLENGE_BYTES: usize = 512;

/// Errors of the wire protocol.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Reading or writing the connection failed.
    #[error("connection failed")]
    Io(#[from] io::Error),
    /// The peer closed the connection before a full line.
    #[error("connection closed before a complete message")]
    Truncated,
    /// The line is longer than [`MAX_MESSAGE_BYTES`].
    #[error("message longer than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    /// The line is not the JSON expected.
    #[error("malformed message")]
    Json(#[from] serde_json::Error),
}

/// What the parent sends: SigV4 credentials, where KMS is, the ciphertext and a challenge.
#[derive(Clone, Serialize, Deserialize)]
pub struct SecretRequest {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (zeroized on drop, never printed).
    pub secret_access_key: String,
    /// Region (SigV4 scope).
    pub region: String,
    /// The KMS endpoint URL as the Host header and signature see it (`http://127.0.0.1:PORT`).
    pub endpoint: String,
    /// The parent's vsock-proxy port (CID 3).
    pub proxy_port: u32,
    /// The `CiphertextBlob`, base64.
    pub ciphertext_b64: String,
    /// A fresh challenge, base64.
    pub challenge_b64: String,
}

impl fmt::Debug for SecretRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretRequest")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("proxy_port", &self.proxy_port)
            .field("ciphertext_b64", &self.ciphertext_b64)
            .field("challenge_b64", &self.challenge_b64)
            .finish()
    }
}

impl Drop for SecretRequest {
    fn drop(&mut self) {
        self.secret_access_key.zeroize();
    }
}

/// What the enclave answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status")]
pub enum SecretReply {
    /// The secret was released: proof of possession and the document binding it to the image.
    Proof {
        /// `HMAC-SHA256(secret, challenge)`, base64.
        hmac_b64: String,
        /// Attestation document (COSE_Sign1), base64; `nonce` = challenge, `user_data` = HMAC.
        document_b64: String,
    },
    /// The secret was not released.
    Error {
        /// The KMS error type (`__type`, e.g. `AccessDeniedException`), or the local failure.
        error_type: String,
        /// The message.
        message: String,
    },
}

/// `HMAC-SHA256(key = secret, message = challenge)`.
pub fn proof(secret: &[u8], challenge: &[u8]) -> [u8; 32] {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, challenge);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Checks `mac` against `HMAC-SHA256(secret, challenge)` in constant time.
pub fn verify_proof(secret: &[u8], challenge: &[u8], mac: &[u8]) -> bool {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    aws_lc_rs::hmac::verify(&key, challenge, mac).is_ok()
}

/// Reads one newline-terminated JSON message of at most [`MAX_MESSAGE_BYTES`].
pub fn read_message<T: serde::de::DeserializeOwned>(
    reader: &mut impl BufRead,
) -> Result<T, WireError> {
    let mut line = Vec::new();
    let mut limited = Read::take(&mut *reader, MAX_MESSAGE_BYTES as u64 + 1);
    limited.read_until(b'\n', &mut line)?;
    if line.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge);
    }
    if line.last() != Some(&b'\n') {
        return Err(WireError::Truncated);
    }
    let value = serde_json::from_slice(&line);
    line.zeroize();
    Ok(value?)
}

/// Writes one message as a JSON line.
pub fn write_message<T: Serialize>(
    writer: &mut impl io::Write,
    value: &T,
) -> Result<(), WireError> {
    let mut line = serde_json::to_vec(value)?;
    if line.len() >= MAX_MESSAGE_BYTES {
        line.zeroize();
        return Err(WireError::TooLarge);
    }
    line.push(b'\n');
    let result = writer.write_all(&line).and_then(|()| writer.flush());
    line.zeroize();
    Ok(result?)
}

pub use cloister_init::static_build::StaticBuildError as BuildError;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    cloister_init::static_build::workspace_root()
}

/// Where [`build_static_sample_app`] puts the binary.
pub fn static_sample_app_path() -> PathBuf {
    cloister_init::static_build::static_binary_path("cloister-sample-app")
}

/// Builds (or brings up to date) the statically linked sample app in `target/static` (glibc
/// with `+crt-static`, no debug info) and returns its path.
pub fn build_static_sample_app() -> Result<PathBuf, BuildError> {
    cloister_init::static_build::build_static_binary("cloister-sample-app", "cloister-sample-app")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_is_hmac_sha256() {
        // RFC 4231 test case 2.
        let mac = proof(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            mac.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify_proof(b"Jefe", b"what do ya want for nothing?", &mac));
        assert!(!verify_proof(
            b"Jeff",
            b"what do ya want for nothing?",
            &mac
        ));
    }

    #[test]
    fn messages_round_trip_and_are_bounded() {
        let reply = SecretReply::Error {
            error_type: "AccessDeniedException".into(),
            message: "no".into(),
        };
        let mut buf = Vec::new();
        write_message(&mut buf, &reply).unwrap();
        let back: SecretReply = read_message(&mut &buf[..]).unwrap();
        assert_eq!(back, reply);

        let long = vec![b'a'; MAX_MESSAGE_BYTES + 10];
        assert!(matches!(
            read_message::<SecretReply>(&mut &long[..]),
            Err(WireError::TooLarge)
        ));
        assert!(matches!(
            read_message::<SecretReply>(&mut &b"{\"status\""[..]),
            Err(WireError::Truncated)
        ));
        assert!(matches!(
            read_message::<SecretReply>(&mut &b"[1]\n"[..]),
            Err(WireError::Json(_))
        ));
    }

    #[test]
    fn request_debug_redacts_the_secret_key() {
        let r = SecretRequest {
            access_key_id: "AKIA".into(),
            secret_access_key: "very-secret".into(),
            region: "us-east-1".into(),
            endpoint: "http://127.0.0.1:1".into(),
            proxy_port: 8000,
            ciphertext_b64: String::new(),
            challenge_b64: String::new(),
        };
        assert!(!format!("{r:?}").contains("very-secret"));
    }
}
