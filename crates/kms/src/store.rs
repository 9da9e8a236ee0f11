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

mod core;
mod embedded;
mod files;
pub mod postgres;
pub mod record;
mod sealing;

use files::load_or_create_master;
pub use files::{temp_path, write_private_file};
use sealing::{
    material_aad, new_admin_credential, reseal_record, seal_with, unseal_with, ADMIN_AAD,
};

use crate::blob::aead_key;
use crate::error::{KmsError, KmsResult};
use crate::keys::{KeyMaterial, KeySpec, KeyUsage};
use crate::policy::Policy;
use aws_lc_rs::aead::LessSafeKey;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
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
    pub grants: Vec<record::grant::GrantRecord>,
    /// Imported key material of an EXTERNAL-origin key (absent for AWS_KMS keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<record::import::ImportRecord>,
    /// Which entries of `rotations` were on-demand rotations (the others were automatic).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_demand_rotations: Vec<f64>,
    /// The Regions of a multi-Region key (absent for single-Region keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_region: Option<record::multi_region::MultiRegionRecord>,
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

fn poisoned() -> KmsError {
    KmsError::Internal("state lock poisoned".into())
}

impl Store {
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
        use record::multi_region::{delete_due_replicas, replica_deletion_due};
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
    use std::os::unix::fs::PermissionsExt;

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
