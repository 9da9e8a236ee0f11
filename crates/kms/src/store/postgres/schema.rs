//! The schema and the master key of a PostgreSQL store: migrations applied under an advisory
//! lock, the check that the master key is the database's, and the master key rotation (every
//! record sealed again in one transaction).

use super::*;

/// What a migration run found.
pub(super) struct Opened {
    pub(super) admin: Option<String>,
}

/// Applies the missing migrations under the advisory lock; returns the sealed admin credential.
pub(super) async fn migrate(s: Settings) -> Result<(Client, Opened), DbError> {
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
    // A negative version (never written) skips every migration, as it always did.
    let done = usize::try_from(current).unwrap_or(usize::MAX);
    for (version, sql) in (1..=SCHEMA_VERSION).zip(MIGRATIONS).skip(done) {
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
pub(super) fn master_for_database(
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
    let key = crate::store::load_or_create_master(path)?;
    if key.len() != MASTER_KEY_LEN {
        return Err(StoreError::MasterKey(path.into(), "wrong length".into()));
    }
    Ok(key)
}

/// Seals every record again under `new` in one transaction (see
/// [`crate::store::Store::rotate_master_key`]).
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
            let plain = unseal_with(old, crate::store::ADMIN_AAD, &sealed)
                .map_err(|e| StoreError::Record("admin".into(), e.to_string()))?;
            Some(
                seal_with(new, crate::store::ADMIN_AAD, &plain)
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
