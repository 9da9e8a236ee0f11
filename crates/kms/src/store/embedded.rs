//! The embedded (redb) store: opening and creating it, master key rotation, loading the
//! in-memory view, and the write transactions every change goes through.

use super::files::*;
use super::sealing::*;
use super::*;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

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

    pub(super) fn rotate_embedded(
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
    pub(super) fn create(
        data_dir: &Path,
        db_path: &Path,
        master: LessSafeKey,
    ) -> Result<(), StoreError> {
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

    pub(super) fn from_db(db: Database, master: LessSafeKey) -> Result<Self, StoreError> {
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

    pub(super) fn embedded(&self) -> KmsResult<(&Database, std::sync::MutexGuard<'_, ()>)> {
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

    pub(super) fn load(&self) -> KmsResult<()> {
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

    pub(super) fn write_tx<T>(
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

    pub(super) fn put_key(tx: &redb::WriteTransaction, record: &KeyRecord) -> KmsResult<()> {
        let bytes = serde_json::to_vec(record).map_err(|e| KmsError::internal("encode", e))?;
        let mut t = tx
            .open_table(KEYS)
            .map_err(|e| KmsError::internal("open keys", e))?;
        t.insert(record.id.as_str(), bytes.as_slice())
            .map_err(|e| KmsError::internal("insert key", e))?;
        Ok(())
    }

    pub(super) fn put_alias(
        tx: &redb::WriteTransaction,
        name: &str,
        rec: &AliasRecord,
    ) -> KmsResult<()> {
        let bytes = serde_json::to_vec(rec).map_err(|e| KmsError::internal("encode", e))?;
        let mut t = tx
            .open_table(ALIASES)
            .map_err(|e| KmsError::internal("open aliases", e))?;
        t.insert(name, bytes.as_slice())
            .map_err(|e| KmsError::internal("insert alias", e))?;
        Ok(())
    }
}
