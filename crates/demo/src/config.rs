//! The demo's fixed settings (region, account, ports, deadlines), its options and the paths
//! of its private environment, with two small helpers every step uses.

use crate::error::{err, DemoError, DemoResult};
use cloister_runtime::Isolation;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The region the demo's key service answers as.
pub(crate) const REGION: &str = "us-east-1";
/// The demo's account.
pub(crate) const ACCOUNT: &str = "111122223333";
/// The IAM user name of the enclave application's credential.
pub(crate) const APP_USER: &str = "demo-app";
/// The vsock port of the demo's vsock-proxy (inside the demo's private fabric).
pub(crate) const PROXY_PORT: u32 = 8000;
/// The sample app's file name in Cloister's data directory (`share/cloister/`).
pub const SAMPLE_APP_FILE: &str = "cloister-sample-app";
/// How long the enclave's listener may take to come up.
pub(crate) const CONNECT_DEADLINE: Duration = Duration::from_secs(20);
/// How long the enclave may take to answer (attest, KMS round trip, attest again).
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the monitors may take to disappear after termination.
pub(crate) const TEARDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// What `cloister demo` was asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Memory of each demo enclave, in MiB.
    pub memory: u64,
    /// Keep the temp directory (images, run dir, KMS data) and print its path.
    pub keep_temp: bool,
    /// Isolation of the demo enclaves; the key policy requires it.
    pub isolation: Isolation,
    /// Blobs directory (`--blobs`); `None`: found as `build-enclave` finds them.
    pub blobs: Option<PathBuf>,
    /// Once the sample enclave runs, wait for Enter before going on.
    pub pause: bool,
}

/// Paths of the demo's private environment.
#[derive(Debug)]
pub(crate) struct Paths {
    pub(crate) images: PathBuf,
    pub(crate) run: PathBuf,
    pub(crate) pki: PathBuf,
    pub(crate) kms_data: PathBuf,
}

/// Milliseconds since `t`.
pub(crate) fn ms(t: Instant) -> u128 {
    t.elapsed().as_millis()
}

/// `N` random bytes.
pub(crate) fn random<const N: usize>() -> DemoResult<[u8; N]> {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out).map_err(|_| err(DemoError::Setup, "no randomness"))?;
    Ok(out)
}
