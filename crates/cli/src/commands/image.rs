//! Container images and bootstrap blobs (E6xx): the container inputs of `build-enclave`
//! ([`ContainerInputs`], [`build_from_container`]), `blobs prepare`, and the error codes.
//!
//! The logic lives in `cloister_image_builder`; this module parses flags, maps errors to codes
//! and prints JSON.

use crate::codes::{self, Code};
use crate::commands::eif::output::{cli_error, load_signer, remove_partial_output, OutputOptions};
use crate::docker_engine::{self, Builder};
use crate::errors::{print_json, CliError, CliResult};
use clap::{Args, Subcommand};
use cloister_eif::measure::Measurements;
use cloister_image_builder::build::{prepare, write_eif, BuildError, BuildRequest, ImageInput};
use cloister_image_builder::layer::LayerError;
use cloister_image_builder::source::{self, SourceError};
use cloister_image_builder::tree::TreeError;
use cloister_image_builder::{blobs, CommandOverrides, CommandStyle};
use std::path::PathBuf;

/// Subcommands of this area.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Boot blobs (kernel, cmdline, init, modules) for enclave images.
    #[command(subcommand)]
    Blobs(BlobsCommand),
}

/// `blobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum BlobsCommand {
    /// Build a blobs directory from a Debian cloud kernel package and a static init binary.
    Prepare(PrepareArgs),
}

/// `blobs prepare` arguments.
#[derive(Debug, Clone, Args)]
#[command(group(
    clap::ArgGroup::new("kernel_source")
        .required(true)
        .multiple(false)
        .args(["kernel_deb", "kernel_version"])
))]
pub struct PrepareArgs {
    /// Output directory (created).
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// A linux-image-*-cloud-amd64-unsigned .deb on disk.
    #[arg(long, value_name = "FILE")]
    pub kernel_deb: Option<PathBuf>,
    /// Kernel version to fetch with `apt-get download linux-image-<V>-cloud-amd64-unsigned`
    /// (e.g. 6.1.0-28), or `latest` for the newest one apt knows of.
    #[arg(long, value_name = "V")]
    pub kernel_version: Option<String>,
    /// The static init binary to install as `init` (default: the installed blobs' init, found
    /// as build-enclave finds its blobs).
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
    /// TSC frequency in kHz for `tsc_early_khz=` (default: detected from this host).
    #[arg(long, value_name = "KHZ")]
    pub tsc_khz: Option<u64>,
}

/// Container-image inputs of `build-enclave` (flattened into its arguments).
#[derive(Debug, Clone, Default, Args)]
pub struct ContainerInputs {
    /// Image held by a Docker engine (talks to its socket: DOCKER_HOST=unix://... or
    /// /var/run/docker.sock).
    #[arg(long, value_name = "IMAGE")]
    pub docker_uri: Option<String>,
    /// Dockerfile directory (nitro-cli's flag), built by the Docker engine when one answers
    /// (DOCKER_HOST=unix://... or /var/run/docker.sock), else by buildah; tagged --docker-uri.
    #[arg(long, value_name = "DIR")]
    pub docker_dir: Option<PathBuf>,
    /// OCI image layout directory, optionally with :TAG.
    #[arg(long, value_name = "DIR[:TAG]")]
    pub oci_layout: Option<String>,
    /// `docker save` archive, optionally with :TAG.
    #[arg(long, value_name = "FILE[:TAG]")]
    pub docker_archive: Option<String>,
    /// Plain root filesystem directory (give --cmd and/or --entrypoint).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Record this owner for every file of --rootfs instead of the host's.
    #[arg(long, value_name = "UID:GID", requires = "rootfs")]
    pub rootfs_owner: Option<String>,
    /// Command (JSON array, or words split on spaces); replaces the image's Cmd.
    #[arg(long, value_name = "CMD")]
    pub cmd: Option<String>,
    /// Entrypoint (JSON array, or words split on spaces); replaces the image's Entrypoint.
    #[arg(long, value_name = "ENTRYPOINT")]
    pub entrypoint: Option<String>,
    /// Environment variable for the enclave command; repeat.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Combine Entrypoint and Cmd as Docker does, instead of nitro-cli's rule.
    #[arg(long)]
    pub docker_cmd_semantics: bool,
    /// Blobs directory (init, cmdline[, bzImage][, nsm.ko][, modules/]; a kernel only for VM
    /// images). Default: CLOISTER_BLOBS, NITRO_CLI_BLOBS, <executable>/../share/cloister/blobs,
    /// /usr/share/cloister/blobs.
    #[arg(long, value_name = "DIR")]
    pub blobs: Option<PathBuf>,
    /// Directory for temporary files (default: the system's).
    #[arg(long, value_name = "DIR")]
    pub temp_dir: Option<PathBuf>,
}

pub use crate::codes::image::CODES;

/// The code for a build error.
pub fn build_error_code(e: &BuildError) -> Code {
    match e {
        BuildError::Source(s) => match s {
            SourceError::DigestMismatch { .. } => codes::E602,
            SourceError::TagNotFound { .. } | SourceError::Ambiguous { .. } => codes::E603,
            SourceError::NoEngine { .. } => codes::E604,
            SourceError::Engine { .. } => codes::E605,
            _ => codes::E601,
        },
        BuildError::Layer(l) => match l {
            LayerError::DigestMismatch { .. } | LayerError::SizeMismatch { .. } => codes::E602,
            LayerError::TooLarge { .. } | LayerError::Bomb { .. } => codes::E608,
            LayerError::Entry { source, .. } => tree_code(source),
            _ => codes::E606,
        },
        BuildError::Tree(t) => tree_code(t),
        BuildError::TooManyLayers { .. } => codes::E608,
        BuildError::Config(_) => codes::E609,
        BuildError::Blobs(_) => codes::E610,
        BuildError::Ramdisk { .. } | BuildError::Eif(_) | BuildError::Io { .. } => codes::E611,
        BuildError::EpochTooLarge(_) => codes::E003,
        BuildError::DockerfileUnsupported => codes::E612,
    }
}

fn tree_code(t: &TreeError) -> Code {
    match t {
        TreeError::TooManyEntries { .. }
        | TreeError::MetadataTooLarge { .. }
        | TreeError::ContentTooLarge { .. }
        | TreeError::PathTooLong { .. } => codes::E608,
        TreeError::Spill(_) => codes::E611,
        _ => codes::E607,
    }
}

fn argv(flag: &str, s: &str) -> CliResult<Vec<String>> {
    if s.trim_start().starts_with('[') {
        serde_json::from_str(s).map_err(|e| {
            CliError::msg(
                codes::E003,
                format!("{flag}: not a JSON array of strings: {e}"),
            )
        })
    } else {
        Ok(s.split_whitespace().map(str::to_owned).collect())
    }
}

/// Turns the flags into the library's input; `None` when no container input was given.
pub fn container_input(c: &ContainerInputs) -> CliResult<Option<ImageInput>> {
    let given = [
        c.docker_uri.is_some(),
        c.docker_dir.is_some(),
        c.oci_layout.is_some(),
        c.docker_archive.is_some(),
        c.rootfs.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given > 1 && !(given == 2 && c.docker_dir.is_some() && c.docker_uri.is_some()) {
        return Err(CliError::msg(codes::E614, "give only one image input"));
    }
    if let Some(dir) = &c.docker_dir {
        let tag = c
            .docker_uri
            .as_deref()
            .unwrap_or("localhost/cloister-build:latest");
        docker_engine::dockerfile_of(dir).map_err(|e| CliError::new(codes::E612, e))?;
        let socket = source::docker_socket_from_env();
        return match docker_engine::choose_builder(
            &socket,
            cloister_image_builder::dockerfile::buildah_available,
        ) {
            // The engine builds it and keeps the image, read back as --docker-uri reads one.
            Builder::Engine(socket) => {
                docker_engine::engine_build(&socket, dir, tag)
                    .map_err(|e| CliError::new(codes::E612, e))?;
                Ok(Some(ImageInput::DockerEngine {
                    image: tag.to_owned(),
                    socket,
                }))
            }
            // No engine: buildah builds it (image-builder's dockerfile.rs).
            Builder::Buildah => {
                let file = cloister_image_builder::dockerfile::build_with_buildah(dir, tag)
                    .map_err(|e| CliError::new(codes::E612, e))?;
                Ok(Some(ImageInput::DockerArchive { file, tag: None }))
            }
            Builder::None => Err(CliError::new(
                codes::E612,
                docker_engine::EngineBuildError::NoBuilder {
                    socket: socket.display().to_string(),
                },
            )),
        };
    }
    Ok(if let Some(image) = &c.docker_uri {
        let socket = source::docker_socket_from_env();
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            Some(ImageInput::DockerEngine {
                image: image.clone(),
                socket,
            })
        } else {
            // No engine: pull from the registry (image-builder's registry.rs).
            let file =
                cloister_image_builder::registry::pull_to_temp_archive(image).map_err(|e| {
                    let e = BuildError::Source(e);
                    CliError::new(build_error_code(&e), e)
                })?;
            Some(ImageInput::DockerArchive { file, tag: None })
        }
    } else if let Some(spec) = &c.oci_layout {
        let (dir, tag) = source::split_tag(spec);
        Some(ImageInput::OciLayout { dir, tag })
    } else if let Some(spec) = &c.docker_archive {
        let (file, tag) = source::split_tag(spec);
        Some(ImageInput::DockerArchive { file, tag })
    } else if let Some(dir) = &c.rootfs {
        let owner =
            match &c.rootfs_owner {
                None => None,
                Some(o) => {
                    let parsed = o
                        .split_once(':')
                        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
                    Some(parsed.ok_or_else(|| {
                        CliError::msg(codes::E003, "--rootfs-owner must be UID:GID")
                    })?)
                }
            };
        Some(ImageInput::Rootfs {
            dir: dir.clone(),
            owner,
        })
    } else {
        None
    })
}

/// Builds an EIF from a container input when one was given (`Ok(None)` otherwise), honouring
/// `build-enclave`'s output options. Mtimes and the build time come from `SOURCE_DATE_EPOCH`
/// when it is set.
pub fn build_from_container(
    c: &ContainerInputs,
    output: &OutputOptions,
) -> CliResult<Option<Measurements>> {
    let any_input = c.docker_uri.is_some()
        || c.docker_dir.is_some()
        || c.oci_layout.is_some()
        || c.docker_archive.is_some()
        || c.rootfs.is_some();
    if !any_input {
        return Ok(None);
    }
    // The signer first: a certificate that does not match its key fails before any build.
    let signer = load_signer(
        output.signing_certificate.as_deref(),
        output.private_key.as_deref(),
    )?;
    let Some(input) = container_input(c)? else {
        return Ok(None);
    };
    let blobs_dir = blobs::locate(c.blobs.as_deref())
        .map_err(|e| CliError::new(codes::E610, e))?
        .dir;
    let mut req = BuildRequest::new(input, blobs_dir, output.output_file.clone());
    req.overrides = CommandOverrides {
        entrypoint: c
            .entrypoint
            .as_deref()
            .map(|s| argv("--entrypoint", s))
            .transpose()?,
        cmd: c.cmd.as_deref().map(|s| argv("--cmd", s)).transpose()?,
        env: c.env.clone(),
    };
    if c.docker_cmd_semantics {
        req.style = Some(CommandStyle::Docker);
    }
    req.image_name = output.name.clone();
    req.image_version = output.version.clone();
    req.temp_dir = c.temp_dir.clone();
    req.progress = true;
    if let Ok(sde) = std::env::var("SOURCE_DATE_EPOCH") {
        req.source_date_epoch = Some(sde.trim().parse().map_err(|_| {
            CliError::msg(codes::E003, "SOURCE_DATE_EPOCH is not a number of seconds")
        })?);
    }
    if let Some(path) = &output.metadata {
        let bytes = std::fs::read(path).map_err(|e| CliError::new(codes::E601, e))?;
        req.custom_metadata =
            serde_json::from_slice(&bytes).map_err(|e| CliError::new(codes::E601, e))?;
    }
    let code = |e: BuildError| match e {
        // A signer that fails while the image is written keeps its signing code.
        BuildError::Eif(
            e @ (cloister_eif::EifError::ExternalSigner { .. }
            | cloister_eif::EifError::ExternalKeyMismatch { .. }),
        ) => cli_error(e),
        e => CliError::new(build_error_code(&e), e),
    };
    let mut prepared = match prepare(&req) {
        // The engine does not have the image: pull it from its registry instead.
        Err(BuildError::Source(SourceError::Engine { status: 404, .. }))
            if matches!(req.input, ImageInput::DockerEngine { .. }) =>
        {
            let image = c.docker_uri.clone().unwrap_or_default();
            let file = cloister_image_builder::registry::pull_to_temp_archive(&image)
                .map_err(|e| code(BuildError::Source(e)))?;
            req.input = ImageInput::DockerArchive { file, tag: None };
            prepare(&req)
        }
        r => r,
    }
    .map_err(|e| {
        cloister_image_builder::dockerfile::cleanup();
        code(e)
    })?;
    if let Some(t) = &output.build_time {
        prepared.metadata.build_metadata.build_time = t.clone();
    }
    let m = write_eif(&prepared, &req.output, signer).map_err(|e| {
        if let BuildError::Eif(inner) = &e {
            remove_partial_output(&req.output, inner);
        }
        code(e)
    });
    cloister_image_builder::dockerfile::cleanup();
    Ok(Some(m?))
}

/// Runs one subcommand.
pub fn run(command: ImageCommand) -> CliResult<()> {
    match command {
        ImageCommand::Blobs(BlobsCommand::Prepare(a)) => {
            let init = match a.init {
                Some(init) => init,
                None => {
                    let found = blobs::locate(None).map_err(|e| CliError::new(codes::E610, e))?;
                    blobs::Blobs::load(&found.dir)
                        .map_err(|e| CliError::new(codes::E610, e))?
                        .init
                }
            };
            let report = blobs::prepare(&blobs::PrepareOptions {
                output: a.output,
                kernel_deb: a.kernel_deb,
                kernel_version: a.kernel_version,
                init,
                tsc_khz: a.tsc_khz,
            })
            .map_err(|e| CliError::new(codes::E613, e))?;
            print_json(&report)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_forms() {
        assert_eq!(
            argv("--cmd", "/bin/sh -c  x").unwrap(),
            ["/bin/sh", "-c", "x"]
        );
        assert_eq!(
            argv("--cmd", r#"["/bin/sh", "-c", "echo a b"]"#).unwrap(),
            ["/bin/sh", "-c", "echo a b"]
        );
        assert!(argv("--cmd", "[1]").is_err());
    }

    #[test]
    fn inputs_conflict_and_dockerfile_refused() {
        let c = ContainerInputs {
            oci_layout: Some("a".into()),
            rootfs: Some("b".into()),
            ..Default::default()
        };
        assert_eq!(container_input(&c).unwrap_err().code, "E614");
        let c = ContainerInputs {
            docker_dir: Some(".".into()),
            docker_uri: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(container_input(&c).unwrap_err().code, "E612");
        assert!(container_input(&ContainerInputs::default())
            .unwrap()
            .is_none());
    }

    #[test]
    fn blobs_prepare_takes_one_kernel_source_with_its_other_flags() {
        use clap::Parser;
        let ok = crate::Cli::try_parse_from([
            "cloister",
            "blobs",
            "prepare",
            "--output",
            "o",
            "--kernel-deb",
            "k.deb",
            "--init",
            "i",
        ]);
        assert!(ok.is_ok(), "{ok:?}");
        for bad in [
            &["--output", "o", "--init", "i"][..],
            &[
                "--output",
                "o",
                "--kernel-deb",
                "k",
                "--kernel-version",
                "v",
                "--init",
                "i",
            ],
        ] {
            let argv = ["cloister", "blobs", "prepare"].iter().chain(bad.iter());
            assert!(crate::Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn codes_are_in_range_and_listed() {
        for c in CODES {
            assert!(c.code.starts_with("E6"), "{}", c.code);
        }
        let e = BuildError::Source(SourceError::NoEngine {
            socket: "s".into(),
            reason: "r".into(),
        });
        let code = build_error_code(&e);
        assert!(CODES.iter().any(|c| c.code == code));
    }
}
