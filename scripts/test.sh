#!/usr/bin/env bash
# The test command of the README: installs what the tests need (idempotent), then runs the
# whole workspace's tests. Works on a fresh machine that has the Rust toolchain, gcc, Python 3.11
# and git; needs root for apt and for enclave tests (namespaces, cgroups).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

cargo test --workspace --release --no-fail-fast 2>&1
