#!/usr/bin/env bash
# The main job: install what is missing, build, make a small OCI image locally from busybox-static
# (three layers, no download), then run it with rgcs: a utility VM with the rgcs agent as PID 1,
# the image's layers as hot-plugged disks, a scratch disk, the overlay rootfs, the container's
# output here, its exit code as ours, and everything torn down again.
# The fast path (docs/warm-start.md): a warm UVM boots in the background while the image is made,
# and the run leases it instead of booting one. The pool lives in a state directory of this
# script's own and is stopped at the end, so nothing keeps running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
RGCS_STATE_DIR="$(mktemp -d /tmp/rgcs-demo-state.XXXXXX)"
export RGCS_STATE_DIR
trap 'target/release/rgcs pool stop >/dev/null; rm -rf "$RGCS_STATE_DIR"' EXIT
target/release/rgcs pool start --size 1 --no-wait --initrd out/initrd.img >/dev/null
target/release/rgcs image demo -o out/demo-image
target/release/rgcs run --initrd out/initrd.img out/demo-image "$@"
