#!/usr/bin/env bash
# Idempotent set-up of everything rgcs needs on a fresh Debian 12 machine (root):
#   qemu-system-x86 (the UVM), linux-image-amd64 (guest kernel + modules), e2fsprogs (ext4 layers),
#   busybox-static (UVM shell, test rootfs), libseccomp-dev (static libseccomp for the agent),
#   runc + crun (containers benchmark), containerd + containernetworking-plugins (the containerd
#   shim's tests), vhost-device-vsock (host end of vsock, pinned).
#   (Fuzzing installs its own tools: scripts/fuzz.sh.)
# Safe to run again: it only installs what is missing.
set -euo pipefail

VHOST_DEVICE_VSOCK_VERSION=0.3.0
TOOLS_DIR="${RGCS_TOOLS_DIR:-/opt/rgcs-tools}"
log() { echo "setup: $*" >&2; }

need_apt=()
command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
compgen -G '/boot/vmlinuz-*-amd64' >/dev/null || need_apt+=(linux-image-amd64)
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)
command -v tc >/dev/null && command -v ip >/dev/null || need_apt+=(iproute2)
# The tests call /usr/bin/kill (procps) and xz (kernel and layer fixtures).
[ -x /usr/bin/kill ] || [ -x /bin/kill ] || need_apt+=(procps)
command -v xz >/dev/null || need_apt+=(xz-utils)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || need_apt+=(busybox-static)
# libcontainer's seccomp support links libseccomp.a statically into the guest binary.
[ -f /usr/lib/x86_64-linux-gnu/libseccomp.a ] || need_apt+=(libseccomp-dev)
# runc and crun: only for the containers benchmark's comparison (shipped in out/initrd-bench.img).
[ -x /usr/sbin/runc ] || need_apt+=(runc)
[ -x /usr/bin/crun ] || need_apt+=(crun)
# containerd 1.6 with ctr and the CRI plugin (the shim's tests drive it), the CNI plugins for CRI
# pods, and `script` (a terminal for `ctr run -t`).
command -v containerd >/dev/null && command -v ctr >/dev/null || need_apt+=(containerd)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] || need_apt+=(containernetworking-plugins)
command -v script >/dev/null || need_apt+=(bsdutils)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # linux-image-amd64 pulls initramfs-tools; we never use the host's initramfs, so skip building one.
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" file >/dev/null
fi

if ! "$TOOLS_DIR/bin/vhost-device-vsock" --version 2>/dev/null | grep -q "$VHOST_DEVICE_VSOCK_VERSION"; then
  log "cargo install vhost-device-vsock $VHOST_DEVICE_VSOCK_VERSION into $TOOLS_DIR (takes ~3 min once)"
  cargo install --locked --quiet --root "$TOOLS_DIR" vhost-device-vsock --version "$VHOST_DEVICE_VSOCK_VERSION"
fi
log "ok: $(qemu-system-x86_64 --version | head -1); kernel $(ls /boot/vmlinuz-*-amd64 | tail -1); vhost-device-vsock in $TOOLS_DIR/bin"
