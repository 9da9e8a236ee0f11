//! Shared fixtures: echo servers and an in-process vsock broker (the monitor side of one
//! enclave), so tests run the real fabric in a temporary run directory.
#![allow(dead_code)]

use cloister_proxy::vsock_io::Transport;
use cloister_vsock::{Broker, BrokerConfig, BrokerLimits, NsmService};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An echo server on `ip:0`: sends `tag` first (if any), then echoes until EOF, then closes its
/// write side. Returns its address.
pub async fn echo_server(ip: &str, tag: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if !tag.is_empty() && s.write_all(tag).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Deterministic test bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// Writes `data`, half-closes, reads until EOF; returns what came back.
pub async fn round_trip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: S,
    data: &[u8],
) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(s);
    let data = data.to_vec();
    // Errors (a reset from a refused connection) end the exchange; the bytes that came back
    // are what the caller checks.
    let writer = async move {
        if w.write_all(&data).await.is_ok() {
            let _ = w.shutdown().await;
        }
    };
    let reader = async move {
        let mut got = Vec::new();
        let _ = r.read_to_end(&mut got).await;
        got
    };
    let ((), got) = tokio::join!(writer, reader);
    got
}

struct NoNsm;
impl NsmService for NoNsm {
    fn handle(&self, _request: &[u8]) -> Vec<u8> {
        Vec::new()
    }
}

/// A temporary run directory with one enclave's broker.
pub struct Fabric {
    pub dir: tempfile::TempDir,
    pub broker: Broker,
    pub cid: u32,
}

impl Fabric {
    pub fn start(cid: u32) -> Fabric {
        let dir = tempfile::tempdir().unwrap();
        let enclave_socket = dir.path().join(format!("enclave-{cid}.sock"));
        let limits = BrokerLimits {
            max_enclave_connections: 4096,
            max_host_pending: 4096,
            ..BrokerLimits::default()
        };
        let config =
            BrokerConfig::new(cid, dir.path(), enclave_socket, Arc::new(NoNsm)).with_limits(limits);
        let broker = Broker::start(config).unwrap();
        Fabric { dir, broker, cid }
    }

    /// The host side (parent processes).
    pub fn host(&self) -> Transport {
        Transport::Fabric(self.dir.path().join("vsock"))
    }

    /// The enclave side.
    pub fn enclave(&self) -> Transport {
        Transport::Enclave(self.broker.enclave_socket().to_owned())
    }

    pub fn fabric_dir(&self) -> PathBuf {
        self.dir.path().join("vsock")
    }
}

/// A shutdown signal for a server under test.
pub fn shutdown_pair() -> (
    tokio::sync::oneshot::Sender<()>,
    impl std::future::Future<Output = ()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}
