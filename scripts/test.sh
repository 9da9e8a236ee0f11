#!/usr/bin/env bash
# The test command of the README: installs what the tests need (idempotent), runs the whole
# workspace's tests, then builds, installs and tries the Debian package (package-test.sh).
# Works on a fresh machine that has the Rust toolchain, gcc, Python 3.11 and git; needs root
# for apt and for enclave tests (namespaces, cgroups).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
# The second QEMU (10.0) the VM tests boot besides the system's (crates/vm/tests/qemu_versions.rs).
./scripts/fetch-qemu.sh >/dev/null

status=0
cargo test --workspace --release --no-fail-fast 2>&1 || status=$?
# The release artifacts, installed as a user would (reuses target/release; CLOISTER_PACKAGE_TEST=0
# skips it, for a machine where the cloister package must stay as it is).
if [ "${CLOISTER_PACKAGE_TEST:-1}" != 0 ]; then
  ./scripts/package-test.sh 2>&1 || status=$?
fi
exit $status
