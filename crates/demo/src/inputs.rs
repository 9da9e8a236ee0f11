//! What the images are built from: the blobs (found as `build-enclave` finds them) and the
//! static sample app (Cloister's data directories), or, for a `cloister` that is a cargo build
//! output of its own source tree with nothing installed, both built from that tree.

use crate::config::{DemoOptions, SAMPLE_APP_FILE};
use crate::error::{err, DemoError, DemoResult};
use cloister_image_builder::blobs;
use cloister_runtime::Isolation;
use std::path::{Path, PathBuf};

/// What the demo's images are built from.
#[derive(Debug)]
pub(crate) struct DemoInputs {
    /// The blobs directory, or `None` for the source tree's own init (see the crate comment).
    blobs_dir: Option<PathBuf>,
    /// The source tree's init, when `blobs_dir` is `None`.
    built_init: Option<PathBuf>,
    /// Where the blobs came from, for the output.
    pub(crate) blobs_note: String,
    /// The static sample app.
    pub(crate) sample_app: PathBuf,
    /// Where it came from, for the output.
    pub(crate) app_note: String,
}

impl DemoInputs {
    /// Finds the blobs and the sample app (see the crate comment), failing early:
    /// [`DemoError::BlobsMissing`] (no blobs installed), `VmNeedsKernel` (vm without a kernel),
    /// `SampleAppMissing` (no sample app installed), `Images` (a source-tree build failed).
    pub(crate) fn find(args: &DemoOptions) -> DemoResult<DemoInputs> {
        let exe = std::env::current_exe().ok();
        let source_tree = exe
            .as_deref()
            .and_then(cloister_init::static_build::source_tree_of);
        Self::find_with(
            args,
            blobs::locate(args.blobs.as_deref()),
            &blobs::share_dirs(),
            source_tree,
        )
    }

    fn find_with(
        args: &DemoOptions,
        located: Result<blobs::Located, blobs::BlobsError>,
        share: &[(PathBuf, blobs::BlobsOrigin)],
        source_tree: Option<PathBuf>,
    ) -> DemoResult<DemoInputs> {
        let vm = args.isolation == Isolation::Vm;
        let (blobs_dir, built_init, blobs_note) = match located {
            Ok(found) => {
                let loaded = blobs::Blobs::load(&found.dir).map_err(|e| {
                    err(
                        if vm {
                            DemoError::VmNeedsKernel
                        } else {
                            DemoError::BlobsMissing
                        },
                        e,
                    )
                })?;
                if vm {
                    loaded
                        .require_kernel(&found.dir)
                        .map_err(|e| err(DemoError::VmNeedsKernel, e))?;
                }
                let note = format!("{} ({})", found.dir.display(), found.origin);
                (Some(found.dir), None, note)
            }
            Err(e @ blobs::BlobsError::NotInstalled { .. }) => {
                if vm {
                    return Err(err(
                        DemoError::VmNeedsKernel,
                        format!(
                            "--isolation vm boots a real kernel: give --blobs DIR or \
                             {BLOBS_ENV} (a directory `cloister blobs prepare` made): {e}",
                            BLOBS_ENV = blobs::BLOBS_ENV
                        ),
                    ));
                }
                let Some(tree) = &source_tree else {
                    return Err(err(DemoError::BlobsMissing, e));
                };
                let init = cloister_init::build_static_init()
                    .map_err(|e| err(DemoError::Images, format!("static init: {e}")))?;
                let note = format!(
                    "none installed; init built with cargo in the source tree {} (an installed \
                     cloister never builds anything)",
                    tree.display()
                );
                (None, Some(init), note)
            }
            Err(e) => {
                return Err(err(
                    if vm {
                        DemoError::VmNeedsKernel
                    } else {
                        DemoError::BlobsMissing
                    },
                    e,
                ))
            }
        };
        // The sample app: Cloister's data directories, then the one holding the blobs.
        let mut dirs: Vec<PathBuf> = share.iter().map(|(d, _)| d.clone()).collect();
        if let Some(parent) = blobs_dir.as_deref().and_then(Path::parent) {
            dirs.push(parent.to_owned());
        }
        let installed = dirs
            .iter()
            .map(|d| d.join(SAMPLE_APP_FILE))
            .find(|p| p.is_file());
        let (sample_app, app_note) = match (installed, &source_tree) {
            (Some(p), _) => {
                let note = p.display().to_string();
                (p, note)
            }
            (None, Some(tree)) => {
                let p = cloister_sample_app::build_static_sample_app()
                    .map_err(|e| err(DemoError::Images, format!("static sample app: {e}")))?;
                let note = format!(
                    "{} (built with cargo in the source tree {})",
                    p.display(),
                    tree.display()
                );
                (p, note)
            }
            (None, None) => {
                let looked: Vec<String> = dirs
                    .iter()
                    .map(|d| d.join(SAMPLE_APP_FILE).display().to_string())
                    .collect();
                return Err(err(
                    DemoError::SampleAppMissing,
                    format!(
                        "{SAMPLE_APP_FILE} is not installed (looked for {}): install Cloister's \
                         package or unpack its release tarball",
                        looked.join(", ")
                    ),
                ));
            }
        };
        Ok(DemoInputs {
            blobs_dir,
            built_init,
            blobs_note,
            sample_app,
            app_note,
        })
    }

    /// The blobs the images are built with.
    pub(crate) fn blobs(&self) -> DemoResult<blobs::Blobs> {
        match (&self.blobs_dir, &self.built_init) {
            (Some(dir), _) => blobs::Blobs::load(dir).map_err(|e| err(DemoError::BlobsMissing, e)),
            (None, Some(init)) => Ok(blobs::Blobs {
                kernel: None,
                cmdline: blobs::shipped_cmdline(),
                init: init.clone(),
                nsm_ko: None,
                modules: Vec::new(),
            }),
            (None, None) => Err(err(DemoError::BlobsMissing, "no blobs")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(isolation: Isolation) -> DemoOptions {
        DemoOptions {
            memory: 256,
            keep_temp: false,
            isolation,
            blobs: None,
            pause: false,
        }
    }

    /// A data directory as the package installs it: `blobs/{init,cmdline}` (no kernel) and
    /// the sample app.
    fn installed(share: &Path) {
        std::fs::create_dir_all(share.join("blobs")).unwrap();
        std::fs::write(share.join("blobs/init"), b"init").unwrap();
        std::fs::write(share.join("blobs/cmdline"), blobs::shipped_cmdline()).unwrap();
        std::fs::write(share.join(SAMPLE_APP_FILE), b"app").unwrap();
    }

    #[test]
    fn vm_isolation_needs_a_blobs_directory_with_a_kernel() {
        let d = tempfile::tempdir().unwrap();
        let share = d.path().join("share/cloister");
        installed(&share);
        let dirs = [(share.clone(), blobs::BlobsOrigin::NextToExecutable)];
        let vm = args(Isolation::Vm);
        let named_missing = blobs::locate_in(
            Some((d.path().join("absent"), blobs::BlobsOrigin::Flag)),
            &dirs,
        );
        let e = DemoInputs::find_with(&vm, named_missing, &dirs, None).unwrap_err();
        assert!(matches!(e, DemoError::VmNeedsKernel(_)), "{e:?}");
        // The installed blobs have no kernel.
        let e = DemoInputs::find_with(&vm, blobs::locate_in(None, &dirs), &dirs, None).unwrap_err();
        assert!(matches!(e, DemoError::VmNeedsKernel(_)), "{e:?}");
        assert!(e.to_string().contains("blobs prepare"), "{e}");
        // Process isolation takes them, and the sample app beside them.
        let process = args(Isolation::Process);
        let found =
            DemoInputs::find_with(&process, blobs::locate_in(None, &dirs), &dirs, None).unwrap();
        assert_eq!(found.blobs_dir, Some(share.join("blobs")));
        assert_eq!(found.sample_app, share.join(SAMPLE_APP_FILE));
        let b = found.blobs().unwrap();
        assert_eq!((b.kernel, b.cmdline), (None, blobs::shipped_cmdline()));
    }

    #[test]
    fn nothing_installed_says_how_to_install_and_never_builds() {
        let d = tempfile::tempdir().unwrap();
        let dirs = [(d.path().join("share/cloister"), blobs::BlobsOrigin::System)];
        let process = args(Isolation::Process);
        // No source tree: nothing is built, E610 names the package and the tarball.
        let e = DemoInputs::find_with(&process, blobs::locate_in(None, &dirs), &dirs, None)
            .unwrap_err();
        assert!(matches!(e, DemoError::BlobsMissing(_)), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("/usr/share/cloister/blobs") && text.contains(".deb"),
            "{text}"
        );
        // Blobs named elsewhere (a VM blobs directory), but no sample app installed: E814.
        let named = d.path().join("vm-blobs");
        installed(&named.join("x"));
        std::fs::rename(named.join("x/blobs"), named.join("b")).unwrap();
        let e = DemoInputs::find_with(
            &process,
            blobs::locate_in(Some((named.join("b"), blobs::BlobsOrigin::Flag)), &dirs),
            &dirs,
            None,
        )
        .unwrap_err();
        assert!(matches!(e, DemoError::SampleAppMissing(_)), "{e:?}");
        // A data directory named through CLOISTER_BLOBS=<prefix>/share/cloister/blobs brings
        // its sample app along.
        let prefix = d.path().join("opt/share/cloister");
        installed(&prefix);
        let found = DemoInputs::find_with(
            &process,
            blobs::locate_in(
                Some((prefix.join("blobs"), blobs::BlobsOrigin::Env("X"))),
                &dirs,
            ),
            &dirs,
            None,
        )
        .unwrap();
        assert_eq!(found.sample_app, prefix.join(SAMPLE_APP_FILE));
    }
}
