#!/usr/bin/env bash
# Extracts a second QEMU, 10.0 from Debian 12's bookworm-backports (the QEMU of Debian 13),
# into target/qemu-10/ (override with CLOISTER_QEMU10_DIR), for the VM backend's tests against
# two QEMU versions. Nothing is installed: apt-get downloads the packages with a scratch
# configuration (its own sources list, lists and cache under the prefix; the system's apt
# setup is untouched) and dpkg -x unpacks them. The binary's built-in data directory is
# /usr/share/qemu (the system's QEMU 7.2 files), so Cloister passes the prefix's own with -L
# (it finds it next to the binary). Idempotent. Prints the binary's path last.
#
#   CLOISTER_QEMU=$(scripts/fetch-qemu.sh | tail -n 1) cargo test ...
set -euo pipefail
cd "$(dirname "$0")/.."

dest=${CLOISTER_QEMU10_DIR:-$PWD/target/qemu-10}
bin=$dest/usr/bin/qemu-system-x86_64
suite=${CLOISTER_QEMU10_SUITE:-bookworm-backports}
mirror=${CLOISTER_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ -x "$bin" ] && [ -s "$dest/usr/share/qemu/qboot.rom" ]; then
  echo "QEMU $("$bin" --version | head -n 1 | awk '{print $4}') cached in $dest" >&2
  echo "$bin"
  exit 0
fi

apt_dir=$dest.apt
rm -rf "$apt_dir"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources.list.d" \
  "$apt_dir/preferences.d"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" \
  >"$apt_dir/sources.list"
opts=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.list"
  -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
  -o "Dir::Etc::Preferences=$apt_dir/preferences"
  -o "Dir::Etc::PreferencesParts=$apt_dir/preferences.d"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  -o "APT::Sandbox::User=$(id -un)"
  -o "Debug::NoLocking=1"
)
apt-get -qq "${opts[@]}" update
# The system emulator and its firmware (qboot.rom; SeaBIOS's bios-microvm.bin for the
# seabios fallback).
(cd "$apt_dir" && apt-get -qq "${opts[@]}" download "qemu-system-x86/$suite" \
  "qemu-system-data/$suite" "seabios/$suite")
rm -rf "$dest.tmp"
for deb in "$apt_dir"/*.deb; do dpkg -x "$deb" "$dest.tmp"; done
# SeaBIOS's files beside QEMU's, so one -L directory holds both.
cp -n "$dest.tmp"/usr/share/seabios/*.bin "$dest.tmp/usr/share/qemu/" 2>/dev/null || true
missing=$(ldd "$dest.tmp/usr/bin/qemu-system-x86_64" | awk '/not found/ {print $1}')
if [ -n "$missing" ]; then
  echo "error: the extracted QEMU needs libraries this host lacks: $missing" >&2
  exit 1
fi
rm -rf "$dest" "$apt_dir"
mv "$dest.tmp" "$dest"
# QEMU runs as an enclave's unprivileged uid: the prefix must be readable by others.
chmod -R go+rX "$dest"
echo "QEMU $("$bin" --version | head -n 1 | awk '{print $4}') extracted into $dest" >&2
echo "$bin"
