//! A fleet on PostgreSQL against one server on the embedded store, same load generator, same
//! run: Decrypt per second (8 keep-alive connections; the fleet's spread over its two servers),
//! then writes per second (CreateKey, and CreateAlias with a new alias each time; 4
//! connections). The PostgreSQL cluster is a private one started for the run (Debian's
//! `postgresql` package, see tests/pg_support). Each workload runs for `BENCH_SECONDS` (default
//! 3 s) after a short warm-up; the ratios fleet / embedded are printed.
//!
//! Run: `cargo bench -p cloister-kms --bench fleet`.

#[path = "../tests/pg_support/mod.rs"]
mod pg_support;

#[path = "support/mod.rs"]
mod support;

use bytes::Bytes;
use cloister_kms::config::Config;
use cloister_kms::server;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::{call, connect, load, BodyFn, Creds};

/// Starts a server over `data_dir` with `cfg` on `rt`; returns its address and credential.
fn start(
    rt: &tokio::runtime::Runtime,
    data_dir: &std::path::Path,
    cfg: &Config,
) -> (SocketAddr, Creds) {
    let (app, admin) = server::open(data_dir, cfg).expect("open");
    let addr = rt.block_on(async {
        let (l, addr) = server::bind("127.0.0.1:0").await.expect("bind");
        tokio::spawn(server::serve(l, app, None, std::future::pending()));
        addr
    });
    (
        addr,
        Creds {
            akid: admin.access_key_id.clone(),
            secret: admin.secret_access_key.to_string(),
        },
    )
}

fn main() {
    let secs = Duration::from_secs_f64(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    );
    let pg = pg_support::PgCluster::start();
    pg.create_db("kms");
    let tmp = tempfile::tempdir().expect("tmp");
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let embedded = start(&server_rt, &tmp.path().join("embedded"), &Config::default());
    let mut fleet_cfg = Config::default();
    fleet_cfg.store.url = Some(pg.url("kms"));
    fleet_cfg.master_key_path = Some(tmp.path().join("fleet-master.key"));
    let a = start(&server_rt, &tmp.path().join("a"), &fleet_cfg);
    let b = start(&server_rt, &tmp.path().join("b"), &fleet_cfg);
    let fleet = [a.0, b.0];
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let rows = client_rt.block_on(async {
        let mut rows = Vec::new();
        let setup = |addr: SocketAddr, creds: Creds| async move {
            let mut s = connect(addr).await;
            let k = call(&mut s, addr, &creds, "CreateKey", &json!({})).await;
            let id = k["KeyMetadata"]["KeyId"].as_str().expect("id").to_string();
            let e = call(
                &mut s,
                addr,
                &creds,
                "Encrypt",
                &json!({"KeyId": id, "Plaintext": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}),
            )
            .await;
            (id, e["CiphertextBlob"].clone())
        };
        let (emb_key, emb_blob) = setup(embedded.0, embedded.1.clone()).await;
        let (fleet_key, fleet_blob) = setup(a.0, a.1.clone()).await;
        let decrypt = |blob: Value| -> BodyFn {
            let body =
                Bytes::from(serde_json::to_vec(&json!({"CiphertextBlob": blob})).expect("json"));
            Arc::new(move |_| body.clone())
        };
        let create_key: BodyFn = Arc::new(|_| Bytes::from_static(b"{}"));
        let create_alias = |prefix: &'static str, key: String| -> BodyFn {
            Arc::new(move |n| {
                Bytes::from(
                    serde_json::to_vec(
                        &json!({"AliasName": format!("alias/{prefix}-{n}"), "TargetKeyId": key}),
                    )
                    .expect("json"),
                )
            })
        };
        for (label, op, conns, emb_body, fleet_body) in [
            (
                "Decrypt",
                "Decrypt",
                8,
                decrypt(emb_blob.clone()),
                decrypt(fleet_blob.clone()),
            ),
            (
                "CreateKey",
                "CreateKey",
                4,
                create_key.clone(),
                create_key.clone(),
            ),
            (
                "CreateAlias",
                "CreateAlias",
                4,
                create_alias("emb", emb_key.clone()),
                create_alias("fleet", fleet_key.clone()),
            ),
        ] {
            let e = load(&[embedded.0], &embedded.1, op, emb_body, conns, secs).await;
            let f = load(&fleet, &a.1, op, fleet_body, conns, secs).await;
            rows.push((label, conns, e, f));
        }
        rows
    });
    println!("workload      conns  embedded (1 server) /s  PostgreSQL (2 servers) /s  ratio");
    for (label, conns, e, f) in rows {
        println!(
            "{label:<13} {conns:>5}  {e:>24.0}  {f:>25.0}  {:>5.2}",
            f / e
        );
    }
    // The servers' runtimes end with the process; the cluster is stopped on drop.
    drop(pg);
    drop(tmp);
    std::process::exit(0);
}
