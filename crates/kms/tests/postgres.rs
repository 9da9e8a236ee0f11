//! Several key servers on one PostgreSQL database (a private cluster each test starts, see
//! `pg_support`): changes made through one server are in effect on the other when the write is
//! answered, conflicting writes resolve as AWS's do, the schema migrates from an older version
//! and a newer one is refused, and the whole boto3 suite passes with its requests alternating
//! between two servers (a small HTTP proxy in this file sends each request to the next one).

mod common;
mod pg_support;

use common::{RawClient, TestServer};
use pg_support::PgCluster;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The test config of `common`, on PostgreSQL, with one master key for the fleet.
fn fleet_config(
    url: &str,
    master: &Path,
    anchor: Option<std::path::PathBuf>,
) -> cloister_kms::config::Config {
    let mut cfg = common::config(anchor);
    cfg.store.url = Some(url.to_string());
    cfg.master_key_path = Some(master.to_path_buf());
    cfg
}

fn admin(server: &TestServer) -> (String, String) {
    (
        server.admin.access_key_id.clone(),
        server.admin.secret_access_key.to_string(),
    )
}

fn client(server: &TestServer) -> RawClient {
    let (a, s) = admin(server);
    RawClient::connect(server.addr, &a, &s)
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
fn changes_through_one_server_are_in_effect_on_the_other() {
    let pg = PgCluster::start();
    pg.create_db("kms");
    let tmp = tempfile::tempdir().unwrap();
    let master = tmp.path().join("fleet-master.key");
    let url = pg.url("kms");
    let a = TestServer::start(&tmp.path().join("a"), fleet_config(&url, &master, None), 2);
    let b = TestServer::start(&tmp.path().join("b"), fleet_config(&url, &master, None), 2);
    assert_eq!(
        a.admin.access_key_id, b.admin.access_key_id,
        "one credential"
    );
    let (mut ca, mut cb) = (client(&a), client(&b));

    // Created through A, used through B at once.
    let (st, v) = ca.call("CreateKey", b"{}");
    assert_eq!(st, 200, "{v}");
    let key = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let (st, enc) = cb.call(
        "Encrypt",
        json!({"KeyId": key, "Plaintext": "aGVsbG8="})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(st, 200, "{enc}");
    let blob = enc["CiphertextBlob"].as_str().unwrap().to_string();
    let (st, dec) = ca.call(
        "Decrypt",
        json!({"CiphertextBlob": blob}).to_string().as_bytes(),
    );
    assert_eq!((st, dec["Plaintext"].as_str()), (200, Some("aGVsbG8=")));

    // Disabled through A: refused by B.
    assert_eq!(
        ca.call("DisableKey", json!({"KeyId": key}).to_string().as_bytes())
            .0,
        200
    );
    let (st, v) = cb.call(
        "Decrypt",
        json!({"CiphertextBlob": blob}).to_string().as_bytes(),
    );
    assert_eq!((st, v["__type"].as_str()), (400, Some("DisabledException")));
    assert_eq!(
        cb.call("EnableKey", json!({"KeyId": key}).to_string().as_bytes())
            .0,
        200
    );
    assert_eq!(
        ca.call(
            "Decrypt",
            json!({"CiphertextBlob": blob}).to_string().as_bytes()
        )
        .0,
        200
    );

    // A policy that denies the app user, put through B, holds on A.
    let (mut app_a, mut app_b) = (
        RawClient::connect(a.addr, "AKIAAPPUSEREXAMPLE1", "app-secret-app-secret"),
        RawClient::connect(b.addr, "AKIAAPPUSEREXAMPLE1", "app-secret-app-secret"),
    );
    let allow_app = json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "root", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:*", "Resource": "*"},
            {"Sid": "app", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:user/app"}, "Action": "kms:Decrypt", "Resource": "*"}
        ]
    });
    let (st, v) = cb.call(
        "PutKeyPolicy",
        json!({"KeyId": key, "PolicyName": "default", "Policy": allow_app.to_string()})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        app_a
            .call(
                "Decrypt",
                json!({"CiphertextBlob": blob}).to_string().as_bytes()
            )
            .0,
        200
    );
    let root_only = json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "root", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:*", "Resource": "*"},
            {"Sid": "noapp", "Effect": "Deny", "Principal": {"AWS": "arn:aws:iam::111122223333:user/app"}, "Action": "kms:Decrypt", "Resource": "*"}
        ]
    });
    assert_eq!(
        ca.call(
            "PutKeyPolicy",
            json!({"KeyId": key, "PolicyName": "default", "Policy": root_only.to_string()})
                .to_string()
                .as_bytes(),
        )
        .0,
        200
    );
    let (st, v) = app_b.call(
        "Decrypt",
        json!({"CiphertextBlob": blob}).to_string().as_bytes(),
    );
    assert_eq!(
        (st, v["__type"].as_str()),
        (400, Some("AccessDeniedException"))
    );

    let root = json!({
        "Version": "2012-10-17",
        "Statement": [{"Sid": "root", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": ["kms:PutKeyPolicy", "kms:GetKeyPolicy", "kms:CreateGrant", "kms:RevokeGrant", "kms:ListGrants", "kms:DescribeKey", "kms:CreateAlias", "kms:TagResource", "kms:ListResourceTags", "kms:Encrypt"], "Resource": "*"}]
    });
    let (st, v) = cb.call(
        "PutKeyPolicy",
        json!({"KeyId": key, "PolicyName": "default", "Policy": root.to_string()})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(st, 200, "{v}");
    // A grant made through A lets the app decrypt through B; revoked through B, it is gone on A.
    let (st, g) = ca.call(
        "CreateGrant",
        json!({"KeyId": key, "GranteePrincipal": "arn:aws:iam::111122223333:user/app", "Operations": ["Decrypt"]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(st, 200, "{g}");
    assert_eq!(
        app_b
            .call(
                "Decrypt",
                json!({"CiphertextBlob": blob}).to_string().as_bytes()
            )
            .0,
        200
    );
    let (st, v) = cb.call(
        "RevokeGrant",
        json!({"KeyId": key, "GrantId": g["GrantId"]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = app_a.call(
        "Decrypt",
        json!({"CiphertextBlob": blob}).to_string().as_bytes(),
    );
    assert_eq!(
        (st, v["__type"].as_str()),
        (400, Some("AccessDeniedException"))
    );

    // Two servers creating the same alias at once: one wins, the other gets AWS's error.
    for round in 0..20 {
        let name = format!("alias/race-{round}");
        let body = json!({"AliasName": name, "TargetKeyId": key}).to_string();
        let (ab, bb) = (body.clone(), body);
        let (a_addr, b_addr) = (a.addr, b.addr);
        let (akid, secret) = admin(&a);
        let (k2, s2) = (akid.clone(), secret.clone());
        let ta = std::thread::spawn(move || {
            RawClient::connect(a_addr, &akid, &secret).call("CreateAlias", ab.as_bytes())
        });
        let tb = std::thread::spawn(move || {
            RawClient::connect(b_addr, &k2, &s2).call("CreateAlias", bb.as_bytes())
        });
        let (ra, rb) = (ta.join().unwrap(), tb.join().unwrap());
        let mut outcomes = [
            (ra.0, ra.1["__type"].as_str().unwrap_or("").to_string()),
            (rb.0, rb.1["__type"].as_str().unwrap_or("").to_string()),
        ];
        outcomes.sort();
        assert_eq!(
            outcomes,
            [
                (200, String::new()),
                (400, "AlreadyExistsException".to_string())
            ],
            "round {round}"
        );
        // Both servers resolve it to the key.
        for c in [&mut ca, &mut cb] {
            let (st, v) = c.call("DescribeKey", json!({"KeyId": name}).to_string().as_bytes());
            assert_eq!(
                (st, v["KeyMetadata"]["KeyId"].as_str()),
                (200, Some(key.as_str()))
            );
        }
    }

    // Concurrent updates of one key through both servers: none is lost.
    let mut threads = Vec::new();
    for (i, addr) in [a.addr, b.addr, a.addr, b.addr].into_iter().enumerate() {
        let (akid, secret) = admin(&a);
        let key = key.clone();
        threads.push(std::thread::spawn(move || {
            let mut c = RawClient::connect(addr, &akid, &secret);
            for j in 0..10 {
                let body = json!({"KeyId": key, "Tags": [{"TagKey": format!("t{i}-{j}"), "TagValue": "v"}]});
                let (st, v) = c.call("TagResource", body.to_string().as_bytes());
                assert_eq!(st, 200, "{v}");
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    for c in [&mut ca, &mut cb] {
        let (st, v) = c.call(
            "ListResourceTags",
            json!({"KeyId": key, "Limit": 50}).to_string().as_bytes(),
        );
        assert_eq!(st, 200);
        assert_eq!(v["Tags"].as_array().unwrap().len(), 40, "{v}");
    }
}

#[test]
fn migrates_an_older_schema_and_refuses_a_newer_one() {
    let pg = PgCluster::start();
    pg.create_db("old");
    // Version 1, as the first release made it, with an alias row in it.
    pg.psql(
        "old",
        &format!(
            "CREATE TABLE cloister_kms_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
             {}
             INSERT INTO cloister_kms_migrations (version) VALUES (1);
             INSERT INTO cloister_kms_aliases (name, target, record) VALUES
               ('alias/kept', '1234abcd-12ab-34cd-56ef-1234567890ab',
                '{{\"target\": \"1234abcd-12ab-34cd-56ef-1234567890ab\", \"created\": 1.0, \"updated\": 1.0}}');",
            cloister_kms::store::postgres::MIGRATIONS[0]
        ),
    );
    let tmp = tempfile::tempdir().unwrap();
    let master = tmp.path().join("master.key");
    let store_cfg = cloister_kms::config::StoreConfig {
        url: Some(pg.url("old")),
        ..Default::default()
    };
    let store =
        cloister_kms::store::Store::open_configured(&tmp.path().join("d"), &master, &store_cfg)
            .expect("open and migrate");
    assert_eq!(
        pg.psql(
            "old",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM cloister_kms_migrations"
        ),
        format!("1,{}", cloister_kms::store::postgres::SCHEMA_VERSION)
    );
    let alias = store
        .alias("alias/kept")
        .unwrap()
        .expect("the old row is served");
    assert_eq!(alias.target, "1234abcd-12ab-34cd-56ef-1234567890ab");
    store.create_alias("alias/new", &alias.target).unwrap();
    assert!(
        pg.psql(
            "old",
            "SELECT rev FROM cloister_kms_aliases WHERE name = 'alias/new'"
        )
        .parse::<i64>()
        .unwrap()
            > 0
    );
    drop(store);

    // A schema from a newer server is refused with a clear error.
    pg.psql(
        "old",
        "INSERT INTO cloister_kms_migrations (version) VALUES (999)",
    );
    let err =
        cloister_kms::store::Store::open_configured(&tmp.path().join("d"), &master, &store_cfg)
            .expect_err("newer schema");
    let msg = err.to_string();
    assert!(msg.contains("newer than this server knows"), "{msg}");

    // A master key that does not open the records is refused.
    pg.create_db("other");
    let other_cfg = cloister_kms::config::StoreConfig {
        url: Some(pg.url("other")),
        ..Default::default()
    };
    drop(
        cloister_kms::store::Store::open_configured(&tmp.path().join("d"), &master, &other_cfg)
            .unwrap(),
    );
    let wrong = tmp.path().join("wrong.key");
    let err =
        cloister_kms::store::Store::open_configured(&tmp.path().join("d"), &wrong, &other_cfg)
            .expect_err("wrong master key");
    assert!(err.to_string().contains("missing"), "{err}");
    std::fs::write(&wrong, [7u8; 32]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err =
        cloister_kms::store::Store::open_configured(&tmp.path().join("d"), &wrong, &other_cfg)
            .expect_err("wrong master key");
    assert!(err.to_string().contains("same master key"), "{err}");
}

#[test]
fn master_key_rotation_reseals_every_key() {
    let pg = PgCluster::start();
    pg.create_db("rot");
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old.key");
    let new = tmp.path().join("new.key");
    let url = pg.url("rot");
    let (key, blob) = {
        let a = TestServer::start(&tmp.path().join("a"), fleet_config(&url, &old, None), 2);
        let mut c = client(&a);
        let (_, v) = c.call("CreateKey", b"{}");
        let key = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        assert_eq!(
            c.call(
                "RotateKeyOnDemand",
                json!({"KeyId": key}).to_string().as_bytes()
            )
            .0,
            200
        );
        let (_, e) = c.call(
            "Encrypt",
            json!({"KeyId": key, "Plaintext": "c2VjcmV0"})
                .to_string()
                .as_bytes(),
        );
        // Running servers hold the old key: rotation is refused while they do.
        let cfg = fleet_config(&url, &old, None).store;
        let err =
            cloister_kms::store::Store::rotate_master_key(tmp.path(), &cfg, &old, &new, false)
                .expect_err("servers running");
        assert!(err.to_string().contains("stop them first"), "{err}");
        (key, e["CiphertextBlob"].as_str().unwrap().to_string())
    };
    let cfg = fleet_config(&url, &old, None).store;
    let n =
        cloister_kms::store::Store::rotate_master_key(tmp.path(), &cfg, &old, &new, false).unwrap();
    assert_eq!(n, 1);
    // The old key no longer opens the store; the new one does, and old ciphertexts decrypt.
    assert!(
        cloister_kms::store::Store::open_configured(&tmp.path().join("x"), &old, &cfg).is_err()
    );
    let b = TestServer::start(&tmp.path().join("b"), fleet_config(&url, &new, None), 2);
    let mut c = client(&b);
    let (st, d) = c.call(
        "Decrypt",
        json!({"CiphertextBlob": blob}).to_string().as_bytes(),
    );
    assert_eq!(
        (
            st,
            d["Plaintext"].as_str(),
            d["KeyId"].as_str().map(|s| s.ends_with(&key))
        ),
        (200, Some("c2VjcmV0"), Some(true))
    );

    // The embedded store rotates the same way.
    let dir = tmp.path().join("embedded");
    let emb_old = dir.join("master.key");
    let blob = {
        let s = TestServer::start(&dir, common::config(None), 1);
        let mut c = client(&s);
        let (_, v) = c.call("CreateKey", b"{}");
        let key = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        let (_, e) = c.call(
            "Encrypt",
            json!({"KeyId": key, "Plaintext": "c2VjcmV0"})
                .to_string()
                .as_bytes(),
        );
        e["CiphertextBlob"].as_str().unwrap().to_string()
    };
    let emb_new = tmp.path().join("emb-new.key");
    let none = cloister_kms::config::StoreConfig::default();
    assert_eq!(
        cloister_kms::store::Store::rotate_master_key(&dir, &none, &emb_old, &emb_new, false)
            .unwrap(),
        1
    );
    std::fs::rename(&emb_new, &emb_old).unwrap();
    let s = TestServer::start(&dir, common::config(None), 1);
    let (st, d) = client(&s).call(
        "Decrypt",
        json!({"CiphertextBlob": blob}).to_string().as_bytes(),
    );
    assert_eq!((st, d["Plaintext"].as_str()), (200, Some("c2VjcmV0")));
}

/// Reads one HTTP/1.1 message (head and Content-Length body) from `r`; None at end of stream.
fn read_message(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Vec<u8>>> {
    let mut msg = Vec::new();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        msg.extend_from_slice(line.as_bytes());
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let start = msg.len();
    msg.resize(start + len, 0);
    r.read_exact(&mut msg[start..])?;
    Ok(Some(msg))
}

/// A proxy that sends each request to the next of `backends` in turn (keep-alive on both
/// sides, one backend connection per client connection and backend). Serves until dropped.
struct RoundRobin {
    addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Requests sent to each backend.
    counts: Arc<Vec<AtomicUsize>>,
}

impl RoundRobin {
    fn start(backends: Vec<SocketAddr>) -> RoundRobin {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counts: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let next = Arc::new(AtomicUsize::new(0));
        let (stop2, counts2) = (stop.clone(), counts.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if stop2.load(Ordering::Acquire) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (backends, next, counts) = (backends.clone(), next.clone(), counts2.clone());
                std::thread::spawn(move || {
                    let mut client = BufReader::new(conn);
                    let mut ups: Vec<Option<BufReader<TcpStream>>> =
                        backends.iter().map(|_| None).collect();
                    while let Ok(Some(req)) = read_message(&mut client) {
                        let i = next.fetch_add(1, Ordering::Relaxed) % backends.len();
                        counts[i].fetch_add(1, Ordering::Relaxed);
                        let resp = (|| -> std::io::Result<Vec<u8>> {
                            if ups[i].is_none() {
                                ups[i] = Some(BufReader::new(TcpStream::connect(backends[i])?));
                            }
                            let up = ups[i].as_mut().unwrap();
                            up.get_mut().write_all(&req)?;
                            read_message(up)?.ok_or_else(|| std::io::Error::other("closed"))
                        })();
                        let resp = match resp {
                            Ok(r) => r,
                            Err(_) => {
                                ups[i] = None;
                                break;
                            }
                        };
                        if client.get_mut().write_all(&resp).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        RoundRobin { addr, stop, counts }
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
    }
}

#[test]
fn boto3_suite_alternating_between_two_servers() {
    assert!(
        common::have_boto3(),
        "python3 with boto3 is required for this test"
    );
    let pg = PgCluster::start();
    pg.create_db("kms");
    let tmp = tempfile::tempdir().unwrap();
    let attestor = common::Attestor::new(&tmp.path().join("pki"));
    let key = common::enclave_key();
    let image_a = [0xA1u8; 48];
    let image_b = [0xB2u8; 48];
    std::fs::write(
        tmp.path().join("doc-a.cbor"),
        attestor.document(image_a, &key.spki),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("doc-b.cbor"),
        attestor.document(image_b, &key.spki),
    )
    .unwrap();
    let doc_a_vm = attestor.document_as(cloister_attestation::Isolation::Vm, image_a, &key.spki);
    std::fs::write(tmp.path().join("doc-a-vm.cbor"), &doc_a_vm).unwrap();
    std::fs::write(
        tmp.path().join("enclave.pem"),
        common::pkcs8_pem(&key.pkcs8),
    )
    .unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();

    let master = tmp.path().join("fleet-master.key");
    let url = pg.url("kms");
    let cfg = || fleet_config(&url, &master, Some(attestor.root_path()));
    let a = TestServer::start(&tmp.path().join("a"), cfg(), 2);
    let b = TestServer::start(&tmp.path().join("b"), cfg(), 2);
    let proxy = RoundRobin::start(vec![a.addr, b.addr]);
    let (akid, secret) = admin(&a);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/test_kms_boto3.py"
    );
    let status = std::process::Command::new("python3")
        .arg(script)
        .env("KMS_ENDPOINT", format!("http://{}", proxy.addr))
        .env("ADMIN_AKID", &akid)
        .env("ADMIN_SECRET", &secret)
        .env("APP_AKID", "AKIAAPPUSEREXAMPLE1")
        .env("APP_SECRET", "app-secret-app-secret")
        .env("DOC_A", tmp.path().join("doc-a.cbor"))
        .env("DOC_B", tmp.path().join("doc-b.cbor"))
        .env("DOC_A_VM", tmp.path().join("doc-a-vm.cbor"))
        .env("IMAGE_A", hex::encode(image_a))
        .env("IMAGE_B", hex::encode(image_b))
        .env("ENCLAVE_KEY_PEM", tmp.path().join("enclave.pem"))
        .env("OUT_DIR", &out)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .status()
        .expect("run python3");
    assert!(status.success(), "boto3 script failed against two servers");
    let counts: Vec<usize> = proxy
        .counts
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    eprintln!("requests per server: {counts:?}");
    assert!(
        counts.iter().all(|c| *c > 50),
        "both servers answered: {counts:?}"
    );
    let cms = std::fs::read(out.join("decrypt.cms")).unwrap();
    let opened = cloister_sdk::recipient::open_ciphertext_for_recipient(&cms, &key.pkcs8).unwrap();
    assert_eq!(&opened[..], b"enclave secret");
    let _: Value = Value::Null;
}

/// A multi-Region key on PostgreSQL: each Region's policy and state are stored in the same row
/// and read back by a second server; the replica's deletion removes only the replica, and the
/// primary's waiting period begins then.
#[test]
fn multi_region_keys_keep_their_regions_apart_on_postgres() {
    use cloister_kms::service::ops::Caller;
    let pg = PgCluster::start();
    pg.create_db("mrk");
    let tmp = tempfile::tempdir().unwrap();
    let master = tmp.path().join("master.key");
    let store_cfg = cloister_kms::config::StoreConfig {
        url: Some(pg.url("mrk")),
        ..Default::default()
    };
    let open = |dir: &str| {
        let store =
            cloister_kms::store::Store::open_configured(&tmp.path().join(dir), &master, &store_cfg)
                .expect("open");
        cloister_kms::Service::new(store, "us-east-1", "111122223333", None)
            .with_regions(&["eu-west-1".to_string()])
    };
    let (a, b) = (open("a"), open("b"));
    let root = "arn:aws:iam::111122223333:root";
    let call = |s: &cloister_kms::Service, region: &str, op: &str, body: Value| {
        let caller = Caller {
            principal: root.into(),
            region: Some(region.into()),
            ..Caller::default()
        };
        s.handle_as(op, &caller, body.to_string().as_bytes())
            .map(|out| serde_json::from_slice::<Value>(&out).unwrap())
    };
    let k = call(
        &a,
        "us-east-1",
        "CreateKey",
        json!({"MultiRegion": true, "Description": "primary"}),
    )
    .unwrap();
    let key = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    call(
        &a,
        "us-east-1",
        "ReplicateKey",
        json!({"KeyId": key, "ReplicaRegion": "eu-west-1", "Description": "replica"}),
    )
    .unwrap();
    call(&a, "eu-west-1", "DisableKey", json!({"KeyId": key})).unwrap();
    let describe = |region: &str| {
        call(&b, region, "DescribeKey", json!({"KeyId": key})).map(|v| v["KeyMetadata"].clone())
    };
    let (us, eu) = (
        describe("us-east-1").unwrap(),
        describe("eu-west-1").unwrap(),
    );
    assert_eq!(
        (&us["Description"], &us["KeyState"]),
        (&json!("primary"), &json!("Enabled"))
    );
    assert_eq!(
        (&eu["Description"], &eu["KeyState"]),
        (&json!("replica"), &json!("Disabled"))
    );

    let s = call(
        &b,
        "us-east-1",
        "ScheduleKeyDeletion",
        json!({"KeyId": key}),
    )
    .unwrap();
    assert_eq!(s["KeyState"], "PendingReplicaDeletion");
    let s = call(
        &b,
        "eu-west-1",
        "ScheduleKeyDeletion",
        json!({"KeyId": key, "PendingWindowInDays": 7}),
    )
    .unwrap();
    let due = s["DeletionDate"].as_f64().unwrap();
    // Neither key is due yet; then only the replica is.
    assert_eq!(a.store().purge_expired(due - 1.0).unwrap(), 0);
    assert_eq!(a.store().purge_expired(due).unwrap(), 1);
    assert!(describe("eu-west-1").is_err(), "the replica is deleted");
    let us = describe("us-east-1").unwrap();
    assert_eq!(us["KeyState"], "PendingDeletion");
    assert!(us["DeletionDate"].as_f64().unwrap() >= due + 30.0 * 86_400.0 - 1.0);
    assert_eq!(a.store().purge_expired(due + 31.0 * 86_400.0).unwrap(), 1);
    assert!(describe("us-east-1").is_err(), "the primary is deleted");
}
