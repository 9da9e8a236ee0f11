//! `cloister kms serve` as a real process: it prints where it listens, creates its data
//! directory with private files, answers boto3, and reports config errors with E401.

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

#[test]
fn kms_serve_starts_and_answers_boto3() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(["kms", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let started: serde_json::Value = serde_json::from_str(&line).unwrap();
    let endpoint = started["Endpoint"].as_str().unwrap().to_string();
    assert!(endpoint.starts_with("http://127.0.0.1:"));
    assert_eq!(started["Region"], "us-east-1");
    let creds_path = data.join("admin-credentials.json");
    assert_eq!(
        started["AdminCredentialsFile"],
        creds_path.to_str().unwrap()
    );
    for f in [&creds_path, &data.join("master.key")] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", f.display());
    }
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&creds_path).unwrap()).unwrap();
    let script = r#"
import os, boto3
c = boto3.client("kms", endpoint_url=os.environ["EP"], region_name="us-east-1",
                 aws_access_key_id=os.environ["AK"], aws_secret_access_key=os.environ["SK"])
k = c.create_key(Description="cli")["KeyMetadata"]["KeyId"]
c.create_alias(AliasName="alias/cli", TargetKeyId=k)
b = c.encrypt(KeyId="alias/cli", Plaintext=b"from the cli")["CiphertextBlob"]
assert c.decrypt(CiphertextBlob=b)["Plaintext"] == b"from the cli"
print("ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .env("EP", &endpoint)
        .env("AK", creds["AccessKeyId"].as_str().unwrap())
        .env("SK", creds["SecretAccessKey"].as_str().unwrap())
        .output()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kms_serve_refuses_a_bad_config() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("kms.yaml");
    std::fs::write(&cfg, "region: us-east-1\nunknown_field: 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(["kms", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[E401]"));
}
