//! Keeping the in-memory view current across servers: LISTEN/NOTIFY batches applied as they
//! come, a periodic resync by revision, and reloads of the rows a notification names.

use super::*;

/// Brings the view in line with the database: rows whose revision differs are reloaded, rows
/// gone are removed (after a second look, so that a row written meanwhile is kept).
pub(super) async fn resync(c: &Client, core: &Core) -> Result<(), DbError> {
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

pub(super) async fn reload_keys(c: &Client, core: &Core, ids: &[String]) -> Result<(), DbError> {
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

pub(super) async fn reload_aliases(
    c: &Client,
    core: &Core,
    names: &[String],
) -> Result<(), DbError> {
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
pub(super) async fn listen_loop(
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

pub(super) async fn listen_session(
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
        let ms = saturating_millis(epoch.elapsed());
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
                let started = saturating_millis(epoch.elapsed());
                resync(&c, core).await?;
                synced_ms.store(started.max(1), Ordering::Release);
            }
        }
    }
}

/// Applies change notifications of other servers (reloading the rows), then acknowledges them;
/// records acknowledgements of this server's writes.
pub(super) async fn apply_batch(
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
