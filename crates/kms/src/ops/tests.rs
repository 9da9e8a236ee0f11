//! The operations of these modules through `Service::handle`, with several principals.

use super::*;
use crate::error::KmsError;
use crate::store::Store;
use serde_json::{json, Value};

/// An administrator user (not the account principal, which a policy naming the account would
/// extend to every user).
const ROOT: &str = "arn:aws:iam::111122223333:user/admin";
const APP: &str = "arn:aws:iam::111122223333:user/app";
const OTHER: &str = "arn:aws:iam::111122223333:user/other";

fn service() -> (tempfile::TempDir, Service) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &dir.path().join("master.key")).unwrap();
    (dir, Service::new(store, "us-east-1", "111122223333", None))
}

fn call_as(s: &Service, who: &str, op: &str, body: Value) -> KmsResult<Value> {
    s.handle(op, who, &serde_json::to_vec(&body).unwrap())
        .map(|b| serde_json::from_slice(&b).unwrap())
}

/// Calls `op` as `who` with a credential scoped to `region`.
fn call_in(s: &Service, who: &str, region: &str, op: &str, body: Value) -> KmsResult<Value> {
    let caller = Caller {
        principal: who.into(),
        region: Some(region.into()),
        ..Caller::default()
    };
    s.handle_as(op, &caller, &serde_json::to_vec(&body).unwrap())
        .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
}

fn code(r: KmsResult<Value>) -> &'static str {
    r.map(|_| "ok").unwrap_or_else(|e| e.aws_type())
}

/// A key whose policy lets only the root principal in (so other users need grants).
fn root_only_key(s: &Service) -> String {
    let policy = json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"}]});
    let k = call_as(s, ROOT, "CreateKey", json!({"Policy": policy.to_string()})).unwrap();
    k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
fn grant_lifecycle_with_a_second_principal() {
    let (_d, s) = service();
    let key = root_only_key(&s);
    let enc = json!({"KeyId": key, "Plaintext": "aGVsbG8="});
    assert_eq!(
        code(call_as(&s, APP, "Encrypt", enc.clone())),
        "AccessDeniedException"
    );

    // DryRun checks everything and creates nothing.
    let create = json!({"KeyId": key, "GranteePrincipal": APP, "RetiringPrincipal": OTHER,
        "Operations": ["Encrypt", "Decrypt"], "Name": "app-grant"});
    let mut dry = create.clone();
    dry["DryRun"] = json!(true);
    assert_eq!(
        code(call_as(&s, ROOT, "CreateGrant", dry)),
        "DryRunOperationException"
    );
    assert_eq!(
        code(call_as(&s, APP, "CreateGrant", {
            let mut d = create.clone();
            d["DryRun"] = json!(true);
            d
        })),
        "AccessDeniedException"
    );
    let list = call_as(&s, ROOT, "ListGrants", json!({"KeyId": key})).unwrap();
    assert_eq!(list["Grants"].as_array().unwrap().len(), 0);

    let g = call_as(&s, ROOT, "CreateGrant", create.clone()).unwrap();
    let grant_id = g["GrantId"].as_str().unwrap().to_string();
    let token = g["GrantToken"].as_str().unwrap().to_string();
    assert_eq!(grant_id.len(), 64);
    // Same name and parameters: the same grant, a fresh token.
    let again = call_as(&s, ROOT, "CreateGrant", create.clone()).unwrap();
    assert_eq!(again["GrantId"], grant_id.as_str());
    assert_ne!(again["GrantToken"], token.as_str());

    // The grant token is honoured at once, and the grant authorizes the grantee.
    let mut with_token = enc.clone();
    with_token["GrantTokens"] = json!([token]);
    let ct = call_as(&s, APP, "Encrypt", with_token).unwrap();
    let dec = json!({"CiphertextBlob": ct["CiphertextBlob"]});
    assert_eq!(
        call_as(&s, APP, "Decrypt", dec.clone()).unwrap()["Plaintext"],
        "aGVsbG8="
    );
    assert_eq!(
        code(call_as(&s, APP, "DescribeKey", json!({"KeyId": key}))),
        "AccessDeniedException"
    );
    assert_eq!(
        code(call_as(&s, OTHER, "Decrypt", dec.clone())),
        "AccessDeniedException"
    );
    // A forged token is refused.
    let mut forged = enc.clone();
    forged["GrantTokens"] = json!(["bm90LWEtdG9rZW4"]);
    assert_eq!(
        code(call_as(&s, APP, "Encrypt", forged)),
        "InvalidGrantTokenException"
    );

    let list = call_as(&s, ROOT, "ListGrants", json!({"KeyId": key})).unwrap();
    let grants = list["Grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0]["GranteePrincipal"], APP);
    assert_eq!(grants[0]["Name"], "app-grant");
    assert_eq!(grants[0]["Operations"], json!(["Encrypt", "Decrypt"]));
    let retirable = call_as(
        &s,
        ROOT,
        "ListRetirableGrants",
        json!({"RetiringPrincipal": OTHER}),
    )
    .unwrap();
    assert_eq!(retirable["Grants"][0]["GrantId"], grant_id.as_str());

    // Revoke: the grantee is denied afterwards.
    let revoke = json!({"KeyId": key, "GrantId": grant_id});
    assert_eq!(
        code(call_as(&s, APP, "RevokeGrant", revoke.clone())),
        "AccessDeniedException"
    );
    let mut dry = revoke.clone();
    dry["DryRun"] = json!(true);
    assert_eq!(
        code(call_as(&s, ROOT, "RevokeGrant", dry)),
        "DryRunOperationException"
    );
    assert_eq!(
        call_as(&s, APP, "Decrypt", dec.clone()).unwrap()["Plaintext"],
        "aGVsbG8="
    );
    call_as(&s, ROOT, "RevokeGrant", revoke.clone()).unwrap();
    assert_eq!(
        code(call_as(&s, APP, "Decrypt", dec.clone())),
        "AccessDeniedException"
    );
    assert_eq!(
        code(call_as(&s, ROOT, "RevokeGrant", revoke)),
        "NotFoundException"
    );

    // Retire by token, by the retiring principal only.
    let g = call_as(
        &s,
        ROOT,
        "CreateGrant",
        json!({"KeyId": key, "GranteePrincipal": APP,
        "RetiringPrincipal": OTHER, "Operations": ["Decrypt"]}),
    )
    .unwrap();
    let retire = json!({"GrantToken": g["GrantToken"]});
    assert_eq!(
        code(call_as(&s, APP, "RetireGrant", retire.clone())),
        "AccessDeniedException"
    );
    let mut dry = retire.clone();
    dry["DryRun"] = json!(true);
    assert_eq!(
        code(call_as(&s, OTHER, "RetireGrant", dry)),
        "DryRunOperationException"
    );
    assert_eq!(
        call_as(&s, APP, "Decrypt", dec.clone()).unwrap()["Plaintext"],
        "aGVsbG8="
    );
    call_as(&s, OTHER, "RetireGrant", retire.clone()).unwrap();
    assert_eq!(
        code(call_as(&s, APP, "Decrypt", dec)),
        "AccessDeniedException"
    );
    assert_eq!(
        code(call_as(&s, OTHER, "RetireGrant", retire)),
        "InvalidGrantTokenException"
    );
}

#[test]
fn grant_constraints_and_validation() {
    let (_d, s) = service();
    let key = root_only_key(&s);
    let grant = |c: Value| {
        call_as(
            &s,
            ROOT,
            "CreateGrant",
            json!({"KeyId": key, "GranteePrincipal": APP,
            "Operations": ["Encrypt"], "Constraints": c}),
        )
    };
    grant(json!({"EncryptionContextEquals": {"app": "a"}})).unwrap();
    grant(json!({"EncryptionContextSubset": {"tenant": "t1"}})).unwrap();
    let enc = |ctx: Value| {
        code(call_as(
            &s,
            APP,
            "Encrypt",
            json!({"KeyId": key, "Plaintext": "eA==", "EncryptionContext": ctx}),
        ))
    };
    // (encryption context, expected): Equals wants exactly its pairs, Subset at least its own.
    for (ctx, want) in [
        (json!({"app": "a"}), "ok"),
        (json!({"app": "a", "x": "y"}), "AccessDeniedException"),
        (json!({"tenant": "t1", "x": "y"}), "ok"),
        (json!({"tenant": "t2"}), "AccessDeniedException"),
        (json!({}), "AccessDeniedException"),
    ] {
        assert_eq!(enc(ctx.clone()), want, "{ctx}");
    }

    // Validation: unknown operations, constraints on operations that take no context, names.
    for bad in [
        json!({"KeyId": key, "GranteePrincipal": APP, "Operations": ["Fly"]}),
        json!({"KeyId": key, "GranteePrincipal": APP, "Operations": []}),
        json!({"KeyId": key, "GranteePrincipal": "nobody", "Operations": ["Encrypt"]}),
        json!({"KeyId": key, "GranteePrincipal": APP, "Operations": ["DescribeKey"],
            "Constraints": {"EncryptionContextSubset": {"a": "b"}}}),
        json!({"KeyId": key, "GranteePrincipal": APP, "Operations": ["Encrypt"], "Name": "a b"}),
        json!({"KeyId": key, "Operations": ["Encrypt"]}),
    ] {
        assert_eq!(
            code(call_as(&s, ROOT, "CreateGrant", bad)),
            "ValidationException"
        );
    }
    assert_eq!(
        code(call_as(
            &s,
            ROOT,
            "ListGrants",
            json!({"KeyId": key, "Limit": 1})
        )),
        "ok"
    );
    let page = call_as(&s, ROOT, "ListGrants", json!({"KeyId": key, "Limit": 1})).unwrap();
    assert_eq!(page["Truncated"], true);
    let next = call_as(
        &s,
        ROOT,
        "ListGrants",
        json!({"KeyId": key, "Limit": 1, "Marker": page["NextMarker"]}),
    )
    .unwrap();
    assert_eq!(next["Truncated"], false);
    assert_ne!(next["Grants"][0]["GrantId"], page["Grants"][0]["GrantId"]);
}

#[test]
fn explicit_deny_beats_a_grant_and_grants_may_only_narrow() {
    let (_d, s) = service();
    let policy = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": {"AWS": OTHER}, "Action": "kms:Decrypt", "Resource": "*"}]});
    let k = call_as(&s, ROOT, "CreateKey", json!({"Policy": policy.to_string()})).unwrap();
    let key = k["KeyMetadata"]["KeyId"].as_str().unwrap();
    for who in [APP, OTHER] {
        call_as(
            &s,
            ROOT,
            "CreateGrant",
            json!({"KeyId": key, "GranteePrincipal": who,
            "Operations": ["Encrypt", "Decrypt", "CreateGrant"]}),
        )
        .unwrap();
    }
    let ct = call_as(
        &s,
        ROOT,
        "Encrypt",
        json!({"KeyId": key, "Plaintext": "eA=="}),
    )
    .unwrap();
    let dec = json!({"CiphertextBlob": ct["CiphertextBlob"]});
    assert_eq!(code(call_as(&s, APP, "Decrypt", dec.clone())), "ok");
    assert_eq!(
        code(call_as(&s, OTHER, "Decrypt", dec)),
        "AccessDeniedException"
    );
    // A grantee with CreateGrant passes on a subset of its operations, not more.
    let sub = |ops: Value| {
        code(call_as(
            &s,
            APP,
            "CreateGrant",
            json!({"KeyId": key, "GranteePrincipal": OTHER, "Operations": ops}),
        ))
    };
    assert_eq!(sub(json!(["Encrypt"])), "ok");
    assert_eq!(
        sub(json!(["Encrypt", "DescribeKey"])),
        "AccessDeniedException"
    );
}

#[test]
fn condition_keys_of_the_request_scope() {
    let (_d, s) = service();
    let policy = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": APP}, "Action": "kms:Encrypt", "Resource": "*",
         "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"},
                       "StringEquals": {"kms:EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                                        "kms:RequestAlias": "alias/app"},
                       "Bool": {"aws:SecureTransport": "true"}}},
        {"Effect": "Allow", "Principal": {"AWS": APP}, "Action": "kms:CreateGrant", "Resource": "*",
         "Condition": {"ForAllValues:StringEquals": {"kms:GrantOperations": ["Encrypt", "Decrypt"]},
                       "StringLike": {"kms:GranteePrincipal": "arn:aws:iam::111122223333:user/*"}}},
        {"Effect": "Allow", "Principal": {"AWS": APP}, "Action": "kms:DescribeKey", "Resource": "*",
         "Condition": {"StringEquals": {"kms:KeySpec": "SYMMETRIC_DEFAULT", "kms:KeyUsage": "ENCRYPT_DECRYPT"},
                       "ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/app"}}}]});
    let k = call_as(&s, ROOT, "CreateKey", json!({"Policy": policy.to_string()})).unwrap();
    let key = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    assert_eq!(
        code(call_as(&s, APP, "DescribeKey", json!({"KeyId": key}))),
        "AccessDeniedException"
    );
    call_as(
        &s,
        ROOT,
        "CreateAlias",
        json!({"AliasName": "alias/app", "TargetKeyId": key}),
    )
    .unwrap();
    assert_eq!(
        code(call_as(&s, APP, "DescribeKey", json!({"KeyId": key}))),
        "ok"
    );

    let as_caller = |ip: &str, tls: bool, key_id: &str| {
        let caller = Caller {
            principal: APP.into(),
            region: Some("us-east-1".into()),
            source_ip: Some(ip.parse().unwrap()),
            secure_transport: Some(tls),
        };
        let body = json!({"KeyId": key_id, "Plaintext": "eA=="});
        s.handle_as("Encrypt", &caller, &serde_json::to_vec(&body).unwrap())
            .map(|_| "ok")
            .unwrap_or_else(|e| e.aws_type())
    };
    assert_eq!(as_caller("10.1.2.3", true, "alias/app"), "ok");
    assert_eq!(
        as_caller("192.168.1.1", true, "alias/app"),
        "AccessDeniedException"
    );
    assert_eq!(
        as_caller("10.1.2.3", false, "alias/app"),
        "AccessDeniedException"
    );
    assert_eq!(as_caller("10.1.2.3", true, &key), "AccessDeniedException");

    let grant = |ops: Value, grantee: &str| {
        code(call_as(
            &s,
            APP,
            "CreateGrant",
            json!({"KeyId": key, "GranteePrincipal": grantee, "Operations": ops}),
        ))
    };
    assert_eq!(grant(json!(["Encrypt"]), OTHER), "ok");
    assert_eq!(
        grant(json!(["Encrypt", "ReEncryptFrom"]), OTHER),
        "AccessDeniedException"
    );
    assert_eq!(
        grant(json!(["Encrypt"]), "arn:aws:iam::111122223333:role/r"),
        "AccessDeniedException"
    );
}

#[test]
fn list_key_rotations_tells_on_demand_from_automatic() {
    let (_d, s) = service();
    let k = call_as(&s, ROOT, "CreateKey", json!({})).unwrap();
    let key = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let r = call_as(&s, ROOT, "ListKeyRotations", json!({"KeyId": key})).unwrap();
    assert_eq!(r["Rotations"], json!([]));
    call_as(&s, ROOT, "RotateKeyOnDemand", json!({"KeyId": key})).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    call_as(&s, ROOT, "RotateKeyOnDemand", json!({"KeyId": key})).unwrap();
    let r = call_as(
        &s,
        ROOT,
        "ListKeyRotations",
        json!({"KeyId": key, "Limit": 1}),
    )
    .unwrap();
    assert_eq!(r["Rotations"][0]["RotationType"], "ON_DEMAND");
    assert_eq!(r["Truncated"], true);
    let r2 = call_as(
        &s,
        ROOT,
        "ListKeyRotations",
        json!({"KeyId": key, "Marker": r["NextMarker"]}),
    )
    .unwrap();
    assert_eq!(r2["Rotations"].as_array().unwrap().len(), 1);
    assert_eq!(
        code(call_as(
            &s,
            APP,
            "ListKeyRotations",
            json!({"KeyId": "alias/none"})
        )),
        "NotFoundException"
    );
}

fn wrap_for_import(params: &Value, material: &[u8]) -> String {
    use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey, OAEP_SHA256_MGF1SHA256};
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(params["PublicKey"].as_str().unwrap())
        .unwrap();
    let public =
        OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(&der).unwrap()).unwrap();
    let mut out = vec![0u8; 512];
    let w = public
        .encrypt(&OAEP_SHA256_MGF1SHA256, material, &mut out, None)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(w)
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
fn imported_key_material_lifecycle() {
    let (_d, s) = service();
    let k = call_as(&s, ROOT, "CreateKey", json!({"Origin": "EXTERNAL"})).unwrap();
    assert_eq!(k["KeyMetadata"]["KeyState"], "PendingImport");
    assert_eq!(k["KeyMetadata"]["Origin"], "EXTERNAL");
    let key = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let enc = json!({"KeyId": key, "Plaintext": "aGk="});
    assert_eq!(
        code(call_as(&s, ROOT, "Encrypt", enc.clone())),
        "KMSInvalidStateException"
    );
    assert_eq!(
        code(call_as(&s, ROOT, "EnableKey", json!({"KeyId": key}))),
        "KMSInvalidStateException"
    );

    let params = |alg: &str| {
        call_as(
            &s,
            ROOT,
            "GetParametersForImport",
            json!({"KeyId": key,
            "WrappingAlgorithm": alg, "WrappingKeySpec": "RSA_2048"}),
        )
        .unwrap()
    };
    let p = params("RSAES_OAEP_SHA_256");
    assert!(p["ParametersValidTo"].as_f64().unwrap() > crate::store::now() + 86_000.0);
    let material = [0x42u8; 32];
    let import = |p: &Value, wrapped: String, extra: Value| {
        let mut body = json!({"KeyId": key, "ImportToken": p["ImportToken"],
            "EncryptedKeyMaterial": wrapped});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        call_as(&s, ROOT, "ImportKeyMaterial", body)
    };
    // Wrong length, and a token of another key's shape, are refused.
    assert_eq!(
        code(import(&p, wrap_for_import(&p, &[1u8; 16]), json!({}))),
        "IncorrectKeyMaterialException"
    );
    let bogus = json!({"ImportToken": "AQID"});
    assert_eq!(
        code(import(&bogus, wrap_for_import(&p, &material), json!({}))),
        "InvalidImportTokenException"
    );
    import(&p, wrap_for_import(&p, &material), json!({})).unwrap();
    let ct = call_as(&s, ROOT, "Encrypt", enc.clone()).unwrap();
    let dec = json!({"CiphertextBlob": ct["CiphertextBlob"]});
    assert_eq!(
        call_as(&s, ROOT, "Decrypt", dec.clone()).unwrap()["Plaintext"],
        "aGk="
    );
    let d = call_as(&s, ROOT, "DescribeKey", json!({"KeyId": key})).unwrap();
    assert_eq!(
        d["KeyMetadata"]["ExpirationModel"],
        "KEY_MATERIAL_DOES_NOT_EXPIRE"
    );
    // The token was used up.
    assert_eq!(
        code(import(&p, wrap_for_import(&p, &material), json!({}))),
        "InvalidImportTokenException"
    );

    // Delete, then import other material (refused) and the same material (old ciphertexts
    // decrypt again), this time expiring.
    call_as(&s, ROOT, "DeleteImportedKeyMaterial", json!({"KeyId": key})).unwrap();
    assert_eq!(
        code(call_as(&s, ROOT, "Decrypt", dec.clone())),
        "KMSInvalidStateException"
    );
    let p = params("RSAES_OAEP_SHA_256");
    assert_eq!(
        code(import(&p, wrap_for_import(&p, &[7u8; 32]), json!({}))),
        "IncorrectKeyMaterialException"
    );
    let t = crate::store::now();
    assert_eq!(
        code(import(
            &p,
            wrap_for_import(&p, &material),
            json!({"ValidTo": t - 10.0, "ExpirationModel": "KEY_MATERIAL_EXPIRES"})
        )),
        "ValidationException"
    );
    import(
        &p,
        wrap_for_import(&p, &material),
        json!({"ValidTo": t + 3600.0, "ExpirationModel": "KEY_MATERIAL_EXPIRES"}),
    )
    .unwrap();
    assert_eq!(
        call_as(&s, ROOT, "Decrypt", dec.clone()).unwrap()["Plaintext"],
        "aGk="
    );
    let d = call_as(&s, ROOT, "DescribeKey", json!({"KeyId": key})).unwrap();
    assert_eq!(d["KeyMetadata"]["ExpirationModel"], "KEY_MATERIAL_EXPIRES");
    assert_eq!(d["KeyMetadata"]["KeyState"], "Enabled");

    // ValidTo passes: the material is deleted and the key waits for it again.
    let id = crate::store::parse_key_id(&key).unwrap();
    s.store()
        .update_key(&id, |r| {
            r.import.as_mut().unwrap().valid_to = Some(crate::store::now() - 1.0);
            Ok(())
        })
        .unwrap();
    assert_eq!(
        code(call_as(&s, ROOT, "Decrypt", dec)),
        "KMSInvalidStateException"
    );
    let d = call_as(&s, ROOT, "DescribeKey", json!({"KeyId": key})).unwrap();
    assert_eq!(d["KeyMetadata"]["KeyState"], "PendingImport");
    assert_eq!(
        s.store().key(&id).unwrap().unwrap().record.materials.len(),
        0
    );

    // Operations on a key that is not EXTERNAL.
    let plain = call_as(&s, ROOT, "CreateKey", json!({})).unwrap();
    let pk = plain["KeyMetadata"]["KeyId"].as_str().unwrap();
    assert_eq!(
        code(call_as(
            &s,
            ROOT,
            "DeleteImportedKeyMaterial",
            json!({"KeyId": pk})
        )),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(call_as(
            &s,
            ROOT,
            "RotateKeyOnDemand",
            json!({"KeyId": key})
        )),
        "KMSInvalidStateException"
    );
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
fn imported_material_goes_into_each_region_of_a_multi_region_key() {
    let (_d, s) = service();
    let s = s.with_regions(&["eu-west-1".to_string()]);
    let in_region = |region: &str, op: &str, body: Value| call_in(&s, ROOT, region, op, body);
    let k = in_region(
        "us-east-1",
        "CreateKey",
        json!({"MultiRegion": true, "Origin": "EXTERNAL"}),
    )
    .unwrap();
    let key = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let params = |region: &str| {
        in_region(
            region,
            "GetParametersForImport",
            json!({"KeyId": key, "WrappingAlgorithm": "RSAES_OAEP_SHA_256",
                "WrappingKeySpec": "RSA_2048"}),
        )
        .unwrap()
    };
    let import = |region: &str, p: &Value, material: &[u8], extra: Value| {
        let mut body = json!({"KeyId": key, "ImportToken": p["ImportToken"],
            "EncryptedKeyMaterial": wrap_for_import(p, material)});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        in_region(region, "ImportKeyMaterial", body)
    };
    let state = |region: &str| {
        in_region(region, "DescribeKey", json!({"KeyId": key})).unwrap()["KeyMetadata"]["KeyState"]
            .clone()
    };
    let material = [0x5au8; 32];
    let p = params("us-east-1");
    import("us-east-1", &p, &material, json!({})).unwrap();
    let ct = in_region(
        "us-east-1",
        "Encrypt",
        json!({"KeyId": key, "Plaintext": "aGk="}),
    )
    .unwrap();
    let dec = json!({"CiphertextBlob": ct["CiphertextBlob"]});

    // As in AWS, the replica of an imported key waits for its own import of the same material.
    let r = in_region(
        "us-east-1",
        "ReplicateKey",
        json!({"KeyId": key, "ReplicaRegion": "eu-west-1"}),
    )
    .unwrap();
    assert_eq!(r["ReplicaKeyMetadata"]["KeyState"], "PendingImport");
    assert_eq!(r["ReplicaKeyMetadata"]["Origin"], "EXTERNAL");
    assert_eq!(
        code(in_region("eu-west-1", "Decrypt", dec.clone())),
        "KMSInvalidStateException"
    );
    // Each Region's key has its own import parameters: a token of the primary's Region is not
    // one of the replica's.
    let p_us = params("us-east-1");
    let p_eu = params("eu-west-1");
    assert_eq!(
        code(import("eu-west-1", &p_us, &material, json!({}))),
        "InvalidImportTokenException"
    );
    assert_eq!(
        code(import("eu-west-1", &p_eu, &[0x11u8; 32], json!({}))),
        "IncorrectKeyMaterialException"
    );
    let t = crate::store::now();
    import(
        "eu-west-1",
        &p_eu,
        &material,
        json!({"ValidTo": t + 3600.0, "ExpirationModel": "KEY_MATERIAL_EXPIRES"}),
    )
    .unwrap();
    assert_eq!(state("eu-west-1"), "Enabled");
    assert_eq!(
        in_region("eu-west-1", "Decrypt", dec.clone()).unwrap()["Plaintext"],
        "aGk="
    );
    // Each Region's key keeps its own expiry.
    let described = |region: &str| {
        in_region(region, "DescribeKey", json!({"KeyId": key})).unwrap()["KeyMetadata"].clone()
    };
    assert_eq!(
        described("eu-west-1")["ExpirationModel"],
        "KEY_MATERIAL_EXPIRES"
    );
    assert_eq!(
        described("us-east-1")["ExpirationModel"],
        "KEY_MATERIAL_DOES_NOT_EXPIRE"
    );
    assert!(described("us-east-1").get("ValidTo").is_none());

    // Deleting the material in one Region leaves the other's.
    in_region(
        "us-east-1",
        "DeleteImportedKeyMaterial",
        json!({"KeyId": key}),
    )
    .unwrap();
    assert_eq!(state("us-east-1"), "PendingImport");
    assert_eq!(
        code(in_region("us-east-1", "Decrypt", dec.clone())),
        "KMSInvalidStateException"
    );
    assert_eq!(
        in_region("eu-west-1", "Decrypt", dec.clone()).unwrap()["Plaintext"],
        "aGk="
    );
    // The replica's material expires at its ValidTo: then no Region has it, and it is gone.
    let id = crate::store::parse_key_id(&key).unwrap();
    s.store()
        .update_key(&id, |r| {
            let m = r.multi_region.as_mut().unwrap();
            m.replicas[0].own.as_mut().unwrap().import_valid_to = Some(crate::store::now() - 1.0);
            Ok(())
        })
        .unwrap();
    assert_eq!(
        code(in_region("eu-west-1", "Decrypt", dec.clone())),
        "KMSInvalidStateException"
    );
    assert_eq!(state("eu-west-1"), "PendingImport");
    assert!(s
        .store()
        .key(&id)
        .unwrap()
        .unwrap()
        .record
        .materials
        .is_empty());
    // The same material imported again into the primary's Region: its old ciphertexts decrypt
    // there, and the replica still waits for its own import.
    let p = params("us-east-1");
    import("us-east-1", &p, &material, json!({})).unwrap();
    assert_eq!(
        in_region("us-east-1", "Decrypt", dec.clone()).unwrap()["Plaintext"],
        "aGk="
    );
    assert_eq!(state("eu-west-1"), "PendingImport");
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
fn multi_region_keys_share_material_across_regions() {
    let (_d, s) = service();
    let s = s.with_regions(&["eu-west-1".to_string(), "ap-south-1".to_string()]);
    let in_region = |region: &str, op: &str, body: Value| call_in(&s, ROOT, region, op, body);
    let k = in_region("us-east-1", "CreateKey", json!({"MultiRegion": true})).unwrap();
    let m = &k["KeyMetadata"];
    let key = m["KeyId"].as_str().unwrap().to_string();
    assert!(key.starts_with("mrk-"), "{key}");
    assert_eq!(m["MultiRegion"], true);
    assert_eq!(
        m["MultiRegionConfiguration"]["MultiRegionKeyType"],
        "PRIMARY"
    );
    // Not yet in eu-west-1; a single-Region key never is.
    assert_eq!(
        code(in_region("eu-west-1", "DescribeKey", json!({"KeyId": key}))),
        "NotFoundException"
    );
    let single = in_region("us-east-1", "CreateKey", json!({})).unwrap();
    let single = single["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    assert_eq!(
        code(in_region(
            "eu-west-1",
            "DescribeKey",
            json!({"KeyId": single})
        )),
        "NotFoundException"
    );
    assert_eq!(
        code(in_region(
            "us-east-1",
            "ReplicateKey",
            json!({"KeyId": single, "ReplicaRegion": "eu-west-1"})
        )),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(in_region(
            "us-east-1",
            "ReplicateKey",
            json!({"KeyId": key, "ReplicaRegion": "us-west-2"})
        )),
        "UnsupportedOperationException"
    );

    let r = in_region(
        "us-east-1",
        "ReplicateKey",
        json!({"KeyId": key, "ReplicaRegion": "eu-west-1"}),
    )
    .unwrap();
    let rm = &r["ReplicaKeyMetadata"];
    assert_eq!(
        rm["Arn"],
        format!("arn:aws:kms:eu-west-1:111122223333:key/{key}")
    );
    assert_eq!(
        rm["MultiRegionConfiguration"]["MultiRegionKeyType"],
        "REPLICA"
    );
    assert_eq!(
        code(in_region(
            "us-east-1",
            "ReplicateKey",
            json!({"KeyId": key, "ReplicaRegion": "eu-west-1"})
        )),
        "AlreadyExistsException"
    );

    // A ciphertext of the primary decrypts in the replica's Region.
    let ct = in_region(
        "us-east-1",
        "Encrypt",
        json!({"KeyId": key, "Plaintext": "bXJr"}),
    )
    .unwrap();
    let d = in_region(
        "eu-west-1",
        "Decrypt",
        json!({"CiphertextBlob": ct["CiphertextBlob"]}),
    )
    .unwrap();
    assert_eq!(d["Plaintext"], "bXJr");
    assert_eq!(
        d["KeyId"],
        format!("arn:aws:kms:eu-west-1:111122223333:key/{key}")
    );
    // ARNs of another Region do not resolve.
    let arn_east = format!("arn:aws:kms:us-east-1:111122223333:key/{key}");
    assert_eq!(
        code(in_region(
            "eu-west-1",
            "DescribeKey",
            json!({"KeyId": arn_east})
        )),
        "NotFoundException"
    );
    let keys = in_region("eu-west-1", "ListKeys", json!({})).unwrap();
    assert_eq!(keys["Keys"].as_array().unwrap().len(), 1);

    // The replica cannot replicate or change the primary; the primary can.
    assert_eq!(
        code(in_region(
            "eu-west-1",
            "UpdatePrimaryRegion",
            json!({"KeyId": key, "PrimaryRegion": "eu-west-1"})
        )),
        "UnsupportedOperationException"
    );
    in_region(
        "us-east-1",
        "UpdatePrimaryRegion",
        json!({"KeyId": key, "PrimaryRegion": "eu-west-1"}),
    )
    .unwrap();
    let d = in_region("us-east-1", "DescribeKey", json!({"KeyId": key})).unwrap();
    let cfg = &d["KeyMetadata"]["MultiRegionConfiguration"];
    assert_eq!(cfg["MultiRegionKeyType"], "REPLICA");
    assert_eq!(cfg["PrimaryKey"]["Region"], "eu-west-1");
    assert_eq!(cfg["ReplicaKeys"][0]["Region"], "us-east-1");
}

#[test]
fn dry_run_only_where_aws_has_it() {
    let (_d, s) = service();
    let k = call_as(&s, ROOT, "CreateKey", json!({})).unwrap();
    let key = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    assert_eq!(
        code(call_as(
            &s,
            ROOT,
            "ListGrants",
            json!({"KeyId": key, "DryRun": true})
        )),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(call_as(
            &s,
            ROOT,
            "ListGrants",
            json!({"KeyId": key, "DryRun": false})
        )),
        "ok"
    );
}

#[test]
fn direct_calls_see_the_values_of_their_body() {
    let (_d, s) = service();
    let policy = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": APP}, "Action": "kms:Encrypt", "Resource": "*",
         "Condition": {"StringEquals": {"kms:EncryptionAlgorithm": "SYMMETRIC_DEFAULT"},
                       "Null": {"kms:RequestAlias": "true"}}}]});
    let k = call_as(&s, ROOT, "CreateKey", json!({"Policy": policy.to_string()})).unwrap();
    let key = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    call_as(
        &s,
        ROOT,
        "CreateAlias",
        json!({"AliasName": "alias/d", "TargetKeyId": key}),
    )
    .unwrap();
    let enc = |id: &str| {
        code(call_as(
            &s,
            APP,
            "Encrypt",
            json!({"KeyId": id, "Plaintext": "eA=="}),
        ))
    };
    assert_eq!(enc(&key), "ok");
    assert_eq!(enc("alias/d"), "AccessDeniedException");
}

#[test]
fn message_type_and_key_agreement_algorithm_condition_keys() {
    use base64::Engine as _;
    let (_d, s) = service();
    let digest = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    // APP may sign raw messages only (a request naming no MessageType signs a raw message),
    // and verify digests only.
    let policy_for = |agreement: &str| {
        json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": APP}, "Action": "kms:Sign", "Resource": "*",
         "Condition": {"StringEquals": {"kms:MessageType": "RAW"}}},
        {"Effect": "Allow", "Principal": {"AWS": APP}, "Action": "kms:Verify", "Resource": "*",
         "Condition": {"StringEquals": {"kms:MessageType": "DIGEST"}}},
        {"Effect": "Allow", "Principal": {"AWS": APP}, "Action": "kms:DeriveSharedSecret", "Resource": "*",
         "Condition": {"StringEquals": {"kms:KeyAgreementAlgorithm": agreement}}},
        {"Effect": "Deny", "Principal": {"AWS": OTHER}, "Action": "kms:DeriveSharedSecret", "Resource": "*",
         "Condition": {"StringNotEquals": {"kms:KeyAgreementAlgorithm": "ECDH"}}},
        {"Effect": "Allow", "Principal": {"AWS": OTHER}, "Action": "kms:DeriveSharedSecret", "Resource": "*"}]})
    };
    let policy = policy_for("ECDH");
    let create = |spec: &str, usage: &str| {
        let k = call_as(
            &s,
            ROOT,
            "CreateKey",
            json!({"KeySpec": spec, "KeyUsage": usage, "Policy": policy.to_string()}),
        )
        .unwrap();
        k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
    };
    let signing = create("ECC_NIST_P256", "SIGN_VERIFY");
    let sign = |who: &str, message: &str, message_type: Option<&str>| {
        let mut body =
            json!({"KeyId": signing, "Message": message, "SigningAlgorithm": "ECDSA_SHA_256"});
        if let Some(t) = message_type {
            body["MessageType"] = json!(t);
        }
        call_as(&s, who, "Sign", body)
    };
    assert_eq!(code(sign(APP, "eA==", None)), "ok");
    assert_eq!(code(sign(APP, "eA==", Some("RAW"))), "ok");
    assert_eq!(
        code(sign(APP, &digest, Some("DIGEST"))),
        "AccessDeniedException"
    );
    let sig = sign(ROOT, &digest, Some("DIGEST")).unwrap()["Signature"].clone();
    let verify = |message_type: Option<&str>| {
        let mut body = json!({"KeyId": signing, "Message": digest, "Signature": sig,
            "SigningAlgorithm": "ECDSA_SHA_256"});
        if let Some(t) = message_type {
            body["MessageType"] = json!(t);
        }
        code(call_as(&s, APP, "Verify", body))
    };
    assert_eq!(verify(Some("DIGEST")), "ok");
    // Unnamed, the type is RAW, which this policy does not allow for Verify.
    assert_eq!(verify(None), "AccessDeniedException");

    let agreement = create("ECC_NIST_P256", "KEY_AGREEMENT");
    let peer = create("ECC_NIST_P256", "KEY_AGREEMENT");
    let peer_public =
        call_as(&s, ROOT, "GetPublicKey", json!({"KeyId": peer})).unwrap()["PublicKey"].clone();
    let derive = |who: &str| {
        code(call_as(
            &s,
            who,
            "DeriveSharedSecret",
            json!({"KeyId": agreement, "KeyAgreementAlgorithm": "ECDH", "PublicKey": peer_public}),
        ))
    };
    assert_eq!(derive(APP), "ok");
    // The Deny's negated operator does not match a request naming ECDH.
    assert_eq!(derive(OTHER), "ok");
    // A policy requiring another algorithm shuts APP out.
    let strict = policy_for("NONE").to_string();
    call_as(
        &s,
        ROOT,
        "PutKeyPolicy",
        json!({"KeyId": agreement, "PolicyName": "default", "Policy": strict}),
    )
    .unwrap();
    assert_eq!(derive(APP), "AccessDeniedException");
}

#[test]
fn re_encrypt_authorizations_see_their_own_encryption_algorithm() {
    let (_d, s) = service();
    let statements = |from_alg: &str, to_alg: &str| {
        json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"},
            {"Effect": "Allow", "Principal": {"AWS": APP}, "Action": "kms:ReEncryptFrom", "Resource": "*",
             "Condition": {"StringEquals": {"kms:EncryptionAlgorithm": from_alg}}},
            {"Effect": "Allow", "Principal": {"AWS": APP}, "Action": "kms:ReEncryptTo", "Resource": "*",
             "Condition": {"StringEquals": {"kms:EncryptionAlgorithm": to_alg}}}]})
        .to_string()
    };
    // The source only lets APP re-encrypt away from SYMMETRIC_DEFAULT ciphertexts; the RSA
    // destination only lets APP re-encrypt to RSAES_OAEP_SHA_256.
    let sym = call_as(
        &s,
        ROOT,
        "CreateKey",
        json!({"Policy": statements("SYMMETRIC_DEFAULT", "SYMMETRIC_DEFAULT")}),
    )
    .unwrap()["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let rsa = call_as(
        &s,
        ROOT,
        "CreateKey",
        json!({"KeySpec": "RSA_2048", "KeyUsage": "ENCRYPT_DECRYPT",
               "Policy": statements("RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_256")}),
    )
    .unwrap()["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let ct = call_as(
        &s,
        ROOT,
        "Encrypt",
        json!({"KeyId": sym, "Plaintext": "eA=="}),
    )
    .unwrap()["CiphertextBlob"]
        .clone();
    let to_rsa = |alg: &str| {
        call_as(
            &s,
            APP,
            "ReEncrypt",
            json!({"CiphertextBlob": ct, "DestinationKeyId": rsa, "DestinationEncryptionAlgorithm": alg}),
        )
    };
    let r = to_rsa("RSAES_OAEP_SHA_256").unwrap();
    assert_eq!(r["SourceEncryptionAlgorithm"], "SYMMETRIC_DEFAULT");
    assert_eq!(r["DestinationEncryptionAlgorithm"], "RSAES_OAEP_SHA_256");
    assert_eq!(code(to_rsa("RSAES_OAEP_SHA_1")), "AccessDeniedException");
    // And back: the RSA source is authorized with its own algorithm, the symmetric destination
    // with SYMMETRIC_DEFAULT.
    let back = call_as(
        &s,
        APP,
        "ReEncrypt",
        json!({"CiphertextBlob": r["CiphertextBlob"], "SourceKeyId": rsa,
               "SourceEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "DestinationKeyId": sym}),
    )
    .unwrap();
    let plain = call_as(
        &s,
        ROOT,
        "Decrypt",
        json!({"CiphertextBlob": back["CiphertextBlob"]}),
    )
    .unwrap();
    assert_eq!(plain["Plaintext"], "eA==");
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
fn each_region_of_a_multi_region_key_has_its_own_policy_grants_tags_and_state() {
    let (_d, s) = service();
    let s = s.with_regions(&["eu-west-1".to_string(), "ap-south-1".to_string()]);
    let as_in = |who: &str, region: &str, op: &str, body: Value| call_in(&s, who, region, op, body);
    let allow = |who: &str| json!({"Effect": "Allow", "Principal": {"AWS": who}, "Action": "kms:*", "Resource": "*"});
    let primary_policy =
        json!({"Version": "2012-10-17", "Statement": [allow(ROOT), allow(APP)]}).to_string();
    let replica_policy = json!({"Version": "2012-10-17", "Statement": [allow(ROOT),
        {"Effect": "Deny", "Principal": {"AWS": APP}, "Action": "kms:*", "Resource": "*"}]})
    .to_string();
    let k = as_in(
        ROOT,
        "us-east-1",
        "CreateKey",
        json!({"MultiRegion": true, "Description": "primary", "Policy": primary_policy,
            "Tags": [{"TagKey": "site", "TagValue": "us"}]}),
    )
    .unwrap();
    let key = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();

    // A replica policy that would lock the caller out is refused, and nothing is made.
    let only_other = json!({"Version": "2012-10-17", "Statement": [allow(OTHER)]}).to_string();
    assert_eq!(
        code(as_in(
            ROOT,
            "us-east-1",
            "ReplicateKey",
            json!({"KeyId": key, "ReplicaRegion": "ap-south-1", "Policy": only_other})
        )),
        "MalformedPolicyDocumentException"
    );
    assert_eq!(
        code(as_in(
            ROOT,
            "ap-south-1",
            "DescribeKey",
            json!({"KeyId": key})
        )),
        "NotFoundException"
    );
    assert_eq!(
        code(as_in(
            ROOT,
            "us-east-1",
            "ReplicateKey",
            json!({"KeyId": key, "ReplicaRegion": "eu-west-1", "Policy": "{"})
        )),
        "MalformedPolicyDocumentException"
    );

    let r = as_in(
        ROOT,
        "us-east-1",
        "ReplicateKey",
        json!({"KeyId": key, "ReplicaRegion": "eu-west-1", "Policy": replica_policy,
            "Description": "replica", "Tags": [{"TagKey": "site", "TagValue": "eu"}]}),
    )
    .unwrap();
    assert_eq!(r["ReplicaPolicy"], replica_policy.as_str());
    assert_eq!(
        r["ReplicaTags"],
        json!([{"TagKey": "site", "TagValue": "eu"}])
    );
    assert_eq!(r["ReplicaKeyMetadata"]["Description"], "replica");
    assert_eq!(r["ReplicaKeyMetadata"]["KeyState"], "Enabled");

    // Each Region answers its own description, policy and tags.
    let describe = |region: &str| {
        as_in(ROOT, region, "DescribeKey", json!({"KeyId": key})).unwrap()["KeyMetadata"].clone()
    };
    assert_eq!(describe("us-east-1")["Description"], "primary");
    assert_eq!(describe("eu-west-1")["Description"], "replica");
    let policy_in = |region: &str| {
        as_in(ROOT, region, "GetKeyPolicy", json!({"KeyId": key})).unwrap()["Policy"].clone()
    };
    assert_eq!(policy_in("us-east-1"), primary_policy.as_str());
    assert_eq!(policy_in("eu-west-1"), replica_policy.as_str());
    let tags_in = |region: &str| {
        as_in(ROOT, region, "ListResourceTags", json!({"KeyId": key})).unwrap()["Tags"].clone()
    };
    assert_eq!(
        tags_in("us-east-1"),
        json!([{"TagKey": "site", "TagValue": "us"}])
    );
    assert_eq!(
        tags_in("eu-west-1"),
        json!([{"TagKey": "site", "TagValue": "eu"}])
    );

    // The replica's policy denies APP, which the primary's allows; the material is shared.
    let ct = as_in(
        APP,
        "us-east-1",
        "Encrypt",
        json!({"KeyId": key, "Plaintext": "bXJr"}),
    )
    .unwrap()["CiphertextBlob"]
        .clone();
    let dec = json!({"CiphertextBlob": ct});
    assert_eq!(
        code(as_in(APP, "eu-west-1", "Decrypt", dec.clone())),
        "AccessDeniedException"
    );
    assert_eq!(
        as_in(ROOT, "eu-west-1", "Decrypt", dec.clone()).unwrap()["Plaintext"],
        "bXJr"
    );

    // A grant on the primary does not apply in the replica's Region.
    let g = as_in(
        ROOT,
        "us-east-1",
        "CreateGrant",
        json!({"KeyId": key, "GranteePrincipal": OTHER, "Operations": ["Decrypt"]}),
    )
    .unwrap();
    assert_eq!(
        code(as_in(OTHER, "us-east-1", "Decrypt", dec.clone())),
        "ok"
    );
    assert_eq!(
        code(as_in(OTHER, "eu-west-1", "Decrypt", dec.clone())),
        "AccessDeniedException"
    );
    let grants_in = |region: &str| {
        as_in(ROOT, region, "ListGrants", json!({"KeyId": key})).unwrap()["Grants"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!((grants_in("us-east-1"), grants_in("eu-west-1")), (1, 0));
    // Its token is known, and still confers nothing in the replica's Region.
    let mut with_token = dec.clone();
    with_token["GrantTokens"] = json!([g["GrantToken"]]);
    assert_eq!(
        code(as_in(OTHER, "eu-west-1", "Decrypt", with_token)),
        "AccessDeniedException"
    );

    // Disabling the replica leaves the primary working.
    as_in(ROOT, "eu-west-1", "DisableKey", json!({"KeyId": key})).unwrap();
    assert_eq!(
        code(as_in(ROOT, "eu-west-1", "Decrypt", dec.clone())),
        "DisabledException"
    );
    assert_eq!(code(as_in(ROOT, "us-east-1", "Decrypt", dec.clone())), "ok");
    assert_eq!(describe("us-east-1")["KeyState"], "Enabled");
    assert_eq!(describe("eu-west-1")["KeyState"], "Disabled");
    as_in(ROOT, "eu-west-1", "EnableKey", json!({"KeyId": key})).unwrap();

    // Descriptions and tags change in one Region only.
    as_in(
        ROOT,
        "eu-west-1",
        "UpdateKeyDescription",
        json!({"KeyId": key, "Description": "eu copy"}),
    )
    .unwrap();
    as_in(
        ROOT,
        "eu-west-1",
        "TagResource",
        json!({"KeyId": key, "Tags": [{"TagKey": "team", "TagValue": "x"}]}),
    )
    .unwrap();
    assert_eq!(describe("us-east-1")["Description"], "primary");
    assert_eq!(describe("eu-west-1")["Description"], "eu copy");
    assert_eq!(tags_in("us-east-1").as_array().unwrap().len(), 1);
    assert_eq!(tags_in("eu-west-1").as_array().unwrap().len(), 2);

    // Rotation is the primary's, and applies to every Region.
    assert_eq!(
        code(as_in(
            ROOT,
            "eu-west-1",
            "EnableKeyRotation",
            json!({"KeyId": key})
        )),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(as_in(
            ROOT,
            "eu-west-1",
            "RotateKeyOnDemand",
            json!({"KeyId": key})
        )),
        "UnsupportedOperationException"
    );
    as_in(
        ROOT,
        "us-east-1",
        "EnableKeyRotation",
        json!({"KeyId": key}),
    )
    .unwrap();
    let st = as_in(
        ROOT,
        "eu-west-1",
        "GetKeyRotationStatus",
        json!({"KeyId": key}),
    )
    .unwrap();
    assert_eq!(st["KeyRotationEnabled"], true);

    // UpdatePrimaryRegion moves the primary; each Region keeps its own fields and grants.
    as_in(
        ROOT,
        "us-east-1",
        "UpdatePrimaryRegion",
        json!({"KeyId": key, "PrimaryRegion": "eu-west-1"}),
    )
    .unwrap();
    let eu = describe("eu-west-1");
    assert_eq!(
        eu["MultiRegionConfiguration"]["MultiRegionKeyType"],
        "PRIMARY"
    );
    assert_eq!(eu["Description"], "eu copy");
    assert_eq!(describe("us-east-1")["Description"], "primary");
    assert_eq!(policy_in("us-east-1"), primary_policy.as_str());
    assert_eq!(policy_in("eu-west-1"), replica_policy.as_str());
    assert_eq!((grants_in("us-east-1"), grants_in("eu-west-1")), (1, 0));
    assert_eq!(
        code(as_in(OTHER, "us-east-1", "Decrypt", dec.clone())),
        "ok"
    );

    // The primary (now eu-west-1) waits for its replica before its waiting period begins.
    let sched = as_in(
        ROOT,
        "eu-west-1",
        "ScheduleKeyDeletion",
        json!({"KeyId": key, "PendingWindowInDays": 7}),
    )
    .unwrap();
    assert_eq!(sched["KeyState"], "PendingReplicaDeletion");
    assert!(sched.get("DeletionDate").is_none(), "{sched}");
    assert_eq!(sched["PendingWindowInDays"], 7);
    let eu = describe("eu-west-1");
    assert_eq!(eu["KeyState"], "PendingReplicaDeletion");
    assert!(eu.get("DeletionDate").is_none());
    assert_eq!(eu["PendingDeletionWindowInDays"], 7);
    assert_eq!(
        code(as_in(ROOT, "eu-west-1", "Decrypt", dec.clone())),
        "KMSInvalidStateException"
    );
    assert_eq!(
        code(as_in(
            ROOT,
            "eu-west-1",
            "ReplicateKey",
            json!({"KeyId": key, "ReplicaRegion": "ap-south-1"})
        )),
        "KMSInvalidStateException"
    );
    // No new alias points at a primary waiting for its replicas' deletion (as AWS refuses).
    assert_eq!(
        code(as_in(
            ROOT,
            "eu-west-1",
            "CreateAlias",
            json!({"AliasName": "alias/leaving", "TargetKeyId": key})
        )),
        "KMSInvalidStateException"
    );
    assert_eq!(code(as_in(ROOT, "us-east-1", "Decrypt", dec.clone())), "ok");
    // Cancelled like any pending deletion: the key is Disabled.
    as_in(
        ROOT,
        "eu-west-1",
        "CancelKeyDeletion",
        json!({"KeyId": key}),
    )
    .unwrap();
    assert_eq!(describe("eu-west-1")["KeyState"], "Disabled");
    as_in(
        ROOT,
        "eu-west-1",
        "ScheduleKeyDeletion",
        json!({"KeyId": key, "PendingWindowInDays": 7}),
    )
    .unwrap();

    // Deleting the replica deletes only the replica; then the primary's waiting period begins.
    let sched = as_in(
        ROOT,
        "us-east-1",
        "ScheduleKeyDeletion",
        json!({"KeyId": key, "PendingWindowInDays": 7}),
    )
    .unwrap();
    assert_eq!(sched["KeyState"], "PendingDeletion");
    let due = sched["DeletionDate"].as_f64().unwrap();
    assert_eq!(describe("eu-west-1")["KeyState"], "PendingReplicaDeletion");
    assert_eq!(s.store().purge_expired(due - 1.0).unwrap(), 0);
    assert_eq!(s.store().purge_expired(due).unwrap(), 1);
    assert_eq!(
        code(as_in(
            ROOT,
            "us-east-1",
            "DescribeKey",
            json!({"KeyId": key})
        )),
        "NotFoundException"
    );
    let eu = describe("eu-west-1");
    assert_eq!(eu["KeyState"], "PendingDeletion");
    assert!(eu["DeletionDate"].as_f64().unwrap() >= due + 7.0 * 86_400.0 - 1.0);
    assert_eq!(eu["MultiRegionConfiguration"]["ReplicaKeys"], json!([]));
    assert_eq!(s.store().purge_expired(due + 8.0 * 86_400.0).unwrap(), 1);
    assert_eq!(
        code(as_in(
            ROOT,
            "eu-west-1",
            "DescribeKey",
            json!({"KeyId": key})
        )),
        "NotFoundException"
    );
}

#[test]
fn replicas_of_earlier_records_start_from_the_primarys_fields() {
    // A replica as earlier versions stored it: no fields of its own.
    let old: crate::service::ops::regions::ReplicaRecord =
        serde_json::from_str(r#"{"region": "eu-west-1", "created": 1.0}"#).unwrap();
    assert!(old.own.is_none());
    let (_d, s) = service();
    let s = s.with_regions(&["eu-west-1".to_string()]);
    let as_in = |region: &str, op: &str, body: Value| call_in(&s, ROOT, region, op, body);
    let k = as_in(
        "us-east-1",
        "CreateKey",
        json!({"MultiRegion": true, "Description": "shared"}),
    )
    .unwrap();
    let key = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let id = crate::store::parse_key_id(&key).unwrap();
    s.store()
        .update_key(&id, |r| {
            r.multi_region.as_mut().unwrap().replicas.push(old.clone());
            Ok(())
        })
        .unwrap();
    let describe = |region: &str| {
        as_in(region, "DescribeKey", json!({"KeyId": key})).unwrap()["KeyMetadata"].clone()
    };
    assert_eq!(describe("eu-west-1")["Description"], "shared");
    // The first change in one Region stays there.
    as_in("eu-west-1", "DisableKey", json!({"KeyId": key})).unwrap();
    assert_eq!(describe("eu-west-1")["KeyState"], "Disabled");
    assert_eq!(describe("us-east-1")["KeyState"], "Enabled");
    as_in(
        "us-east-1",
        "UpdateKeyDescription",
        json!({"KeyId": key, "Description": "primary only"}),
    )
    .unwrap();
    assert_eq!(describe("eu-west-1")["Description"], "shared");
}

#[test]
fn aliases_are_per_region() {
    let (_d, s) = service();
    let s = s.with_regions(&["eu-west-1".to_string()]);
    let as_in = |region: &str, op: &str, body: Value| call_in(&s, ROOT, region, op, body);
    let k = as_in("us-east-1", "CreateKey", json!({"MultiRegion": true})).unwrap();
    let key = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    as_in(
        "us-east-1",
        "ReplicateKey",
        json!({"KeyId": key, "ReplicaRegion": "eu-west-1", "Description": "replica"}),
    )
    .unwrap();
    let alias = |name: &str| json!({"AliasName": name, "TargetKeyId": key});
    as_in("us-east-1", "CreateAlias", alias("alias/app")).unwrap();
    assert_eq!(
        code(as_in(
            "eu-west-1",
            "DescribeKey",
            json!({"KeyId": "alias/app"})
        )),
        "NotFoundException"
    );
    let names = |region: &str| {
        as_in(region, "ListAliases", json!({})).unwrap()["Aliases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["AliasName"].clone(), a["AliasArn"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names("eu-west-1"), vec![]);
    // The same name in another Region is another alias.
    as_in("eu-west-1", "CreateAlias", alias("alias/app")).unwrap();
    as_in("eu-west-1", "CreateAlias", alias("alias/eu-only")).unwrap();
    let dup = as_in("eu-west-1", "CreateAlias", alias("alias/app"));
    assert!(
        matches!(&dup, Err(KmsError::AlreadyExists(m))
            if m.contains("arn:aws:kms:eu-west-1:111122223333:alias/app")),
        "{dup:?}"
    );
    let d = as_in("eu-west-1", "DescribeKey", json!({"KeyId": "alias/app"})).unwrap();
    assert_eq!(d["KeyMetadata"]["Description"], "replica");
    assert_eq!(
        names("eu-west-1"),
        vec![
            (
                json!("alias/app"),
                json!("arn:aws:kms:eu-west-1:111122223333:alias/app")
            ),
            (
                json!("alias/eu-only"),
                json!("arn:aws:kms:eu-west-1:111122223333:alias/eu-only")
            ),
        ]
    );
    assert_eq!(names("us-east-1").len(), 1);
    as_in(
        "eu-west-1",
        "DeleteAlias",
        json!({"AliasName": "alias/app"}),
    )
    .unwrap();
    as_in("us-east-1", "DescribeKey", json!({"KeyId": "alias/app"})).unwrap();
    // A single-Region key cannot be named in another Region.
    let single = as_in("us-east-1", "CreateKey", json!({})).unwrap();
    let single = single["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    assert_eq!(
        code(as_in(
            "eu-west-1",
            "CreateAlias",
            json!({"AliasName": "alias/s", "TargetKeyId": single})
        )),
        "NotFoundException"
    );
    // Deleting the replica deletes its Region's aliases, not the primary's.
    let sched = as_in(
        "eu-west-1",
        "ScheduleKeyDeletion",
        json!({"KeyId": key, "PendingWindowInDays": 7}),
    )
    .unwrap();
    let due = sched["DeletionDate"].as_f64().unwrap();
    assert_eq!(s.store().purge_expired(due).unwrap(), 1);
    assert_eq!(s.drop_orphan_aliases().unwrap(), 1);
    assert!(s
        .store()
        .alias("eu-west-1:alias/eu-only")
        .unwrap()
        .is_none());
    assert_eq!(names("us-east-1").len(), 1);
}
