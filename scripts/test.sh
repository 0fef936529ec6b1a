#!/usr/bin/env bash
# The test suite: installs what is missing, builds the guest artefacts, then runs every tier:
# unit and contract tests, the in-process agent tests, and the VM tier (real UVMs under QEMU,
# driven only through host-shim). Nothing is skipped: a missing prerequisite fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
export RGCS_INITRD="$PWD/out/initrd.img" RGCS_AGENT_BIN="$PWD/out/gcs"
if [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then
  echo "test: /dev/kvm is hardware KVM: VM tests use KVM" >&2
else
  echo "test: no usable hardware KVM here (missing, or PVM): VM tests run under TCG (slow but real)" >&2
fi
cargo test --locked --workspace --all-features --no-fail-fast
