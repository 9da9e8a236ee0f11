#!/usr/bin/env bash
# Installs QEMU (qemu-system-x86) and caches a guest kernel for the VM backend's tests and
# benchmarks: Debian's cloud kernel (vmlinuz) and its vsock modules, unpacked under
# target/vm-kernel/ (override with CLOISTER_VM_KERNEL_DIR). Idempotent: does nothing when the
# cache is complete. Needs root for apt-get install; the download itself does not.
#
# Layout written:
#   target/vm-kernel/vmlinuz            the kernel
#   target/vm-kernel/modules/*.ko       virtio_ring, virtio, virtio_mmio, vsock,
#                                       vmw_vsock_virtio_transport{_common,} (.ko, decompressed)
#   target/vm-kernel/modules.order      load order, one file name a line
#   target/vm-kernel/version            the kernel release
set -euo pipefail
cd "$(dirname "$0")/.."

dest=${CLOISTER_VM_KERNEL_DIR:-$PWD/target/vm-kernel}
# In load order: microvm exposes virtio-mmio devices through ACPI; Debian builds virtio,
# virtio_mmio and vsock as modules.
modules=(virtio_ring virtio virtio_mmio vsock vmw_vsock_virtio_transport_common
  vmw_vsock_virtio_transport)

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
  else
    echo "warning: not root; cannot install qemu-system-x86" >&2
  fi
fi

if [ -s "$dest/vmlinuz" ] && [ -s "$dest/modules.order" ]; then
  echo "guest kernel cached in $dest ($(cat "$dest/version"))"
  exit 0
fi

# The newest 6.1 cloud kernel the configured archive offers (CLOISTER_VM_KERNEL_PKG overrides).
pkg=${CLOISTER_VM_KERNEL_PKG:-}
if [ -z "$pkg" ]; then
  pkg=$(apt-cache search --names-only '^linux-image-6\.1\.[0-9.-]+-cloud-amd64-unsigned$' \
    | awk '{print $1}' | sort -V | tail -n 1)
fi
if [ -z "$pkg" ]; then
  echo "error: no linux-image-*-cloud-amd64-unsigned package found (run apt-get update)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq "$pkg")
dpkg -x "$work"/*.deb "$work/root"

release=${pkg#linux-image-}
release=${release%-unsigned}
mkdir -p "$dest/modules"
cp "$work/root/boot/vmlinuz-$release" "$dest/vmlinuz.tmp"
cp "$work/root/boot/config-$release" "$dest/config"
: >"$dest/modules.order.tmp"
for m in "${modules[@]}"; do
  src=$(find "$work/root/lib/modules/$release" -name "$m.ko" -o -name "$m.ko.xz" \
    -o -name "$m.ko.zst" | head -n 1)
  if [ -z "$src" ]; then
    # Built into the kernel: nothing to load.
    echo "note: module $m not found (built in?)" >&2
    continue
  fi
  case "$src" in
    *.xz) xz -dc "$src" >"$dest/modules/$m.ko" ;;
    *.zst) zstd -qdc "$src" >"$dest/modules/$m.ko" ;;
    *) cp "$src" "$dest/modules/$m.ko" ;;
  esac
  echo "$m.ko" >>"$dest/modules.order.tmp"
done
echo "$release" >"$dest/version"
mv "$dest/modules.order.tmp" "$dest/modules.order"
mv "$dest/vmlinuz.tmp" "$dest/vmlinuz"
echo "guest kernel $release cached in $dest"
