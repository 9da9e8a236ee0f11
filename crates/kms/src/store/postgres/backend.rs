//! The operations of a PostgreSQL store ([`PgBackend`]): opening, the freshness check, and
//! each write as one SERIALIZABLE transaction that bumps the row's revision and notifies the
//! other servers, waiting until this server's own view has the change.

use super::schema::*;
use super::sync::*;
use super::*;

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

    pub(super) fn mark_synced(&self) {
        let ms = saturating_millis(self.epoch.elapsed());
        self.synced_ms.store(ms.max(1), Ordering::Release);
    }

    /// Refuses to answer from a view that has not been resynced for `stale_after`.
    pub(crate) fn check_fresh(&self) -> KmsResult<()> {
        let last = self.synced_ms.load(Ordering::Acquire);
        let now = saturating_millis(self.epoch.elapsed());
        if last == 0 || now.saturating_sub(last) > saturating_millis(self.settings.stale_after) {
            return Err(KmsError::DependencyTimeout(
                "The key store cannot confirm the current key state: its database is unreachable"
                    .into(),
            ));
        }
        Ok(())
    }

    pub(super) fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, DbError>> + Send + 'static,
    ) -> KmsResult<T> {
        block(&self.handle, self.settings.op_timeout, fut).map_err(DbError::into_kms)
    }

    /// Starts a write: its sequence number, registered for acknowledgements.
    pub(super) fn begin_write(&self) -> WriteGuard<'_> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.acks.map.lock() {
            m.insert(seq, HashSet::new());
        }
        WriteGuard { pg: self, seq }
    }

    /// Waits (at most `ack_wait`) until every other live server has applied write `seq`.
    pub(super) fn await_acks(&self, seq: u64) {
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
                        &[&NODE_ID_START, &format!("{NODE_PREFIX}%")],
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

    #[allow(
        clippy::too_many_lines,
        reason = "one transaction: lock, read, change, write, notify, with its retries"
    )]
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
    pub(super) fn pause(&self, attempt: u32) {
        let _ = self.run(async move {
            backoff(attempt).await;
            Ok(())
        });
    }

    /// Ends an open transaction on `conn` (rolled back), keeping the connection if `reuse`.
    pub(super) fn release(&self, conn: Conn, reuse: bool) {
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
                    rec.updated = crate::store::now();
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

    pub(crate) fn admin_credential(&self, core: &Core) -> KmsResult<crate::store::AdminCredential> {
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
pub(super) struct WriteGuard<'a> {
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
