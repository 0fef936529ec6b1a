#!/usr/bin/env bash
# The main job: install what is missing, build, boot a utility VM with the rgcs agent as PID 1,
# negotiate the GCS bridge protocol, print the guest's capabilities as JSON, power the VM off.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
exec target/release/rgcs uvm boot --check --initrd out/initrd.img
