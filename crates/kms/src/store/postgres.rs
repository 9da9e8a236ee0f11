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
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;
/// The NOTIFY channel of changes.
pub const CHANNEL: &str = "cloister_kms";
/// Prefix of a ready server's listener connection name (`application_name`).
pub const NODE_PREFIX: &str = "cloister-kms/";
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

/// What a migration run found.
struct Opened {
    admin: Option<String>,
}

/// Applies the missing migrations under the advisory lock; returns the sealed admin credential.
async fn migrate(s: Settings) -> Result<(Client, Opened), DbError> {
    let c = connect(&s, "cloister-kms-migrate", None).await?;
    // Waiting for another server's migration may take longer than one statement.
    c.batch_execute("SET statement_timeout = 0").await?;
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let ms = s.statement_timeout.as_millis();
    c.batch_execute(&format!(
        "SET statement_timeout = {ms};
         CREATE TABLE IF NOT EXISTS cloister_kms_migrations (
             version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await?;
    let current: i32 = c
        .query_one(
            "SELECT coalesce(max(version), 0) FROM cloister_kms_migrations",
            &[],
        )
        .await?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(DbError::Kms(KmsError::Internal(format!(
            "the database schema is version {current}, newer than this server knows \
             ({SCHEMA_VERSION}): upgrade this server to the fleet's version"
        ))));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        c.batch_execute("BEGIN").await?;
        let r = async {
            c.batch_execute(sql).await?;
            c.execute(
                "INSERT INTO cloister_kms_migrations (version) VALUES ($1)",
                &[&version],
            )
            .await?;
            c.batch_execute("COMMIT").await
        }
        .await;
        if let Err(e) = r {
            let _ = c.batch_execute("ROLLBACK").await;
            return Err(e.into());
        }
        tracing::info!(version, "applied key store schema migration");
    }
    let admin = c
        .query_opt(
            "SELECT value FROM cloister_kms_meta WHERE name = 'admin'",
            &[],
        )
        .await?
        .map(|r| r.get::<_, String>(0));
    Ok((c, Opened { admin }))
}

/// Loads the master key for a PostgreSQL store: an existing file, or (only for a database that
/// has no records yet) a new one.
fn master_for_database(
    path: &Path,
    database_empty: bool,
) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    if !path.exists() && !database_empty {
        return Err(StoreError::MasterKey(
            path.into(),
            "missing, and the database already holds records: give every server of the fleet \
             the same master key file"
                .into(),
        ));
    }
    let key = super::load_or_create_master(path)?;
    if key.len() != MASTER_KEY_LEN {
        return Err(StoreError::MasterKey(path.into(), "wrong length".into()));
    }
    Ok(key)
}

impl PgBackend {
    /// Connects, migrates, checks the master key against the database and loads the view.
    pub(crate) fn open(
        url: &str,
        master_path: &Path,
        config: &StoreConfig,
    ) -> Result<(PgBackend, Arc<Core>), StoreError> {
        let settings = Settings::new(url, config)?;
        let (handle, stop) = start_runtime()?;
        let s = settings.clone();
        let (lock_client, opened) =
            block(&handle, Duration::from_secs(600), migrate(s)).map_err(DbError::into_store)?;
        let master = master_for_database(master_path, opened.admin.is_none())?;
        let key = aead_key(&master)
            .map_err(|e| StoreError::MasterKey(master_path.into(), e.to_string()))?;
        let core = Arc::new(Core::new(key));
        match &opened.admin {
            Some(sealed) => {
                core.unseal_admin(sealed).map_err(|_| {
                    StoreError::MasterKey(
                        master_path.into(),
                        "does not open the records in the database: every server of a fleet \
                         needs the same master key"
                            .into(),
                    )
                })?;
            }
            None => {
                let cred =
                    new_admin_credential().map_err(|e| StoreError::Postgres(e.to_string()))?;
                let sealed = core
                    .seal_admin(&cred)
                    .map_err(|e| StoreError::Postgres(e.to_string()))?;
                block(&handle, settings.op_timeout, async move {
                    lock_client
                        .execute(
                            "INSERT INTO cloister_kms_meta (name, value) VALUES ('admin', $1)
                             ON CONFLICT (name) DO NOTHING",
                            &[&sealed],
                        )
                        .await?;
                    Ok(())
                })
                .map_err(DbError::into_store)?;
            }
        }
        // The migration connection (and its advisory lock) ends here.
        let pool = Arc::new(Pool {
            settings: settings.clone(),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(settings.pool_size)),
        });
        let mut node_bytes = [0u8; 8];
        aws_lc_rs::rand::fill(&mut node_bytes)
            .map_err(|_| StoreError::Postgres("no randomness".into()))?;
        let node: Arc<str> = hex::encode(node_bytes).into();
        let backend = PgBackend {
            handle,
            _stop: stop,
            pool,
            node,
            acks: Arc::new(Acks::default()),
            seq: AtomicU64::new(1),
            synced_ms: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            settings,
        };
        // The first load, before anything is served.
        let (pool, c2) = (backend.pool.clone(), core.clone());
        block(&backend.handle, backend.settings.op_timeout, async move {
            let conn = pool.get().await?;
            resync(conn.client(), &c2).await?;
            let mut conn = conn;
            conn.reusable = true;
            Ok(())
        })
        .map_err(DbError::into_store)?;
        backend.mark_synced();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        backend.handle.spawn(listen_loop(
            backend.settings.clone(),
            core.clone(),
            backend.node.clone(),
            backend.acks.clone(),
            backend.synced_ms.clone(),
            backend.epoch,
            ready_tx,
        ));
        // Serve only once the listener receives changes (the other servers then wait for
        // this one to apply their writes).
        if ready_rx.recv_timeout(backend.settings.op_timeout).is_err() {
            return Err(StoreError::Postgres(
                "the change listener could not connect to the database".into(),
            ));
        }
        Ok((backend, core))
    }

    fn mark_synced(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.synced_ms.store(ms.max(1), Ordering::Release);
    }

    /// Refuses to answer from a view that has not been resynced for `stale_after`.
    pub(crate) fn check_fresh(&self) -> KmsResult<()> {
        let last = self.synced_ms.load(Ordering::Acquire);
        let now = self.epoch.elapsed().as_millis() as u64;
        if last == 0 || now.saturating_sub(last) > self.settings.stale_after.as_millis() as u64 {
            return Err(KmsError::DependencyTimeout(
                "The key store cannot confirm the current key state: its database is unreachable"
                    .into(),
            ));
        }
        Ok(())
    }

    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, DbError>> + Send + 'static,
    ) -> KmsResult<T> {
        block(&self.handle, self.settings.op_timeout, fut).map_err(DbError::into_kms)
    }

    /// Starts a write: its sequence number, registered for acknowledgements.
    fn begin_write(&self) -> WriteGuard<'_> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.acks.map.lock() {
            m.insert(seq, HashSet::new());
        }
        WriteGuard { pg: self, seq }
    }

    /// Waits (at most `ack_wait`) until every other live server has applied write `seq`.
    fn await_acks(&self, seq: u64) {
        let deadline = Instant::now() + self.settings.ack_wait;
        let node = self.node.clone();
        let pool = self.pool.clone();
        let live = move || {
            let pool = pool.clone();
            let node = node.clone();
            async move {
                let conn = pool.get().await?;
                let rows = conn
                    .client()
                    .query(
                        "SELECT DISTINCT substr(application_name, $1) FROM pg_stat_activity
                         WHERE application_name LIKE $2 AND datname = current_database()",
                        &[&(NODE_PREFIX.len() as i32 + 1), &format!("{NODE_PREFIX}%")],
                    )
                    .await?;
                let mut conn = conn;
                conn.reusable = true;
                Ok(rows
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .filter(|n| *n != *node)
                    .collect::<HashSet<String>>())
            }
        };
        let Ok(mut others) = block(&self.handle, self.settings.op_timeout, live()) else {
            return;
        };
        let mut next_check = Instant::now() + Duration::from_millis(200);
        let Ok(mut map) = self.acks.map.lock() else {
            return;
        };
        loop {
            let done = map
                .get(&seq)
                .is_none_or(|acked| others.iter().all(|n| acked.contains(n)));
            let now = Instant::now();
            if done || now >= deadline {
                if !done {
                    tracing::warn!(seq, "not every key server acknowledged a write in time");
                }
                return;
            }
            if now >= next_check {
                // Servers that went away since do not hold the write up.
                drop(map);
                if let Ok(live_now) = block(&self.handle, self.settings.op_timeout, live()) {
                    others.retain(|n| live_now.contains(n));
                }
                next_check = Instant::now() + Duration::from_millis(200);
                map = match self.acks.map.lock() {
                    Ok(m) => m,
                    Err(_) => return,
                };
                continue;
            }
            let wait = deadline.min(next_check) - now;
            map = match self.acks.cv.wait_timeout(map, wait) {
                Ok((m, _)) => m,
                Err(_) => return,
            };
        }
    }

    pub(crate) fn insert_key(
        &self,
        core: &Core,
        id: [u8; 16],
        entry: Arc<KeyEntry>,
    ) -> KmsResult<()> {
        let json =
            serde_json::to_string(&entry.record).map_err(|e| KmsError::internal("encode", e))?;
        let w = self.begin_write();
        let key_id = entry.record.id.clone();
        let (pool, node, seq) = (self.pool.clone(), self.node.clone(), w.seq);
        let rev = self.run(async move {
            transact(&pool, move |c| {
                let (json, key_id, node) = (json.clone(), key_id.clone(), node.clone());
                Box::pin(async move {
                    let rev = next_rev(c).await?;
                    c.execute(
                        "INSERT INTO cloister_kms_keys (id, rev, record) VALUES ($1, $2, $3::text::jsonb)",
                        &[&key_id, &rev, &json],
                    )
                    .await?;
                    notify(c, &format!("{node} {seq} k {rev} {key_id}")).await?;
                    Ok(rev)
                })
            })
            .await
        })?;
        core.put_entry(id, rev, entry)?;
        self.await_acks(w.seq);
        Ok(())
    }

    pub(crate) fn update_key<T>(
        &self,
        core: &Core,
        id: &[u8; 16],
        f: impl FnOnce(&mut KeyRecord) -> KmsResult<T>,
    ) -> KmsResult<(Arc<KeyEntry>, T)> {
        let key_id = format_key_id(id);
        let w = self.begin_write();
        let mut f = Some(f);
        // (revision the closure saw, new entry, its output)
        let mut done: Option<(i64, Arc<KeyEntry>, T)> = None;
        let mut attempt = 0;
        loop {
            let (pool, kid) = (self.pool.clone(), key_id.clone());
            let step = self.run(async move {
                let conn = pool.get().await?;
                let c = conn.client();
                let r = async {
                    // Writers of one key queue on a lock taken before the transaction's
                    // snapshot, so that each sees the one before it committed instead of
                    // failing to serialize behind it.
                    c.execute("SELECT pg_advisory_lock(hashtextextended($1, 7))", &[&kid])
                        .await?;
                    c.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE").await?;
                    let row = c
                        .query_opt(
                            "SELECT rev, record::text FROM cloister_kms_keys WHERE id = $1 FOR UPDATE",
                            &[&kid],
                        )
                        .await?;
                    Ok::<_, DbError>(row.map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1))))
                }
                .await;
                Ok((conn, r))
            })?;
            let (conn, row) = step;
            let row = match row {
                Ok(row) => row,
                Err(e) => {
                    self.release(conn, true);
                    if e.retryable() && attempt < MAX_RETRIES {
                        attempt += 1;
                        self.pause(attempt);
                        continue;
                    }
                    return Err(e.into_kms());
                }
            };
            let Some((rev, json)) = row else {
                self.release(conn, true);
                return Err(KmsError::NotFound(format!("Key '{key_id}' does not exist")));
            };
            match &done {
                None => {
                    let mut run = || -> KmsResult<(Arc<KeyEntry>, T)> {
                        let mut record: KeyRecord = serde_json::from_str(&json)
                            .map_err(|e| KmsError::Internal(format!("key {key_id}: {e}")))?;
                        let f = f
                            .take()
                            .ok_or_else(|| KmsError::Internal("update ran twice".into()))?;
                        let out = f(&mut record)?;
                        if record.materials.len() > MAX_MATERIALS {
                            return Err(KmsError::LimitExceeded("too many key rotations".into()));
                        }
                        let prev = core.cached_key(id)?;
                        Ok((Arc::new(core.entry(record, prev.as_deref())?), out))
                    };
                    match run() {
                        Ok((entry, out)) => done = Some((rev, entry, out)),
                        Err(e) => {
                            self.release(conn, true);
                            return Err(e);
                        }
                    }
                }
                Some((seen, ..)) if *seen != rev => {
                    self.release(conn, true);
                    return Err(KmsError::Internal(
                        "the key changed concurrently; retry the request".into(),
                    ));
                }
                Some(_) => {}
            }
            let Some((_, entry, _)) = &done else {
                return Err(KmsError::Internal("update lost its result".into()));
            };
            let json = serde_json::to_string(&entry.record)
                .map_err(|e| KmsError::internal("encode", e))?;
            let (kid, node, seq) = (key_id.clone(), self.node.clone(), w.seq);
            let committed = self.run(async move {
                let mut conn = conn;
                let c = conn.client();
                let r = async {
                    let rev = next_rev(c).await?;
                    c.execute(
                        "UPDATE cloister_kms_keys SET rev = $2, record = $3::text::jsonb WHERE id = $1",
                        &[&kid, &rev, &json],
                    )
                    .await?;
                    notify(c, &format!("{node} {seq} k {rev} {kid}")).await?;
                    c.batch_execute("COMMIT; SELECT pg_advisory_unlock_all()")
                        .await?;
                    Ok::<_, DbError>(rev)
                }
                .await;
                match r {
                    Ok(rev) => {
                        conn.reusable = true;
                        Ok(Ok(rev))
                    }
                    Err(e) => {
                        if conn
                            .client()
                            .batch_execute("ROLLBACK; SELECT pg_advisory_unlock_all()")
                            .await
                            .is_ok()
                        {
                            conn.reusable = true;
                        }
                        Ok(Err(e))
                    }
                }
            })?;
            match committed {
                Ok(new_rev) => {
                    let Some((_, entry, out)) = done else {
                        return Err(KmsError::Internal("update lost its result".into()));
                    };
                    core.put_entry(*id, new_rev, entry.clone())?;
                    self.await_acks(w.seq);
                    return Ok((entry, out));
                }
                Err(e) if e.retryable() && attempt < MAX_RETRIES => {
                    attempt += 1;
                    self.pause(attempt);
                    continue;
                }
                Err(e) => return Err(e.into_kms()),
            }
        }
    }

    /// Waits before retry `attempt` (a short random time growing with the attempts).
    fn pause(&self, attempt: u32) {
        let _ = self.run(async move {
            backoff(attempt).await;
            Ok(())
        });
    }

    /// Ends an open transaction on `conn` (rolled back), keeping the connection if `reuse`.
    fn release(&self, conn: Conn, reuse: bool) {
        let _ = self.run(async move {
            let mut conn = conn;
            if reuse
                && conn
                    .client()
                    .batch_execute("ROLLBACK; SELECT pg_advisory_unlock_all()")
                    .await
                    .is_ok()
            {
                conn.reusable = true;
            }
            Ok(())
        });
    }

    pub(crate) fn create_alias(&self, core: &Core, name: &str, rec: AliasRecord) -> KmsResult<()> {
        let json = serde_json::to_string(&rec).map_err(|e| KmsError::internal("encode", e))?;
        let w = self.begin_write();
        let (pool, node, seq, n, target) = (
            self.pool.clone(),
            self.node.clone(),
            w.seq,
            name.to_string(),
            rec.target.clone(),
        );
        let r = self.run(async move {
            transact(&pool, move |c| {
                let (json, n, node, target) =
                    (json.clone(), n.clone(), node.clone(), target.clone());
                Box::pin(async move {
                    let rev = next_rev(c).await?;
                    c.execute(
                        "INSERT INTO cloister_kms_aliases (name, target, rev, record)
                         VALUES ($1, $2, $3, $4::text::jsonb)",
                        &[&n, &target, &rev, &json],
                    )
                    .await?;
                    notify(c, &format!("{node} {seq} a {rev} {n}")).await?;
                    Ok(rev)
                })
            })
            .await
            .map(Ok)
            .or_else(|e| {
                if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                    Ok(Err(()))
                } else {
                    Err(e)
                }
            })
        })?;
        let rev = r.map_err(|()| alias_exists(name))?;
        core.apply_alias(name, rev, rec)?;
        self.await_acks(w.seq);
        Ok(())
    }

    pub(crate) fn update_alias(&self, core: &Core, name: &str, target: &str) -> KmsResult<()> {
        let w = self.begin_write();
        let (pool, node, seq, n, target) = (
            self.pool.clone(),
            self.node.clone(),
            w.seq,
            name.to_string(),
            target.to_string(),
        );
        let (rev, rec) = self.run(async move {
            transact(&pool, move |c| {
                let (n, node, target) = (n.clone(), node.clone(), target.clone());
                Box::pin(async move {
                    let row = c
                        .query_opt(
                            "SELECT record::text FROM cloister_kms_aliases WHERE name = $1 FOR UPDATE",
                            &[&n],
                        )
                        .await?
                        .ok_or_else(|| DbError::Kms(alias_not_found(&n)))?;
                    let mut rec: AliasRecord = serde_json::from_str(&row.get::<_, String>(0))
                        .map_err(|e| DbError::Kms(KmsError::Internal(format!("alias {n}: {e}"))))?;
                    rec.target = target.clone();
                    rec.updated = super::now();
                    let json = serde_json::to_string(&rec)
                        .map_err(|e| DbError::Kms(KmsError::internal("encode", e)))?;
                    let rev = next_rev(c).await?;
                    c.execute(
                        "UPDATE cloister_kms_aliases SET target = $2, rev = $3, record = $4::text::jsonb
                         WHERE name = $1",
                        &[&n, &target, &rev, &json],
                    )
                    .await?;
                    notify(c, &format!("{node} {seq} a {rev} {n}")).await?;
                    Ok((rev, rec))
                })
            })
            .await
        })?;
        core.apply_alias(name, rev, rec)?;
        self.await_acks(w.seq);
        Ok(())
    }

    pub(crate) fn delete_alias(&self, core: &Core, name: &str) -> KmsResult<()> {
        let w = self.begin_write();
        let (pool, node, seq, n) = (
            self.pool.clone(),
            self.node.clone(),
            w.seq,
            name.to_string(),
        );
        let rev = self.run(async move {
            transact(&pool, move |c| {
                let (n, node) = (n.clone(), node.clone());
                Box::pin(async move {
                    let gone = c
                        .execute("DELETE FROM cloister_kms_aliases WHERE name = $1", &[&n])
                        .await?;
                    if gone == 0 {
                        return Err(DbError::Kms(alias_not_found(&n)));
                    }
                    let rev = next_rev(c).await?;
                    notify(c, &format!("{node} {seq} a {rev} {n}")).await?;
                    Ok(rev)
                })
            })
            .await
        })?;
        core.remove_alias_below(name, rev)?;
        self.await_acks(w.seq);
        Ok(())
    }

    pub(crate) fn purge_expired(&self, core: &Core, at: f64) -> KmsResult<usize> {
        let w = self.begin_write();
        let (pool, node, seq) = (self.pool.clone(), self.node.clone(), w.seq);
        let (rev, keys, aliases) = self.run(async move {
            transact(&pool, move |c| {
                let node = node.clone();
                Box::pin(async move {
                    let due: Vec<String> = c
                        .query(
                            "SELECT id FROM cloister_kms_keys
                             WHERE record->>'state' = 'PendingDeletion'
                               AND (record->>'deletion_date')::float8 <= $1
                               AND COALESCE(jsonb_array_length(
                                   record->'multi_region'->'replicas'), 0) = 0
                             FOR UPDATE",
                            &[&at],
                        )
                        .await?
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    if due.is_empty() {
                        return Ok((0, Vec::new(), Vec::new()));
                    }
                    let aliases: Vec<String> = c
                        .query(
                            "DELETE FROM cloister_kms_aliases WHERE target = ANY($1) RETURNING name",
                            &[&due],
                        )
                        .await?
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    c.execute("DELETE FROM cloister_kms_keys WHERE id = ANY($1)", &[&due])
                        .await?;
                    let rev = next_rev(c).await?;
                    for k in &due {
                        notify(c, &format!("{node} {seq} k {rev} {k}")).await?;
                    }
                    for a in &aliases {
                        notify(c, &format!("{node} {seq} a {rev} {a}")).await?;
                    }
                    Ok((rev, due, aliases))
                })
            })
            .await
        })?;
        for k in &keys {
            if let Some(id) = parse_key_id(k) {
                core.remove_key_below(&id, rev)?;
            }
        }
        for a in &aliases {
            core.remove_alias_below(a, rev)?;
        }
        if !keys.is_empty() {
            self.await_acks(w.seq);
        }
        Ok(keys.len())
    }

    pub(crate) fn admin_credential(&self, core: &Core) -> KmsResult<super::AdminCredential> {
        let pool = self.pool.clone();
        let sealed = self.run(async move {
            let mut conn = pool.get().await?;
            let row = conn
                .client()
                .query_opt(
                    "SELECT value FROM cloister_kms_meta WHERE name = 'admin'",
                    &[],
                )
                .await?;
            conn.reusable = true;
            Ok(row.map(|r| r.get::<_, String>(0)))
        })?;
        match sealed {
            Some(s) => core.unseal_admin(&s),
            None => Err(KmsError::Internal(
                "the database has no administrator credential".into(),
            )),
        }
    }
}

/// Removes a write's acknowledgement slot when it ends.
struct WriteGuard<'a> {
    pg: &'a PgBackend,
    seq: u64,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.pg.acks.map.lock() {
            m.remove(&self.seq);
        }
    }
}

/// Brings the view in line with the database: rows whose revision differs are reloaded, rows
/// gone are removed (after a second look, so that a row written meanwhile is kept).
async fn resync(c: &Client, core: &Core) -> Result<(), DbError> {
    let keys: Vec<(String, i64)> = c
        .query("SELECT id, rev FROM cloister_kms_keys", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let aliases: Vec<(String, i64)> = c
        .query("SELECT name, rev FROM cloister_kms_aliases", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let (stale_keys, gone_keys, stale_aliases, gone_aliases) = {
        let st = core.read_state()?;
        let mut stale_keys = Vec::new();
        let mut present = HashSet::new();
        for (id, rev) in &keys {
            let Some(b) = parse_key_id(id) else { continue };
            present.insert(b);
            if st.key_revs.get(&b) != Some(rev) {
                stale_keys.push(id.clone());
            }
        }
        let gone_keys: Vec<([u8; 16], i64)> = st
            .key_revs
            .iter()
            .filter(|(k, _)| !present.contains(*k))
            .map(|(k, r)| (*k, *r))
            .collect();
        let mut stale_aliases = Vec::new();
        let mut present = HashSet::new();
        for (name, rev) in &aliases {
            present.insert(name.as_str());
            if st.alias_revs.get(name) != Some(rev) {
                stale_aliases.push(name.clone());
            }
        }
        let gone_aliases: Vec<(String, i64)> = st
            .alias_revs
            .iter()
            .filter(|(k, _)| !present.contains(k.as_str()))
            .map(|(k, r)| (k.clone(), *r))
            .collect();
        (stale_keys, gone_keys, stale_aliases, gone_aliases)
    };
    for chunk in stale_keys.chunks(500) {
        reload_keys(c, core, chunk).await?;
    }
    for chunk in stale_aliases.chunks(500) {
        reload_aliases(c, core, chunk).await?;
    }
    for (id, rev) in gone_keys {
        let k = format_key_id(&id);
        let still = c
            .query_opt("SELECT 1 FROM cloister_kms_keys WHERE id = $1", &[&k])
            .await?;
        if still.is_none() {
            core.remove_key_below(&id, rev + 1)?;
        }
    }
    for (name, rev) in gone_aliases {
        let still = c
            .query_opt(
                "SELECT 1 FROM cloister_kms_aliases WHERE name = $1",
                &[&name],
            )
            .await?;
        if still.is_none() {
            core.remove_alias_below(&name, rev + 1)?;
        }
    }
    Ok(())
}

async fn reload_keys(c: &Client, core: &Core, ids: &[String]) -> Result<(), DbError> {
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let rows = c
        .query(
            "SELECT rev, record::text FROM cloister_kms_keys WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    for r in rows {
        let rev: i64 = r.get(0);
        let json: String = r.get(1);
        let record: KeyRecord = match serde_json::from_str(&json) {
            Ok(rec) => rec,
            Err(e) => {
                tracing::error!(error = %e, "unreadable key record in the database");
                continue;
            }
        };
        let id = record.id.clone();
        if let Err(e) = core.apply_key(rev, record) {
            tracing::error!(key = %id, error = %e, "key record cannot be loaded");
        }
    }
    Ok(())
}

async fn reload_aliases(c: &Client, core: &Core, names: &[String]) -> Result<(), DbError> {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let rows = c
        .query(
            "SELECT name, rev, record::text FROM cloister_kms_aliases WHERE name = ANY($1)",
            &[&names],
        )
        .await?;
    for r in rows {
        let name: String = r.get(0);
        let rev: i64 = r.get(1);
        let json: String = r.get(2);
        match serde_json::from_str::<AliasRecord>(&json) {
            Ok(rec) => core.apply_alias(&name, rev, rec)?,
            Err(e) => tracing::error!(alias = %name, error = %e, "unreadable alias record"),
        }
    }
    Ok(())
}

/// Keeps the view current for as long as the store lives: reconnects after any failure.
async fn listen_loop(
    s: Settings,
    core: Arc<Core>,
    node: Arc<str>,
    acks: Arc<Acks>,
    synced_ms: Arc<AtomicU64>,
    epoch: Instant,
    ready: std::sync::mpsc::SyncSender<()>,
) {
    let mut failures = 0u32;
    loop {
        match listen_session(&s, &core, &node, &acks, &synced_ms, epoch, &ready).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = ?e, "key store listener lost its database connection");
                }
            }
        }
        let ms = 100 * u64::from(failures.min(10));
        tokio::time::sleep(Duration::from_millis(ms.max(50))).await;
    }
}

async fn listen_session(
    s: &Settings,
    core: &Core,
    node: &str,
    acks: &Acks,
    synced_ms: &AtomicU64,
    epoch: Instant,
    ready: &std::sync::mpsc::SyncSender<()>,
) -> Result<(), DbError> {
    let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel();
    let c = connect(s, "cloister-kms-listener", Some(ntx)).await?;
    c.batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {CHANNEL}_ack_{node}"))
        .await?;
    resync(&c, core).await?;
    let mark = || {
        let ms = epoch.elapsed().as_millis() as u64;
        synced_ms.store(ms.max(1), Ordering::Release);
    };
    mark();
    c.batch_execute(&format!("SET application_name = '{NODE_PREFIX}{node}'"))
        .await?;
    let _ = ready.try_send(());
    let mut tick = tokio::time::interval(s.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let ack_channel = format!("{CHANNEL}_ack_{node}");
    loop {
        tokio::select! {
            n = nrx.recv() => {
                let Some(n) = n else {
                    return Err(DbError::Kms(KmsError::Internal("listener connection closed".into())));
                };
                let mut batch = vec![n];
                while let Ok(n) = nrx.try_recv() {
                    batch.push(n);
                }
                apply_batch(&c, core, node, acks, &ack_channel, batch).await?;
            }
            _ = tick.tick() => {
                let started = epoch.elapsed().as_millis() as u64;
                resync(&c, core).await?;
                synced_ms.store(started.max(1), Ordering::Release);
            }
        }
    }
}

/// Applies change notifications of other servers (reloading the rows), then acknowledges them;
/// records acknowledgements of this server's writes.
async fn apply_batch(
    c: &Client,
    core: &Core,
    node: &str,
    acks: &Acks,
    ack_channel: &str,
    batch: Vec<tokio_postgres::Notification>,
) -> Result<(), DbError> {
    let mut keys = Vec::new();
    let mut aliases = Vec::new();
    let mut to_ack: Vec<(String, String)> = Vec::new();
    for n in &batch {
        if n.channel() == ack_channel {
            // "<seq> <node>"
            let mut it = n.payload().splitn(2, ' ');
            if let (Some(seq), Some(from)) = (it.next(), it.next()) {
                if let Ok(seq) = seq.parse::<u64>() {
                    if let Ok(mut m) = acks.map.lock() {
                        if let Some(set) = m.get_mut(&seq) {
                            set.insert(from.to_string());
                        }
                    }
                    acks.cv.notify_all();
                }
            }
            continue;
        }
        // "<origin> <seq> <k|a> <rev> <name>"
        let mut it = n.payload().splitn(5, ' ');
        let (Some(origin), Some(seq), Some(kind), Some(rev), Some(name)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        if origin == node {
            continue;
        }
        let rev: i64 = rev.parse().unwrap_or(i64::MAX);
        match kind {
            "k" => keys.push((name.to_string(), rev)),
            "a" => aliases.push((name.to_string(), rev)),
            _ => {}
        }
        to_ack.push((origin.to_string(), seq.to_string()));
    }
    if !keys.is_empty() {
        let ids: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
        reload_keys(c, core, &ids).await?;
        let st_missing: Vec<([u8; 16], i64)> = {
            let st = core.read_state()?;
            keys.iter()
                .filter_map(|(k, rev)| parse_key_id(k).map(|b| (b, *rev)))
                .filter(|(b, rev)| st.key_revs.get(b).is_some_and(|r| r < rev))
                .collect()
        };
        // Still older than the notified revision after the reload: the row is gone.
        for (b, rev) in st_missing {
            let k = format_key_id(&b);
            if c.query_opt("SELECT 1 FROM cloister_kms_keys WHERE id = $1", &[&k])
                .await?
                .is_none()
            {
                core.remove_key_below(&b, rev)?;
            }
        }
    }
    if !aliases.is_empty() {
        let names: Vec<String> = aliases.iter().map(|(a, _)| a.clone()).collect();
        reload_aliases(c, core, &names).await?;
        let missing: Vec<(String, i64)> = {
            let st = core.read_state()?;
            aliases
                .iter()
                .filter(|(a, rev)| st.alias_revs.get(a).is_some_and(|r| r < rev))
                .cloned()
                .collect()
        };
        for (a, rev) in missing {
            if c.query_opt("SELECT 1 FROM cloister_kms_aliases WHERE name = $1", &[&a])
                .await?
                .is_none()
            {
                core.remove_alias_below(&a, rev)?;
            }
        }
    }
    to_ack.sort();
    to_ack.dedup();
    for (origin, seq) in to_ack {
        if origin.bytes().all(|b| b.is_ascii_hexdigit()) {
            c.execute(
                "SELECT pg_notify($1, $2)",
                &[&format!("{CHANNEL}_ack_{origin}"), &format!("{seq} {node}")],
            )
            .await?;
        }
    }
    Ok(())
}

/// Seals every record again under `new` in one transaction (see
/// [`super::Store::rotate_master_key`]).
pub(crate) fn rotate_master_key(
    url: &str,
    config: &StoreConfig,
    old: &LessSafeKey,
    new: &LessSafeKey,
    force: bool,
) -> Result<usize, StoreError> {
    let settings = Settings::new(url, config)?;
    let (handle, _stop) = start_runtime()?;
    let s = settings.clone();
    let (c, _) =
        block(&handle, Duration::from_secs(600), migrate(s)).map_err(DbError::into_store)?;
    let c = Arc::new(c);
    let c2 = c.clone();
    let live: i64 = block(&handle, settings.op_timeout, async move {
        Ok(c2
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name LIKE $1 AND datname = current_database()",
                &[&format!("{NODE_PREFIX}%")],
            )
            .await?
            .get(0))
    })
    .map_err(DbError::into_store)?;
    if live > 0 && !force {
        return Err(StoreError::Postgres(format!(
            "{live} key server(s) are running on this database: stop them first (they hold \
             material unsealed under the old master key)"
        )));
    }
    let c2 = c.clone();
    let rows: Vec<(String, String)> = block(&handle, settings.op_timeout, async move {
        c2.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE; SET LOCAL statement_timeout = 0")
            .await?;
        Ok(c2
            .query(
                "SELECT id, record::text FROM cloister_kms_keys ORDER BY id FOR UPDATE",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    })
    .map_err(DbError::into_store)?;
    let admin: Option<String> = {
        let c2 = c.clone();
        block(&handle, settings.op_timeout, async move {
            Ok(c2
                .query_opt(
                    "SELECT value FROM cloister_kms_meta WHERE name = 'admin' FOR UPDATE",
                    &[],
                )
                .await?
                .map(|r| r.get(0)))
        })
        .map_err(DbError::into_store)?
    };
    let mut updated = Vec::with_capacity(rows.len());
    for (id, json) in rows {
        let mut record: KeyRecord = serde_json::from_str(&json)
            .map_err(|e| StoreError::Record(id.clone(), e.to_string()))?;
        reseal_record(old, new, &mut record)
            .map_err(|e| StoreError::Record(id.clone(), e.to_string()))?;
        let json = serde_json::to_string(&record)
            .map_err(|e| StoreError::Record(id.clone(), e.to_string()))?;
        updated.push((id, json));
    }
    let admin = match admin {
        Some(sealed) => {
            let plain = unseal_with(old, super::ADMIN_AAD, &sealed)
                .map_err(|e| StoreError::Record("admin".into(), e.to_string()))?;
            Some(
                seal_with(new, super::ADMIN_AAD, &plain)
                    .map_err(|e| StoreError::Record("admin".into(), e.to_string()))?,
            )
        }
        None => None,
    };
    let count = updated.len();
    block(&handle, Duration::from_secs(3600), async move {
        for (id, json) in &updated {
            c.execute(
                "UPDATE cloister_kms_keys SET rev = nextval('cloister_kms_rev'),
                 record = $2::text::jsonb WHERE id = $1",
                &[id, json],
            )
            .await?;
        }
        if let Some(a) = &admin {
            c.execute(
                "UPDATE cloister_kms_meta SET value = $1 WHERE name = 'admin'",
                &[a],
            )
            .await?;
        }
        c.batch_execute("COMMIT").await?;
        Ok(())
    })
    .map_err(DbError::into_store)?;
    Ok(count)
}
