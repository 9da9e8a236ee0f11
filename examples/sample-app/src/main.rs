//! The enclave side of `cloister demo`: `cloister-sample-app serve PORT` (see the library docs).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use cloister_sample_app::{
    proof, read_message, write_message, SecretReply, SecretRequest, MAX_CHALLENGE_BYTES,
};
use cloister_sdk::kms_client::{
    Credentials, Endpoint, KmsClient, KmsClientConfig, KmsClientError, NsmAttester, Route,
    DEFAULT_TIMEOUT,
};
use cloister_sdk::nsm::NsmClient;
use cloister_sdk::{VsockListener, VsockStream};
use std::collections::BTreeMap;
use std::io::BufReader;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// How long the parent may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let port = match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("serve"), Some(p)) => p.parse::<u32>().ok(),
        _ => None,
    };
    let Some(port) = port else {
        eprintln!("usage: cloister-sample-app serve PORT");
        return ExitCode::from(2);
    };
    let listener = match VsockListener::bind(port) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sample-app: cannot listen on vsock port {port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sample-app: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("sample-app: listening on vsock port {port}");
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                println!(
                    "sample-app: request from cid {} port {}",
                    peer.cid, peer.port
                );
                if let Err(e) = serve_one(&runtime, stream) {
                    eprintln!("sample-app: {e}");
                }
            }
            Err(e) => {
                eprintln!("sample-app: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve_one(
    runtime: &tokio::runtime::Runtime,
    stream: VsockStream,
) -> Result<(), cloister_sample_app::WireError> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut reader = BufReader::new(&stream);
    let request: SecretRequest = read_message(&mut reader)?;
    let reply = match runtime.block_on(release_secret(&request)) {
        Ok(reply) => reply,
        Err(e) => failure(e),
    };
    let mut writer = &stream;
    write_message(&mut writer, &reply)
}

/// Why the secret was not released.
#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error("invalid request: {0}")]
    Request(String),
    #[error(transparent)]
    Kms(#[from] KmsClientError),
    #[error("NSM: {0}")]
    Nsm(#[from] cloister_sdk::nsm::NsmError),
}

fn failure(e: AppError) -> SecretReply {
    match e {
        AppError::Kms(KmsClientError::Service { kind, message, .. }) => SecretReply::Error {
            error_type: kind,
            message,
        },
        other => {
            let mut message = other.to_string();
            let mut source = std::error::Error::source(&other);
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            let error_type = match other {
                AppError::Request(_) => "InvalidRequest",
                AppError::Kms(_) => "KmsClientError",
                AppError::Nsm(_) => "NsmError",
            };
            SecretReply::Error {
                error_type: error_type.into(),
                message,
            }
        }
    }
}

async fn release_secret(request: &SecretRequest) -> Result<SecretReply, AppError> {
    let challenge = B64
        .decode(&request.challenge_b64)
        .map_err(|e| AppError::Request(format!("challenge: {e}")))?;
    if challenge.is_empty() || challenge.len() > MAX_CHALLENGE_BYTES {
        return Err(AppError::Request(format!(
            "challenge must be 1..={MAX_CHALLENGE_BYTES} bytes"
        )));
    }
    let blob = B64
        .decode(&request.ciphertext_b64)
        .map_err(|e| AppError::Request(format!("ciphertext: {e}")))?;
    let config = KmsClientConfig {
        region: request.region.clone(),
        endpoint: Endpoint::parse(&request.endpoint)?,
        route: Route::Vsock {
            cid: 3,
            port: request.proxy_port,
            transport: None,
        },
        credentials: Credentials {
            access_key_id: request.access_key_id.clone(),
            secret_access_key: Zeroizing::new(request.secret_access_key.clone()),
            session_token: None,
        },
        extra_roots: Vec::new(),
        timeout: DEFAULT_TIMEOUT,
    };
    let client = KmsClient::new(config, Arc::new(NsmAttester::open()?))?;
    let secret = client.decrypt(&blob, None, None, &BTreeMap::new()).await?;
    let mac = proof(&secret, &challenge);
    drop(secret);
    let nsm = NsmClient::open()?;
    let document = nsm.attestation(Some(&mac), Some(&challenge), None)?;
    println!("sample-app: secret released by KMS; proof sent");
    Ok(SecretReply::Proof {
        hmac_b64: B64.encode(mac),
        document_b64: B64.encode(document),
    })
}
