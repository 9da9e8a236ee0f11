//! Steps 3 to 6 (the enclave half of 6): the attestation-bound key and its ciphertext, the
//! genuine image's proof, the modified image's refusal, and the enclaves' teardown.

use crate::config::{ms, random, DemoOptions, Paths, ACCOUNT, APP_USER, PROXY_PORT, REGION};
use crate::enclaves::{exchange, start_enclave, terminate_and_wait, Enclaves};
use crate::error::{err, DemoError, DemoResult};
use crate::images::Images;
use crate::interrupt::{check_interrupted, pause};
use crate::services::Services;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use cloister_attestation::{Verifier, VerifyOptions};
use cloister_kms::config::CredentialConfig;
use cloister_runtime::Isolation;
use cloister_sample_app::{SecretReply, SecretRequest};
use cloister_sdk::kms_client::{
    AttestError, Credentials, Endpoint, KmsClient, KmsClientConfig, Route, DEFAULT_TIMEOUT,
};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use zeroize::Zeroizing;

/// What step 3 made: the secret (kept on the host to check the proof) and its ciphertext.
struct Keyed {
    endpoint: String,
    ciphertext_b64: String,
    secret: Zeroizing<Vec<u8>>,
}

impl Keyed {
    /// The request the sample app gets: the app's credential, the ciphertext and `challenge`.
    fn request(&self, app_credential: &CredentialConfig, challenge: &[u8]) -> SecretRequest {
        SecretRequest {
            access_key_id: app_credential.access_key_id.clone(),
            secret_access_key: app_credential.secret_access_key.clone(),
            region: REGION.into(),
            endpoint: self.endpoint.clone(),
            proxy_port: PROXY_PORT,
            ciphertext_b64: self.ciphertext_b64.clone(),
            challenge_b64: B64.encode(challenge),
        }
    }
}

/// Steps 3 to 6 (the enclave half of 6); returns the (already terminated) enclave guard.
pub(crate) fn with_services(
    opts: &DemoOptions,
    paths: &Paths,
    s: &Services,
    images: &Images,
) -> DemoResult<Enclaves> {
    let keyed = key_and_ciphertext(opts, s, images)?;
    let mut enclaves = Enclaves::new(&paths.run);
    genuine(opts, paths, s, images, &keyed, &mut enclaves)?;
    modified(opts, s, images, &keyed, &mut enclaves)?;

    // 6. Tear down the enclaves.
    let t = Instant::now();
    println!("[6/6] Tear down");
    let count = terminate_and_wait(&mut enclaves)?;
    println!(
        "  terminated {count} enclaves in {} ms; their monitors are gone",
        ms(t)
    );
    Ok(enclaves)
}

/// Step 3: a key whose policy releases it only to the sample image, and a fresh secret
/// encrypted under it.
fn key_and_ciphertext(opts: &DemoOptions, s: &Services, images: &Images) -> DemoResult<Keyed> {
    // 3. Key and ciphertext.
    let t = Instant::now();
    println!("[3/6] Create an attestation-bound key and encrypt a secret");
    let endpoint = format!("http://{}", s.kms_addr);
    let admin_client = admin_client(s, &endpoint)?;
    let policy = key_policy(opts.isolation, &images.genuine_pcrs.pcr0_hex());
    let created =
        s.rt.block_on(
            admin_client.call(
                "CreateKey",
                serde_json::json!({"Policy": policy.to_string(), "Description": "cloister demo"})
                    .to_string()
                    .as_bytes(),
            ),
        )
        .map_err(|e| err(DemoError::KeySetup, format!("CreateKey: {e}")))?;
    let created: serde_json::Value = serde_json::from_slice(&created)
        .map_err(|e| err(DemoError::KeySetup, format!("CreateKey: {e}")))?;
    let key_id = created["KeyMetadata"]["KeyId"]
        .as_str()
        .ok_or_else(|| {
            err(
                DemoError::KeySetup,
                "CreateKey answered without KeyMetadata.KeyId",
            )
        })?
        .to_owned();
    println!(
        "  key {key_id}: Decrypt only with kms:RecipientAttestation:ImageSha384 = PCR0 of \
         sample.eif and cloister:RecipientAttestation:Isolation = {}",
        opts.isolation.as_str()
    );
    let secret = Zeroizing::new(hex::encode(random::<24>()?).into_bytes());
    let encrypted =
        s.rt.block_on(
            admin_client.call(
                "Encrypt",
                serde_json::json!({"KeyId": key_id, "Plaintext": B64.encode(&secret[..])})
                    .to_string()
                    .as_bytes(),
            ),
        )
        .map_err(|e| err(DemoError::KeySetup, format!("Encrypt: {e}")))?;
    let encrypted: serde_json::Value = serde_json::from_slice(&encrypted)
        .map_err(|e| err(DemoError::KeySetup, format!("Encrypt: {e}")))?;
    let ciphertext_b64 = encrypted["CiphertextBlob"]
        .as_str()
        .ok_or_else(|| {
            err(
                DemoError::KeySetup,
                "Encrypt answered without CiphertextBlob",
            )
        })?
        .to_owned();
    println!(
        "  encrypted a fresh {}-byte random secret on the host ({} bytes of ciphertext)",
        secret.len(),
        B64.decode(&ciphertext_b64).map(|b| b.len()).unwrap_or(0)
    );
    println!("  step 3: {} ms", ms(t));
    check_interrupted()?;
    Ok(Keyed {
        endpoint,
        ciphertext_b64,
        secret,
    })
}

/// A client of the key service with its administrator credential (the host has no NSM).
fn admin_client(s: &Services, endpoint: &str) -> DemoResult<KmsClient> {
    KmsClient::new(
        KmsClientConfig {
            region: REGION.into(),
            endpoint: Endpoint::parse(endpoint).map_err(|e| err(DemoError::KeySetup, e))?,
            route: Route::Tcp(s.kms_addr),
            credentials: Credentials {
                access_key_id: s.admin.access_key_id.clone(),
                secret_access_key: s.admin.secret_access_key.clone(),
                session_token: None,
            },
            extra_roots: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        },
        Arc::new(|_: &[u8]| -> Result<Vec<u8>, AttestError> {
            Err(AttestError::Other("the host has no NSM".into()))
        }),
    )
    .map_err(|e| err(DemoError::KeySetup, e))
}

/// The key policy: the account administers the key; the app's user may Decrypt only in an
/// enclave whose image has `pcr0_hex` and that runs with `isolation`.
fn key_policy(isolation: Isolation, pcr0_hex: &str) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "KeyAdministration", "Effect": "Allow",
             "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")},
             "Action": ["kms:Encrypt", "kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy",
                        "kms:EnableKey", "kms:DisableKey", "kms:ScheduleKeyDeletion"],
             "Resource": "*"},
            {"Sid": "DecryptOnlyInTheSampleEnclave", "Effect": "Allow",
             "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:user/{APP_USER}")},
             "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {
                 "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0_hex},
                 "StringEquals": {"cloister:RecipientAttestation:Isolation": isolation.as_str()}}}
        ]
    })
}

/// Step 4: the genuine image proves it holds the secret.
fn genuine(
    opts: &DemoOptions,
    paths: &Paths,
    s: &Services,
    images: &Images,
    keyed: &Keyed,
    enclaves: &mut Enclaves,
) -> DemoResult<()> {
    // 4. The genuine image.
    let t = Instant::now();
    println!("[4/6] Run sample.eif and ask it to prove it can get the secret");
    let rec = start_enclave(
        enclaves,
        &images.genuine,
        "cloister-demo",
        opts.memory,
        opts.isolation,
    )?;
    println!(
        "  enclave {} (CID {}, {} MiB, {} isolation, monitor PID {}) booted in {} ms",
        rec.enclave_id,
        rec.cid,
        rec.memory_mib,
        opts.isolation.as_str(),
        rec.monitor_pid,
        ms(t)
    );
    if opts.pause {
        pause(&paths.run)?;
    }
    let challenge = random::<32>()?;
    let asked = Instant::now();
    let reply = exchange(
        &enclaves.run,
        &rec,
        &keyed.request(&s.app_credential, &challenge),
    )?;
    let (mac, document) = match reply {
        SecretReply::Proof {
            hmac_b64,
            document_b64,
        } => (
            B64.decode(hmac_b64)
                .map_err(|e| err(DemoError::ProofRejected, format!("HMAC: {e}")))?,
            B64.decode(document_b64)
                .map_err(|e| err(DemoError::ProofRejected, format!("document: {e}")))?,
        ),
        SecretReply::Error {
            error_type,
            message,
        } => {
            return Err(err(
                DemoError::NotReleased,
                format!("the sample enclave reported {error_type}: {message}"),
            ))
        }
    };
    println!(
        "  enclave answered in {} ms: KMS Decrypt with Recipient through vsock-proxy succeeded",
        ms(asked)
    );
    let verifier =
        Verifier::new(vec![s.root_der.clone()]).map_err(|e| err(DemoError::ProofRejected, e))?;
    let verified = verifier
        .verify(
            &document,
            &VerifyOptions::at(SystemTime::now())
                .with_nonce(challenge.to_vec())
                .with_pcr(0, images.genuine_pcrs.pcr0.to_vec()),
        )
        .map_err(|e| {
            err(
                DemoError::ProofRejected,
                format!("attestation document: {e}"),
            )
        })?;
    if verified.user_data() != Some(&mac[..]) {
        return Err(err(
            DemoError::ProofRejected,
            "the document's user_data is not the HMAC sent",
        ));
    }
    if !cloister_sample_app::verify_proof(&keyed.secret, &challenge, &mac) {
        return Err(err(
            DemoError::ProofRejected,
            "HMAC-SHA256(secret, challenge) does not match",
        ));
    }
    println!(
        "  attestation document verified: chains to the demo PKI root, module {}, nonce = challenge",
        verified.module_id()
    );
    println!(
        "  PCR0 in the document = {}",
        hex::encode(verified.pcr(0).unwrap_or_default())
    );
    println!(
        "  HMAC-SHA256(secret, challenge) = {} (matches: the enclave holds the secret)",
        hex::encode(&mac)
    );
    println!("  step 4: {} ms", ms(t));
    check_interrupted()?;
    Ok(())
}

/// Step 5: the modified image is refused with AccessDeniedException.
fn modified(
    opts: &DemoOptions,
    s: &Services,
    images: &Images,
    keyed: &Keyed,
    enclaves: &mut Enclaves,
) -> DemoResult<()> {
    // 5. The modified image.
    let t = Instant::now();
    println!("[5/6] Run modified.eif (one env line differs, so PCR0 differs) the same way");
    let rec = start_enclave(
        enclaves,
        &images.modified,
        "cloister-demo-modified",
        opts.memory,
        opts.isolation,
    )?;
    println!(
        "  enclave {} (CID {}) booted in {} ms",
        rec.enclave_id,
        rec.cid,
        ms(t)
    );
    let challenge = random::<32>()?;
    match exchange(
        &enclaves.run,
        &rec,
        &keyed.request(&s.app_credential, &challenge),
    )? {
        SecretReply::Error {
            error_type,
            message,
        } if error_type == "AccessDeniedException" => {
            println!("  KMS refused the modified image: {error_type}: {message}");
        }
        SecretReply::Error {
            error_type,
            message,
        } => {
            return Err(err(
                DemoError::NotRefused,
                format!(
                    "expected AccessDeniedException, the enclave reported {error_type}: {message}"
                ),
            ))
        }
        SecretReply::Proof { .. } => {
            return Err(err(
                DemoError::NotRefused,
                "the modified image received the secret",
            ));
        }
    }
    println!("  step 5: {} ms", ms(t));
    check_interrupted()?;
    Ok(())
}
