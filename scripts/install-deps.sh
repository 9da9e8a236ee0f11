#!/usr/bin/env bash
# Installs the system and Python packages the tests and benchmarks use. Idempotent.
set -euo pipefail

need_apt=()
for pkg in "$@"; do need_apt+=("$pkg"); done
# Tools used by tests: bwrap and socat (benchmark baselines), cpio (checks ramdisks
# independently), openssl (an independent CMS and TLS peer for the key service).
# buildah, skopeo and docker-registry: engine-free Dockerfile builds and registry pulls
# (nitro-cli compatibility tests).
# umoci and busybox-static: an OCI layout made by a tool of Debian's, holding busybox, for
# the installed-package test (scripts/package-test.sh).
# postgresql: the key service's PostgreSQL store tests start their own clusters (initdb).
for bin_pkg in bwrap:bubblewrap socat:socat cpio:cpio openssl:openssl buildah:buildah \
    skopeo:skopeo docker-registry:docker-registry umoci:umoci; do
  bin=${bin_pkg%%:*}; pkg=${bin_pkg##*:}
  command -v "$bin" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# Debian's dynamic busybox also answers to `busybox`: ask for the static one by its package.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' ||
  need_apt+=(busybox-static)
# PostgreSQL's server binaries are not on the PATH (/usr/lib/postgresql/<version>/bin).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "warning: not root; cannot install ${need_apt[*]}" >&2
  fi
fi

# The target the enclave init is built for (static musl; rust-toolchain.toml names it too).
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  rustup target add x86_64-unknown-linux-musl
fi

# Python clients used as independent checkers.
python3 - <<'PY' || python3 -m pip install -q --disable-pip-version-check boto3 cryptography cbor2
import boto3, cryptography, cbor2  # noqa: F401
PY
# The AWS CLI, a second real client of the key service (crates/kms/tests/asymmetric.rs).
command -v aws >/dev/null 2>&1 || python3 -m pip install -q --disable-pip-version-check awscli
