//! Crash safety: a key server in a child process is killed with SIGKILL at random moments under
//! a write load (CreateKey, CreateAlias, PutKeyPolicy, TagResource, CreateGrant, Encrypt); after each restart
//! every acknowledged change must be present and work, and nothing half-written may show (every
//! key that exists is complete and usable, every alias points at an existing key).
//!
//! A second test kills starts themselves at random moments (the first start on an empty data
//! directory, and later ones): the next start must open the directory and serve.
//!
//! The child is this test binary itself, re-run with `--ignored --exact crash_child_server`
//! (which serves until killed); so the test needs no other binary.

mod common;

use common::RawClient;
use serde_json::{json, Value};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "CLOISTER_KMS_CRASH_CHILD_DIR";
const ROUNDS: usize = 6;
const WORKERS: usize = 2;
const TOTAL_BUDGET: Duration = Duration::from_secs(40);
/// Most data directories whose starts are killed.
const START_ROUNDS: usize = 30;
/// Time after which no new start-kill round begins.
const START_BUDGET: Duration = Duration::from_secs(40);
/// Printed by the child just before it opens its data directory.
const OPENING: &str = "OPENING";

/// Child entry point: serves the data directory named in the environment until killed.
#[test]
#[ignore = "entry point of the crash test's child process"]
fn crash_child_server() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    println!("{OPENING}");
    let opts = cloister_kms::server::ServeOptions {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.into(),
        tls: None,
        config: common::config(None),
    };
    cloister_kms::server::serve_blocking(opts, |s| {
        println!("LISTEN {}", s.listen);
    })
    .expect("serve");
}

fn spawn_child(dir: &Path, stdout: Stdio) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_child_server",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .env("RUST_BACKTRACE", "0")
        .stdout(stdout)
        .stderr(std::fs::File::create(stderr_path(dir)).unwrap())
        .spawn()
        .unwrap()
}

/// Where a child serving `dir` writes its stderr (beside the data directory).
fn stderr_path(dir: &Path) -> std::path::PathBuf {
    dir.with_extension("stderr")
}

/// The end of the child's stderr, for a failure message.
fn child_stderr(dir: &Path) -> String {
    let text = std::fs::read_to_string(stderr_path(dir)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

fn start_child(dir: &Path) -> (Child, SocketAddr) {
    let mut child = spawn_child(dir, Stdio::piped());
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("child exited before listening: {}", child_stderr(dir)))
            .unwrap();
        // libtest prints "test crash_child_server ... " before the line on the same row.
        if let Some(i) = line.find("LISTEN ") {
            break line[i + 7..].trim().parse().unwrap();
        }
    };
    // Keep draining the child's stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

/// Everything a worker got acknowledged (HTTP 200) for one key.
#[derive(Debug, Clone, Default)]
struct Acked {
    key_id: String,
    alias: Option<String>,
    policy: Option<String>,
    tag: Option<(String, String)>,
    grant: Option<String>,
    ciphertext: Option<(String, String, Value)>,
}

fn creds(dir: &Path) -> (String, String) {
    let v: Value =
        serde_json::from_slice(&std::fs::read(dir.join("admin-credentials.json")).unwrap())
            .unwrap();
    (
        v["AccessKeyId"].as_str().unwrap().into(),
        v["SecretAccessKey"].as_str().unwrap().into(),
    )
}

/// Drives writes until the connection dies; returns what was acknowledged.
fn worker(addr: SocketAddr, akid: String, secret: String, tag: String) -> Vec<Acked> {
    let mut out = Vec::new();
    let Ok(mut c) = RawClient::try_connect(addr, &akid, &secret) else {
        return out;
    };
    for n in 0.. {
        let call = |c: &mut RawClient, op: &str, body: Value| -> Option<Value> {
            match c.try_call(op, &serde_json::to_vec(&body).unwrap()) {
                Ok((200, v)) => Some(v),
                Ok((s, v)) => panic!("{op} failed with {s}: {v}"),
                Err(_) => None,
            }
        };
        let Some(k) = call(
            &mut c,
            "CreateKey",
            json!({"Description": format!("{tag}-{n}")}),
        ) else {
            break;
        };
        let mut a = Acked {
            key_id: k["KeyMetadata"]["KeyId"].as_str().unwrap().into(),
            ..Default::default()
        };
        out.push(a.clone());
        let alias = format!("alias/{tag}-{n}");
        if call(
            &mut c,
            "CreateAlias",
            json!({"AliasName": alias, "TargetKeyId": a.key_id}),
        )
        .is_none()
        {
            break;
        }
        a.alias = Some(alias);
        *out.last_mut().unwrap() = a.clone();
        let policy = format!(
            "{{\"Version\":\"2012-10-17\",\"Id\":\"{tag}-{n}\",\"Statement\":[{{\"Sid\":\"s{n}\",\"Effect\":\"Allow\",\"Principal\":{{\"AWS\":\"arn:aws:iam::111122223333:root\"}},\"Action\":\"kms:*\",\"Resource\":\"*\"}}]}}"
        );
        if call(
            &mut c,
            "PutKeyPolicy",
            json!({"KeyId": a.key_id, "PolicyName": "default", "Policy": policy}),
        )
        .is_none()
        {
            break;
        }
        a.policy = Some(policy);
        *out.last_mut().unwrap() = a.clone();
        let t = (format!("t{n}"), tag.clone());
        if call(
            &mut c,
            "TagResource",
            json!({"KeyId": a.key_id, "Tags": [{"TagKey": t.0, "TagValue": t.1}]}),
        )
        .is_none()
        {
            break;
        }
        a.tag = Some(t);
        *out.last_mut().unwrap() = a.clone();
        let Some(g) = call(
            &mut c,
            "CreateGrant",
            json!({"KeyId": a.key_id, "GranteePrincipal": "arn:aws:iam::111122223333:user/app", "Operations": ["Decrypt"]}),
        ) else {
            break;
        };
        a.grant = Some(g["GrantId"].as_str().unwrap().into());
        *out.last_mut().unwrap() = a.clone();
        let plain = format!("secret {tag} {n}");
        let ctx = json!({"n": n.to_string()});
        let Some(e) = call(
            &mut c,
            "Encrypt",
            json!({"KeyId": a.alias.clone().unwrap(), "Plaintext": b64(plain.as_bytes()), "EncryptionContext": ctx}),
        ) else {
            break;
        };
        a.ciphertext = Some((
            e["CiphertextBlob"].as_str().unwrap().into(),
            b64(plain.as_bytes()),
            ctx,
        ));
        *out.last_mut().unwrap() = a;
    }
    out
}

fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn ok(c: &mut RawClient, op: &str, body: Value) -> Value {
    let (s, v) = c.call(op, &serde_json::to_vec(&body).unwrap());
    assert_eq!(s, 200, "{op} {body}: {v}");
    v
}

/// Checks every acknowledged change, and that everything present is whole.
fn verify(c: &mut RawClient, acked: &[Acked]) {
    for a in acked {
        let d = ok(c, "DescribeKey", json!({"KeyId": a.key_id}));
        assert_eq!(d["KeyMetadata"]["KeyState"], "Enabled");
        if let Some(alias) = &a.alias {
            let d = ok(c, "DescribeKey", json!({"KeyId": alias}));
            assert_eq!(d["KeyMetadata"]["KeyId"], a.key_id.as_str(), "{alias}");
        }
        if let Some(p) = &a.policy {
            let g = ok(
                c,
                "GetKeyPolicy",
                json!({"KeyId": a.key_id, "PolicyName": "default"}),
            );
            assert_eq!(g["Policy"], p.as_str());
        }
        if let Some((k, v)) = &a.tag {
            let t = ok(c, "ListResourceTags", json!({"KeyId": a.key_id}));
            assert!(
                t["Tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["TagKey"] == k.as_str() && x["TagValue"] == v.as_str()),
                "tag {k} missing on {}",
                a.key_id
            );
        }
        if let Some(grant) = &a.grant {
            let l = ok(c, "ListGrants", json!({"KeyId": a.key_id}));
            assert_eq!(
                l["Grants"][0]["GrantId"],
                grant.as_str(),
                "grant on {}",
                a.key_id
            );
        }
        if let Some((blob, plain, ctx)) = &a.ciphertext {
            let d = ok(
                c,
                "Decrypt",
                json!({"CiphertextBlob": blob, "EncryptionContext": ctx}),
            );
            assert_eq!(d["Plaintext"], plain.as_str());
        }
    }
    // Nothing half-written: every key that exists (acknowledged or not) is complete and works,
    // and every alias resolves to an existing key.
    let mut marker: Option<String> = None;
    loop {
        let mut body = json!({"Limit": 1000});
        if let Some(m) = &marker {
            body["Marker"] = json!(m);
        }
        let page = ok(c, "ListKeys", body);
        for k in page["Keys"].as_array().unwrap() {
            let id = k["KeyId"].as_str().unwrap();
            let e = ok(c, "Encrypt", json!({"KeyId": id, "Plaintext": "AQID"}));
            let d = ok(c, "Decrypt", json!({"CiphertextBlob": e["CiphertextBlob"]}));
            assert_eq!(d["Plaintext"], "AQID");
            ok(
                c,
                "GetKeyPolicy",
                json!({"KeyId": id, "PolicyName": "default"}),
            );
        }
        if page["Truncated"] != true {
            break;
        }
        marker = page["NextMarker"].as_str().map(String::from);
    }
    let aliases = ok(c, "ListAliases", json!({"Limit": 100}));
    for a in aliases["Aliases"].as_array().unwrap() {
        ok(c, "DescribeKey", json!({"KeyId": a["AliasName"]}));
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut acked: Vec<Acked> = Vec::new();
    let mut rounds = 0;
    for round in 0..ROUNDS {
        if started.elapsed() > TOTAL_BUDGET {
            break;
        }
        let (mut child, addr) = start_child(&dir);
        let (akid, secret) = creds(&dir);
        {
            let mut c = RawClient::connect(addr, &akid, &secret);
            verify(&mut c, &acked);
        }
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (a, s) = (akid.clone(), secret.clone());
                std::thread::spawn(move || worker(addr, a, s, format!("r{round}w{w}")))
            })
            .collect();
        let delay = Duration::from_millis(150 + random_u64() % 1200);
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for h in handles {
            acked.extend(h.join().unwrap());
        }
        rounds += 1;
    }
    let (mut child, addr) = start_child(&dir);
    let (akid, secret) = creds(&dir);
    let mut c = RawClient::connect(addr, &akid, &secret);
    verify(&mut c, &acked);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(rounds >= 3, "only {rounds} rounds ran");
    assert!(
        acked.iter().filter(|a| a.ciphertext.is_some()).count() >= rounds,
        "too little acknowledged work: {}",
        acked.len()
    );
    eprintln!(
        "{rounds} kill -9 rounds, {} keys acknowledged, {:?}",
        acked.len(),
        started.elapsed()
    );
}

/// The lines a child prints.
type ChildLines = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

/// Starts a server on `dir`; returns it once it says it opens its data directory, with the
/// rest of its output.
fn spawn_opening(dir: &Path) -> (Child, ChildLines) {
    let mut child = spawn_child(dir, Stdio::piped());
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let opened = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains(OPENING));
    if !opened {
        let _ = child.kill();
        let _ = child.wait();
        panic!("child exited before opening: {}", child_stderr(dir));
    }
    (child, lines)
}

/// How long a first start takes from opening its (empty) data directory to listening.
fn first_open_time() -> Duration {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, mut lines) = spawn_opening(&tmp.path().join("data"));
    let t = Instant::now();
    while !lines
        .next()
        .expect("child exited before listening")
        .unwrap()
        .contains("LISTEN ")
    {}
    let took = t.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    took
}

/// Starts a server on `dir` and kills it (SIGKILL) at a random moment of the opening of its
/// data directory (or shortly after, when `window` outlasts it).
fn kill_during_start(dir: &Path, window: Duration) {
    let (mut child, _lines) = spawn_opening(dir);
    let window_us = u64::try_from(window.as_micros()).unwrap().max(1);
    std::thread::sleep(Duration::from_micros(random_u64() % window_us));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// No temporary of an atomic write is left in `dir`.
fn assert_no_temporaries(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name();
        let name = name.to_string_lossy();
        assert!(!name.ends_with(".tmp"), "leftover temporary {name}");
    }
}

#[test]
fn starts_killed_at_random_moments_leave_a_usable_data_dir() {
    let started = Instant::now();
    // Kills land anywhere in the opening, however fast this machine makes it.
    let window = first_open_time() * 5 / 4;
    let mut rounds = 0;
    while rounds < START_ROUNDS && started.elapsed() < START_BUDGET {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        // The first start on an empty directory, killed.
        kill_during_start(&dir, window);
        let (mut child, addr) = start_child(&dir);
        assert_no_temporaries(&dir);
        let (akid, secret) = creds(&dir);
        let key_id = {
            let mut c = RawClient::connect(addr, &akid, &secret);
            ok(&mut c, "ListKeys", json!({}));
            let k = ok(&mut c, "CreateKey", json!({"Description": "kept"}));
            k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
        };
        child.kill().unwrap();
        child.wait().unwrap();
        // A later start, killed.
        kill_during_start(&dir, window);
        let (mut child, addr) = start_child(&dir);
        assert_no_temporaries(&dir);
        assert_eq!(creds(&dir), (akid.clone(), secret.clone()));
        let mut c = RawClient::connect(addr, &akid, &secret);
        ok(&mut c, "DescribeKey", json!({"KeyId": key_id}));
        child.kill().unwrap();
        child.wait().unwrap();
        rounds += 1;
    }
    assert!(rounds >= 5, "only {rounds} rounds ran");
    eprintln!(
        "{rounds} rounds of killed starts (window {window:?}), {:?}",
        started.elapsed()
    );
}
