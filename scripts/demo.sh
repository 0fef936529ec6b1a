#!/usr/bin/env bash
# The main job: install what is missing, build, make a small OCI image locally from busybox-static
# (three layers, no download), then run it with rgcs: a fresh utility VM with the rgcs agent as
# PID 1, the image's layers as hot-plugged SCSI ext4 disks, a scratch disk, the overlay rootfs, the
# container's output here, its exit code as ours, and everything torn down again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
target/release/rgcs image demo -o out/demo-image
exec target/release/rgcs run --initrd out/initrd.img out/demo-image "$@"
