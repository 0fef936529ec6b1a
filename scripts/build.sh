#!/usr/bin/env bash
# Builds the static guest binary (gcs: init + agent, glibc +crt-static), the host CLI (rgcs),
# and the initrd. Prints nothing but errors and the artefact paths.
#   out/gcs          the static guest binary
#   out/initrd.img   newc initrd: /init = gcs, kernel modules, /etc/rgcs/modules
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-gnu
mkdir -p out
# +crt-static only for the target artefacts: with an explicit --target, build scripts and
# proc-macros are built for the host without it. relocation-model=static gives a classic static
# executable (no static-pie self-relocation at start-up; ldd: "not a dynamic executable").
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
  cargo build --quiet --locked --release -p rgcs-agent --target "$TARGET"
cp "target/$TARGET/release/gcs" out/gcs
lddout=$(ldd out/gcs 2>&1 || true)
case "$lddout" in
  *"not a dynamic executable"*) ;;
  *) echo "build: out/gcs is not a static executable: $lddout" >&2; exit 1 ;;
esac
cargo build --quiet --locked --release -p rgcs-host-shim
target/release/rgcs initrd build --agent out/gcs -o out/initrd.img >&2
echo "build: out/gcs out/initrd.img target/release/rgcs" >&2
