//! The NSM of one enclave: the attestation crate's [`Nsm`] behind the vsock broker's
//! [`NsmService`] trait.
//!
//! PCR0/1/2/8 come from the image's measurements, PCR3 from the host's IAM role ARN setting
//! (`CLOISTER_IAM_ROLE_ARN`, optional), PCR4 from the instance id. Documents are signed by a leaf
//! certificate issued for this enclave (isolation recorded in it) by the host CA of the PKI in
//! `CLOISTER_PKI_DIR` (default `/var/lib/cloister/pki`), created on first use under a lock in
//! the run directory. Debug mode zeroes PCR0-2 (the `Nsm` does it). The service is reachable
//! only through the enclave's own broker (channel `(0, 1)` of its socket).
//!
//! Leaves live [`LEAF_LIFETIME`] (3 hours, like AWS's), and the signer re-issues its leaf from
//! the host CA when less than a third of that is left, so every document is signed by a leaf
//! valid at the document's timestamp however long the enclave runs.
//!
//! Issuing the leaf (a P-384 key pair and a host CA signature; in a fresh monitor also the
//! crypto library's first seeding of its random generator, tens of milliseconds of CPU time) is
//! kept off the boot path: the host CA is loaded (and so checked) before the enclave starts, but
//! the leaf and the [`Nsm`] are made on first use, by [`EnclaveNsm::prepare_in_background`]
//! (the monitor calls it once the enclave has booted) or by the first request, whichever comes
//! first. The background preparation runs at idle CPU priority (`SCHED_IDLE`), so it only uses
//! CPU time nothing else on the host wants; a request that finds it under way lifts it back to
//! normal priority before waiting for it.

use crate::backend::Isolation;
use cloister_attestation::{Clock, HostCa, ImagePcrs, Nsm, NsmConfig, Pki, PkiError, SystemClock};
use cloister_nsm_api::{ErrorCode, Response};
use cloister_vsock::NsmService;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, SystemTime};

/// Default PKI directory.
pub const DEFAULT_PKI_DIR: &str = crate::config::DEFAULT_PKI_DIR;
/// Environment variable overriding [`DEFAULT_PKI_DIR`].
pub const PKI_DIR_ENV: &str = crate::config::PKI_DIR_ENV;
/// Environment variable with the IAM role ARN measured into PCR3.
pub const ROLE_ARN_ENV: &str = crate::config::ROLE_ARN_ENV;
/// Lifetime of an enclave's document-signing certificate (AWS's enclave leaves last about three
/// hours). The signer renews it when less than a third is left.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(3 * 3600);

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

/// The PKI directory of the process-wide configuration
/// ([`crate::config::RuntimeConfig::current`]: `CLOISTER_PKI_DIR` or the default).
pub fn pki_dir() -> PathBuf {
    crate::config::RuntimeConfig::current().pki_dir.clone()
}

/// What the NSM is made from, kept until it is made.
struct Recipe {
    ca: HostCa,
    pki_dir: PathBuf,
    enclave_id: String,
    isolation: cloister_attestation::Isolation,
    /// Cloister's init runs in place of the image's (its leaves say so).
    init_replaced: bool,
    pcrs: ImagePcrs,
    role_arn: Option<String>,
    instance_id: String,
    debug_mode: bool,
    clock: Arc<dyn Clock>,
}

impl Recipe {
    fn make(&self) -> Result<Nsm, NsmSetupError> {
        let not_after = SystemTime::now() + LEAF_LIFETIME;
        let signer = self
            .ca
            .issue_enclave_signer_noting(
                &self.enclave_id,
                self.isolation,
                cloister_attestation::pki::LeafFacts {
                    init_replaced: self.init_replaced,
                },
                not_after,
            )
            .map_err(|e| NsmSetupError::Pki(self.pki_dir.clone(), e))?;
        Ok(Nsm::new(NsmConfig {
            module_id: self.enclave_id.clone(),
            image_pcrs: self.pcrs.clone(),
            role_arn: self.role_arn.clone(),
            instance_id: self.instance_id.clone(),
            debug_mode: self.debug_mode,
            signer,
            clock: Arc::clone(&self.clock),
        })?)
    }
}

/// One enclave's NSM, as the broker sees it. The NSM itself is made on first use.
pub struct EnclaveNsm {
    recipe: Recipe,
    nsm: Mutex<Option<Arc<Nsm>>>,
    /// Thread id of the idle-priority background preparation while it runs, else 0.
    preparer: AtomicI32,
}

impl std::fmt::Debug for EnclaveNsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnclaveNsm")
            .field("enclave_id", &self.recipe.enclave_id)
            .field("ready", &self.ready())
            .finish_non_exhaustive()
    }
}

impl EnclaveNsm {
    /// True once the NSM (and its leaf certificate) exists.
    pub fn ready(&self) -> bool {
        self.lock().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Nsm>>> {
        // The slot is only ever replaced whole, so a poisoned lock still holds a usable value.
        match self.nsm.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The NSM, made now if it does not exist yet. A failure is retried on the next call.
    pub fn get(&self) -> Result<Arc<Nsm>, NsmSetupError> {
        let mut slot = match self.nsm.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                // The slot is held: if by the idle-priority preparation, lift it to normal
                // priority so this caller does not wait on a thread that only runs when the
                // host is idle. (The preparer publishes its id before it takes the lock.)
                let tid = self.preparer.load(Ordering::SeqCst);
                if tid != 0 && tid != crate::sys::gettid() {
                    let _ = crate::sys::set_idle_scheduling(tid, false);
                }
                self.lock()
            }
        };
        if let Some(nsm) = slot.as_ref() {
            return Ok(Arc::clone(nsm));
        }
        let nsm = Arc::new(self.recipe.make()?);
        *slot = Some(Arc::clone(&nsm));
        Ok(nsm)
    }

    /// Makes the NSM ahead of the first request on a background thread at idle CPU priority
    /// (see the module documentation); falls back to [`EnclaveNsm::prepare`] on this thread if
    /// no thread can be started.
    pub fn prepare_in_background(self: &Arc<Self>) {
        if self.ready() {
            return;
        }
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("nsm-prepare".into())
            .spawn(move || {
                if crate::sys::set_idle_scheduling(0, true).is_ok() {
                    me.preparer.store(crate::sys::gettid(), Ordering::SeqCst);
                }
                me.prepare();
                me.preparer.store(0, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.prepare();
        }
    }

    /// Makes the NSM ahead of the first request (logging a failure; requests retry).
    pub fn prepare(&self) {
        if let Err(e) = self.get() {
            tracing::warn!(error = %crate::sandbox::error_chain(&e), "cannot create the enclave's NSM");
        }
    }
}

impl NsmService for EnclaveNsm {
    fn handle(&self, request: &[u8]) -> Vec<u8> {
        match self.get() {
            Ok(nsm) => nsm.process_bytes(request),
            Err(e) => {
                tracing::warn!(error = %crate::sandbox::error_chain(&e), "cannot create the enclave's NSM");
                Response::Error(ErrorCode::InternalError)
                    .to_cbor()
                    .unwrap_or_default()
            }
        }
    }
}

/// Checks that the PKI directory `dir`, when it exists, is owned by root (or this user) and not
/// writable by others ([`crate::state::check_trusted_dir`]): whoever could write there could
/// replace the host CA. A missing one is created on first use by [`open_pki`].
pub fn check_pki_dir(dir: &Path) -> Result<(), crate::state::UnsafeDirError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => crate::state::check_trusted_dir(dir),
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

/// Builds the NSM of an enclave: loads the host CA now (so a broken PKI fails the start) and
/// defers the leaf certificate and the [`Nsm`] to first use.
/// `init_replaced`: the runtime runs Cloister's init in place of the image's
/// ([`crate::initswap`]); the enclave's leaf certificates then carry
/// [`cloister_attestation::pki::INIT_REPLACED_OU`].
pub fn enclave_nsm(
    pki: &Pki,
    enclave_id: &str,
    isolation: Isolation,
    init_replaced: bool,
    measurements: &cloister_eif::Measurements,
    debug_mode: bool,
    instance_id: &str,
) -> Result<Arc<EnclaveNsm>, NsmSetupError> {
    enclave_nsm_with_clock(
        pki,
        enclave_id,
        isolation,
        init_replaced,
        measurements,
        debug_mode,
        instance_id,
        Arc::new(SystemClock),
    )
}

#[allow(clippy::too_many_arguments)]
fn enclave_nsm_with_clock(
    pki: &Pki,
    enclave_id: &str,
    isolation: Isolation,
    init_replaced: bool,
    measurements: &cloister_eif::Measurements,
    debug_mode: bool,
    instance_id: &str,
    clock: Arc<dyn Clock>,
) -> Result<Arc<EnclaveNsm>, NsmSetupError> {
    let ca = pki
        .host_ca()
        .map_err(|e| NsmSetupError::Pki(pki.dir().to_owned(), e))?;
    let iso = match isolation {
        Isolation::Process => cloister_attestation::Isolation::Process,
        Isolation::Vm => cloister_attestation::Isolation::Vm,
    };
    let role_arn = crate::config::RuntimeConfig::current().role_arn.clone();
    Ok(Arc::new(EnclaveNsm {
        recipe: Recipe {
            ca,
            pki_dir: pki.dir().to_owned(),
            enclave_id: enclave_id.to_owned(),
            isolation: iso,
            init_replaced,
            pcrs: ImagePcrs {
                pcr0: measurements.pcr0,
                pcr1: measurements.pcr1,
                pcr2: measurements.pcr2,
                pcr8: measurements.pcr8,
            },
            role_arn,
            instance_id: instance_id.to_owned(),
            debug_mode,
            clock,
        },
        nsm: Mutex::new(None),
        preparer: AtomicI32::new(0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloister_attestation::{Verifier, VerifyOptions};
    use cloister_nsm_api::Request;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock the test moves.
    struct TestClock(AtomicU64);

    impl Clock for TestClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            .try_into()
            .unwrap()
    }

    fn measurements() -> cloister_eif::Measurements {
        cloister_eif::Measurements {
            pcr0: [1; 48],
            pcr1: [2; 48],
            pcr2: [3; 48],
            pcr8: None,
        }
    }

    /// Asks for a document; returns it (COSE_Sign1 bytes).
    fn attest(nsm: &EnclaveNsm, nonce: &[u8]) -> Vec<u8> {
        let req = Request::Attestation {
            user_data: None,
            nonce: Some(serde_bytes::ByteBuf::from(nonce.to_vec())),
            public_key: None,
        };
        let resp = nsm.handle(&req.to_cbor().unwrap());
        match Response::from_cbor(&resp).unwrap() {
            Response::Attestation { document } => document,
            other => panic!("unexpected response {other:?}"),
        }
    }

    #[test]
    fn leaves_last_three_hours_and_are_reissued_near_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let pki = open_pki(&dir.path().join("pki"), &dir.path().join("run")).unwrap();
        let start = now_ms();
        let clock = Arc::new(TestClock(AtomicU64::new(start)));
        let id = "i-0123456789abcdef0-enc0123456789abcdef";
        let nsm = enclave_nsm_with_clock(
            &pki,
            id,
            Isolation::Process,
            true,
            &measurements(),
            false,
            "i-0123456789abcdef0",
            clock.clone(),
        )
        .unwrap();
        // Nothing is issued until the NSM is first used.
        assert!(!nsm.ready());
        let verifier = Verifier::new(vec![pki.root_der().to_vec()]).unwrap();
        let verify = |doc: &[u8], at_ms: u64, nonce: &[u8]| {
            verifier
                .verify(doc, &VerifyOptions::at_unix_ms(at_ms).with_nonce(nonce))
                .unwrap()
        };

        let first = verify(&attest(&nsm, b"n1"), start, b"n1");
        assert!(nsm.ready());
        let lifetime = i64::try_from(first.leaf_not_after_secs()).unwrap()
            - i64::try_from(start / 1000).unwrap();
        assert!(
            (3 * 3600 - 120..=3 * 3600 + 5).contains(&lifetime),
            "leaf lifetime {lifetime} s"
        );

        // An hour later the leaf has two thirds left: it is kept.
        clock.0.store(start + 3600 * 1000, Ordering::SeqCst);
        let second = verify(&attest(&nsm, b"n2"), start + 3600 * 1000, b"n2");
        assert_eq!(second.document().certificate, first.document().certificate);

        // Two and a half hours in, less than a third is left: a fresh leaf signs, and the
        // document verifies at its own timestamp.
        let late = start + 9000 * 1000;
        clock.0.store(late, Ordering::SeqCst);
        let third = verify(&attest(&nsm, b"n3"), late, b"n3");
        assert_ne!(third.document().certificate, first.document().certificate);
        assert!(third.leaf_not_after_secs() > late / 1000);
        assert_eq!(third.document().module_id, id);
        // Every leaf, the renewed one too, says that the image's init was replaced, next to
        // the isolation OU, which the verifier still reads.
        let ou = cloister_attestation::pki::INIT_REPLACED_OU.as_bytes();
        for doc in [&first, &third] {
            let cert = &doc.document().certificate;
            assert!(cert.windows(ou.len()).any(|w| w == ou));
            assert_eq!(
                doc.isolation(),
                Some(cloister_attestation::Isolation::Process)
            );
        }
    }

    #[test]
    fn background_preparation_and_a_racing_request_share_one_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let pki = open_pki(&dir.path().join("pki"), &dir.path().join("run")).unwrap();
        let nsm = enclave_nsm(
            &pki,
            "i-0123456789abcdef0-enc0123456789abcdef",
            Isolation::Process,
            false,
            &measurements(),
            false,
            "i-0123456789abcdef0",
        )
        .unwrap();
        nsm.prepare_in_background();
        // A request right away either finds the NSM made or waits for (and lifts) the
        // idle-priority preparation; either way it gets a document.
        let verifier = Verifier::new(vec![pki.root_der().to_vec()]).unwrap();
        let doc = attest(&nsm, b"race");
        let first = verifier
            .verify(
                &doc,
                &VerifyOptions::at_unix_ms(now_ms()).with_nonce(b"race"),
            )
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while nsm.preparer.load(Ordering::SeqCst) != 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(nsm.preparer.load(Ordering::SeqCst), 0);
        assert!(nsm.ready());
        // One leaf only: a later document carries the same certificate.
        let again = verifier
            .verify(
                &attest(&nsm, b"later"),
                &VerifyOptions::at_unix_ms(now_ms()).with_nonce(b"later"),
            )
            .unwrap();
        assert_eq!(again.document().certificate, first.document().certificate);
        let ou = cloister_attestation::pki::INIT_REPLACED_OU.as_bytes();
        assert!(!first
            .document()
            .certificate
            .windows(ou.len())
            .any(|w| w == ou));
        // Preparing an NSM that is ready does nothing.
        nsm.prepare_in_background();
        assert_eq!(nsm.preparer.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_broken_pki_answers_internal_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let pki = open_pki(&dir.path().join("pki"), &dir.path().join("run")).unwrap();
        // An enclave id the CA refuses as a common name makes issuing fail.
        let nsm = enclave_nsm(
            &pki,
            "bad,id",
            Isolation::Process,
            false,
            &measurements(),
            false,
            "i-0123456789abcdef0",
        )
        .unwrap();
        let req = Request::DescribePCR { index: 0 };
        let resp = Response::from_cbor(&nsm.handle(&req.to_cbor().unwrap())).unwrap();
        assert!(matches!(resp, Response::Error(ErrorCode::InternalError)));
        assert!(!nsm.ready());
    }
}
