//! HTTPS (rustls with aws-lc-rs): boto3 talks to the server over TLS with a certificate it is
//! told to trust, and a plain-HTTP request to the TLS port gets no answer.

mod common;

use std::process::Command;

#[test]
fn boto3_over_https() {
    assert!(common::have_boto3(), "python3 with boto3 is required");
    let tmp = tempfile::tempdir().unwrap();
    let cert = tmp.path().join("cert.pem");
    let key = tmp.path().join("key.pem");
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let server = common::TestServer::start_with_tls(
        &tmp.path().join("data"),
        common::config(None),
        2,
        Some((cert.clone(), key)),
    );
    let script = r#"
import os, boto3
c = boto3.client("kms", endpoint_url=os.environ["EP"], region_name="us-east-1",
                 aws_access_key_id=os.environ["AK"], aws_secret_access_key=os.environ["SK"],
                 verify=os.environ["CA"])
k = c.create_key()["KeyMetadata"]["KeyId"]
b = c.encrypt(KeyId=k, Plaintext=b"over tls")["CiphertextBlob"]
assert c.decrypt(CiphertextBlob=b)["Plaintext"] == b"over tls"
print("https ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .env("EP", format!("https://{}", server.addr))
        .env("AK", &server.admin.access_key_id)
        .env("SK", server.admin.secret_access_key.as_str())
        .env("CA", &cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("https ok"));
    // Plain HTTP to the TLS port: the handshake fails and no KMS answer comes back.
    let mut c = common::RawClient::connect(server.addr, "AKIAX", "x");
    assert!(c.try_call("ListKeys", b"{}").is_err());
}
