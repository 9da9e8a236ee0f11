//! Container images (E6xx): the codes and their explanations.

use super::code::*;

/// Error codes of this area.
pub const CODES: &[ErrorInfo] = &[
    ErrorInfo {
        code: E601,
        exit: ExitKind::InvalidInput,
        summary: "Invalid container image",
        explanation: "The image source (OCI layout, docker save archive or rootfs directory) \
                      could not be read or its index, manifest or config is malformed. The \
                      message names the document and the problem.",
    },
    ErrorInfo {
        code: E602,
        exit: ExitKind::VerificationFailed,
        summary: "Image content does not match its digest",
        explanation: "A blob (config or layer) has a different SHA-256 or size than its \
                      manifest says: the image is corrupt or was tampered with. Re-export it.",
    },
    ErrorInfo {
        code: E603,
        exit: ExitKind::Usage,
        summary: "Image tag not found or ambiguous",
        explanation: "The source holds several images and none or the wrong one was chosen. \
                      Add :TAG to --oci-layout or --docker-archive; the message lists the tags.",
    },
    ErrorInfo {
        code: E604,
        exit: ExitKind::Unavailable,
        summary: "No Docker engine",
        explanation: "--docker-uri reads the image from a Docker engine's socket, and none \
                      answered. Export the image elsewhere (`docker save -o img.tar IMAGE`) and \
                      use --docker-archive, or use --oci-layout.",
    },
    ErrorInfo {
        code: E605,
        exit: ExitKind::Failure,
        summary: "The Docker engine or the registry refused the request",
        explanation: "The engine answered with an HTTP error (for example, the image does not \
                      exist). Its message is shown.",
    },
    ErrorInfo {
        code: E606,
        exit: ExitKind::InvalidInput,
        summary: "Unreadable image layer",
        explanation: "A layer is truncated, not a tar archive, compressed with something other \
                      than gzip or zstd, or has an unusable entry.",
    },
    ErrorInfo {
        code: E607,
        exit: ExitKind::InvalidInput,
        summary: "Hostile path in the image",
        explanation: "A layer names a path with `..`, writes through a symlink that leads \
                      outside the image root, loops through symlinks, or puts a file under a \
                      non-directory. Nothing was written to the host; the image is refused.",
    },
    ErrorInfo {
        code: E608,
        exit: ExitKind::InvalidInput,
        summary: "Image exceeds a limit",
        explanation: "Too many layers, files, bytes (uncompressed), or a layer that \
                      decompresses far beyond its size (a decompression bomb).",
    },
    ErrorInfo {
        code: E609,
        exit: ExitKind::InvalidInput,
        summary: "No usable command or environment",
        explanation: "The image sets neither Cmd nor Entrypoint, or an argument or variable \
                      has a newline (the enclave's cmd and env files hold one per line). Give \
                      --cmd, --entrypoint or --env.",
    },
    ErrorInfo {
        code: E610,
        exit: ExitKind::Unavailable,
        summary: "Blobs directory missing or incomplete",
        explanation: "Images are built around Cloister's blobs (init and cmdline; a kernel too \
                      for VM images). They are looked for in --blobs DIR, CLOISTER_BLOBS, \
                      NITRO_CLI_BLOBS, <dir of the cloister executable>/../share/cloister/blobs \
                      and /usr/share/cloister/blobs, in this order. Install them with Cloister's \
                      package (cloister_*.deb, into /usr/share/cloister/blobs) or its release \
                      tarball (share/cloister/blobs beside bin/cloister); in a source tree, \
                      `cargo xtask dist` builds them under target/dist/cloister. For VM images, \
                      `cloister blobs prepare --output DIR --kernel-version V` adds a kernel and \
                      its vsock modules; pass that directory with --blobs.",
    },
    ErrorInfo {
        code: E611,
        exit: ExitKind::System,
        summary: "Cannot write the image",
        explanation: "Writing a ramdisk, a temporary file or the output failed (disk full, \
                      permissions).",
    },
    ErrorInfo {
        code: E612,
        exit: ExitKind::Usage,
        summary: "Dockerfile build failed",
        explanation: "--docker-dir builds the directory's Dockerfile, tagged with \
                      --docker-uri: with the Docker engine when one answers on \
                      DOCKER_HOST=unix://PATH or /var/run/docker.sock (`docker build`, or the \
                      engine's API without the docker command), otherwise with buildah \
                      (Debian: apt-get install buildah). Neither is available, the directory \
                      has no Dockerfile, or the build failed: the message quotes the builder's \
                      error.",
    },
    ErrorInfo {
        code: E613,
        exit: ExitKind::Failure,
        summary: "Cannot prepare blobs",
        explanation: "`blobs prepare` could not fetch or unpack the kernel package, find the \
                      kernel or the vsock modules, or write the output.",
    },
    ErrorInfo {
        code: E614,
        exit: ExitKind::Usage,
        summary: "Conflicting image inputs",
        explanation: "Give exactly one of --docker-uri, --oci-layout, --docker-archive, \
                      --rootfs (or the raw --kernel/--cmdline/--ramdisk inputs).",
    },
];
