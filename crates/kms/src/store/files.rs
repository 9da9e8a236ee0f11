//! Files of the embedded store: the data directory (mode 0700), private files written under a
//! temporary name, fsync'd and renamed into place, leftovers of a killed start, the master key
//! file, and the redb file's tables.

use super::{
    StoreError, ALIASES, KEYS, LEGACY_TEMP_FILES, MASTER_KEY_LEN, META, STORE_FILE, TEMP_SUFFIX,
};
use redb::Database;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

pub(super) fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::Io(dir.into(), e))
}

/// The directory holding `path` (`.` for a bare file name).
pub(super) fn parent_dir(path: &Path) -> &Path {
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
pub(super) fn remove_leftover(path: &Path) -> Result<(), StoreError> {
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
pub(super) fn prepare_data_dir(dir: &Path) -> Result<(), StoreError> {
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
pub(super) fn remove_leftovers(data_dir: &Path, master_path: &Path) -> Result<(), StoreError> {
    remove_leftover(&temp_path(&data_dir.join(STORE_FILE)))?;
    remove_leftover(&temp_path(master_path))?;
    for name in LEGACY_TEMP_FILES {
        remove_leftover(&data_dir.join(name))?;
    }
    Ok(())
}

pub(super) fn load_or_create_master(path: &Path) -> Result<Zeroizing<Vec<u8>>, StoreError> {
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
pub(super) fn store_missing(db_path: &Path) -> Result<bool, StoreError> {
    match std::fs::metadata(db_path) {
        Ok(meta) => Ok(meta.len() == 0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(StoreError::Io(db_path.into(), e)),
    }
}

pub(super) fn db_error(path: &Path) -> impl Fn(redb::Error) -> StoreError + '_ {
    move |e| StoreError::Database(path.into(), Box::new(e))
}

/// Opens the tables, creating any that are missing.
pub(super) fn create_tables(db: &Database, db_path: &Path) -> Result<(), StoreError> {
    let dbe = db_error(db_path);
    let tx = db.begin_write().map_err(|e| dbe(e.into()))?;
    tx.open_table(KEYS).map_err(|e| dbe(e.into()))?;
    tx.open_table(ALIASES).map_err(|e| dbe(e.into()))?;
    tx.open_table(META).map_err(|e| dbe(e.into()))?;
    tx.commit().map_err(|e| dbe(e.into()))
}
