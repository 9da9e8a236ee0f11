#!/usr/bin/env bash
# Installs the system and Python packages the tests and benchmarks use. Idempotent.
set -euo pipefail

need_apt=()
for pkg in "$@"; do need_apt+=("$pkg"); done
# Tools used by tests: bwrap and socat (benchmark baselines), cpio (checks ramdisks
# independently), openssl (an independent CMS and TLS peer for the key service).
for bin_pkg in bwrap:bubblewrap socat:socat cpio:cpio openssl:openssl; do
  bin=${bin_pkg%%:*}; pkg=${bin_pkg##*:}
  command -v "$bin" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "warning: not root; cannot install ${need_apt[*]}" >&2
  fi
fi

# Python clients used as independent checkers.
python3 - <<'PY' || python3 -m pip install -q --disable-pip-version-check boto3 cryptography cbor2
import boto3, cryptography, cbor2  # noqa: F401
PY
