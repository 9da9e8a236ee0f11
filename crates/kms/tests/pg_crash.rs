//! Crash safety of a fleet on PostgreSQL: two key servers (child processes) on one database take
//! a write load (CreateKey, CreateAlias, Encrypt) spread over both, while they are killed with
//! SIGKILL at random moments and restarted (at least [`KILLS`] times in all), and PostgreSQL
//! itself is stopped (immediate mode, a crash) and started again mid-load. While the database
//! is down the servers answer with AWS's error shapes; afterwards they recover by themselves.
//! Then every acknowledged write must be there and work through either server: each key is
//! described, each alias resolves to its key, each ciphertext decrypts to its plaintext.
//!
//! The children are this test binary itself, re-run with `--ignored --exact pg_child_server`.

mod common;
mod pg_support;

use common::RawClient;
use serde_json::{json, Value};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DIR_ENV: &str = "CLOISTER_KMS_PG_CHILD_DIR";
const URL_ENV: &str = "CLOISTER_KMS_PG_CHILD_URL";
const MASTER_ENV: &str = "CLOISTER_KMS_PG_CHILD_MASTER";
/// Servers killed in all.
const KILLS: usize = 100;
/// Load workers.
const WORKERS: usize = 3;

/// Child entry point: serves the PostgreSQL store named in the environment until killed.
#[test]
#[ignore = "entry point of the crash test's child process"]
fn pg_child_server() {
    let (Ok(dir), Ok(url), Ok(master)) = (
        std::env::var(DIR_ENV),
        std::env::var(URL_ENV),
        std::env::var(MASTER_ENV),
    ) else {
        return;
    };
    let mut config = common::config(None);
    config.store.url = Some(url);
    config.master_key_path = Some(master.into());
    let opts = cloister_kms::server::ServeOptions {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.into(),
        tls: None,
        config,
    };
    cloister_kms::server::serve_blocking(opts, |s| println!("LISTEN {}", s.listen)).expect("serve");
}

/// One server slot: its child process and address.
struct Slot {
    dir: PathBuf,
    url: String,
    master: PathBuf,
    child: Option<Child>,
    addr: Option<SocketAddr>,
}

impl Slot {
    fn start(&mut self) {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "pg_child_server",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, &self.dir)
            .env(URL_ENV, &self.url)
            .env(MASTER_ENV, &self.master)
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("child exited before listening")
                .unwrap();
            if let Some(i) = line.find("LISTEN ") {
                break line[i + 7..].trim().parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
        self.addr = Some(addr);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.addr = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.kill();
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

/// What a worker got acknowledged.
#[derive(Debug, Default)]
struct Acked {
    keys: Vec<String>,
    aliases: Vec<(String, String)>,
    ciphertexts: Vec<(String, String)>,
}

fn creds(dir: &Path) -> (String, String) {
    let v: Value =
        serde_json::from_slice(&std::fs::read(dir.join("admin-credentials.json")).unwrap())
            .unwrap();
    (
        v["AccessKeyId"].as_str().unwrap().to_string(),
        v["SecretAccessKey"].as_str().unwrap().to_string(),
    )
}

fn call(addr: SocketAddr, cred: &(String, String), op: &str, body: Value) -> Option<(u16, Value)> {
    let mut c = RawClient::try_connect(addr, &cred.0, &cred.1).ok()?;
    c.try_call(op, body.to_string().as_bytes()).ok()
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
fn fleet_survives_killed_servers_and_a_database_restart() {
    let pg = pg_support::PgCluster::start();
    pg.create_db("kms");
    let tmp = tempfile::tempdir().unwrap();
    let master = tmp.path().join("fleet-master.key");
    let url = pg.url("kms");
    let slots: Vec<Arc<Mutex<Slot>>> = (0..2)
        .map(|i| {
            Arc::new(Mutex::new(Slot {
                dir: tmp.path().join(format!("server-{i}")),
                url: url.clone(),
                master: master.clone(),
                child: None,
                addr: None,
            }))
        })
        .collect();
    for s in &slots {
        s.lock().unwrap().start();
    }
    let cred = creds(&tmp.path().join("server-0"));
    let addr_of = |i: usize| slots[i].lock().unwrap().addr;

    let stop = Arc::new(AtomicBool::new(false));
    let acked_writes = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (slots, stop, cred, acked_writes) = (
            slots.clone(),
            stop.clone(),
            cred.clone(),
            acked_writes.clone(),
        );
        workers.push(std::thread::spawn(move || {
            let mut acked = Acked::default();
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let pick = || slots[(random_u64() % 2) as usize].lock().unwrap().addr;
                let Some(addr) = pick() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                // Mostly aliases and ciphertexts: every key makes each restart's load longer.
                match n % 8 {
                    0 => {
                        if let Some((200, v)) = call(addr, &cred, "CreateKey", json!({})) {
                            acked
                                .keys
                                .push(v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string());
                            acked_writes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    1 | 3 | 5 => {
                        let Some(key) = acked.keys.last().cloned() else {
                            continue;
                        };
                        let alias = format!("alias/w{w}-{n}");
                        let body = json!({"AliasName": alias, "TargetKeyId": key});
                        if let Some((200, _)) = call(addr, &cred, "CreateAlias", body) {
                            acked.aliases.push((alias, key));
                            acked_writes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        let Some(key) = acked.keys.last().cloned() else {
                            continue;
                        };
                        let plain = format!("secret {w} {n}");
                        use base64::Engine as _;
                        let b64 = base64::engine::general_purpose::STANDARD.encode(&plain);
                        let body = json!({"KeyId": key, "Plaintext": b64});
                        if let Some((200, v)) = call(addr, &cred, "Encrypt", body) {
                            acked
                                .ciphertexts
                                .push((v["CiphertextBlob"].as_str().unwrap().to_string(), b64));
                        }
                    }
                }
            }
            acked
        }));
    }

    // Kill a server at a random moment, start it again; halfway, crash PostgreSQL itself.
    let mut kills = 0;
    let mut db_restarted = false;
    let mut starting = Duration::ZERO;
    while kills < KILLS {
        std::thread::sleep(Duration::from_millis(random_u64() % 120));
        let i = (random_u64() % 2) as usize;
        {
            let mut s = slots[i].lock().unwrap();
            s.kill();
        }
        kills += 1;
        // Start outside the lock, so workers keep using the other server meanwhile.
        let mut fresh = Slot {
            dir: tmp.path().join(format!("server-{i}")),
            url: url.clone(),
            master: master.clone(),
            child: None,
            addr: None,
        };
        let t0 = std::time::Instant::now();
        fresh.start();
        starting += t0.elapsed();
        {
            let mut s = slots[i].lock().unwrap();
            s.child = fresh.child.take();
            s.addr = fresh.addr.take();
        }
        if kills == KILLS / 2 && !db_restarted {
            db_restarted = true;
            pg.stop_server();
            // While the database is down, a write gets AWS's error shape.
            let addr = addr_of(0).unwrap();
            let (st, v) = call(addr, &cred, "CreateKey", json!({})).expect("an answer");
            assert!(st >= 500, "{st} {v}");
            let t = v["__type"].as_str().unwrap_or("");
            assert!(
                t == "KMSInternalException" || t == "DependencyTimeoutException",
                "{v}"
            );
            std::thread::sleep(Duration::from_millis(300));
            pg.start_server();
            // Both servers recover by themselves.
            for j in 0..2 {
                let mut ok = false;
                for _ in 0..600 {
                    let addr = addr_of(j).unwrap();
                    if let Some((200, _)) = call(addr, &cred, "CreateKey", json!({})) {
                        ok = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                assert!(
                    ok,
                    "server {j} did not recover after the database came back"
                );
            }
        }
    }
    stop.store(true, Ordering::Release);
    let acked: Vec<Acked> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(db_restarted);

    // Every acknowledged write is there, through either server.
    let (mut keys, mut aliases, mut cts) = (0, 0, 0);
    let mut clients: Vec<RawClient> = (0..2)
        .map(|i| RawClient::connect(addr_of(i).unwrap(), &cred.0, &cred.1))
        .collect();
    for a in &acked {
        for (n, k) in a.keys.iter().enumerate() {
            let (st, v) =
                clients[n % 2].call("DescribeKey", json!({"KeyId": k}).to_string().as_bytes());
            assert_eq!(st, 200, "acknowledged key {k} missing: {v}");
            keys += 1;
        }
        for (n, (alias, key)) in a.aliases.iter().enumerate() {
            let (st, v) = clients[(n + 1) % 2].call(
                "DescribeKey",
                json!({"KeyId": alias}).to_string().as_bytes(),
            );
            assert_eq!(st, 200, "acknowledged alias {alias} missing: {v}");
            assert_eq!(v["KeyMetadata"]["KeyId"].as_str(), Some(key.as_str()));
            aliases += 1;
        }
        for (n, (blob, plain)) in a.ciphertexts.iter().enumerate() {
            let (st, v) = clients[n % 2].call(
                "Decrypt",
                json!({"CiphertextBlob": blob}).to_string().as_bytes(),
            );
            assert_eq!(st, 200, "{v}");
            assert_eq!(v["Plaintext"].as_str(), Some(plain.as_str()));
            cts += 1;
        }
    }
    eprintln!(
        "{kills} servers killed (restarts took {} ms on average), PostgreSQL restarted once; \
         checked {keys} keys, {aliases} aliases, {cts} ciphertexts through both servers",
        starting.as_millis() / kills as u128
    );
    assert!(
        keys > 20 && aliases > 50 && cts > 50,
        "the load did little: {keys} {aliases} {cts}"
    );
}
