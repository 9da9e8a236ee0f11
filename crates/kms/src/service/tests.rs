//! Unit tests of the core operations through `Service::handle`.

use super::*;
use crate::store::parse_key_id;
use serde_json::json;

const ROOT: &str = "arn:aws:iam::111122223333:root";

fn service() -> (tempfile::TempDir, Service) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &dir.path().join("master.key")).unwrap();
    (dir, Service::new(store, "us-east-1", "111122223333", None))
}

fn call(s: &Service, op: &str, body: Value) -> KmsResult<Value> {
    s.handle(op, ROOT, &serde_json::to_vec(&body).unwrap())
        .map(|b| serde_json::from_slice(&b).unwrap())
}

/// An automatic rotation that a second server (working from the same stale view) also
/// finds due happens once: the check is repeated on the stored record.
#[test]
fn a_due_rotation_happens_once() {
    let (_d, s) = service();
    let k = call(&s, "CreateKey", json!({})).unwrap();
    let id = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    call(
        &s,
        "EnableKeyRotation",
        json!({"KeyId": id, "RotationPeriodInDays": 90}),
    )
    .unwrap();
    let raw = parse_key_id(&id).unwrap();
    // Created 91 days ago: the first rotation is due.
    s.store
        .update_key(&raw, |r| {
            r.created -= 91.0 * 86_400.0;
            Ok(())
        })
        .unwrap();
    assert!(s.rotate(&raw, false).unwrap());
    assert!(!s.rotate(&raw, false).unwrap(), "rotated twice");
    assert_eq!(s.maintain().unwrap(), (0, 0));
    let entry = s.store.key(&raw).unwrap().unwrap();
    assert_eq!(entry.record.materials.len(), 2);
    assert_eq!(entry.record.rotations.len(), 1);
    // On demand is never skipped.
    assert!(s.rotate(&raw, true).unwrap());
}

#[test]
fn encrypt_decrypt_with_context_and_rotation() {
    let (_d, s) = service();
    let k = call(&s, "CreateKey", json!({"Description": "t"})).unwrap();
    let id = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let ctx = json!({"b": "2", "a": "1"});
    let e = call(
        &s,
        "Encrypt",
        json!({"KeyId": id, "Plaintext": b64(b"secret"), "EncryptionContext": ctx}),
    )
    .unwrap();
    let blob = e["CiphertextBlob"].as_str().unwrap().to_string();
    call(&s, "RotateKeyOnDemand", json!({"KeyId": id})).unwrap();
    let d = call(
        &s,
        "Decrypt",
        json!({"CiphertextBlob": blob, "EncryptionContext": {"a": "1", "b": "2"}}),
    )
    .unwrap();
    assert_eq!(d["Plaintext"], b64(b"secret"));
    assert!(matches!(
        call(&s, "Decrypt", json!({"CiphertextBlob": blob})),
        Err(KmsError::InvalidCiphertext(_))
    ));
    assert!(matches!(
        call(
            &s,
            "Encrypt",
            json!({"KeyId": id, "Plaintext": b64(&[0u8; 4097])})
        ),
        Err(KmsError::Validation(_))
    ));
    assert!(matches!(
        call(&s, "Encrypt", json!({"KeyId": id, "Plaintext": "!!"})),
        Err(KmsError::Serialization(_))
    ));
    assert!(matches!(
        call(&s, "Encrypt", json!({"KeyId": 5, "Plaintext": "AA=="})),
        Err(KmsError::Serialization(_))
    ));
    assert!(matches!(
        call(&s, "Nope", json!({})),
        Err(KmsError::UnknownOperation(_))
    ));
    call(&s, "DisableKey", json!({"KeyId": id})).unwrap();
    assert!(matches!(
        call(
            &s,
            "Decrypt",
            json!({"CiphertextBlob": blob, "EncryptionContext": ctx})
        ),
        Err(KmsError::Disabled(_))
    ));
}

#[test]
fn aliases_and_policies() {
    let (_d, s) = service();
    let k = call(&s, "CreateKey", json!({})).unwrap();
    let id = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    call(
        &s,
        "CreateAlias",
        json!({"AliasName": "alias/app", "TargetKeyId": id}),
    )
    .unwrap();
    let d = call(&s, "DescribeKey", json!({"KeyId": "alias/app"})).unwrap();
    assert_eq!(d["KeyMetadata"]["KeyId"], id);
    let arn = "arn:aws:kms:us-east-1:111122223333:alias/app";
    assert!(call(&s, "DescribeKey", json!({"KeyId": arn})).is_ok());
    let deny_all = r#"{"Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/other"},"Action":"kms:*","Resource":"*"}]}"#;
    call(
        &s,
        "PutKeyPolicy",
        json!({"KeyId": id, "Policy": deny_all, "BypassPolicyLockoutSafetyCheck": true}),
    )
    .unwrap();
    assert!(matches!(
        call(&s, "DescribeKey", json!({"KeyId": id})),
        Err(KmsError::AccessDenied(_))
    ));
    assert!(matches!(
        call(&s, "PutKeyPolicy", json!({"KeyId": id, "Policy": "{"})),
        Err(KmsError::MalformedPolicyDocument(_))
    ));
}

fn policy(statements: Value) -> String {
    json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

fn allow_root_all() -> Value {
    json!({"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"})
}

fn is_lockout(r: KmsResult<Value>) -> bool {
    matches!(r, Err(KmsError::MalformedPolicyDocument(m)) if m == LOCKOUT_MESSAGE)
}

#[test]
fn lockout_safety_check() {
    let (_d, s) = service();
    let other = json!({"Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:user/other"},
        "Action": "kms:*", "Resource": "*"});
    let no_put = json!({"Effect": "Deny", "Principal": "*", "Action": "kms:PutKeyPolicy",
        "Resource": "*"});
    // PutKeyPolicy only with an encryption context, which PutKeyPolicy never carries.
    let needs_context = json!({"Effect": "Allow", "Principal": {"AWS": ROOT},
        "Action": "kms:*", "Resource": "*",
        "Condition": {"StringEquals": {"kms:EncryptionContext:app": "x"}}});
    // A negated Deny on a key PutKeyPolicy lacks applies to it.
    let negated_deny = json!({"Effect": "Deny", "Principal": "*", "Action": "kms:*",
        "Resource": "*",
        "Condition": {"StringNotEquals": {"kms:EncryptionContext:app": "x"}}});
    let locking = [
        policy(json!([other])),
        policy(json!([allow_root_all(), no_put])),
        policy(json!([needs_context])),
        policy(json!([allow_root_all(), negated_deny])),
    ];
    for p in &locking {
        assert!(
            is_lockout(call(&s, "CreateKey", json!({"Policy": p}))),
            "{p}"
        );
        assert!(is_lockout(call(
            &s,
            "CreateKey",
            json!({"Policy": p, "BypassPolicyLockoutSafetyCheck": false})
        )));
    }
    let k = call(&s, "CreateKey", json!({})).unwrap();
    let id = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    for p in &locking {
        assert!(
            is_lockout(call(&s, "PutKeyPolicy", json!({"KeyId": id, "Policy": p}))),
            "{p}"
        );
        // Refused policies were not stored: the caller still holds the key.
        call(&s, "DescribeKey", json!({"KeyId": id})).unwrap();
    }
    // Policies that keep PutKeyPolicy for the caller pass, even with other Denies.
    let only_put = json!({"Effect": "Allow", "Principal": {"AWS": ROOT},
        "Action": "kms:PutKeyPolicy", "Resource": "*"});
    let no_decrypt = json!({"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt",
        "Resource": "*"});
    for p in [
        policy(json!([only_put])),
        policy(json!([allow_root_all(), no_decrypt])),
    ] {
        call(&s, "CreateKey", json!({"Policy": p})).unwrap();
        call(&s, "PutKeyPolicy", json!({"KeyId": id, "Policy": p})).unwrap();
    }
    // With the bypass, the caller may lock itself out, and then is locked out.
    let c = call(
        &s,
        "CreateKey",
        json!({"Policy": locking[0], "BypassPolicyLockoutSafetyCheck": true}),
    )
    .unwrap();
    let locked = c["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    assert!(matches!(
        call(
            &s,
            "PutKeyPolicy",
            json!({"KeyId": locked, "Policy": locking[1]})
        ),
        Err(KmsError::AccessDenied(_))
    ));
    call(
        &s,
        "PutKeyPolicy",
        json!({"KeyId": id, "Policy": locking[1], "BypassPolicyLockoutSafetyCheck": true}),
    )
    .unwrap();
    assert!(matches!(
        call(
            &s,
            "PutKeyPolicy",
            json!({"KeyId": id, "Policy": policy(json!([allow_root_all()]))})
        ),
        Err(KmsError::AccessDenied(_))
    ));
}

#[test]
fn negated_deny_on_missing_context_key() {
    let (_d, s) = service();
    let deny = json!({"Effect": "Deny", "Principal": "*",
        "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*",
        "Condition": {"StringNotEquals": {"kms:EncryptionContext:tenant": "a"}}});
    let k = call(
        &s,
        "CreateKey",
        json!({"Policy": policy(json!([allow_root_all(), deny]))}),
    )
    .unwrap();
    let id = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let pt = b64(b"s");
    for ctx in [
        None,
        Some(json!({})),
        Some(json!({"other": "a"})),
        Some(json!({"tenant": "b"})),
    ] {
        let mut body = json!({"KeyId": id, "Plaintext": pt});
        if let Some(c) = ctx.clone() {
            body["EncryptionContext"] = c;
        }
        assert!(
            matches!(call(&s, "Encrypt", body), Err(KmsError::AccessDenied(_))),
            "{ctx:?}"
        );
    }
    let e = call(
        &s,
        "Encrypt",
        json!({"KeyId": id, "Plaintext": pt, "EncryptionContext": {"tenant": "a"}}),
    )
    .unwrap();
    let blob = e["CiphertextBlob"].as_str().unwrap();
    assert!(matches!(
        call(&s, "Decrypt", json!({"CiphertextBlob": blob})),
        Err(KmsError::AccessDenied(_))
    ));
    let d = call(
        &s,
        "Decrypt",
        json!({"CiphertextBlob": blob, "EncryptionContext": {"tenant": "a"}}),
    )
    .unwrap();
    assert_eq!(d["Plaintext"], pt);
}

fn is_dry_run(r: KmsResult<Value>) -> bool {
    matches!(&r, Err(e @ KmsError::DryRunOperation(m))
        if m == DRY_RUN_MESSAGE && e.aws_type() == "DryRunOperationException"
            && e.http_status() == 400)
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
fn dry_run() {
    let (_d, s) = service();
    let k = call(&s, "CreateKey", json!({})).unwrap();
    let id = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let ctx = json!({"a": "1"});
    let e = call(
        &s,
        "Encrypt",
        json!({"KeyId": id, "Plaintext": b64(b"x"), "EncryptionContext": ctx}),
    )
    .unwrap();
    let blob = e["CiphertextBlob"].as_str().unwrap().to_string();
    let dry = |op: &str, mut body: Value| {
        body["DryRun"] = json!(true);
        call(&s, op, body)
    };
    // Would succeed: DryRunOperationException.
    for (op, body) in [
        ("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")})),
        (
            "Decrypt",
            json!({"CiphertextBlob": blob, "EncryptionContext": ctx}),
        ),
        (
            "GenerateDataKey",
            json!({"KeyId": id, "KeySpec": "AES_256"}),
        ),
        (
            "GenerateDataKeyWithoutPlaintext",
            json!({"KeyId": id, "NumberOfBytes": 16}),
        ),
        (
            "GenerateDataKeyPair",
            json!({"KeyId": id, "KeyPairSpec": "ECC_NIST_P256"}),
        ),
        (
            "GenerateDataKeyPairWithoutPlaintext",
            json!({"KeyId": id, "KeyPairSpec": "ECC_NIST_P256"}),
        ),
        (
            "ReEncrypt",
            json!({"CiphertextBlob": blob, "SourceEncryptionContext": ctx, "DestinationKeyId": id}),
        ),
    ] {
        assert!(is_dry_run(dry(op, body.clone())), "{op}");
        // DryRun false is an ordinary call.
        let mut body = body;
        body["DryRun"] = json!(false);
        call(&s, op, body).unwrap();
    }
    // Would fail: the real error.
    assert!(matches!(
        dry("Decrypt", json!({"CiphertextBlob": blob})),
        Err(KmsError::InvalidCiphertext(_))
    ));
    assert!(matches!(
        dry(
            "Encrypt",
            json!({"KeyId": id, "Plaintext": b64(&[0u8; 4097])})
        ),
        Err(KmsError::Validation(_))
    ));
    assert!(matches!(
        dry(
            "GenerateDataKeyPair",
            json!({"KeyId": id, "KeyPairSpec": "RSA_1024"})
        ),
        Err(KmsError::Validation(_))
    ));
    assert!(matches!(
        dry(
            "Encrypt",
            json!({"KeyId": "alias/none", "Plaintext": b64(b"x")})
        ),
        Err(KmsError::NotFound(_))
    ));
    call(&s, "DisableKey", json!({"KeyId": id})).unwrap();
    assert!(matches!(
        dry("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")})),
        Err(KmsError::Disabled(_))
    ));
    call(&s, "EnableKey", json!({"KeyId": id})).unwrap();
    let other = "arn:aws:iam::111122223333:user/other";
    let only_other = policy(json!([{"Effect": "Allow", "Principal": {"AWS": other},
        "Action": "kms:*", "Resource": "*"}]));
    call(
        &s,
        "PutKeyPolicy",
        json!({"KeyId": id, "Policy": only_other, "BypassPolicyLockoutSafetyCheck": true}),
    )
    .unwrap();
    assert!(matches!(
        dry(
            "Decrypt",
            json!({"CiphertextBlob": blob, "EncryptionContext": ctx})
        ),
        Err(KmsError::AccessDenied(_))
    ));
    let body = json!({"CiphertextBlob": blob, "EncryptionContext": ctx, "DryRun": true});
    let r = s.handle("Decrypt", other, &serde_json::to_vec(&body).unwrap());
    assert!(matches!(r, Err(KmsError::DryRunOperation(_))), "{r:?}");
    // Operations without DryRun refuse it rather than act.
    let before = call(&s, "ListKeys", json!({})).unwrap()["Keys"]
        .as_array()
        .unwrap()
        .len();
    assert!(matches!(
        dry("CreateKey", json!({})),
        Err(KmsError::UnsupportedOperation(_))
    ));
    let after = call(&s, "ListKeys", json!({})).unwrap()["Keys"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);
}
