//! Durable key store: redb tables, the master key, and the in-memory view served from.
//!
//! Why redb: it is an embedded, pure-Rust, copy-on-write B-tree store with ACID transactions;
//! a committed write transaction is durable (fsync'd) and a crash at any moment leaves either
//! the old or the new state, never a torn one. That is what a key service needs (an acknowledged
//! CreateKey must survive `kill -9`; a half-written key must never appear), without running a
//! separate database server. A networked database is the path for several hosts.
//!
//! Layout: table `keys` (key id -> JSON [`KeyRecord`]), table `aliases` (alias name, preceded by
//! `{region}:` for a Region other than the service's own, -> JSON [`AliasRecord`]), table `meta`
//! (`admin` -> the sealed administrator credential). Key material is never stored in the clear:
//! each version is sealed with AES-256-GCM under the master key, with AAD naming the key id and
//! version, so material cannot be moved between keys. The master key lives apart from the
//! database, in a 32-byte file with mode 0600.
//!
//! First start: the data directory is made with mode 0700; the master key, the store file (mode
//! 0600, tables and administrator credential already committed) and the credential file are
//! each written under a temporary name, fsync'd and renamed into place, so a start killed at any
//! moment leaves nothing half-made; the next start removes the temporaries and carries on.
//!
//! Every write takes one writer lock, commits a redb transaction, and only then updates the
//! in-memory maps that reads use, so a reader never sees an uncommitted change and reads take no
//! database transaction at all.
//!
//! Several servers: with a `postgres://` store ([`Store::open_configured`]) the same records live
//! in PostgreSQL instead (see [`postgres`]); every write is one SERIALIZABLE transaction, and the
//! in-memory maps are kept current through LISTEN/NOTIFY and a periodic resync. The master key
//! and the sealing are the same for both stores.

pub mod postgres;

use crate::blob::aead_key;
use crate::error::{KmsError, KmsResult};
use crate::keys::{KeyMaterial, KeySpec, KeyUsage};
use crate::policy::Policy;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
use base64::Engine as _;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use thiserror::Error;
use zeroize::Zeroizing;

const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const ALIASES: TableDefinition<&str, &[u8]> = TableDefinition::new("aliases");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Master key length.
pub const MASTER_KEY_LEN: usize = 32;
/// Symmetric key material length.
pub const MATERIAL_LEN: usize = 32;
/// Most material versions (rotations) per key.
pub const MAX_MATERIALS: usize = 10_000;
/// Name of the database file in the data directory.
pub const STORE_FILE: &str = "kms.redb";
/// Appended to a file's name to name the temporary it is built under before its rename.
pub const TEMP_SUFFIX: &str = ".tmp";
/// Temporary names earlier versions used in the data directory (removed at start).
const LEGACY_TEMP_FILES: [&str; 2] = ["master.tmp", "admin-credentials.tmp"];

/// Errors opening the store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// I/O on a store file.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The master key file is malformed or too open.
    #[error("master key {0}: {1}")]
    MasterKey(PathBuf, String),
    /// The database cannot be opened.
    #[error("database {0}")]
    Database(PathBuf, #[source] Box<redb::Error>),
    /// A record cannot be read (wrong master key, corruption).
    #[error("stored record {0} is unreadable: {1}")]
    Record(String, String),
    /// The PostgreSQL store cannot be used (unreachable, refused, or its schema is unknown).
    #[error("PostgreSQL store: {0}")]
    Postgres(String),
}

/// Key states, named as AWS names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    /// Usable.
    Enabled,
    /// Not usable for cryptography.
    Disabled,
    /// Scheduled for deletion.
    PendingDeletion,
    /// An EXTERNAL-origin key without (or whose imported) key material (has expired).
    PendingImport,
    /// The primary of a multi-Region key scheduled for deletion: it waits for its replicas to
    /// be deleted, then its own waiting period begins.
    PendingReplicaDeletion,
}

impl KeyState {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
            KeyState::PendingImport => "PendingImport",
            KeyState::PendingReplicaDeletion => "PendingReplicaDeletion",
        }
    }
}

/// A tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    /// Tag key.
    pub key: String,
    /// Tag value.
    pub value: String,
}

/// A key as stored (material sealed).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Key id (UUID, lower-case, hyphenated).
    pub id: String,
    /// Creation time, seconds since the epoch.
    pub created: f64,
    /// Description.
    pub description: String,
    /// State.
    pub state: KeyState,
    /// When a pending deletion completes.
    pub deletion_date: Option<f64>,
    /// Waiting period of a pending deletion.
    pub pending_window_days: Option<u32>,
    /// Key policy text.
    pub policy: String,
    /// Tags, in insertion order.
    pub tags: Vec<Tag>,
    /// Automatic rotation period in days, when rotation is enabled.
    pub rotation_period_days: Option<u32>,
    /// Times of on-demand rotations.
    pub rotations: Vec<f64>,
    /// Sealed key material, one per version (index = version), base64.
    pub materials: Vec<String>,
    /// Key spec (absent for symmetric keys, as in records of earlier versions). An asymmetric
    /// key's material is its sealed PKCS#8 private key, an HMAC key's its sealed key bytes.
    #[serde(default, skip_serializing_if = "KeySpec::is_symmetric")]
    pub key_spec: KeySpec,
    /// Key usage (absent for symmetric keys: ENCRYPT_DECRYPT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_usage: Option<KeyUsage>,
    /// Grants on the key (absent in records of earlier versions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<crate::service::ops::grants::GrantRecord>,
    /// Imported key material of an EXTERNAL-origin key (absent for AWS_KMS keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<crate::service::ops::import::ImportRecord>,
    /// Which entries of `rotations` were on-demand rotations (the others were automatic).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_demand_rotations: Vec<f64>,
    /// The Regions of a multi-Region key (absent for single-Region keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_region: Option<crate::service::ops::regions::MultiRegionRecord>,
}

impl KeyRecord {
    /// The key's usage (ENCRYPT_DECRYPT when the record names none).
    pub fn usage(&self) -> KeyUsage {
        self.key_usage.unwrap_or(KeyUsage::EncryptDecrypt)
    }
}

/// An alias.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasRecord {
    /// Target key id.
    pub target: String,
    /// Creation time.
    pub created: f64,
    /// Last update time.
    pub updated: f64,
}

/// A key as served: its record, its unsealed material and its parsed policy.
pub struct KeyEntry {
    /// The record.
    pub record: KeyRecord,
    /// AES-256-GCM keys by material version.
    pub materials: Arc<Vec<LessSafeKey>>,
    /// Parsed policy.
    pub policy: Arc<Policy>,
    /// The parsed private material of an asymmetric or HMAC key (then `materials` is empty).
    pub private: Option<Arc<KeyMaterial>>,
    /// A multi-Region key as each of its replica Regions sees it (by Region): the replica's
    /// own policy (parsed), grants, description, tags and state, the shared material.
    pub replicas: Vec<(String, Arc<KeyEntry>)>,
}

impl KeyEntry {
    /// The view of a replica Region of this multi-Region key (`None` in its primary Region,
    /// where the entry itself is the view, and for single-Region keys).
    pub fn in_region(&self, region: &str) -> Option<&Arc<KeyEntry>> {
        self.replicas
            .iter()
            .find(|(r, _)| r == region)
            .map(|(_, v)| v)
    }
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("id", &self.record.id)
            .field("state", &self.record.state)
            .field("materials", &format!("<{} redacted>", self.materials.len()))
            .finish()
    }
}

/// The administrator credential.
#[derive(Clone, Serialize, Deserialize)]
pub struct AdminCredential {
    /// Access key id.
    #[serde(rename = "AccessKeyId")]
    pub access_key_id: String,
    /// Secret access key.
    #[serde(rename = "SecretAccessKey")]
    pub secret_access_key: Zeroizing<String>,
}

impl fmt::Debug for AdminCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminCredential")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

#[derive(Default)]
pub(crate) struct State {
    keys: BTreeMap<[u8; 16], Arc<KeyEntry>>,
    aliases: BTreeMap<String, AliasRecord>,
    /// Revision of each cached key row (PostgreSQL store; 0 for the embedded store).
    key_revs: HashMap<[u8; 16], i64>,
    /// Revision of each cached alias row (PostgreSQL store).
    alias_revs: HashMap<String, i64>,
}

/// What both stores share: the master key and the in-memory view that reads are served from.
pub(crate) struct Core {
    master: LessSafeKey,
    state: RwLock<State>,
}

enum Backend {
    Embedded { db: Database, writer: Mutex<()> },
    Postgres(Box<postgres::PgBackend>),
}

/// The store.
pub struct Store {
    core: Arc<Core>,
    backend: Backend,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Prefix of multi-Region key ids.
pub const MRK_PREFIX: &str = "mrk-";

/// True when the 16 bytes of a key id are those of a multi-Region key: its "version" nibble
/// (the high nibble of byte 6) is 0xF, which no UUID key id (version 4) has.
pub fn is_mrk_id(id: &[u8; 16]) -> bool {
    id[6] >> 4 == 0xF
}

/// Parses a key id (a UUID, or `mrk-` and 32 hex digits) into its 16 bytes.
pub fn parse_key_id(id: &str) -> Option<[u8; 16]> {
    if let Some(hex_part) = id.strip_prefix(MRK_PREFIX) {
        if hex_part.len() != 32 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut out = [0u8; 16];
        hex::decode_to_slice(hex_part, &mut out).ok()?;
        return is_mrk_id(&out).then_some(out);
    }
    let u = uuid::Uuid::try_parse(id).ok()?;
    // Only the canonical hyphenated form names a key.
    (u.hyphenated().to_string() == id.to_ascii_lowercase() && !is_mrk_id(u.as_bytes()))
        .then(|| *u.as_bytes())
}

/// Formats 16 bytes as a key id.
pub fn format_key_id(id: &[u8; 16]) -> String {
    if is_mrk_id(id) {
        format!("{MRK_PREFIX}{}", hex::encode(id))
    } else {
        uuid::Uuid::from_bytes(*id).hyphenated().to_string()
    }
}

/// Seconds since the epoch, with millisecond precision.
pub fn now() -> f64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_millis() as f64) / 1000.0
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::Io(dir.into(), e))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The temporary name `path` is built under before it is renamed into place: the same
/// directory, the file name with [`TEMP_SUFFIX`] appended (so it never equals `path`).
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(TEMP_SUFFIX);
    path.with_file_name(name)
}

/// Removes a leftover temporary file (of a start or write that was killed); absent is fine.
fn remove_leftover(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed a leftover temporary file");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io(path.into(), e)),
    }
}

/// Writes a file with mode 0600 atomically: a temporary file in the same directory, fsync,
/// rename over `path`, fsync of the directory. A reader (or a restart after `kill -9`) sees the
/// old file or the whole new one, never a part.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = temp_path(path);
    remove_leftover(&tmp)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| StoreError::Io(tmp.clone(), e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| StoreError::Io(tmp.clone(), e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| StoreError::Io(path.into(), e))?;
    fsync_dir(parent_dir(path))
}

/// Creates `dir` (and missing parents) with mode 0700, or takes the access of others away from
/// an existing one: it holds the store and usually the master key.
fn prepare_data_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(dir) {
        Ok(meta) => {
            let mode = meta.permissions().mode();
            if mode & 0o007 != 0 {
                let tightened = std::fs::Permissions::from_mode(mode & 0o7770);
                if let Err(e) = std::fs::set_permissions(dir, tightened) {
                    tracing::warn!(
                        dir = %dir.display(),
                        error = %e,
                        "the data directory is open to other users and cannot be restricted"
                    );
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| StoreError::Io(dir.into(), e))?;
            fsync_dir(parent_dir(dir))
        }
        Err(e) => Err(StoreError::Io(dir.into(), e)),
    }
}

/// Removes what a killed first start (or a killed atomic write) can leave behind.
fn remove_leftovers(data_dir: &Path, master_path: &Path) -> Result<(), StoreError> {
    remove_leftover(&temp_path(&data_dir.join(STORE_FILE)))?;
    remove_leftover(&temp_path(master_path))?;
    for name in LEGACY_TEMP_FILES {
        remove_leftover(&data_dir.join(name))?;
    }
    Ok(())
}

fn load_or_create_master(path: &Path) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(StoreError::MasterKey(
                    path.into(),
                    "must not be readable by group or others (chmod 600)".into(),
                ));
            }
            if meta.len() != MASTER_KEY_LEN as u64 {
                return Err(StoreError::MasterKey(
                    path.into(),
                    format!("must be exactly {MASTER_KEY_LEN} bytes"),
                ));
            }
            let bytes = std::fs::read(path).map_err(|e| StoreError::Io(path.into(), e))?;
            Ok(Zeroizing::new(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = Zeroizing::new(vec![0u8; MASTER_KEY_LEN]);
            aws_lc_rs::rand::fill(&mut key[..])
                .map_err(|_| StoreError::MasterKey(path.into(), "no randomness".into()))?;
            let dir = parent_dir(path);
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(dir.into(), e))?;
            write_private_file(path, &key)?;
            Ok(key)
        }
        Err(e) => Err(StoreError::Io(path.into(), e)),
    }
}

/// True when the store file has to be created: it is absent, or empty (nothing was ever
/// committed to it, so nothing is lost by building it again).
fn store_missing(db_path: &Path) -> Result<bool, StoreError> {
    match std::fs::metadata(db_path) {
        Ok(meta) => Ok(meta.len() == 0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(StoreError::Io(db_path.into(), e)),
    }
}

fn db_error(path: &Path) -> impl Fn(redb::Error) -> StoreError + '_ {
    move |e| StoreError::Database(path.into(), Box::new(e))
}

/// Opens the tables, creating any that are missing.
fn create_tables(db: &Database, db_path: &Path) -> Result<(), StoreError> {
    let dbe = db_error(db_path);
    let tx = db.begin_write().map_err(|e| dbe(e.into()))?;
    tx.open_table(KEYS).map_err(|e| dbe(e.into()))?;
    tx.open_table(ALIASES).map_err(|e| dbe(e.into()))?;
    tx.open_table(META).map_err(|e| dbe(e.into()))?;
    tx.commit().map_err(|e| dbe(e.into()))
}

/// AAD of the sealed administrator credential.
const ADMIN_AAD: &[u8] = b"cloister-kms/admin-credential/v1";

fn material_aad(key_id: &str, version: usize) -> Vec<u8> {
    format!("cloister-kms/key-material/v1/{key_id}/{version}").into_bytes()
}

/// Seals `plain` under `key` (AES-256-GCM, random nonce): base64 of nonce, ciphertext, tag.
fn seal_with(key: &LessSafeKey, aad: &[u8], plain: &[u8]) -> KmsResult<String> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|e| KmsError::internal("random", e))?;
    let mut buf = Vec::with_capacity(NONCE_LEN + plain.len() + 16);
    buf.extend_from_slice(&nonce);
    buf.extend_from_slice(plain);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf[NONCE_LEN..],
        )
        .map_err(|e| KmsError::internal("seal material", e))?;
    buf.extend_from_slice(tag.as_ref());
    Ok(base64::engine::general_purpose::STANDARD.encode(&buf))
}

/// Opens what [`seal_with`] sealed.
fn unseal_with(key: &LessSafeKey, aad: &[u8], sealed: &str) -> KmsResult<Zeroizing<Vec<u8>>> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .map_err(|e| KmsError::internal("sealed material", e))?;
    if raw.len() < NONCE_LEN + 16 {
        return Err(KmsError::Internal("sealed material too short".into()));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&raw[..NONCE_LEN]);
    let mut buf = Zeroizing::new(raw[NONCE_LEN..].to_vec());
    let n = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf[..],
        )
        .map_err(|_| {
            KmsError::Internal("sealed key material does not open under this master key".into())
        })?
        .len();
    buf.truncate(n);
    Ok(buf)
}

/// Seals every material version (and drops pending import parameters, whose wrapping key is
/// sealed too) of `record` again: opened under `old`, sealed under `new`.
fn reseal_record(old: &LessSafeKey, new: &LessSafeKey, record: &mut KeyRecord) -> KmsResult<()> {
    for (i, sealed) in record.materials.iter_mut().enumerate() {
        let aad = material_aad(&record.id, i);
        let plain = unseal_with(old, &aad, sealed)?;
        *sealed = seal_with(new, &aad, &plain)?;
    }
    if let Some(import) = record.import.as_mut() {
        import.pending = None;
    }
    Ok(())
}

/// A fresh administrator credential (`AKIA...` and a random secret).
fn new_admin_credential() -> KmsResult<AdminCredential> {
    let mut raw = [0u8; 30];
    aws_lc_rs::rand::fill(&mut raw).map_err(|e| KmsError::internal("random", e))?;
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let akid: String = std::iter::once("AKIA".to_string())
        .chain(
            raw[..16]
                .iter()
                .map(|b| (ALNUM[(*b & 31) as usize] as char).to_string()),
        )
        .collect();
    let secret = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&raw[..]));
    Ok(AdminCredential {
        access_key_id: akid,
        secret_access_key: secret,
    })
}

fn poisoned() -> KmsError {
    KmsError::Internal("state lock poisoned".into())
}

impl Core {
    fn new(master: LessSafeKey) -> Self {
        Core {
            master,
            state: RwLock::new(State::default()),
        }
    }

    fn read_state(&self) -> KmsResult<std::sync::RwLockReadGuard<'_, State>> {
        self.state.read().map_err(|_| poisoned())
    }

    fn write_state(&self) -> KmsResult<std::sync::RwLockWriteGuard<'_, State>> {
        self.state.write().map_err(|_| poisoned())
    }

    fn seal_bytes(&self, aad: &[u8], plain: &[u8]) -> KmsResult<String> {
        seal_with(&self.master, aad, plain)
    }

    fn unseal_bytes(&self, aad: &[u8], sealed: &str) -> KmsResult<Zeroizing<Vec<u8>>> {
        unseal_with(&self.master, aad, sealed)
    }

    fn seal_admin(&self, cred: &AdminCredential) -> KmsResult<String> {
        let json =
            Zeroizing::new(serde_json::to_vec(cred).map_err(|e| KmsError::internal("encode", e))?);
        self.seal_bytes(ADMIN_AAD, &json)
    }

    fn unseal_admin(&self, sealed: &str) -> KmsResult<AdminCredential> {
        let plain = self.unseal_bytes(ADMIN_AAD, sealed)?;
        serde_json::from_slice(&plain).map_err(|e| KmsError::internal("admin", e))
    }

    /// Builds the served entry, reusing already-unsealed material where it is the same.
    fn entry(&self, record: KeyRecord, prev: Option<&KeyEntry>) -> KmsResult<KeyEntry> {
        // The previous entry's material is reused only where the sealed versions are the very
        // same strings (a cached entry of another server's older state may differ).
        let prev_same = prev.filter(|p| p.record.materials == record.materials);
        let private = self.private_material(&record, prev_same)?;
        let materials = match prev_same {
            _ if private.is_some() => Arc::new(Vec::new()),
            Some(p) => p.materials.clone(),
            None => {
                let mut v = Vec::with_capacity(record.materials.len());
                for (i, sealed) in record.materials.iter().enumerate() {
                    let m = self.unseal_bytes(&material_aad(&record.id, i), sealed)?;
                    if m.len() != MATERIAL_LEN {
                        return Err(KmsError::Internal("material length".into()));
                    }
                    v.push(aead_key(&m)?);
                }
                Arc::new(v)
            }
        };
        let parse = |record: &KeyRecord, prev: Option<&KeyEntry>| -> KmsResult<Arc<Policy>> {
            match prev {
                Some(p) if p.record.policy == record.policy => Ok(p.policy.clone()),
                _ => Ok(Arc::new(Policy::parse(&record.policy).map_err(|e| {
                    KmsError::Internal(format!("stored policy of {}: {e}", record.id))
                })?)),
            }
        };
        let policy = parse(&record, prev)?;
        let mut replicas = Vec::new();
        if let Some(m) = &record.multi_region {
            for x in &m.replicas {
                let Some(view) = crate::service::ops::regions::replica_view(&record, &x.region)?
                else {
                    continue;
                };
                let prev_view = prev.and_then(|p| p.in_region(&x.region)).map(|v| &**v);
                let policy = parse(&view, prev_view)?;
                replicas.push((
                    x.region.clone(),
                    Arc::new(KeyEntry {
                        record: view,
                        materials: materials.clone(),
                        policy,
                        private: private.clone(),
                        replicas: Vec::new(),
                    }),
                ));
            }
        }
        Ok(KeyEntry {
            record,
            materials,
            policy,
            private,
            replicas,
        })
    }

    /// Unseals and parses the material of an asymmetric or HMAC key (one version: these keys do
    /// not rotate); `None` for a symmetric key.
    fn private_material(
        &self,
        record: &KeyRecord,
        prev: Option<&KeyEntry>,
    ) -> KmsResult<Option<Arc<KeyMaterial>>> {
        // A symmetric key, or an HMAC key of origin EXTERNAL awaiting its material.
        if record.key_spec.is_symmetric() || record.materials.is_empty() {
            return Ok(None);
        }
        if let Some(p) = prev.and_then(|p| p.private.as_ref()) {
            return Ok(Some(p.clone()));
        }
        let [sealed] = &record.materials[..] else {
            return Err(KmsError::Internal(format!(
                "key {} of spec {} has {} material versions",
                record.id,
                record.key_spec,
                record.materials.len()
            )));
        };
        let bytes = self.unseal_bytes(&material_aad(&record.id, 0), sealed)?;
        Ok(Some(Arc::new(KeyMaterial::load(record.key_spec, &bytes)?)))
    }

    fn cached_key(&self, id: &[u8; 16]) -> KmsResult<Option<Arc<KeyEntry>>> {
        Ok(self.read_state()?.keys.get(id).cloned())
    }

    /// Puts a committed entry of revision `rev` in the view unless a newer one is there.
    fn put_entry(&self, id: [u8; 16], rev: i64, entry: Arc<KeyEntry>) -> KmsResult<()> {
        let mut st = self.write_state()?;
        if st.key_revs.get(&id).is_some_and(|r| *r > rev) {
            return Ok(());
        }
        st.keys.insert(id, entry);
        st.key_revs.insert(id, rev);
        Ok(())
    }

    /// Puts a committed key record of revision `rev` (read from the database) in the view.
    fn apply_key(&self, rev: i64, record: KeyRecord) -> KmsResult<()> {
        let id = parse_key_id(&record.id)
            .ok_or_else(|| KmsError::Internal(format!("bad key id {}", record.id)))?;
        let prev = {
            let st = self.read_state()?;
            if st.key_revs.get(&id).is_some_and(|r| *r >= rev) {
                return Ok(());
            }
            st.keys.get(&id).cloned()
        };
        let entry = Arc::new(self.entry(record, prev.as_deref())?);
        self.put_entry(id, rev, entry)
    }

    /// Removes a key from the view if its cached revision is below `rev`.
    fn remove_key_below(&self, id: &[u8; 16], rev: i64) -> KmsResult<()> {
        let mut st = self.write_state()?;
        if st.key_revs.get(id).is_none_or(|r| *r < rev) {
            st.keys.remove(id);
            st.key_revs.remove(id);
        }
        Ok(())
    }

    fn apply_alias(&self, name: &str, rev: i64, rec: AliasRecord) -> KmsResult<()> {
        let mut st = self.write_state()?;
        if st.alias_revs.get(name).is_some_and(|r| *r > rev) {
            return Ok(());
        }
        st.aliases.insert(name.to_string(), rec);
        st.alias_revs.insert(name.to_string(), rev);
        Ok(())
    }

    fn remove_alias_below(&self, name: &str, rev: i64) -> KmsResult<()> {
        let mut st = self.write_state()?;
        if st.alias_revs.get(name).is_none_or(|r| *r < rev) {
            st.aliases.remove(name);
            st.alias_revs.remove(name);
        }
        Ok(())
    }
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir` with the master key at `master_path`.
    ///
    /// A new store is built whole under a temporary name (tables and the administrator
    /// credential committed, the file fsync'd) and only then renamed into place, so a start
    /// killed at any moment leaves either no store or a complete one; the temporaries of a
    /// killed start are removed here.
    pub fn open(data_dir: &Path, master_path: &Path) -> Result<Self, StoreError> {
        prepare_data_dir(data_dir)?;
        remove_leftovers(data_dir, master_path)?;
        let master = Zeroizing::new(load_or_create_master(master_path)?);
        let key = || {
            aead_key(&master).map_err(|e| StoreError::MasterKey(master_path.into(), e.to_string()))
        };
        let db_path = data_dir.join(STORE_FILE);
        if store_missing(&db_path)? {
            Self::create(data_dir, &db_path, key()?)?;
        }
        let meta = std::fs::metadata(&db_path).map_err(|e| StoreError::Io(db_path.clone(), e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            // Stores made by earlier versions were readable by others.
            std::fs::set_permissions(&db_path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError::Io(db_path.clone(), e))?;
        }
        let db = Database::open(&db_path).map_err(|e| db_error(&db_path)(e.into()))?;
        create_tables(&db, &db_path)?;
        Self::from_db(db, key()?)
    }

    /// Opens the store `config` names: PostgreSQL when it has a URL (the data directory then
    /// holds only what the server writes beside the store), otherwise the embedded store in
    /// `data_dir` ([`Store::open`]).
    pub fn open_configured(
        data_dir: &Path,
        master_path: &Path,
        config: &crate::config::StoreConfig,
    ) -> Result<Self, StoreError> {
        match config.url.as_deref() {
            None => Self::open(data_dir, master_path),
            Some(url) => {
                prepare_data_dir(data_dir)?;
                remove_leftover(&temp_path(master_path))?;
                let (backend, core) = postgres::PgBackend::open(url, master_path, config)?;
                Ok(Store {
                    core,
                    backend: Backend::Postgres(Box::new(backend)),
                })
            }
        }
    }

    /// Seals every key's material (and the administrator credential) under the master key in
    /// `new_master` instead of the one in `old_master`, in one transaction, for the store
    /// `config` names (the embedded one in `data_dir` when it names none). `new_master` is
    /// created (mode 0600, 32 random bytes) when absent. The servers must be stopped: a running
    /// embedded server holds its file; on PostgreSQL, running servers are refused unless
    /// `force`. Returns how many keys were sealed again.
    pub fn rotate_master_key(
        data_dir: &Path,
        config: &crate::config::StoreConfig,
        old_master: &Path,
        new_master: &Path,
        force: bool,
    ) -> Result<usize, StoreError> {
        if !old_master.exists() {
            return Err(StoreError::MasterKey(
                old_master.into(),
                "does not exist".into(),
            ));
        }
        let old_bytes = Zeroizing::new(load_or_create_master(old_master)?);
        let new_bytes = Zeroizing::new(load_or_create_master(new_master)?);
        if old_bytes == new_bytes {
            return Err(StoreError::MasterKey(
                new_master.into(),
                "is the same key as the old one".into(),
            ));
        }
        let old = aead_key(&old_bytes)
            .map_err(|e| StoreError::MasterKey(old_master.into(), e.to_string()))?;
        let new = aead_key(&new_bytes)
            .map_err(|e| StoreError::MasterKey(new_master.into(), e.to_string()))?;
        match config.url.as_deref() {
            Some(url) => postgres::rotate_master_key(url, config, &old, &new, force),
            None => Self::rotate_embedded(data_dir, &old, &new),
        }
    }

    fn rotate_embedded(
        data_dir: &Path,
        old: &LessSafeKey,
        new: &LessSafeKey,
    ) -> Result<usize, StoreError> {
        let db_path = data_dir.join(STORE_FILE);
        if store_missing(&db_path)? {
            return Err(StoreError::Io(
                db_path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let db = Database::open(&db_path).map_err(|e| db_error(&db_path)(e.into()))?;
        let rec_err = |what: &str, e: KmsError| StoreError::Record(what.into(), e.to_string());
        let tx = db.begin_write().map_err(|e| db_error(&db_path)(e.into()))?;
        let mut count = 0;
        {
            let mut keys = tx
                .open_table(KEYS)
                .map_err(|e| db_error(&db_path)(e.into()))?;
            let mut records = Vec::new();
            for item in keys.iter().map_err(|e| db_error(&db_path)(e.into()))? {
                let (k, v) = item.map_err(|e| db_error(&db_path)(e.into()))?;
                let record: KeyRecord = serde_json::from_slice(v.value())
                    .map_err(|e| StoreError::Record(k.value().to_string(), e.to_string()))?;
                records.push(record);
            }
            for mut record in records {
                reseal_record(old, new, &mut record).map_err(|e| rec_err(&record.id, e))?;
                let bytes = serde_json::to_vec(&record)
                    .map_err(|e| StoreError::Record(record.id.clone(), e.to_string()))?;
                keys.insert(record.id.as_str(), bytes.as_slice())
                    .map_err(|e| db_error(&db_path)(e.into()))?;
                count += 1;
            }
            let mut meta = tx
                .open_table(META)
                .map_err(|e| db_error(&db_path)(e.into()))?;
            let sealed = match meta
                .get("admin")
                .map_err(|e| db_error(&db_path)(e.into()))?
            {
                Some(v) => Some(
                    std::str::from_utf8(v.value())
                        .map_err(|e| StoreError::Record("admin".into(), e.to_string()))?
                        .to_string(),
                ),
                None => None,
            };
            if let Some(sealed) = sealed {
                let plain =
                    unseal_with(old, ADMIN_AAD, &sealed).map_err(|e| rec_err("admin", e))?;
                let resealed =
                    seal_with(new, ADMIN_AAD, &plain).map_err(|e| rec_err("admin", e))?;
                meta.insert("admin", resealed.as_bytes())
                    .map_err(|e| db_error(&db_path)(e.into()))?;
            }
        }
        tx.commit().map_err(|e| db_error(&db_path)(e.into()))?;
        Ok(count)
    }

    /// Builds a complete new store at `db_path` through a temporary file.
    fn create(data_dir: &Path, db_path: &Path, master: LessSafeKey) -> Result<(), StoreError> {
        let tmp = temp_path(db_path);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| StoreError::Io(tmp.clone(), e))?;
        let db = redb::Builder::new()
            .create_file(file)
            .map_err(|e| db_error(&tmp)(e.into()))?;
        create_tables(&db, &tmp)?;
        let store = Self::from_db(db, master)?;
        store
            .admin_credential()
            .map_err(|e| StoreError::Record("administrator credential".into(), e.to_string()))?;
        drop(store);
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::Io(tmp.clone(), e))?;
        std::fs::rename(&tmp, db_path).map_err(|e| StoreError::Io(db_path.into(), e))?;
        fsync_dir(data_dir)
    }

    fn from_db(db: Database, master: LessSafeKey) -> Result<Self, StoreError> {
        let store = Store {
            core: Arc::new(Core::new(master)),
            backend: Backend::Embedded {
                db,
                writer: Mutex::new(()),
            },
        };
        store.load().map_err(|e| match e {
            KmsError::Internal(m) => StoreError::Record("database".into(), m),
            other => StoreError::Record("database".into(), other.to_string()),
        })?;
        Ok(store)
    }

    fn embedded(&self) -> KmsResult<(&Database, std::sync::MutexGuard<'_, ()>)> {
        match &self.backend {
            Backend::Embedded { db, writer } => Ok((
                db,
                writer
                    .lock()
                    .map_err(|_| KmsError::Internal("writer lock poisoned".into()))?,
            )),
            Backend::Postgres(_) => Err(KmsError::Internal("not the embedded store".into())),
        }
    }

    fn load(&self) -> KmsResult<()> {
        let Backend::Embedded { db, .. } = &self.backend else {
            return Ok(());
        };
        let tx = db.begin_read().map_err(|e| KmsError::internal("read", e))?;
        let keys = tx
            .open_table(KEYS)
            .map_err(|e| KmsError::internal("read", e))?;
        let mut state = State::default();
        for item in keys.iter().map_err(|e| KmsError::internal("read", e))? {
            let (k, v) = item.map_err(|e| KmsError::internal("read", e))?;
            let record: KeyRecord = serde_json::from_slice(v.value())
                .map_err(|e| KmsError::Internal(format!("key {}: {e}", k.value())))?;
            let id = parse_key_id(&record.id)
                .ok_or_else(|| KmsError::Internal(format!("bad key id {}", record.id)))?;
            let entry = self.core.entry(record, None)?;
            state.keys.insert(id, Arc::new(entry));
        }
        let aliases = tx
            .open_table(ALIASES)
            .map_err(|e| KmsError::internal("read", e))?;
        for item in aliases.iter().map_err(|e| KmsError::internal("read", e))? {
            let (k, v) = item.map_err(|e| KmsError::internal("read", e))?;
            let rec: AliasRecord = serde_json::from_slice(v.value())
                .map_err(|e| KmsError::Internal(format!("alias {}: {e}", k.value())))?;
            state.aliases.insert(k.value().to_string(), rec);
        }
        *self.core.write_state()? = state;
        Ok(())
    }

    /// Seals fresh material for `key_id` version `version` (returns the stored form).
    pub fn seal_material(
        &self,
        key_id: &str,
        version: usize,
        material: &[u8],
    ) -> KmsResult<String> {
        self.core
            .seal_bytes(&material_aad(key_id, version), material)
    }

    /// Opens what [`Store::seal_material`] sealed for `key_id` version `version`.
    pub fn unseal_material(
        &self,
        key_id: &str,
        version: usize,
        sealed: &str,
    ) -> KmsResult<Zeroizing<Vec<u8>>> {
        self.core
            .unseal_bytes(&material_aad(key_id, version), sealed)
    }

    fn write_tx<T>(
        db: &Database,
        f: impl FnOnce(&redb::WriteTransaction) -> KmsResult<T>,
    ) -> KmsResult<T> {
        let tx = db
            .begin_write()
            .map_err(|e| KmsError::internal("begin write", e))?;
        let out = f(&tx)?;
        tx.commit().map_err(|e| KmsError::internal("commit", e))?;
        Ok(out)
    }

    fn put_key(tx: &redb::WriteTransaction, record: &KeyRecord) -> KmsResult<()> {
        let bytes = serde_json::to_vec(record).map_err(|e| KmsError::internal("encode", e))?;
        let mut t = tx
            .open_table(KEYS)
            .map_err(|e| KmsError::internal("open keys", e))?;
        t.insert(record.id.as_str(), bytes.as_slice())
            .map_err(|e| KmsError::internal("insert key", e))?;
        Ok(())
    }

    fn put_alias(tx: &redb::WriteTransaction, name: &str, rec: &AliasRecord) -> KmsResult<()> {
        let bytes = serde_json::to_vec(rec).map_err(|e| KmsError::internal("encode", e))?;
        let mut t = tx
            .open_table(ALIASES)
            .map_err(|e| KmsError::internal("open aliases", e))?;
        t.insert(name, bytes.as_slice())
            .map_err(|e| KmsError::internal("insert alias", e))?;
        Ok(())
    }

    /// The in-memory view, checked to be current enough to answer from.
    fn read_state(&self) -> KmsResult<std::sync::RwLockReadGuard<'_, State>> {
        if let Backend::Postgres(pg) = &self.backend {
            pg.check_fresh()?;
        }
        self.core.read_state()
    }

    /// Stores a new key.
    pub fn insert_key(&self, record: KeyRecord) -> KmsResult<Arc<KeyEntry>> {
        let id = parse_key_id(&record.id).ok_or_else(|| KmsError::Internal("key id".into()))?;
        match &self.backend {
            Backend::Embedded { .. } => {
                let (db, _w) = self.embedded()?;
                let entry = Arc::new(self.core.entry(record, None)?);
                Self::write_tx(db, |tx| Self::put_key(tx, &entry.record))?;
                self.core.put_entry(id, 0, entry.clone())?;
                Ok(entry)
            }
            Backend::Postgres(pg) => {
                let entry = Arc::new(self.core.entry(record, None)?);
                pg.insert_key(&self.core, id, entry.clone())?;
                Ok(entry)
            }
        }
    }

    /// Looks a key up by id bytes.
    pub fn key(&self, id: &[u8; 16]) -> KmsResult<Option<Arc<KeyEntry>>> {
        Ok(self.read_state()?.keys.get(id).cloned())
    }

    /// The target key id of an alias.
    pub fn alias(&self, name: &str) -> KmsResult<Option<AliasRecord>> {
        Ok(self.read_state()?.aliases.get(name).cloned())
    }

    /// Up to `limit` keys after `after` (exclusive), in id order; and whether more follow.
    pub fn list_keys(
        &self,
        after: Option<[u8; 16]>,
        limit: usize,
    ) -> KmsResult<(Vec<Arc<KeyEntry>>, bool)> {
        let st = self.read_state()?;
        let mut it: Box<dyn Iterator<Item = (&[u8; 16], &Arc<KeyEntry>)>> = match after {
            Some(a) => Box::new(
                st.keys
                    .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            ),
            None => Box::new(st.keys.iter()),
        };
        let out: Vec<_> = it.by_ref().take(limit).map(|(_, e)| e.clone()).collect();
        let more = it.next().is_some();
        Ok((out, more))
    }

    /// Every alias (name, record), in name order.
    pub fn list_aliases(&self) -> KmsResult<Vec<(String, AliasRecord)>> {
        Ok(self
            .read_state()?
            .aliases
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    /// Changes a key's record with `f` (which may add material) and stores it.
    ///
    /// On PostgreSQL `f` runs once, on the row read `FOR UPDATE` inside the write's
    /// serializable transaction.
    pub fn update_key<T>(
        &self,
        id: &[u8; 16],
        f: impl FnOnce(&mut KeyRecord) -> KmsResult<T>,
    ) -> KmsResult<(Arc<KeyEntry>, T)> {
        match &self.backend {
            Backend::Embedded { .. } => {
                let (db, _w) = self.embedded()?;
                let prev = self.core.cached_key(id)?.ok_or_else(|| {
                    KmsError::NotFound(format!("Key '{}' does not exist", format_key_id(id)))
                })?;
                let mut record = prev.record.clone();
                let out = f(&mut record)?;
                if record.materials.len() > MAX_MATERIALS {
                    return Err(KmsError::LimitExceeded("too many key rotations".into()));
                }
                let entry = Arc::new(self.core.entry(record, Some(&prev))?);
                Self::write_tx(db, |tx| Self::put_key(tx, &entry.record))?;
                self.core.put_entry(*id, 0, entry.clone())?;
                Ok((entry, out))
            }
            Backend::Postgres(pg) => pg.update_key(&self.core, id, f),
        }
    }

    /// Creates an alias (fails if it exists).
    pub fn create_alias(&self, name: &str, target: &str) -> KmsResult<()> {
        let t = now();
        let rec = AliasRecord {
            target: target.to_string(),
            created: t,
            updated: t,
        };
        match &self.backend {
            Backend::Embedded { .. } => {
                let (db, _w) = self.embedded()?;
                if self.core.read_state()?.aliases.contains_key(name) {
                    return Err(alias_exists(name));
                }
                Self::write_tx(db, |tx| Self::put_alias(tx, name, &rec))?;
                self.core.apply_alias(name, 0, rec)
            }
            Backend::Postgres(pg) => pg.create_alias(&self.core, name, rec),
        }
    }

    /// Points an existing alias at another key.
    pub fn update_alias(&self, name: &str, target: &str) -> KmsResult<()> {
        match &self.backend {
            Backend::Embedded { .. } => {
                let (db, _w) = self.embedded()?;
                let mut rec = self
                    .core
                    .read_state()?
                    .aliases
                    .get(name)
                    .cloned()
                    .ok_or_else(|| alias_not_found(name))?;
                rec.target = target.to_string();
                rec.updated = now();
                Self::write_tx(db, |tx| Self::put_alias(tx, name, &rec))?;
                self.core.apply_alias(name, 0, rec)
            }
            Backend::Postgres(pg) => pg.update_alias(&self.core, name, target),
        }
    }

    /// Deletes an alias.
    pub fn delete_alias(&self, name: &str) -> KmsResult<()> {
        match &self.backend {
            Backend::Embedded { .. } => {
                let (db, _w) = self.embedded()?;
                if !self.core.read_state()?.aliases.contains_key(name) {
                    return Err(alias_not_found(name));
                }
                Self::write_tx(db, |tx| {
                    let mut t = tx
                        .open_table(ALIASES)
                        .map_err(|e| KmsError::internal("open aliases", e))?;
                    t.remove(name)
                        .map_err(|e| KmsError::internal("remove alias", e))?;
                    Ok(())
                })?;
                self.core.remove_alias_below(name, i64::MAX)
            }
            Backend::Postgres(pg) => pg.delete_alias(&self.core, name),
        }
    }

    /// Deletes keys whose pending deletion is due, with their aliases, and the replicas of
    /// multi-Region keys whose pending deletion is due (a primary is deleted only once it has
    /// no replica). Returns how many keys and replicas.
    pub fn purge_expired(&self, at: f64) -> KmsResult<usize> {
        let replicas = self.purge_replicas(at)?;
        let (db, _w) = match &self.backend {
            Backend::Embedded { .. } => self.embedded()?,
            Backend::Postgres(pg) => return Ok(replicas + pg.purge_expired(&self.core, at)?),
        };
        let (due, aliases): (Vec<[u8; 16]>, Vec<String>) = {
            let st = self.core.read_state()?;
            let due: Vec<[u8; 16]> = st
                .keys
                .iter()
                .filter(|(_, e)| {
                    e.record.state == KeyState::PendingDeletion
                        && e.record.deletion_date.is_some_and(|d| d <= at)
                        && e.record
                            .multi_region
                            .as_ref()
                            .is_none_or(|m| m.replicas.is_empty())
                })
                .map(|(k, _)| *k)
                .collect();
            let ids: Vec<String> = due.iter().map(format_key_id).collect();
            let aliases = st
                .aliases
                .iter()
                .filter(|(_, a)| ids.contains(&a.target))
                .map(|(n, _)| n.clone())
                .collect();
            (due, aliases)
        };
        if due.is_empty() {
            return Ok(replicas);
        }
        Self::write_tx(db, |tx| {
            let mut keys = tx
                .open_table(KEYS)
                .map_err(|e| KmsError::internal("open keys", e))?;
            for id in &due {
                keys.remove(format_key_id(id).as_str())
                    .map_err(|e| KmsError::internal("remove key", e))?;
            }
            let mut al = tx
                .open_table(ALIASES)
                .map_err(|e| KmsError::internal("open aliases", e))?;
            for a in &aliases {
                al.remove(a.as_str())
                    .map_err(|e| KmsError::internal("remove alias", e))?;
            }
            Ok(())
        })?;
        for id in &due {
            self.core.remove_key_below(id, i64::MAX)?;
        }
        for a in &aliases {
            self.core.remove_alias_below(a, i64::MAX)?;
        }
        Ok(replicas + due.len())
    }

    /// Deletes the replicas whose pending deletion is due (each key's change checked again on
    /// the stored record). Returns how many.
    fn purge_replicas(&self, at: f64) -> KmsResult<usize> {
        use crate::service::ops::regions::{delete_due_replicas, replica_deletion_due};
        let due: Vec<[u8; 16]> = self
            .read_state()?
            .keys
            .iter()
            .filter(|(_, e)| replica_deletion_due(&e.record, at))
            .map(|(k, _)| *k)
            .collect();
        let mut deleted = 0;
        for id in &due {
            match self.update_key(id, |r| Ok(delete_due_replicas(r, at))) {
                Ok((_, n)) => deleted += n,
                Err(KmsError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// The administrator credential, created (and stored) on first use.
    pub fn admin_credential(&self) -> KmsResult<AdminCredential> {
        let (db, _w) = match &self.backend {
            Backend::Embedded { .. } => self.embedded()?,
            Backend::Postgres(pg) => return pg.admin_credential(&self.core),
        };
        let tx = db.begin_read().map_err(|e| KmsError::internal("read", e))?;
        let t = tx
            .open_table(META)
            .map_err(|e| KmsError::internal("read", e))?;
        if let Some(v) = t.get("admin").map_err(|e| KmsError::internal("read", e))? {
            let sealed = std::str::from_utf8(v.value())
                .map_err(|e| KmsError::internal("admin record", e))?
                .to_string();
            return self.core.unseal_admin(&sealed);
        }
        drop(t);
        drop(tx);
        let cred = new_admin_credential()?;
        let sealed = self.core.seal_admin(&cred)?;
        Self::write_tx(db, |tx| {
            let mut t = tx
                .open_table(META)
                .map_err(|e| KmsError::internal("open meta", e))?;
            t.insert("admin", sealed.as_bytes())
                .map_err(|e| KmsError::internal("insert admin", e))?;
            Ok(())
        })?;
        Ok(cred)
    }
}

fn alias_exists(name: &str) -> KmsError {
    KmsError::AlreadyExists(format!(
        "An alias with the name arn:aws:kms:::{name} already exists"
    ))
}

fn alias_not_found(name: &str) -> KmsError {
    KmsError::NotFound(format!("Alias {name} is not found."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(store: &Store) -> KeyRecord {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        KeyRecord {
            materials: vec![store.seal_material(&id, 0, &[9u8; 32]).unwrap()],
            id,
            created: now(),
            description: "d".into(),
            state: KeyState::Enabled,
            deletion_date: None,
            pending_window_days: None,
            policy: Policy::default_text("111122223333"),
            tags: vec![],
            rotation_period_days: None,
            rotations: vec![],
            grants: vec![],
            import: None,
            on_demand_rotations: vec![],
            multi_region: None,
            key_spec: KeySpec::SymmetricDefault,
            key_usage: None,
        }
    }

    #[test]
    fn persists_across_reopen_and_refuses_wrong_master() {
        let dir = tempfile::tempdir().unwrap();
        let master = dir.path().join("master.key");
        let id;
        let admin;
        {
            let s = Store::open(dir.path(), &master).unwrap();
            let r = s.insert_key(record(&s)).unwrap();
            id = parse_key_id(&r.record.id).unwrap();
            s.create_alias("alias/a", &r.record.id).unwrap();
            assert!(matches!(
                s.create_alias("alias/a", &r.record.id),
                Err(KmsError::AlreadyExists(_))
            ));
            admin = s.admin_credential().unwrap();
        }
        let mode = std::fs::metadata(&master).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        {
            let s = Store::open(dir.path(), &master).unwrap();
            let e = s.key(&id).unwrap().unwrap();
            assert_eq!(e.materials.len(), 1);
            assert_eq!(s.alias("alias/a").unwrap().unwrap().target, e.record.id);
            assert_eq!(
                s.admin_credential().unwrap().access_key_id,
                admin.access_key_id
            );
            s.update_key(&id, |r| {
                r.state = KeyState::PendingDeletion;
                r.deletion_date = Some(1.0);
                Ok(())
            })
            .unwrap();
            assert_eq!(s.purge_expired(now()).unwrap(), 1);
            assert!(s.key(&id).unwrap().is_none());
            assert!(s.alias("alias/a").unwrap().is_none());
        }
        // Another master key cannot read the sealed records.
        let other = dir.path().join("other.key");
        let s = Store::open(dir.path(), &other);
        assert!(s.is_ok(), "no keys left, so it opens");
        let s = s.unwrap();
        assert!(s.admin_credential().is_err());
        // A world-readable master key is refused.
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Store::open(dir.path(), &other),
            Err(StoreError::MasterKey(..))
        ));
    }

    #[test]
    fn first_start_leftovers_are_cleared_and_files_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        let master = dir.join("master.key");
        // What a killed start leaves: temporaries, and (from earlier versions) an empty store.
        std::fs::write(temp_path(&dir.join(STORE_FILE)), b"half a database").unwrap();
        std::fs::write(temp_path(&master), b"an unused key").unwrap();
        std::fs::write(dir.join("admin-credentials.tmp"), b"{").unwrap();
        std::fs::write(dir.join(STORE_FILE), b"").unwrap();
        let admin = {
            let s = Store::open(&dir, &master).unwrap();
            s.admin_credential().unwrap()
        };
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["kms.redb", "master.key"]);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(STORE_FILE)), 0o600);
        // The credential was committed with the new store, before it got its name.
        let s = Store::open(&dir, &master).unwrap();
        assert_eq!(
            s.admin_credential().unwrap().access_key_id,
            admin.access_key_id
        );
        // A new data directory is closed to others.
        let fresh = tmp.path().join("fresh/data");
        drop(Store::open(&fresh, &fresh.join("master.key")).unwrap());
        assert_eq!(mode(&fresh), 0o700);
    }

    #[test]
    fn key_ids_are_canonical() {
        let id = "1234abcd-12ab-34cd-56ef-1234567890ab";
        assert_eq!(format_key_id(&parse_key_id(id).unwrap()), id);
        assert!(parse_key_id("1234abcd12ab34cd56ef1234567890ab").is_none());
        assert!(parse_key_id("alias/x").is_none());
    }
}
