//! The attestation PKI: an operator root CA, a host CA under it, and short-lived per-enclave
//! leaf certificates that sign attestation documents.
//!
//! ```text
//! root CA (P-384, 30 years, CA:true pathLen 1, keyCertSign+cRLSign)   <dir>/root-ca.{pem,key}
//!   └─ host CA (P-384, 5 years, CA:true pathLen 0, keyCertSign+cRLSign) <dir>/host-ca.{pem,key}
//!        └─ enclave leaf (P-384, ~3 hours, CA:false, digitalSignature)  memory only
//! ```
//!
//! Every certificate carries subjectKeyIdentifier, and those below the root an
//! authorityKeyIdentifier. A leaf's subject is `O=Cloister, OU=isolation=<process|vm>,
//! CN=<enclave id>`: the OU records the enclave's isolation kind so relying parties and key
//! policies can tell process enclaves from VM enclaves (the verifier exposes it as
//! `VerifiedDocument::isolation`). When the runtime ran Cloister's init in place of the image's
//! own (an image built by nitro-cli, see [`LeafFacts`]), a second OU, [`INIT_REPLACED_OU`],
//! says so; verifiers that look only for the isolation OU ignore it.
//!
//! Key files are PKCS#8 PEM written with mode 0600 in a directory with mode 0700; loading
//! refuses key files that group or others can read. A leaf's private key never leaves memory;
//! it lives inside aws-lc, which wipes key material when it is freed. A [`DocumentSigner`] is
//! made once per enclave, so a document costs one P-384 signature; when its leaf nears the end
//! of its life the signer issues itself a fresh one from the host CA.

use crate::cose::{self, CoseError};
use crate::Isolation;
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};
use cloister_nsm_api::{AttestationDoc, Digest, SyntaxError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyIdMethod,
    KeyUsagePurpose, PublicKeyData, SerialNumber, SigningKey,
};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// The root certificate file (PEM).
pub const ROOT_CERT_FILE: &str = "root-ca.pem";
/// The root key file (PKCS#8 PEM, mode 0600).
pub const ROOT_KEY_FILE: &str = "root-ca.key";
/// The host CA certificate file (PEM).
pub const HOST_CERT_FILE: &str = "host-ca.pem";
/// The host CA key file (PKCS#8 PEM, mode 0600).
pub const HOST_KEY_FILE: &str = "host-ca.key";
/// Lifetime of a new root certificate.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
/// Lifetime of a new host CA certificate.
pub const HOST_CA_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Lifetime of an enclave leaf certificate (AWS's are about three hours).
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(3 * 3600);
/// How far notBefore is set before the moment of issue, to absorb clock skew.
pub const BACKDATE: Duration = Duration::from_secs(60);
/// Largest PKI file read, in bytes.
pub const MAX_PKI_FILE_LEN: u64 = 64 * 1024;
/// Longest enclave id accepted as a leaf's common name (X.520 ub-common-name).
pub const MAX_ENCLAVE_ID_LEN: usize = 64;

const ORG: &str = "Cloister";
const ROOT_CN: &str = "Cloister Attestation Root";
const HOST_CN: &str = "Cloister Host CA";
const CA_OU: &str = "Attestation";

/// Errors creating, loading or using the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file or directory operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A PKI file is not what it should be.
    #[error("{path}: {reason}")]
    BadFile {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A private key file can be read by group or others.
    #[error("{path}: mode {mode:o} lets others read the private key; expected 0600")]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The PKI directory is missing files that cannot be recreated (e.g. the root key).
    #[error("incomplete PKI in {dir}: {reason}")]
    Incomplete {
        /// The directory.
        dir: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The enclave id cannot be a certificate common name.
    #[error("invalid enclave id {0:?}: 1..=64 characters of [A-Za-z0-9._-] expected")]
    InvalidEnclaveId(String),
    /// The requested validity is empty, in the past or out of range.
    #[error("invalid certificate validity: {0}")]
    InvalidValidity(String),
    /// Key generation or signing failed in the crypto library.
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Certificate(String),
}

/// Errors signing an attestation document.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The document's timestamp is outside the leaf's validity and no fresh leaf could be had.
    #[error("timestamp {timestamp_ms} ms is outside the signing certificate's validity")]
    LeafExpired {
        /// The document's timestamp.
        timestamp_ms: u64,
    },
    /// Renewing the leaf failed.
    #[error("renewing the signing certificate failed")]
    Renewal(#[source] PkiError),
    /// The fields break the document syntax rules.
    #[error("document fields are invalid: {0}")]
    Syntax(#[from] SyntaxError),
    /// Encoding failed.
    #[error("encoding the document failed: {0}")]
    Encode(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Cose(#[from] CoseError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PkiError + 'a {
    move |source| PkiError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Seconds since the epoch (0 for times before it).
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// SHA-256 of `der`, lowercase hex: the usual certificate fingerprint.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, der))
}

/// An aws-lc ECDSA P-384 key used by rcgen to sign certificates (ASN.1 signatures).
struct CertSigner<'a> {
    key: &'a EcdsaKeyPair,
    rng: &'a SystemRandom,
}

impl PublicKeyData for CertSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P384_SHA384
    }
}

impl SigningKey for CertSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key
            .sign(self.rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// A P-384 public key (uncompressed point) as the subject of a certificate.
struct SubjectKey<'a>(&'a [u8]);

impl PublicKeyData for SubjectKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P384_SHA384
    }
}

fn to_offset(t: u64) -> Result<time::OffsetDateTime, PkiError> {
    let secs =
        i64::try_from(t).map_err(|_| PkiError::InvalidValidity("time out of range".into()))?;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| PkiError::InvalidValidity(e.to_string()))
}

fn random_serial(rng: &SystemRandom) -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes)
        .map_err(|_| PkiError::Crypto("random serial"))?;
    // Positive and exactly 16 bytes long.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from(bytes.to_vec()))
}

fn ca_params(
    cn: &str,
    path_len: u8,
    not_before: u64,
    not_after: u64,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORG);
    dn.push(DnType::OrganizationalUnitName, CA_OU);
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.key_identifier_method = KeyIdMethod::Sha256;
    params.not_before = to_offset(not_before)?;
    params.not_after = to_offset(not_after)?;
    Ok(params)
}

fn root_params(not_before: u64, not_after: u64) -> Result<CertificateParams, PkiError> {
    ca_params(ROOT_CN, 1, not_before, not_after)
}

fn host_params(not_before: u64, not_after: u64) -> Result<CertificateParams, PkiError> {
    let mut params = ca_params(HOST_CN, 0, not_before, not_after)?;
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn new_ca_key(rng: &SystemRandom) -> Result<(EcdsaKeyPair, Zeroizing<Vec<u8>>), PkiError> {
    let doc = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, rng)
        .map_err(|_| PkiError::Crypto("key generation"))?;
    let pkcs8 = Zeroizing::new(doc.as_ref().to_vec());
    drop(doc);
    let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, &pkcs8)
        .map_err(|_| PkiError::Crypto("key import"))?;
    Ok((key, pkcs8))
}

fn read_bounded(path: &Path) -> Result<Zeroizing<Vec<u8>>, PkiError> {
    let meta = fs::metadata(path).map_err(io_err("stat", path))?;
    if meta.len() > MAX_PKI_FILE_LEN {
        return Err(PkiError::BadFile {
            path: path.to_path_buf(),
            reason: format!("larger than {MAX_PKI_FILE_LEN} bytes"),
        });
    }
    fs::read(path)
        .map(Zeroizing::new)
        .map_err(io_err("read", path))
}

fn read_pem(path: &Path, label: &str) -> Result<Zeroizing<Vec<u8>>, PkiError> {
    let text = read_bounded(path)?;
    let (found, der_bytes) = der::pem::decode_vec(&text).map_err(|e| PkiError::BadFile {
        path: path.to_path_buf(),
        reason: format!("not PEM: {e}"),
    })?;
    let der_bytes = Zeroizing::new(der_bytes);
    if found != label {
        return Err(PkiError::BadFile {
            path: path.to_path_buf(),
            reason: format!("PEM label {found:?}, expected {label:?}"),
        });
    }
    Ok(der_bytes)
}

fn read_cert(path: &Path) -> Result<Vec<u8>, PkiError> {
    Ok(read_pem(path, "CERTIFICATE")?.to_vec())
}

fn read_key(path: &Path) -> Result<EcdsaKeyPair, PkiError> {
    let meta = fs::metadata(path).map_err(io_err("stat", path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let pkcs8 = read_pem(path, "PRIVATE KEY")?;
    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, &pkcs8).map_err(|_| {
        PkiError::BadFile {
            path: path.to_path_buf(),
            reason: "not a PKCS#8 ECDSA P-384 key".into(),
        }
    })
}

/// Writes `bytes` to `path` atomically (temp file + rename) with `mode`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    file.write_all(bytes).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("sync", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", path))
}

fn write_key(path: &Path, pkcs8: &[u8]) -> Result<(), PkiError> {
    let pem = Zeroizing::new(
        der::pem::encode_string("PRIVATE KEY", der::pem::LineEnding::LF, pkcs8)
            .map_err(|e| PkiError::Certificate(e.to_string()))?,
    );
    write_file(path, pem.as_bytes(), 0o600)
}

fn write_cert(path: &Path, der_bytes: &[u8]) -> Result<(), PkiError> {
    let pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der_bytes)
        .map_err(|e| PkiError::Certificate(e.to_string()))?;
    write_file(path, pem.as_bytes(), 0o644)
}

fn cert_point(path: &Path, der_bytes: &[u8]) -> Result<Vec<u8>, PkiError> {
    crate::cert::ParsedCert::parse(der_bytes)
        .map(|c| c.public_point)
        .map_err(|e| PkiError::BadFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// The operator's PKI directory: root and host CA certificates (keys stay on disk).
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
    root_der: Vec<u8>,
    host_der: Vec<u8>,
}

impl Pki {
    /// Opens the PKI in `dir`, creating the directory (0700), the root CA and the host CA if
    /// they are absent. Existing files are kept.
    pub fn init(dir: &Path) -> Result<Pki, PkiError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create directory", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", dir))?;
        let rng = SystemRandom::new();
        let now = unix_secs(SystemTime::now());
        let not_before = now.saturating_sub(BACKDATE.as_secs());
        let root_cert = dir.join(ROOT_CERT_FILE);
        let root_key = dir.join(ROOT_KEY_FILE);
        let host_cert = dir.join(HOST_CERT_FILE);
        let host_key = dir.join(HOST_KEY_FILE);

        if !root_cert.exists() {
            if root_key.exists() {
                return Err(PkiError::Incomplete {
                    dir: dir.to_path_buf(),
                    reason: format!("{ROOT_KEY_FILE} exists without {ROOT_CERT_FILE}"),
                });
            }
            let (key, pkcs8) = new_ca_key(&rng)?;
            let signer = CertSigner {
                key: &key,
                rng: &rng,
            };
            let mut params = root_params(not_before, now + ROOT_LIFETIME.as_secs())?;
            params.serial_number = Some(random_serial(&rng)?);
            let cert = params
                .self_signed(&signer)
                .map_err(|e| PkiError::Certificate(e.to_string()))?;
            write_key(&root_key, &pkcs8)?;
            write_cert(&root_cert, cert.der())?;
            // A new root invalidates any host CA left from an earlier one.
            let _ = fs::remove_file(&host_cert);
            let _ = fs::remove_file(&host_key);
        }
        let root_der = read_cert(&root_cert)?;

        if !host_cert.exists() {
            if !root_key.exists() {
                return Err(PkiError::Incomplete {
                    dir: dir.to_path_buf(),
                    reason: format!("creating the host CA needs {ROOT_KEY_FILE}"),
                });
            }
            let root = read_key(&root_key)?;
            if root.public_key().as_ref() != cert_point(&root_cert, &root_der)? {
                return Err(PkiError::BadFile {
                    path: root_key,
                    reason: "does not match the root certificate".into(),
                });
            }
            let root_parsed =
                crate::cert::ParsedCert::parse(&root_der).map_err(|e| PkiError::BadFile {
                    path: root_cert.clone(),
                    reason: e.to_string(),
                })?;
            let issuer = Issuer::new(
                root_params(root_parsed.not_before, root_parsed.not_after)?,
                CertSigner {
                    key: &root,
                    rng: &rng,
                },
            );
            let (key, pkcs8) = new_ca_key(&rng)?;
            let not_after = (now + HOST_CA_LIFETIME.as_secs()).min(root_parsed.not_after);
            let mut params = host_params(not_before, not_after)?;
            params.serial_number = Some(random_serial(&rng)?);
            let cert = params
                .signed_by(&SubjectKey(key.public_key().as_ref()), &issuer)
                .map_err(|e| PkiError::Certificate(e.to_string()))?;
            write_key(&host_key, &pkcs8)?;
            write_cert(&host_cert, cert.der())?;
        }
        let host_der = read_cert(&host_cert)?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            root_der,
            host_der,
        })
    }

    /// The PKI directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The root certificate, DER: the trust anchor relying parties pin.
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }
    /// The host CA certificate, DER.
    pub fn host_ca_der(&self) -> &[u8] {
        &self.host_der
    }
    /// Path of the root certificate (PEM).
    pub fn root_cert_path(&self) -> PathBuf {
        self.dir.join(ROOT_CERT_FILE)
    }
    /// Path of the host CA certificate (PEM).
    pub fn host_cert_path(&self) -> PathBuf {
        self.dir.join(HOST_CERT_FILE)
    }
    /// Path of the root key.
    pub fn root_key_path(&self) -> PathBuf {
        self.dir.join(ROOT_KEY_FILE)
    }
    /// Path of the host CA key.
    pub fn host_key_path(&self) -> PathBuf {
        self.dir.join(HOST_KEY_FILE)
    }
    /// Loads the host CA (its key included) for issuing enclave signers.
    pub fn host_ca(&self) -> Result<HostCa, PkiError> {
        HostCa::load(&self.dir)
    }
}

struct HostCaInner {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    root_der: Vec<u8>,
    not_before: u64,
    not_after: u64,
    rng: SystemRandom,
}

/// The host CA with its private key, able to issue enclave leaf certificates. Cheap to clone.
#[derive(Clone)]
pub struct HostCa {
    inner: Arc<HostCaInner>,
}

impl fmt::Debug for HostCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostCa")
            .field(
                "certificate_sha256",
                &fingerprint_sha256(&self.inner.cert_der),
            )
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Checks an enclave id for use as a common name.
fn check_enclave_id(id: &str) -> Result<(), PkiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ENCLAVE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidEnclaveId(id.to_string()))
    }
}

impl HostCa {
    /// Loads the host CA certificate and key and the root certificate from `dir`.
    pub fn load(dir: &Path) -> Result<HostCa, PkiError> {
        let host_cert = dir.join(HOST_CERT_FILE);
        let cert_der = read_cert(&host_cert)?;
        let root_der = read_cert(&dir.join(ROOT_CERT_FILE))?;
        let key_path = dir.join(HOST_KEY_FILE);
        let key = read_key(&key_path)?;
        let parsed = crate::cert::ParsedCert::parse(&cert_der).map_err(|e| PkiError::BadFile {
            path: host_cert.clone(),
            reason: e.to_string(),
        })?;
        if parsed.public_point != key.public_key().as_ref() {
            return Err(PkiError::BadFile {
                path: key_path,
                reason: "does not match the host CA certificate".into(),
            });
        }
        Ok(HostCa {
            inner: Arc::new(HostCaInner {
                key,
                cert_der,
                root_der,
                not_before: parsed.not_before,
                not_after: parsed.not_after,
                rng: SystemRandom::new(),
            }),
        })
    }

    /// The host CA certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.inner.cert_der
    }

    /// The root certificate, DER.
    pub fn root_der(&self) -> &[u8] {
        &self.inner.root_der
    }

    /// Issues a leaf certificate for `enclave_id` valid from one minute ago until `not_after`
    /// and returns the signer that holds its key. The signer renews its leaf (same lifetime)
    /// when less than a third of it is left.
    pub fn issue_enclave_signer(
        &self,
        enclave_id: &str,
        isolation: Isolation,
        not_after: SystemTime,
    ) -> Result<DocumentSigner, PkiError> {
        let not_before = SystemTime::now()
            .checked_sub(BACKDATE)
            .unwrap_or(UNIX_EPOCH);
        self.issue_enclave_signer_between(enclave_id, isolation, not_before, not_after)
    }

    /// Like [`HostCa::issue_enclave_signer`], recording `facts` in every leaf it issues.
    pub fn issue_enclave_signer_noting(
        &self,
        enclave_id: &str,
        isolation: Isolation,
        facts: LeafFacts,
        not_after: SystemTime,
    ) -> Result<DocumentSigner, PkiError> {
        let not_before = SystemTime::now()
            .checked_sub(BACKDATE)
            .unwrap_or(UNIX_EPOCH);
        self.issue_enclave_signer_between_noting(
            enclave_id, isolation, facts, not_before, not_after,
        )
    }

    /// Like [`HostCa::issue_enclave_signer`] with an explicit notBefore (tests, replays).
    pub fn issue_enclave_signer_between(
        &self,
        enclave_id: &str,
        isolation: Isolation,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<DocumentSigner, PkiError> {
        self.issue_enclave_signer_between_noting(
            enclave_id,
            isolation,
            LeafFacts::default(),
            not_before,
            not_after,
        )
    }

    fn issue_enclave_signer_between_noting(
        &self,
        enclave_id: &str,
        isolation: Isolation,
        facts: LeafFacts,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<DocumentSigner, PkiError> {
        check_enclave_id(enclave_id)?;
        let nb = unix_secs(not_before);
        let na = unix_secs(not_after);
        let leaf = self.issue_leaf(enclave_id, isolation, facts, nb, na)?;
        Ok(DocumentSigner {
            current: Mutex::new(Arc::new(leaf)),
            cabundle: vec![
                ByteBuf::from(self.inner.root_der.clone()),
                ByteBuf::from(self.inner.cert_der.clone()),
            ],
            ca: self.clone(),
            enclave_id: enclave_id.to_string(),
            isolation,
            facts,
            lifetime: na - nb,
            rng: SystemRandom::new(),
        })
    }

    fn issue_leaf(
        &self,
        enclave_id: &str,
        isolation: Isolation,
        facts: LeafFacts,
        not_before: u64,
        not_after: u64,
    ) -> Result<Leaf, PkiError> {
        if not_after <= not_before {
            return Err(PkiError::InvalidValidity(
                "notAfter is not after notBefore".into(),
            ));
        }
        if not_before < self.inner.not_before || not_after > self.inner.not_after {
            return Err(PkiError::InvalidValidity(
                "the leaf would outlive, or predate, the host CA".into(),
            ));
        }
        let rng = &self.inner.rng;
        let key = EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING)
            .map_err(|_| PkiError::Crypto("key generation"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, ORG);
        dn.push(
            DnType::OrganizationalUnitName,
            format!("{}{}", crate::cert::ISOLATION_OU_PREFIX, isolation.as_str()),
        );
        if facts.init_replaced {
            // A second OU (rcgen keeps one value per attribute type, so it is spelt by OID).
            dn.push(DnType::CustomDnType(OU_OID.to_vec()), INIT_REPLACED_OU);
        }
        dn.push(DnType::CommonName, enclave_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_offset(not_before)?;
        params.not_after = to_offset(not_after)?;
        params.serial_number = Some(random_serial(rng)?);
        let issuer = Issuer::new(
            host_params(self.inner.not_before, self.inner.not_after)?,
            CertSigner {
                key: &self.inner.key,
                rng,
            },
        );
        let cert = params
            .signed_by(&SubjectKey(key.public_key().as_ref()), &issuer)
            .map_err(|e| PkiError::Certificate(e.to_string()))?;
        Ok(Leaf {
            key,
            cert_der: ByteBuf::from(cert.der().to_vec()),
            not_before,
            not_after,
        })
    }
}

/// The OU a leaf carries when the enclave's init is Cloister's, run in place of the image's.
pub const INIT_REPLACED_OU: &str = "init=replaced";
/// id-at-organizationalUnitName.
const OU_OID: [u64; 4] = [2, 5, 4, 11];

/// What a leaf records about its enclave besides the enclave id and isolation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeafFacts {
    /// The runtime ran Cloister's init instead of the image's own (PCR1 still measures the
    /// image's): [`INIT_REPLACED_OU`].
    pub init_replaced: bool,
}

/// One leaf certificate and its key.
struct Leaf {
    key: EcdsaKeyPair,
    cert_der: ByteBuf,
    not_before: u64,
    not_after: u64,
}

/// The fields of a document the NSM chooses; the signer adds the certificate and cabundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocumentFields {
    /// The NSM's module id.
    pub module_id: String,
    /// Milliseconds since the epoch.
    pub timestamp_ms: u64,
    /// PCR index to value.
    pub pcrs: BTreeMap<usize, Vec<u8>>,
    /// Optional public key.
    pub public_key: Option<Vec<u8>>,
    /// Optional user data.
    pub user_data: Option<Vec<u8>>,
    /// Optional nonce.
    pub nonce: Option<Vec<u8>>,
}

/// Signs attestation documents for one enclave with its leaf key.
pub struct DocumentSigner {
    current: Mutex<Arc<Leaf>>,
    cabundle: Vec<ByteBuf>,
    ca: HostCa,
    enclave_id: String,
    isolation: Isolation,
    facts: LeafFacts,
    lifetime: u64,
    rng: SystemRandom,
}

impl fmt::Debug for DocumentSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DocumentSigner")
            .field("enclave_id", &self.enclave_id)
            .field("isolation", &self.isolation)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl DocumentSigner {
    /// The enclave this signer belongs to.
    pub fn enclave_id(&self) -> &str {
        &self.enclave_id
    }

    /// The isolation kind recorded in its leaf.
    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// The current leaf certificate, DER.
    pub fn certificate_der(&self) -> Vec<u8> {
        self.leaf().cert_der.to_vec()
    }

    /// The current leaf's notAfter, seconds since the epoch.
    pub fn not_after_secs(&self) -> u64 {
        self.leaf().not_after
    }

    /// The cabundle put in documents: [root, host CA].
    pub fn cabundle(&self) -> Vec<Vec<u8>> {
        self.cabundle.iter().map(|c| c.to_vec()).collect()
    }

    fn leaf(&self) -> Arc<Leaf> {
        match self.current.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The leaf to sign a document stamped `ts` seconds with, renewing it when less than a
    /// third of its lifetime is left.
    fn leaf_for(&self, ts: u64) -> Result<Arc<Leaf>, SignError> {
        let mut guard = match self.current.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let leaf = guard.clone();
        let margin = self.lifetime / 3;
        if ts >= leaf.not_before && ts.saturating_add(margin) <= leaf.not_after {
            return Ok(leaf);
        }
        let now = unix_secs(SystemTime::now());
        let nb = now.saturating_sub(BACKDATE.as_secs());
        let na = nb.saturating_add(self.lifetime);
        match self
            .ca
            .issue_leaf(&self.enclave_id, self.isolation, self.facts, nb, na)
        {
            Ok(fresh) if ts >= fresh.not_before && ts <= fresh.not_after => {
                let fresh = Arc::new(fresh);
                *guard = fresh.clone();
                Ok(fresh)
            }
            Ok(_) | Err(_) if ts >= leaf.not_before && ts <= leaf.not_after => Ok(leaf),
            Ok(_) => Err(SignError::LeafExpired {
                timestamp_ms: ts * 1000,
            }),
            Err(e) => Err(SignError::Renewal(e)),
        }
    }

    /// Builds, checks and signs a document; returns the COSE_Sign1 bytes.
    pub fn sign(&self, fields: DocumentFields) -> Result<Vec<u8>, SignError> {
        let leaf = self.leaf_for(fields.timestamp_ms / 1000)?;
        let doc = AttestationDoc {
            module_id: fields.module_id,
            digest: Digest::SHA384,
            timestamp: fields.timestamp_ms,
            pcrs: fields
                .pcrs
                .into_iter()
                .map(|(i, v)| (i, ByteBuf::from(v)))
                .collect(),
            certificate: leaf.cert_der.clone(),
            cabundle: self.cabundle.clone(),
            public_key: fields.public_key.map(ByteBuf::from),
            user_data: fields.user_data.map(ByteBuf::from),
            nonce: fields.nonce.map(ByteBuf::from),
        };
        doc.check_syntax()?;
        let payload = doc
            .to_cbor()
            .map_err(|e| SignError::Encode(e.to_string()))?;
        Ok(cose::sign_es384(&payload, &leaf.key, &self.rng)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_files_with_modes_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        let pki = Pki::init(&pki_dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&pki_dir), 0o700);
        assert_eq!(mode(&pki.root_key_path()), 0o600);
        assert_eq!(mode(&pki.host_key_path()), 0o600);
        let again = Pki::init(&pki_dir).unwrap();
        assert_eq!(again.root_der(), pki.root_der());
        assert_eq!(again.host_ca_der(), pki.host_ca_der());
        let ca = HostCa::load(&pki_dir).unwrap();
        assert_eq!(ca.certificate_der(), pki.host_ca_der());
        assert!(!format!("{ca:?}").contains("BEGIN"));
    }

    #[test]
    fn loose_key_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::init(dir.path()).unwrap();
        fs::set_permissions(pki.host_key_path(), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            HostCa::load(dir.path()),
            Err(PkiError::InsecurePermissions { .. })
        ));
    }

    #[test]
    fn enclave_ids_are_checked() {
        assert!(check_enclave_id("i-0123456789abcdef0-enc0123456789abcdef").is_ok());
        assert!(check_enclave_id("").is_err());
        assert!(check_enclave_id("a,b").is_err());
        assert!(check_enclave_id(&"a".repeat(65)).is_err());
    }

    #[test]
    fn expired_leaf_without_renewal_window_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Pki::init(dir.path()).unwrap();
        let ca = HostCa::load(dir.path()).unwrap();
        let signer = ca
            .issue_enclave_signer(
                "enc",
                Isolation::Process,
                SystemTime::now() + DEFAULT_LEAF_LIFETIME,
            )
            .unwrap();
        // A timestamp far in the future lies outside any leaf the CA may issue now.
        let fields = DocumentFields {
            module_id: "m".into(),
            timestamp_ms: (unix_secs(SystemTime::now()) + 10 * 24 * 3600) * 1000,
            pcrs: [(0usize, vec![0u8; 48])].into_iter().collect(),
            ..Default::default()
        };
        assert!(matches!(
            signer.sign(fields),
            Err(SignError::LeafExpired { .. })
        ));
    }
}
