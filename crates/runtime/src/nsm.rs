//! The NSM of one enclave: the attestation crate's [`Nsm`] behind the vsock broker's
//! [`NsmService`] trait.
//!
//! PCR0/1/2/8 come from the image's measurements, PCR3 from the host's IAM role ARN setting
//! (`CLOISTER_IAM_ROLE_ARN`, optional), PCR4 from the instance id. Documents are signed by a leaf
//! certificate issued for this enclave (isolation recorded in it) by the host CA of the PKI in
//! `CLOISTER_PKI_DIR` (default `/var/lib/cloister/pki`), created on first use under a lock in
//! the run directory. Debug mode zeroes PCR0-2 (the `Nsm` does it). The service is reachable
//! only through the enclave's own broker (channel `(0, 1)` of its socket).

use crate::backend::Isolation;
use cloister_attestation::{ImagePcrs, Nsm, NsmConfig, Pki, PkiError, SystemClock};
use cloister_vsock::NsmService;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Default PKI directory.
pub const DEFAULT_PKI_DIR: &str = "/var/lib/cloister/pki";
/// Environment variable overriding [`DEFAULT_PKI_DIR`].
pub const PKI_DIR_ENV: &str = "CLOISTER_PKI_DIR";
/// Environment variable with the IAM role ARN measured into PCR3.
pub const ROLE_ARN_ENV: &str = "CLOISTER_IAM_ROLE_ARN";
/// Lifetime of an enclave's document-signing certificate.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// NSM setup errors.
#[derive(Debug, thiserror::Error)]
pub enum NsmSetupError {
    /// The PKI cannot be opened or created.
    #[error("attestation PKI in {0}")]
    Pki(PathBuf, #[source] PkiError),
    /// The NSM rejected its configuration.
    #[error("cannot create the enclave's NSM")]
    Nsm(#[from] cloister_attestation::NsmError),
    /// The PKI lock failed.
    #[error("cannot lock the PKI")]
    Lock(#[source] std::io::Error),
}

/// The PKI directory from the environment or the default.
pub fn pki_dir() -> PathBuf {
    std::env::var_os(PKI_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PKI_DIR))
}

/// One enclave's NSM, as the broker sees it.
#[derive(Debug)]
pub struct EnclaveNsm(Nsm);

impl NsmService for EnclaveNsm {
    fn handle(&self, request: &[u8]) -> Vec<u8> {
        self.0.process_bytes(request)
    }
}

/// Opens (creating on first use) the PKI in `dir`, serialised by a lock file in `run_dir`.
pub fn open_pki(dir: &Path, run_dir: &Path) -> Result<Pki, NsmSetupError> {
    std::fs::create_dir_all(run_dir).map_err(NsmSetupError::Lock)?;
    let lock = std::fs::File::create(run_dir.join("pki.lock")).map_err(NsmSetupError::Lock)?;
    crate::sys::lock_exclusive(&lock)
        .map_err(|e| NsmSetupError::Lock(std::io::Error::from(e.errno)))?;
    Pki::init(dir).map_err(|e| NsmSetupError::Pki(dir.to_owned(), e))
}

/// Builds the NSM of an enclave.
pub fn enclave_nsm(
    pki: &Pki,
    enclave_id: &str,
    isolation: Isolation,
    measurements: &cloister_eif::Measurements,
    debug_mode: bool,
    instance_id: &str,
) -> Result<Arc<EnclaveNsm>, NsmSetupError> {
    let ca = pki
        .host_ca()
        .map_err(|e| NsmSetupError::Pki(pki.dir().to_owned(), e))?;
    let iso = match isolation {
        Isolation::Process => cloister_attestation::Isolation::Process,
        Isolation::Vm => cloister_attestation::Isolation::Vm,
    };
    let signer = ca
        .issue_enclave_signer(enclave_id, iso, SystemTime::now() + LEAF_LIFETIME)
        .map_err(|e| NsmSetupError::Pki(pki.dir().to_owned(), e))?;
    let role_arn = std::env::var(ROLE_ARN_ENV).ok().filter(|s| !s.is_empty());
    let nsm = Nsm::new(NsmConfig {
        module_id: enclave_id.to_owned(),
        image_pcrs: ImagePcrs {
            pcr0: measurements.pcr0,
            pcr1: measurements.pcr1,
            pcr2: measurements.pcr2,
            pcr8: measurements.pcr8,
        },
        role_arn,
        instance_id: instance_id.to_owned(),
        debug_mode,
        signer,
        clock: Arc::new(SystemClock),
    })?;
    Ok(Arc::new(EnclaveNsm(nsm)))
}
