#!/usr/bin/env bash
# The installed-package test: builds the release artifacts (`cargo xtask dist`, reusing the
# `cloister` that `cargo test --workspace --release` left in target/release), checks that init
# rebuilds byte for byte from another path (`cargo xtask reproduce`), installs the .deb with
# dpkg -i, and then, with cargo off the PATH and from a directory outside the clone, runs
# `cloister demo`, builds an image from an OCI layout made by umoci (Debian's) holding
# busybox-static, runs it in a 64 MiB process enclave and reads its output from the console.
# Purges the package and removes its enclaves and files at the end, also on failure; runs
# again as often as wanted. Everything it writes is under one mktemp directory (the artifacts
# too), so a parallel test or a developer's target/dist is left alone. Needs root (dpkg,
# enclaves), and purges a cloister package installed before it.
set -euo pipefail
cd "$(dirname "$0")/.."
clone=$PWD
if [ "$(id -u)" != 0 ]; then
  echo "package-test: needs root (dpkg -i, enclaves)" >&2
  exit 1
fi

started=$(date +%s)
# The binaries the test suite built and ran: `cloister`, and `xtask` (built for its
# integration test). After scripts/test.sh's `cargo test --workspace --release` this cargo
# run finds nothing to do; a plain `cargo build -p cloister` would not, since the tests'
# dev-dependencies widen some features. XTASK and DIST_ARGS override both (XTASK="cargo
# xtask" DIST_ARGS= builds the release as `cargo xtask dist` does).
if [ -z "${XTASK:-}" ]; then
  cargo test --workspace --release --no-run --quiet
fi
xtask=${XTASK:-target/release/xtask}
dist_args=${DIST_ARGS---no-build}
echo "package-test: test build checked ($(( $(date +%s) - started )) s)"
work=$(mktemp -d /tmp/cloister-package-test.XXXXXX)
chmod 0711 "$work"
run_dir=$work/run
pki_dir=$work/pki
# No cargo, no rustup, no clone, no Cloister settings: only what the package installed.
clean_env=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$work" LANG=C.UTF-8
  CLOISTER_RUN_DIR="$run_dir" CLOISTER_PKI_DIR="$pki_dir")
installed=0
cleanup() {
  local rc=$?
  if [ -x /usr/bin/cloister ] && [ -d "$run_dir" ]; then
    "${clean_env[@]}" /usr/bin/cloister terminate-enclave --all >/dev/null 2>&1 || true
  fi
  if [ "$installed" = 1 ]; then
    dpkg --purge cloister >/dev/null 2>&1 || echo "package-test: dpkg --purge cloister failed" >&2
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

step() { echo "package-test: $* ($(( $(date +%s) - started )) s)"; }

# shellcheck disable=SC2086
$xtask dist --out "$work/dist" $dist_args
step "dist built"
$xtask reproduce
step "reproduce checked"

(cd "$work/dist" && sha256sum --quiet -c SHA256SUMS)
deb=$(ls "$work"/dist/cloister_*_amd64.deb)
# What the package must hold besides the binary and blobs: man pages and completions from
# the clap tree, the systemd units and the configuration (conffiles).
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/cloister ./usr/share/cloister/blobs/init ./usr/share/cloister/blobs/cmdline \
    ./usr/share/cloister/cloister-sample-app ./usr/share/man/man1/cloister.1.gz \
    ./usr/share/man/man1/cloister-build-enclave.1.gz ./usr/share/man/man1/cloister-run-enclave.1.gz \
    ./usr/share/bash-completion/completions/cloister ./usr/share/zsh/vendor-completions/_cloister \
    ./usr/share/fish/vendor_completions.d/cloister.fish \
    ./lib/systemd/system/cloister-allocator.service ./lib/systemd/system/cloister-kms.service \
    ./lib/systemd/system/cloister-vsock-proxy.service ./etc/cloister/kms.yaml \
    ./usr/share/doc/cloister/BUILDINFO; do
  grep -q " $f\$" <<<"$contents" || { echo "error: $f is not in $deb" >&2; exit 1; }
done
dpkg-deb -I "$deb" conffiles | grep -qx /etc/cloister/kms.yaml

if dpkg-query -W -f='${Status}' cloister 2>/dev/null | grep -q installed; then
  echo "package-test: purging the cloister package installed before the test" >&2
  dpkg --purge cloister >/dev/null
fi
installed=1
dpkg -i "$deb"
step "installed"

if "${clean_env[@]}" sh -c 'command -v cargo || command -v rustc'; then
  echo "error: cargo is still on the PATH" >&2
  exit 1
fi
cd "$work"
case "$PWD/" in "$clone"/*) echo "error: inside the clone" >&2; exit 1 ;; esac
mkdir -m 0711 "$run_dir"

"${clean_env[@]}" cloister --version
"${clean_env[@]}" cloister explain --error-code E610 >/dev/null

echo "package-test: cloister demo (installed)"
"${clean_env[@]}" cloister demo >demo.log 2>&1 || { cat demo.log >&2; exit 1; }
cat demo.log
grep -q "Demo complete" demo.log
grep -q "blobs: /usr/share/cloister/blobs" demo.log
grep -q "sample app: /usr/share/cloister/cloister-sample-app" demo.log
step "demo passed"

echo "package-test: an OCI layout made by umoci"
if ldd /bin/busybox >/dev/null 2>&1; then
  echo "error: /bin/busybox is linked dynamically (install busybox-static)" >&2
  exit 1
fi
# unpack + repack: Debian 12's umoci 0.4.7 `insert` writes a layer whose tar stops after the
# file's last byte (no padding, no end-of-archive blocks), which GNU tar refuses as well.
umoci init --layout oci
umoci new --image oci:app
umoci unpack --image oci:app bundle >/dev/null
mkdir bundle/rootfs/bin
cp /bin/busybox bundle/rootfs/bin/busybox
umoci repack --image oci:app bundle
# The whole command in Entrypoint: nitro-cli's rule (build-enclave's default) runs Entrypoint
# alone when an image has one; Docker's (--docker-cmd-semantics) would append Cmd to it.
umoci config --image oci:app --config.entrypoint /bin/busybox \
  --config.entrypoint sh --config.entrypoint -c \
  --config.entrypoint 'while true; do echo "hello from an umoci image"; sleep 1; done'
"${clean_env[@]}" cloister build-enclave --oci-layout oci:app --output-file app.eif | tee build.json
grep -q '"PCR1"' build.json
# Built without SOURCE_DATE_EPOCH, the image's PCR1 is the shipped blobs' (BUILDINFO).
pcr1=$(sed -n 's/.*"PCR1": *"\([0-9a-f]*\)".*/\1/p' build.json)
grep -q "$pcr1" /usr/share/doc/cloister/BUILDINFO || {
  echo "error: the image's PCR1 $pcr1 is not the one BUILDINFO records:" >&2
  cat /usr/share/doc/cloister/BUILDINFO >&2
  exit 1
}

threads=$(lscpu | awk -F: '/Thread\(s\) per core/ {gsub(/ /, "", $2); print $2}')
name=umoci-app-$$
"${clean_env[@]}" cloister run-enclave --eif-path app.eif --cpu-count "${threads:-1}" \
  --memory 64 --debug-mode --enclave-name "$name" | tee run.json
"${clean_env[@]}" timeout 30 cloister console --enclave-name "$name" \
  --disconnect-timeout 3 >console.log || true
grep -q "hello from an umoci image" console.log || {
  echo "error: no output from the enclave:" >&2
  cat console.log >&2
  exit 1
}
"${clean_env[@]}" cloister terminate-enclave --enclave-name "$name"
left=$("${clean_env[@]}" cloister describe-enclaves)
[ "$(tr -d ' \n' <<<"$left")" = "[]" ] || { echo "error: enclaves left: $left" >&2; exit 1; }
step "umoci image ran"

cd "$clone"
dpkg --purge cloister >/dev/null
installed=0
[ ! -e /usr/bin/cloister ] && [ ! -e /etc/cloister ] && [ ! -e /usr/share/cloister ] || {
  echo "error: files left after dpkg --purge" >&2
  exit 1
}
step "passed"
