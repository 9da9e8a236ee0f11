//! The strict attestation document verifier.
//!
//! Checks, in order (the first failure is reported, each with its own [`VerifyError`] variant):
//! 1. COSE structure: size, untagged or tag 18, four elements, byte-string payload, no trailing
//!    bytes; protected header ES384 and nothing critical.
//! 2. Payload syntax: every mandatory field, digest SHA384, PCR indices < 32 with lengths
//!    32/48/64, certificate and cabundle entries 1..1024 bytes, cabundle non-empty, optional
//!    fields within their limits.
//! 3. Chain: `cabundle[0]` equals a pinned trust anchor byte for byte; then every certificate
//!    from `cabundle[1]` to the leaf: parsed (ECDSA P-256/P-384 keys, ecdsa-with-SHA256/384,
//!    no unknown critical extension), valid at `at`, issuer name equal to its issuer's subject,
//!    issuer is a CA (basicConstraints CA:true, keyUsage keyCertSign, pathLen respected), leaf is
//!    not a CA and has digitalSignature, and the issuer's signature verifies. The anchor's own
//!    signature is checked once, when the verifier is built.
//! 4. The COSE signature with the leaf's P-384 key.
//! 5. Freshness and policy: the caller's nonce, a timestamp not in the future (beyond
//!    [`MAX_CLOCK_SKEW`]) and not older than `max_age`, expected PCRs (an expected PCR0-2 against
//!    a debug document, whose PCR0-2 are zeros, fails with [`VerifyError::DebugDocument`]).
//!
//! A [`VerifiedDocument`] can only come out of [`Verifier::verify`]: code that releases secrets
//! takes one, so skipping verification does not compile.

use crate::cert::{CertError, ParsedCert};
use crate::cose::{CoseError, CoseSign1};
use crate::Isolation;
use cloister_nsm_api::{AttestationDoc, SyntaxError};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far in the future a document's timestamp may lie (clock skew between hosts).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// Most trust anchors a verifier holds.
pub const MAX_TRUST_ANCHORS: usize = 64;

/// The AWS Nitro Enclaves root certificate (G1), DER. CN=aws.nitro-enclaves, valid
/// 2019-10-28 to 2049-10-28; SHA-256 641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b.
pub const AWS_NITRO_ROOT_G1: &[u8] = include_bytes!("../testdata/aws-nitro-root-g1.der");

/// A failed verification check. [`VerifyError::code`] gives each variant a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The document is larger than any valid one.
    #[error("document of {0} bytes is too large")]
    DocumentTooLarge(usize),
    /// The document is not a COSE_Sign1 structure.
    #[error("malformed COSE_Sign1: {0}")]
    CoseMalformed(String),
    /// Bytes follow the COSE_Sign1 structure.
    #[error("{0} trailing bytes after the document")]
    TrailingBytes(usize),
    /// The protected header names no algorithm, or one other than ES384, or critical parameters.
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// The payload is not a CBOR attestation document.
    #[error("malformed payload: {0}")]
    PayloadMalformed(String),
    /// The payload breaks a syntax rule.
    #[error("invalid payload: {0}")]
    PayloadSyntax(SyntaxError),
    /// A certificate cannot be parsed or uses unsupported algorithms or extensions.
    #[error("certificate {subject}: {reason}")]
    CertificateMalformed {
        /// Which certificate ("leaf", "cabundle[i]").
        subject: String,
        /// Why.
        reason: String,
    },
    /// `cabundle[0]` is not one of the pinned trust anchors.
    #[error("the chain's root is not a trusted root (subject {0})")]
    UntrustedRoot(String),
    /// A certificate has expired at the verification time.
    #[error("certificate {subject} expired at {not_after} (verification time {at})")]
    CertificateExpired {
        /// Its subject.
        subject: String,
        /// Its notAfter, seconds.
        not_after: u64,
        /// Verification time, seconds.
        at: u64,
    },
    /// A certificate is not yet valid at the verification time.
    #[error("certificate {subject} is not valid before {not_before} (verification time {at})")]
    CertificateNotYetValid {
        /// Its subject.
        subject: String,
        /// Its notBefore, seconds.
        not_before: u64,
        /// Verification time, seconds.
        at: u64,
    },
    /// A certificate's issuer name differs from the subject of the next certificate up.
    #[error("certificate {0}: issuer name does not match the issuing certificate")]
    IssuerMismatch(String),
    /// An issuing certificate is not a CA (basicConstraints missing or CA:false).
    #[error("certificate {0} issues certificates but is not a CA")]
    NotACa(String),
    /// An issuing certificate's pathLenConstraint is exceeded.
    #[error("certificate {0}: path length constraint exceeded")]
    PathLenExceeded(String),
    /// A certificate lacks a required key usage.
    #[error("certificate {subject}: key usage lacks {missing}")]
    KeyUsage {
        /// Its subject.
        subject: String,
        /// The missing usage.
        missing: &'static str,
    },
    /// The leaf certificate is a CA.
    #[error("leaf certificate {0} is a CA")]
    LeafIsCa(String),
    /// A certificate's signature does not verify with its issuer's key.
    #[error("certificate {0}: signature does not verify with the issuer's key")]
    ChainSignature(String),
    /// The leaf key cannot make ES384 signatures (not P-384).
    #[error("leaf certificate key is not P-384")]
    LeafKeyType,
    /// The document's signature does not verify with the leaf key.
    #[error("the document signature does not verify")]
    DocumentSignature,
    /// The leaf's isolation OU is malformed.
    #[error("malformed isolation attribute: {0}")]
    IsolationMalformed(String),
    /// A nonce was expected and the document has none.
    #[error("the document has no nonce")]
    NonceMissing,
    /// The document's nonce differs from the expected one.
    #[error("the document's nonce does not match")]
    NonceMismatch,
    /// The timestamp lies in the future beyond the allowed skew.
    #[error(
        "document timestamp {timestamp_ms} ms is in the future (verification time {at_ms} ms)"
    )]
    TimestampInFuture {
        /// Document timestamp.
        timestamp_ms: u64,
        /// Verification time.
        at_ms: u64,
    },
    /// The document is older than allowed.
    #[error("document is {age_ms} ms old; at most {max_ms} ms allowed")]
    Stale {
        /// Its age.
        age_ms: u64,
        /// The limit.
        max_ms: u64,
    },
    /// An expected PCR is absent from the document.
    #[error("PCR{0} is not in the document")]
    PcrMissing(usize),
    /// An expected PCR has another value.
    #[error("PCR{0} does not match the expected value")]
    PcrMismatch(usize),
    /// An expected image PCR (0-2) was checked against a debug-mode document.
    #[error(
        "PCR{0} was expected but the document comes from a debug-mode enclave (PCR0-2 are zeros)"
    )]
    DebugDocument(usize),
    /// The verification options are unusable (time before 1970, PCR index out of range).
    #[error("invalid verification options: {0}")]
    InvalidOptions(String),
    /// A trust anchor is unusable.
    #[error("invalid trust anchor {index}: {reason}")]
    InvalidTrustAnchor {
        /// Its position.
        index: usize,
        /// Why.
        reason: String,
    },
}

/// Every code [`VerifyError::code`] returns, with a one-line summary.
pub const VERIFY_ERROR_CODES: &[(&str, &str)] = &[
    ("E210", "Attestation document too large"),
    ("E211", "Malformed COSE_Sign1 structure"),
    ("E212", "Trailing bytes after the attestation document"),
    ("E213", "Unsupported COSE algorithm"),
    ("E214", "Malformed attestation document payload"),
    ("E215", "Invalid attestation document field"),
    ("E216", "Malformed or unsupported certificate"),
    ("E217", "Untrusted root certificate"),
    ("E218", "Certificate expired"),
    ("E219", "Certificate not yet valid"),
    ("E220", "Certificate issuer name mismatch"),
    ("E221", "Issuing certificate is not a CA"),
    ("E222", "Path length constraint exceeded"),
    ("E223", "Certificate key usage missing"),
    ("E224", "Leaf certificate is a CA"),
    ("E225", "Certificate signature invalid"),
    ("E226", "Leaf key is not P-384"),
    ("E227", "Document signature invalid"),
    ("E228", "Malformed isolation attribute"),
    ("E229", "Nonce missing"),
    ("E230", "Nonce mismatch"),
    ("E231", "Timestamp in the future"),
    ("E232", "Document too old"),
    ("E233", "Expected PCR missing"),
    ("E234", "PCR mismatch"),
    ("E235", "Debug-mode document"),
    ("E236", "Invalid verification options"),
    ("E237", "Invalid trust anchor"),
];

impl VerifyError {
    /// The stable code of this check (listed in [`VERIFY_ERROR_CODES`]).
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::DocumentTooLarge(_) => "E210",
            VerifyError::CoseMalformed(_) => "E211",
            VerifyError::TrailingBytes(_) => "E212",
            VerifyError::UnsupportedAlgorithm(_) => "E213",
            VerifyError::PayloadMalformed(_) => "E214",
            VerifyError::PayloadSyntax(_) => "E215",
            VerifyError::CertificateMalformed { .. } => "E216",
            VerifyError::UntrustedRoot(_) => "E217",
            VerifyError::CertificateExpired { .. } => "E218",
            VerifyError::CertificateNotYetValid { .. } => "E219",
            VerifyError::IssuerMismatch(_) => "E220",
            VerifyError::NotACa(_) => "E221",
            VerifyError::PathLenExceeded(_) => "E222",
            VerifyError::KeyUsage { .. } => "E223",
            VerifyError::LeafIsCa(_) => "E224",
            VerifyError::ChainSignature(_) => "E225",
            VerifyError::LeafKeyType => "E226",
            VerifyError::DocumentSignature => "E227",
            VerifyError::IsolationMalformed(_) => "E228",
            VerifyError::NonceMissing => "E229",
            VerifyError::NonceMismatch => "E230",
            VerifyError::TimestampInFuture { .. } => "E231",
            VerifyError::Stale { .. } => "E232",
            VerifyError::PcrMissing(_) => "E233",
            VerifyError::PcrMismatch(_) => "E234",
            VerifyError::DebugDocument(_) => "E235",
            VerifyError::InvalidOptions(_) => "E236",
            VerifyError::InvalidTrustAnchor { .. } => "E237",
        }
    }
}

impl From<CoseError> for VerifyError {
    fn from(e: CoseError) -> Self {
        match e {
            CoseError::TooLarge(n) => VerifyError::DocumentTooLarge(n),
            CoseError::Malformed(m) => VerifyError::CoseMalformed(m),
            CoseError::TrailingBytes(n) => VerifyError::TrailingBytes(n),
            CoseError::MissingAlgorithm
            | CoseError::UnsupportedAlgorithm(_)
            | CoseError::CriticalHeaders => VerifyError::UnsupportedAlgorithm(e.to_string()),
            CoseError::BadSignature | CoseError::SigningFailed => VerifyError::DocumentSignature,
        }
    }
}

/// What to check besides the signatures and the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// The verification time (certificate validity, freshness).
    pub at: SystemTime,
    /// The nonce the document must carry.
    pub expected_nonce: Option<Vec<u8>>,
    /// The oldest acceptable document, relative to `at`.
    pub max_age: Option<Duration>,
    /// PCRs the document must carry with these values.
    pub expected_pcrs: Vec<(usize, Vec<u8>)>,
}

impl Default for VerifyOptions {
    /// Now, no nonce, no age limit, no expected PCRs.
    fn default() -> Self {
        Self::at(SystemTime::now())
    }
}

impl VerifyOptions {
    /// Options with verification time `at` and nothing else.
    pub fn at(at: SystemTime) -> Self {
        Self {
            at,
            expected_nonce: None,
            max_age: None,
            expected_pcrs: Vec::new(),
        }
    }

    /// Options with verification time `ms` milliseconds after the epoch.
    pub fn at_unix_ms(ms: u64) -> Self {
        Self::at(UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// Requires `nonce`.
    pub fn with_nonce(mut self, nonce: impl Into<Vec<u8>>) -> Self {
        self.expected_nonce = Some(nonce.into());
        self
    }

    /// Requires a document at most `max_age` old.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Requires PCR `index` to equal `value`.
    pub fn with_pcr(mut self, index: usize, value: impl Into<Vec<u8>>) -> Self {
        self.expected_pcrs.push((index, value.into()));
        self
    }
}

/// A verified attestation document. Only [`Verifier::verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDocument {
    doc: AttestationDoc,
    chain_subjects: Vec<String>,
    isolation: Option<Isolation>,
    leaf_not_after: u64,
}

impl VerifiedDocument {
    /// The whole payload.
    pub fn document(&self) -> &AttestationDoc {
        &self.doc
    }
    /// The PCRs, index to value.
    pub fn pcrs(&self) -> BTreeMap<usize, &[u8]> {
        self.doc
            .pcrs
            .iter()
            .map(|(i, v)| (*i, v.as_slice()))
            .collect()
    }
    /// PCR `index`, if present.
    pub fn pcr(&self, index: usize) -> Option<&[u8]> {
        self.doc.pcrs.get(&index).map(|v| v.as_slice())
    }
    /// PCR0: the SHA-384 measurement of the enclave image.
    pub fn image_sha384(&self) -> Option<&[u8]> {
        self.pcr(0)
    }
    /// True if PCR0 is all zeros: a debug-mode enclave, which matches no real image.
    pub fn is_debug(&self) -> bool {
        self.pcr(0).is_some_and(|p| p.iter().all(|&b| b == 0))
    }
    /// The public key, if any.
    pub fn public_key(&self) -> Option<&[u8]> {
        self.doc.public_key.as_deref().map(|v| v.as_slice())
    }
    /// The user data, if any.
    pub fn user_data(&self) -> Option<&[u8]> {
        self.doc.user_data.as_deref().map(|v| v.as_slice())
    }
    /// The nonce, if any.
    pub fn nonce(&self) -> Option<&[u8]> {
        self.doc.nonce.as_deref().map(|v| v.as_slice())
    }
    /// The module id.
    pub fn module_id(&self) -> &str {
        &self.doc.module_id
    }
    /// The timestamp, milliseconds since the epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.doc.timestamp
    }
    /// Subjects of the chain, leaf first, root last.
    pub fn chain_subjects(&self) -> &[String] {
        &self.chain_subjects
    }
    /// The enclave's isolation kind from a Cloister leaf; `None` for AWS documents.
    pub fn isolation(&self) -> Option<Isolation> {
        self.isolation
    }
    /// The leaf certificate's notAfter, seconds since the epoch.
    pub fn leaf_not_after_secs(&self) -> u64 {
        self.leaf_not_after
    }
}

/// A pinned root with its parsed facts (parsed and self-signature checked once).
#[derive(Debug, Clone)]
struct Anchor {
    der: Vec<u8>,
    parsed: ParsedCert,
}

/// Verifies attestation documents against pinned roots. Cheap to share across threads.
#[derive(Debug, Clone)]
pub struct Verifier {
    anchors: Vec<Anchor>,
}

fn cert_err(which: String) -> impl FnOnce(CertError) -> VerifyError {
    move |e| match e {
        CertError::Isolation(m) => VerifyError::IsolationMalformed(m),
        other => VerifyError::CertificateMalformed {
            subject: which,
            reason: other.to_string(),
        },
    }
}

impl Verifier {
    /// A verifier that trusts these root certificates (DER), e.g. [`AWS_NITRO_ROOT_G1`] and/or
    /// a Cloister operator root. Each must parse, be a CA and carry a valid self-signature.
    pub fn new(trust_anchors: Vec<Vec<u8>>) -> Result<Verifier, VerifyError> {
        if trust_anchors.is_empty() || trust_anchors.len() > MAX_TRUST_ANCHORS {
            return Err(VerifyError::InvalidTrustAnchor {
                index: 0,
                reason: format!("expected 1..={MAX_TRUST_ANCHORS} anchors"),
            });
        }
        let mut anchors = Vec::with_capacity(trust_anchors.len());
        for (index, der) in trust_anchors.into_iter().enumerate() {
            let bad = |reason: String| VerifyError::InvalidTrustAnchor { index, reason };
            let parsed = ParsedCert::parse(&der).map_err(|e| bad(e.to_string()))?;
            if parsed.basic_constraints.map(|b| b.0) != Some(true) {
                return Err(bad("not a CA".into()));
            }
            if parsed.subject_der != parsed.issuer_der || !parsed.verify_signed_by(&parsed) {
                return Err(bad("not a valid self-signed certificate".into()));
            }
            anchors.push(Anchor { der, parsed });
        }
        Ok(Verifier { anchors })
    }

    /// A verifier trusting only AWS's Nitro root.
    pub fn aws() -> Verifier {
        // The embedded root is a fixed, valid certificate; a test proves it parses.
        Verifier::new(vec![AWS_NITRO_ROOT_G1.to_vec()]).unwrap_or(Verifier {
            anchors: Vec::new(),
        })
    }

    /// Runs every check on `document`.
    pub fn verify(
        &self,
        document: &[u8],
        opts: &VerifyOptions,
    ) -> Result<VerifiedDocument, VerifyError> {
        let at = opts
            .at
            .duration_since(UNIX_EPOCH)
            .map_err(|_| VerifyError::InvalidOptions("verification time before 1970".into()))?;
        let at_ms = u64::try_from(at.as_millis())
            .map_err(|_| VerifyError::InvalidOptions("verification time out of range".into()))?;
        let at_secs = at.as_secs();
        for (index, _) in &opts.expected_pcrs {
            if *index >= cloister_nsm_api::MAX_PCRS {
                return Err(VerifyError::InvalidOptions(format!(
                    "expected PCR index {index} is not below 32"
                )));
            }
        }

        // 1. COSE structure and algorithm.
        let cose = CoseSign1::from_slice(document)?;
        cose.check_es384()?;

        // 2. Payload syntax.
        let doc = AttestationDoc::from_cbor(&cose.payload)
            .map_err(|e| VerifyError::PayloadMalformed(e.to_string()))?;
        doc.check_syntax().map_err(VerifyError::PayloadSyntax)?;

        // 3. Chain: cabundle[0] is a pinned root, then down to the leaf.
        let root_der = doc.cabundle[0].as_slice();
        let anchor = self
            .anchors
            .iter()
            .find(|a| a.der == root_der)
            .ok_or_else(|| {
                let subject = ParsedCert::parse(root_der)
                    .map(|c| c.subject)
                    .unwrap_or_else(|_| "<unparseable>".into());
                VerifyError::UntrustedRoot(subject)
            })?;
        let mut chain: Vec<ParsedCert> = Vec::with_capacity(doc.cabundle.len() + 1);
        for (i, der) in doc.cabundle.iter().enumerate().skip(1) {
            chain.push(ParsedCert::parse(der).map_err(cert_err(format!("cabundle[{i}]")))?);
        }
        let leaf = ParsedCert::parse(&doc.certificate).map_err(cert_err("leaf".into()))?;
        chain.push(leaf);
        // chain = [cabundle[1], ..., leaf]; issuer of chain[k] is chain[k-1], or the anchor.
        let all: Vec<&ParsedCert> = std::iter::once(&anchor.parsed)
            .chain(chain.iter())
            .collect();
        let count = all.len();
        // Structural checks for every certificate first; signatures after (they cost most).
        check_chain_structure(&all, at_secs)?;
        let leaf = all[count - 1];
        if leaf.curve != crate::cert::Curve::P384 {
            return Err(VerifyError::LeafKeyType);
        }
        for pos in 1..count {
            if !all[pos].verify_signed_by(all[pos - 1]) {
                return Err(VerifyError::ChainSignature(all[pos].subject.clone()));
            }
        }

        // 4. The document signature.
        cose.verify_es384(&leaf.public_point)
            .map_err(|_| VerifyError::DocumentSignature)?;

        // 5. Freshness and policy.
        check_freshness_and_policy(&doc, opts, at_ms)?;

        let chain_subjects = all.iter().rev().map(|c| c.subject.clone()).collect();
        Ok(VerifiedDocument {
            isolation: leaf.isolation,
            leaf_not_after: leaf.not_after,
            chain_subjects,
            doc,
        })
    }
}

/// The structural checks of a chain `all` = [anchor, cabundle[1], ..., leaf] at `at_secs`:
/// validity periods, CA and leaf constraints, key usage, issuer names (signatures are checked
/// after these, by the caller: they cost most).
fn check_chain_structure(all: &[&ParsedCert], at_secs: u64) -> Result<(), VerifyError> {
    let count = all.len();
    for (pos, cert) in all.iter().enumerate() {
        if at_secs > cert.not_after {
            return Err(VerifyError::CertificateExpired {
                subject: cert.subject.clone(),
                not_after: cert.not_after,
                at: at_secs,
            });
        }
        if at_secs < cert.not_before {
            return Err(VerifyError::CertificateNotYetValid {
                subject: cert.subject.clone(),
                not_before: cert.not_before,
                at: at_secs,
            });
        }
        let is_leaf = pos + 1 == count;
        if is_leaf {
            if cert.basic_constraints.is_some_and(|b| b.0) {
                return Err(VerifyError::LeafIsCa(cert.subject.clone()));
            }
            if cert.key_usage.is_some_and(|k| !k.0) {
                return Err(VerifyError::KeyUsage {
                    subject: cert.subject.clone(),
                    missing: "digitalSignature",
                });
            }
        } else {
            match cert.basic_constraints {
                Some((true, path_len)) => {
                    // Intermediates below this CA (the leaf does not count).
                    let below = count - pos - 2;
                    if path_len.is_some_and(|n| below > usize::from(n)) {
                        return Err(VerifyError::PathLenExceeded(cert.subject.clone()));
                    }
                }
                _ => return Err(VerifyError::NotACa(cert.subject.clone())),
            }
            if !cert.key_usage.is_some_and(|k| k.1) {
                return Err(VerifyError::KeyUsage {
                    subject: cert.subject.clone(),
                    missing: "keyCertSign",
                });
            }
        }
        if pos > 0 && cert.issuer_der != all[pos - 1].subject_der {
            return Err(VerifyError::IssuerMismatch(cert.subject.clone()));
        }
    }
    Ok(())
}

/// Step 5 of [`Verifier::verify`]: the nonce, the timestamp (not in the future beyond the
/// allowed skew, not older than the maximum age) and the expected PCRs.
fn check_freshness_and_policy(
    doc: &AttestationDoc,
    opts: &VerifyOptions,
    at_ms: u64,
) -> Result<(), VerifyError> {
    if let Some(expected) = &opts.expected_nonce {
        match &doc.nonce {
            None => return Err(VerifyError::NonceMissing),
            Some(n) if n.as_slice() != expected.as_slice() => {
                return Err(VerifyError::NonceMismatch)
            }
            Some(_) => {}
        }
    }
    let skew_ms = u64::try_from(MAX_CLOCK_SKEW.as_millis()).unwrap_or(u64::MAX);
    if doc.timestamp > at_ms.saturating_add(skew_ms) {
        return Err(VerifyError::TimestampInFuture {
            timestamp_ms: doc.timestamp,
            at_ms,
        });
    }
    if let Some(max_age) = opts.max_age {
        let max_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        let age_ms = at_ms.saturating_sub(doc.timestamp);
        if age_ms > max_ms {
            return Err(VerifyError::Stale { age_ms, max_ms });
        }
    }
    let is_debug = doc.pcrs.get(&0).is_some_and(|p| p.iter().all(|&b| b == 0));
    for (index, expected) in &opts.expected_pcrs {
        if is_debug && *index <= 2 {
            return Err(VerifyError::DebugDocument(*index));
        }
        match doc.pcrs.get(index) {
            None => return Err(VerifyError::PcrMissing(*index)),
            Some(v) if v.as_slice() != expected.as_slice() => {
                return Err(VerifyError::PcrMismatch(*index))
            }
            Some(_) => {}
        }
    }
    Ok(())
}
