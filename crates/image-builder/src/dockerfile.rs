//! Building a Dockerfile without a Docker engine: `buildah` (Debian's package) builds the
//! context directory and writes the image as an OCI archive, which the builder reads like a
//! `docker save` archive (`build-enclave --docker-dir DIR [--docker-uri TAG]`).
//!
//! buildah runs with the `vfs` storage driver and `chroot` isolation unless `BUILDAH_ISOLATION`
//! or `STORAGE_DRIVER` say otherwise, so it works as root in a container and on hosts without
//! overlay support. The archive lives in a private temporary directory until [`cleanup`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Why a Dockerfile build failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerfileError {
    /// buildah is not installed.
    #[error("no Docker engine and no buildah: install buildah (apt-get install buildah) to build a Dockerfile")]
    NoBuilder,
    /// The context has no Dockerfile.
    #[error("{0} has no Dockerfile")]
    NoDockerfile(String),
    /// The tag is not usable.
    #[error("invalid image tag {0:?}")]
    BadTag(String),
    /// Running buildah failed.
    #[error("cannot run buildah")]
    Spawn(#[source] std::io::Error),
    /// buildah reported a failure.
    #[error("buildah {step} failed (exit status {status}): {stderr}")]
    Failed {
        /// Which step (`build` or `push`).
        step: &'static str,
        /// Its exit status.
        status: i32,
        /// The end of its error output.
        stderr: String,
    },
}

/// Temporary directories holding built archives, removed by [`cleanup`].
static BUILT: Mutex<Vec<tempfile::TempDir>> = Mutex::new(Vec::new());

/// Keeps `dir` until [`cleanup`].
pub(crate) fn keep_until_cleanup(dir: tempfile::TempDir) {
    if let Ok(mut v) = BUILT.lock() {
        v.push(dir);
    }
}

/// Removes the archives built (or pulled) so far.
pub fn cleanup() {
    if let Ok(mut v) = BUILT.lock() {
        v.clear();
    }
}

/// Whether `buildah` can be run.
pub fn buildah_available() -> bool {
    Command::new("buildah")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(step: &'static str, cmd: &mut Command) -> Result<(), DockerfileError> {
    let out = cmd.output().map_err(DockerfileError::Spawn)?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: String = err
        .trim()
        .chars()
        .rev()
        .take(2000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(DockerfileError::Failed {
        step,
        status: out.status.code().unwrap_or(-1),
        stderr: tail,
    })
}

/// Builds the Dockerfile in `context` with buildah, tagged `tag`, and returns the path of an
/// OCI archive of the image (valid until [`cleanup`]).
pub fn build_with_buildah(context: &Path, tag: &str) -> Result<PathBuf, DockerfileError> {
    if tag.is_empty()
        || tag.len() > 256
        || tag.starts_with('-')
        || tag.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(DockerfileError::BadTag(tag.to_owned()));
    }
    if !context.join("Dockerfile").is_file() && !context.join("Containerfile").is_file() {
        return Err(DockerfileError::NoDockerfile(context.display().to_string()));
    }
    if !buildah_available() {
        return Err(DockerfileError::NoBuilder);
    }
    let dir = tempfile::Builder::new()
        .prefix("cloister-dockerfile")
        .tempdir()
        .map_err(DockerfileError::Spawn)?;
    let archive = dir.path().join("image.tar");
    let driver = std::env::var("STORAGE_DRIVER").unwrap_or_else(|_| "vfs".into());
    let isolation = std::env::var("BUILDAH_ISOLATION").unwrap_or_else(|_| "chroot".into());
    let buildah = || {
        let mut c = Command::new("buildah");
        c.args(["--storage-driver", &driver]);
        c
    };
    run(
        "build",
        buildah()
            .args([
                "bud",
                "--quiet",
                "--isolation",
                &isolation,
                "--tag",
                tag,
                "--",
            ])
            .arg(context),
    )?;
    let dest = format!("oci-archive:{}:{tag}", archive.display());
    run(
        "push",
        buildah().args(["push", "--quiet", "--", tag, &dest]),
    )?;
    keep_until_cleanup(dir);
    Ok(archive)
}
