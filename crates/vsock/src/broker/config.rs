//! What a broker is given: the NSM it serves, its limits and the enclave it serves.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::hostfs::HostIdentity;

/// The NSM behind the broker's `(0, 1)` channel.
pub trait NsmService: Send + Sync {
    /// Answers one CBOR request with one CBOR response. `request` is at most
    /// [`NSM_FRAME_HARD_CAP`](crate::nsm_frame::NSM_FRAME_HARD_CAP) bytes; requests over
    /// [`NSM_REQUEST_MAX`](crate::nsm_frame::NSM_REQUEST_MAX) must get the `InputTooLarge`
    /// error response.
    fn handle(&self, request: &[u8]) -> Vec<u8>;
}

/// Called once, from a broker thread, when init's heartbeat arrives.
pub type HeartbeatCallback = Box<dyn Fn() + Send + Sync>;

/// Caps on what one enclave (and the host clients dialling it) can make the broker hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerLimits {
    /// Concurrent connections from the enclave (handshakes, NSM channels, listeners).
    pub max_enclave_connections: usize,
    /// Concurrent listening ports of the enclave.
    pub max_listeners: usize,
    /// Concurrent host connections still in their handshake.
    pub max_host_pending: usize,
    /// Longest time a peer may take to send its request line (and to read our answer).
    pub handshake_timeout: Duration,
    /// Most NSM requests served at once, whatever the enclave's CPU count (at least 1).
    pub max_nsm_workers: usize,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        Self {
            max_enclave_connections: 256,
            max_listeners: 64,
            max_host_pending: 128,
            handshake_timeout: Duration::from_secs(5),
            max_nsm_workers: 4,
        }
    }
}

/// How to run a broker.
pub struct BrokerConfig {
    /// The enclave's cid (4 ..= 2^32-2).
    pub cid: u32,
    /// The host fabric directory (`<run>/vsock`).
    pub fabric_dir: PathBuf,
    /// Where to bind the enclave-facing socket (its directory must exist).
    pub enclave_socket: PathBuf,
    /// The enclave's NSM.
    pub nsm: Arc<dyn NsmService>,
    /// Called when the boot heartbeat arrives.
    pub on_heartbeat: Option<HeartbeatCallback>,
    /// Resource caps.
    pub limits: BrokerLimits,
    /// The host uid and gid the enclave's root maps to: connections to host listeners carry
    /// them. `None` keeps the broker's own credentials (only for brokers not run as root, such
    /// as tests: a root broker must be given one).
    pub enclave_identity: Option<HostIdentity>,
    /// The enclave's CPUs: NSM requests run there, as many at once as there are CPUs (bounded
    /// by [`BrokerLimits::max_nsm_workers`]). Empty: one at a time, on any CPU.
    pub enclave_cpus: Vec<u32>,
}

impl BrokerConfig {
    /// A configuration with the fabric in `<run_dir>/vsock`, no callback and default limits.
    pub fn new(
        cid: u32,
        run_dir: &Path,
        enclave_socket: impl Into<PathBuf>,
        nsm: Arc<dyn NsmService>,
    ) -> Self {
        Self {
            cid,
            fabric_dir: run_dir.join(crate::stream::FABRIC_SUBDIR),
            enclave_socket: enclave_socket.into(),
            nsm,
            on_heartbeat: None,
            limits: BrokerLimits::default(),
            enclave_identity: None,
            enclave_cpus: Vec::new(),
        }
    }

    /// Sets the enclave's host identity (the uid and gid its root maps to).
    pub fn with_enclave_identity(mut self, uid: u32, gid: u32) -> Self {
        self.enclave_identity = Some(HostIdentity { uid, gid });
        self
    }

    /// Sets the enclave's CPUs.
    pub fn with_enclave_cpus(mut self, cpus: Vec<u32>) -> Self {
        self.enclave_cpus = cpus;
        self
    }

    /// Sets the heartbeat callback.
    pub fn on_heartbeat(mut self, callback: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_heartbeat = Some(Box::new(callback));
        self
    }

    /// Sets the limits.
    pub fn with_limits(mut self, limits: BrokerLimits) -> Self {
        self.limits = limits;
        self
    }
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("cid", &self.cid)
            .field("fabric_dir", &self.fabric_dir)
            .field("enclave_socket", &self.enclave_socket)
            .field("limits", &self.limits)
            .field("enclave_identity", &self.enclave_identity)
            .field("enclave_cpus", &self.enclave_cpus)
            .finish_non_exhaustive()
    }
}
