//! Shared fixtures: a broker in a temporary run directory with a fake NSM.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cloister_vsock::nsm_frame::NSM_REQUEST_MAX;
use cloister_vsock::{Broker, BrokerConfig, BrokerLimits, NsmService};

/// Answers `b"resp:" + request`, or `b"InputTooLarge"` over the NSM request limit.
#[derive(Default)]
pub struct FakeNsm {
    pub calls: AtomicUsize,
}

impl NsmService for FakeNsm {
    fn handle(&self, request: &[u8]) -> Vec<u8> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if request.len() > NSM_REQUEST_MAX {
            return b"InputTooLarge".to_vec();
        }
        [b"resp:".as_slice(), request].concat()
    }
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub broker: Broker,
    pub nsm: Arc<FakeNsm>,
    pub cid: u32,
}

impl Fixture {
    pub fn new(cid: u32) -> Self {
        Self::with_limits(cid, BrokerLimits::default())
    }

    pub fn with_limits(cid: u32, limits: BrokerLimits) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let nsm = Arc::new(FakeNsm::default());
        let config = BrokerConfig::new(
            cid,
            dir.path(),
            dir.path().join("enclave.sock"),
            nsm.clone(),
        )
        .with_limits(limits);
        let broker = Broker::start(config).expect("broker starts");
        Self {
            dir,
            broker,
            nsm,
            cid,
        }
    }

    pub fn fabric(&self) -> PathBuf {
        self.dir.path().join("vsock")
    }

    pub fn enclave_socket(&self) -> &Path {
        self.broker.enclave_socket()
    }
}
