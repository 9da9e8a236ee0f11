//! Fuzzes the key service's handling of untrusted request bytes: the JSON body of every
//! read-only or cryptographic operation (against a real store with one key and one alias), key
//! policy documents, ciphertext blob headers, and SigV4 Authorization headers.
#![no_main]

use cloister_kms::policy::Policy;
use cloister_kms::sigv4::{Credential, SignedRequest, Verifier};
use cloister_kms::store::Store;
use cloister_kms::Service;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const OPS: &[&str] = &[
    "Decrypt",
    "Encrypt",
    "DescribeKey",
    "ListKeys",
    "ListAliases",
    "GenerateRandom",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncrypt",
    "GetKeyPolicy",
    "ListKeyPolicies",
    "ListResourceTags",
    "GetKeyRotationStatus",
    "Nonexistent",
];

fn service() -> &'static Service {
    static S: OnceLock<Service> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("cloister-kms-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir, &dir.join("master.key")).expect("store");
        let s = Service::new(store, "us-east-1", "111122223333", None);
        let root = "arn:aws:iam::111122223333:root";
        let k = s.handle("CreateKey", root, b"{}").expect("create");
        let v: serde_json::Value = serde_json::from_slice(&k).expect("json");
        let id = v["KeyMetadata"]["KeyId"].as_str().expect("id").to_string();
        s.handle(
            "CreateAlias",
            root,
            format!("{{\"AliasName\":\"alias/f\",\"TargetKeyId\":\"{id}\"}}").as_bytes(),
        )
        .expect("alias");
        s
    })
}

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let mut m = std::collections::HashMap::new();
        m.insert(
            "AKIAFUZZFUZZFUZZ0001".to_string(),
            Credential {
                secret: zeroize::Zeroizing::new("fuzz-secret-fuzz-secret".into()),
                principal: "arn:aws:iam::111122223333:root".into(),
            },
        );
        Verifier::new("us-east-1", m)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 | 1 => {
            let op = OPS[usize::from(selector / 4) % OPS.len()];
            let _ = service().handle(op, "arn:aws:iam::111122223333:root", rest);
        }
        2 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(p) = Policy::parse(text) {
                    let ctx = cloister_kms::policy::RequestContext {
                        principal: "arn:aws:iam::111122223333:user/x",
                        account: "111122223333",
                        action: "kms:Decrypt",
                        resource: "arn:aws:kms:us-east-1:111122223333:key/x",
                        values: Default::default(),
                    };
                    let _ = p.allows(&ctx);
                }
            }
            let _ = cloister_kms::blob::parse_header(rest);
        }
        _ => {
            let mut parts = rest.splitn(3, |b| *b == b'\n');
            let auth = parts.next().unwrap_or_default();
            let date = parts.next().unwrap_or_default();
            let body = parts.next().unwrap_or_default();
            let headers: Vec<(&str, &[u8])> = vec![
                ("authorization", auth),
                ("x-amz-date", date),
                ("host", b"localhost"),
            ];
            let req = SignedRequest {
                method: "POST",
                path: "/",
                query: "",
                headers: &headers,
                body,
            };
            let _ = verifier().verify(&req, 1_700_000_000);
        }
    }
});
