//! The PostgreSQL store: several key servers on one database.
//!
//! Tables (prefixed `cloister_kms_`, so the database may hold others): `keys` (id, revision,
//! JSON [`KeyRecord`] with its material sealed under the master key, exactly as the embedded
//! store keeps it), `aliases` (name, target, revision, JSON [`AliasRecord`]), `meta` (the sealed
//! administrator credential), `migrations` (applied schema versions). Every server of a fleet
//! is given the same master key file; the database never sees key material in the clear.
//!
//! Writes: each is one SERIALIZABLE transaction, retried on a serialization failure (40001) or a
//! deadlock (40P01) at most [`MAX_RETRIES`] times. `update_key` reads the row `FOR UPDATE`, runs
//! the caller's closure on it once, and writes the result; should the commit fail with a
//! serialization failure, the write is retried as long as the row is still at the revision the
//! closure saw (otherwise the request fails with `KMSInternalException` and the client retries).
//! Alias creation races are settled by the primary key: the loser gets `AlreadyExistsException`.
//! Every write takes a fresh revision from one sequence and sends a NOTIFY naming what changed.
//!
//! Reads never touch the database: they are served from the in-memory view, which each server
//! keeps current three ways: (1) its own writes are applied once committed; (2) a listener
//! connection receives every change (LISTEN/NOTIFY), reloads those rows and acknowledges them to
//! the writer, and a write is answered only once every live server (a listener connection named
//! `cloister-kms/<node>` in `pg_stat_activity`) has acknowledged it, or `ack_wait` (default 1 s)
//! has passed; (3) a full resync of every row's revision each `resync_interval` (default 1 s)
//! catches anything missed. A server whose view has not been resynced for `stale_after`
//! (default 5 s: its database is unreachable) refuses requests until it is again. So a change
//! acknowledged by one server is in effect on every other at once, and in the worst case within
//! `ack_wait + resync_interval` (2 s by default).
//!
//! Schema: versioned migrations applied at start under `pg_advisory_lock`, one server at a
//! time; a server refuses a database whose schema is newer than it knows.
//!
//! The calling code is synchronous (on the HTTP runtime's threads, sometimes within
//! `block_in_place`): the store runs its own small tokio runtime, in threads of its own, and a
//! caller blocks on a channel for the answer, which works from any thread.

mod backend;
mod schema;
mod sync;

pub(crate) use schema::rotate_master_key;

use super::{
    alias_exists, alias_not_found, format_key_id, new_admin_credential, parse_key_id,
    reseal_record, seal_with, unseal_with, AliasRecord, Core, KeyEntry, KeyRecord, StoreError,
    MASTER_KEY_LEN, MAX_MATERIALS,
};
use crate::blob::aead_key;
use crate::config::StoreConfig;
use crate::error::{KmsError, KmsResult};
use aws_lc_rs::aead::LessSafeKey;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use zeroize::Zeroizing;

/// Schema migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the records.
    "CREATE TABLE cloister_kms_keys (id text PRIMARY KEY, record jsonb NOT NULL);
     CREATE TABLE cloister_kms_aliases (name text PRIMARY KEY, target text NOT NULL,
                                        record jsonb NOT NULL);
     CREATE TABLE cloister_kms_meta (name text PRIMARY KEY, value text NOT NULL);",
    // 2: revisions (cache coherence across servers), aliases by target (deletions).
    "CREATE SEQUENCE cloister_kms_rev;
     ALTER TABLE cloister_kms_keys ADD COLUMN rev bigint NOT NULL DEFAULT nextval('cloister_kms_rev');
     ALTER TABLE cloister_kms_aliases ADD COLUMN rev bigint NOT NULL DEFAULT nextval('cloister_kms_rev');
     CREATE INDEX cloister_kms_aliases_target ON cloister_kms_aliases (target);",
];

/// The newest schema version this server knows.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "a handful of migrations (a const context, where try_from is not available)"
)]
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;
/// Milliseconds of `d`, saturating (a `u64` of milliseconds is 584 million years).
fn saturating_millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The NOTIFY channel of changes.
pub const CHANNEL: &str = "cloister_kms";
/// Prefix of a ready server's listener connection name (`application_name`).
pub const NODE_PREFIX: &str = "cloister-kms/";
/// Where the node id starts in an application name (SQL's `substr` counts from 1).
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "the length of a short constant (a const context, where try_from is not available)"
)]
const NODE_ID_START: i32 = NODE_PREFIX.len() as i32 + 1;
/// Most retries of a write after a serialization failure.
pub const MAX_RETRIES: u32 = 10;
/// The advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x636c_6f69_6b6d_7301;

/// Why a database step failed.
#[derive(Debug)]
enum DbError {
    Pg(tokio_postgres::Error),
    Timeout(&'static str),
    Kms(KmsError),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::Pg(e)
    }
}

impl From<KmsError> for DbError {
    fn from(e: KmsError) -> Self {
        DbError::Kms(e)
    }
}

impl DbError {
    fn retryable(&self) -> bool {
        matches!(self, DbError::Pg(e) if e.code().is_some_and(|c| {
            *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        }))
    }

    fn code(&self) -> Option<&SqlState> {
        match self {
            DbError::Pg(e) => e.code(),
            _ => None,
        }
    }

    fn into_kms(self) -> KmsError {
        match self {
            DbError::Kms(e) => e,
            DbError::Timeout(what) => {
                tracing::warn!("database: {what} timed out");
                KmsError::DependencyTimeout(format!(
                    "The key store did not answer in time ({what})"
                ))
            }
            DbError::Pg(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => {
                tracing::warn!(error = %e, "database statement timed out");
                KmsError::DependencyTimeout("The key store did not answer in time".into())
            }
            DbError::Pg(e) if e.code().is_none() => {
                KmsError::internal("key store database unavailable", e)
            }
            DbError::Pg(e) => {
                let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                tracing::error!(error = %e, "key store database");
                KmsError::Internal(format!("key store database error {code}"))
            }
        }
    }

    fn into_store(self) -> StoreError {
        match self {
            DbError::Pg(e) => StoreError::Postgres(match e.as_db_error() {
                Some(db) => format!("{}: {}", db.code().code(), db.message()),
                None => e.to_string(),
            }),
            DbError::Timeout(what) => StoreError::Postgres(format!("{what} timed out")),
            DbError::Kms(e) => StoreError::Postgres(e.to_string()),
        }
    }
}

/// Connection settings shared by the pool and the listener.
#[derive(Clone)]
struct Settings {
    pg: tokio_postgres::Config,
    connect_timeout: Duration,
    statement_timeout: Duration,
    pool_size: usize,
    resync: Duration,
    ack_wait: Duration,
    stale_after: Duration,
    op_timeout: Duration,
}

impl Settings {
    fn new(url: &str, config: &StoreConfig) -> Result<Self, StoreError> {
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Postgres(format!("connection string: {e}")))?;
        pg.connect_timeout(config.connect_timeout());
        let connect_timeout = config.connect_timeout();
        let statement_timeout = config.statement_timeout();
        Ok(Settings {
            pg,
            connect_timeout,
            statement_timeout,
            pool_size: config.pool_size(),
            resync: config.resync_interval(),
            ack_wait: config.ack_wait(),
            stale_after: config.stale_after(),
            op_timeout: connect_timeout + statement_timeout * 3,
        })
    }
}

/// Opens one connection (its driving task spawned on the current runtime) and sets its
/// timeouts. `notify` receives the connection's notifications where given.
async fn connect(
    s: &Settings,
    app_name: &str,
    notify: Option<tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>>,
) -> Result<Client, DbError> {
    let mut cfg = s.pg.clone();
    cfg.application_name(app_name);
    let (client, mut connection) = tokio::time::timeout(s.connect_timeout, cfg.connect(NoTls))
        .await
        .map_err(|_| DbError::Timeout("connecting to the database"))??;
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if let Some(tx) = &notify {
                        if tx.send(n).is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "database connection ended");
                    break;
                }
                None => break,
            }
        }
    });
    let ms = s.statement_timeout.as_millis();
    client
        .batch_execute(&format!(
            "SET statement_timeout = {ms}; SET idle_in_transaction_session_timeout = {}",
            ms * 4
        ))
        .await?;
    Ok(client)
}

/// A small connection pool: at most `size` connections, idle ones kept for reuse, broken ones
/// dropped (the next request connects again, so the pool recovers by itself).
struct Pool {
    settings: Settings,
    idle: Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
}

/// A connection taken from the pool; returned to it on drop when `reusable`.
struct Conn {
    client: Option<Client>,
    pool: Arc<Pool>,
    reusable: bool,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    fn client(&self) -> &Client {
        // Always Some until drop.
        self.client.as_ref().expect("connection present until drop")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if self.reusable && !c.is_closed() {
                if let Ok(mut idle) = self.pool.idle.lock() {
                    idle.push(c);
                }
            }
        }
    }
}

impl Pool {
    async fn get(self: &Arc<Self>) -> Result<Conn, DbError> {
        let permit = tokio::time::timeout(
            self.settings.connect_timeout,
            self.permits.clone().acquire_owned(),
        )
        .await
        .map_err(|_| DbError::Timeout("waiting for a database connection"))?
        .map_err(|_| DbError::Kms(KmsError::Internal("connection pool closed".into())))?;
        loop {
            let c = self.idle.lock().ok().and_then(|mut v| v.pop());
            match c {
                Some(c) if !c.is_closed() => {
                    return Ok(Conn {
                        client: Some(c),
                        pool: self.clone(),
                        reusable: false,
                        _permit: permit,
                    })
                }
                Some(_) => continue,
                None => break,
            }
        }
        let client = connect(&self.settings, "cloister-kms", None).await?;
        Ok(Conn {
            client: Some(client),
            pool: self.clone(),
            reusable: false,
            _permit: permit,
        })
    }
}

type TxFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, DbError>> + Send + 'c>>;

/// Runs `body` in a SERIALIZABLE transaction, retrying it on serialization failures.
async fn transact<T: Send>(
    pool: &Arc<Pool>,
    mut body: impl for<'c> FnMut(&'c Client) -> TxFuture<'c, T> + Send,
) -> Result<T, DbError> {
    let mut attempt = 0;
    loop {
        let mut conn = pool.get().await?;
        let c = conn.client();
        let r: Result<T, DbError> = async {
            c.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                .await?;
            let v = body(c).await?;
            c.batch_execute("COMMIT").await?;
            Ok(v)
        }
        .await;
        match r {
            Ok(v) => {
                conn.reusable = true;
                return Ok(v);
            }
            Err(e) => {
                if c.batch_execute("ROLLBACK").await.is_ok() {
                    conn.reusable = true;
                }
                drop(conn);
                if e.retryable() && attempt < MAX_RETRIES {
                    attempt += 1;
                    backoff(attempt).await;
                    continue;
                }
                return Err(e);
            }
        }
    }
}

async fn backoff(attempt: u32) {
    let mut b = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut b);
    let ms = u64::from(b[0]) % (2 + 4 * u64::from(attempt.min(8)));
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Sends a change notification inside the current transaction (delivered at commit).
async fn notify(c: &Client, payload: &str) -> Result<(), DbError> {
    c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .await?;
    Ok(())
}

async fn next_rev(c: &Client) -> Result<i64, DbError> {
    Ok(c.query_one("SELECT nextval('cloister_kms_rev')", &[])
        .await?
        .get(0))
}

/// Acknowledgements of this server's writes by the others: write sequence -> nodes.
#[derive(Default)]
struct Acks {
    map: Mutex<HashMap<u64, HashSet<String>>>,
    cv: Condvar,
}

/// The PostgreSQL backend of a [`super::Store`].
pub(crate) struct PgBackend {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
    pool: Arc<Pool>,
    node: Arc<str>,
    acks: Arc<Acks>,
    seq: AtomicU64,
    /// Milliseconds since `epoch` of the last successful resync.
    synced_ms: Arc<AtomicU64>,
    epoch: Instant,
    settings: Settings,
}

/// Starts the store's runtime in a thread of its own; it stops when the sender is dropped.
fn start_runtime() -> Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>), StoreError>
{
    let (htx, hrx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("kms-store".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("kms-store")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = htx.send(Err(e));
                    return;
                }
            };
            let _ = htx.send(Ok(rt.handle().clone()));
            rt.block_on(async {
                let _ = stop_rx.await;
            });
            rt.shutdown_background();
        })
        .map_err(|e| StoreError::Postgres(format!("store thread: {e}")))?;
    let handle = hrx
        .recv()
        .map_err(|_| StoreError::Postgres("store runtime did not start".into()))?
        .map_err(|e| StoreError::Postgres(format!("store runtime: {e}")))?;
    Ok((handle, stop_tx))
}

/// Runs `fut` on `handle` and waits for it from any thread (within a runtime or not).
fn block<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    limit: Duration,
    fut: impl Future<Output = Result<T, DbError>> + Send + 'static,
) -> Result<T, DbError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let r = match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(DbError::Timeout("the key store operation")),
        };
        let _ = tx.send(r);
    });
    rx.recv()
        .map_err(|_| DbError::Kms(KmsError::Internal("key store runtime stopped".into())))?
}
