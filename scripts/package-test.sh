#!/usr/bin/env bash
# The installed-package test (issue 15): builds the release artifacts (`cargo xtask dist`),
# checks that init rebuilds byte for byte from another path (`cargo xtask reproduce`),
# installs the .deb with dpkg -i, and then, with cargo off the PATH and from a directory
# outside the clone, runs `cloister demo`, builds an image from an OCI layout made by umoci
# (Debian's) holding busybox, runs it in a 64 MiB process enclave and reads its output from
# the console. Removes the package at the end. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
clone=$PWD

# XTASK and DIST_ARGS let a developer reuse a built xtask (XTASK=target/debug/xtask) and
# package a debug cloister (DIST_ARGS=--debug) for a quick check.
xtask=${XTASK:-cargo xtask}
started=$(date +%s)
# shellcheck disable=SC2086
$xtask dist ${DIST_ARGS:-}
echo "package-test: dist built in $(( $(date +%s) - started )) s"
t=$(date +%s)
$xtask reproduce
echo "package-test: reproduce checked in $(( $(date +%s) - t )) s"

deb=$(ls target/dist/cloister_*_amd64.deb)
(cd target/dist && sha256sum -c SHA256SUMS)
dpkg --purge cloister >/dev/null 2>&1 || true
dpkg -i "$deb"
work=$(mktemp -d /tmp/cloister-package-test.XXXXXX)
cleanup() {
  CLOISTER_RUN_DIR=$work/run CLOISTER_PKI_DIR=$work/pki \
    /usr/bin/cloister terminate-enclave --all >/dev/null 2>&1 || true
  dpkg --purge cloister >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
chmod 0711 "$work"

# No cargo, no rustup, no clone: only what the package installed.
clean_env=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$work" LANG=C.UTF-8)
if "${clean_env[@]}" sh -c 'command -v cargo'; then
  echo "error: cargo is still on the PATH" >&2
  exit 1
fi
cd "$work"
case "$PWD" in "$clone"*) echo "error: inside the clone" >&2; exit 1 ;; esac

echo "package-test: cloister demo (installed)"
"${clean_env[@]}" cloister demo | tee demo.log
grep -q "Demo complete" demo.log
grep -q "blobs: /usr/share/cloister/blobs" demo.log
grep -q "sample app: /usr/share/cloister/cloister-sample-app" demo.log

echo "package-test: an OCI layout made by umoci"
if ldd /bin/busybox >/dev/null 2>&1; then
  echo "error: /bin/busybox is linked dynamically (install busybox-static)" >&2
  exit 1
fi
umoci init --layout oci
umoci new --image oci:app
umoci insert --image oci:app /bin/busybox /bin/busybox
umoci config --image oci:app --config.entrypoint /bin/busybox \
  --config.cmd sh --config.cmd -c \
  --config.cmd 'while true; do echo "hello from an umoci image"; sleep 1; done'
"${clean_env[@]}" cloister build-enclave --oci-layout oci:app --output-file app.eif \
  | tee build.json
grep -q '"PCR1"' build.json

export CLOISTER_RUN_DIR=$work/run CLOISTER_PKI_DIR=$work/pki
mkdir -m 0711 "$CLOISTER_RUN_DIR"
threads=$(lscpu | awk -F: '/Thread\(s\) per core/ {gsub(/ /, "", $2); print $2}')
"${clean_env[@]}" CLOISTER_RUN_DIR="$CLOISTER_RUN_DIR" CLOISTER_PKI_DIR="$CLOISTER_PKI_DIR" \
  cloister run-enclave --eif-path app.eif --cpu-count "${threads:-1}" --memory 64 \
  --debug-mode --enclave-name umoci-app | tee run.json
"${clean_env[@]}" CLOISTER_RUN_DIR="$CLOISTER_RUN_DIR" CLOISTER_PKI_DIR="$CLOISTER_PKI_DIR" \
  timeout 30 cloister console --enclave-name umoci-app --disconnect-timeout 3 >console.log || true
grep -q "hello from an umoci image" console.log || {
  echo "error: no output from the enclave:" >&2
  cat console.log >&2
  exit 1
}
"${clean_env[@]}" CLOISTER_RUN_DIR="$CLOISTER_RUN_DIR" CLOISTER_PKI_DIR="$CLOISTER_PKI_DIR" \
  cloister terminate-enclave --enclave-name umoci-app
echo "package-test: passed in $(( $(date +%s) - started )) s"
