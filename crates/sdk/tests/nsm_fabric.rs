//! The NSM client over the fabric channel, against a broker whose NSM service speaks the real
//! CBOR wire format.

use std::sync::Arc;

use cloister_nsm_api::{Digest, ErrorCode, Request, Response};
use cloister_sdk::nsm::{NsmClient, NsmError};
use cloister_vsock::{Broker, BrokerConfig, NsmService};

/// A minimal NSM: fixed description, PCR 16 extendable (XOR, not SHA-384: this tests the
/// transport, not the NSM), attestation documents that echo their inputs.
struct EchoNsm;

impl NsmService for EchoNsm {
    fn handle(&self, request: &[u8]) -> Vec<u8> {
        let response = match Request::from_cbor(request) {
            Err(_) if request.len() > 4096 => Response::Error(ErrorCode::InputTooLarge),
            Err(_) => Response::Error(ErrorCode::InvalidArgument),
            Ok(Request::DescribeNSM) => Response::DescribeNSM {
                version_major: 1,
                version_minor: 0,
                version_patch: 0,
                module_id: "test-nsm".into(),
                max_pcrs: 32,
                locked_pcrs: (0..16).collect(),
                digest: Digest::SHA384,
            },
            Ok(Request::DescribePCR { index }) if index < 32 => Response::DescribePCR {
                lock: index < 16,
                data: vec![0; 48],
            },
            Ok(Request::ExtendPCR { index: 16, data }) => Response::ExtendPCR {
                data: data.iter().map(|b| b ^ 0xff).collect(),
            },
            Ok(Request::ExtendPCR { .. }) => Response::Error(ErrorCode::ReadOnlyIndex),
            Ok(Request::LockPCR { .. }) => Response::LockPCR,
            Ok(Request::LockPCRs { .. }) => Response::LockPCRs,
            Ok(Request::GetRandom) => Response::GetRandom {
                random: vec![7; 256],
            },
            Ok(Request::Attestation {
                user_data,
                nonce,
                public_key,
            }) => {
                let mut document = Vec::new();
                for part in [user_data, nonce, public_key] {
                    document.extend_from_slice(part.as_deref().map_or(b"-".as_slice(), |v| v));
                    document.push(b'|');
                }
                Response::Attestation { document }
            }
            Ok(_) => Response::Error(ErrorCode::InvalidIndex),
        };
        response.to_cbor().unwrap_or_default()
    }
}

fn broker() -> (tempfile::TempDir, Broker) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BrokerConfig::new(
        50,
        dir.path(),
        dir.path().join("enclave.sock"),
        Arc::new(EchoNsm),
    );
    let b = Broker::start(cfg).unwrap();
    (dir, b)
}

#[test]
fn typed_client_over_the_fabric() {
    let (_dir, broker) = broker();
    let nsm = NsmClient::open_enclave_socket(broker.enclave_socket()).unwrap();
    let d = nsm.describe_nsm().unwrap();
    assert_eq!(d.module_id, "test-nsm");
    assert_eq!(d.max_pcrs, 32);
    assert_eq!(d.locked_pcrs.len(), 16);
    assert_eq!(d.digest, Digest::SHA384);
    let pcr = nsm.describe_pcr(3).unwrap();
    assert!(pcr.locked);
    assert_eq!(pcr.data.len(), 48);
    assert_eq!(nsm.extend_pcr(16, &[0x0f]).unwrap(), vec![0xf0]);
    assert!(matches!(
        nsm.extend_pcr(3, b"x"),
        Err(NsmError::Nsm(ErrorCode::ReadOnlyIndex))
    ));
    nsm.lock_pcr(16).unwrap();
    nsm.lock_pcrs(20).unwrap();
    assert_eq!(nsm.get_random().unwrap().len(), 256);
    let doc = nsm.attestation(Some(b"user"), None, Some(b"key")).unwrap();
    assert_eq!(doc, b"user|-|key|");
    assert_eq!(nsm.attest(None, Some(b"n"), None).unwrap(), b"-|n|-|");
}

#[test]
fn oversized_requests_are_refused_locally() {
    let (_dir, broker) = broker();
    let nsm = NsmClient::open_enclave_socket(broker.enclave_socket()).unwrap();
    let err = nsm.extend_pcr(16, &[0u8; 5000]).unwrap_err();
    assert!(matches!(err, NsmError::RequestTooLarge(_)), "{err:?}");
    assert_eq!(err.code(), ErrorCode::InputTooLarge);
    // The channel is still usable.
    assert_eq!(nsm.get_random().unwrap().len(), 256);
}

#[test]
fn driver_api_on_a_fabric_descriptor() {
    use cloister_sdk::nsm::{nsm_exit, nsm_process_request};
    use std::os::fd::{IntoRawFd, OwnedFd};
    let (_dir, broker) = broker();
    let stream = cloister_vsock::VsockStream::connect_enclave(
        broker.enclave_socket(),
        cloister_vsock::VsockAddr::new(0, cloister_vsock::NSM_PORT),
    )
    .unwrap();
    let fd = OwnedFd::from(stream).into_raw_fd();
    match nsm_process_request(fd, Request::GetRandom) {
        Response::GetRandom { random } => assert_eq!(random.len(), 256),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        nsm_process_request(fd, Request::DescribePCR { index: 40 }),
        Response::Error(ErrorCode::InvalidIndex)
    );
    assert_eq!(
        nsm_process_request(-1, Request::GetRandom),
        Response::Error(ErrorCode::InvalidArgument)
    );
    nsm_exit(fd);
}
