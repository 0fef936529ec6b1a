#!/usr/bin/env bash
# Builds the static guest binary (gcs: init + agent, glibc +crt-static), the host CLI (rgcs),
# and the initrd. Prints nothing but errors and the artefact paths.
#   out/gcs          the static guest binary
#   out/initrd.img        newc initrd: /init = gcs, kernel modules, /etc/rgcs/modules, busybox with
#                         its applet links, mkfs.ext4
#   out/initrd-bench.img  the same plus runc and crun (for `rgcs bench containers`)
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-gnu
mkdir -p out
# +crt-static only for the target artefacts: with an explicit --target, build scripts and
# proc-macros are built for the host without it. relocation-model=static gives a classic static
# executable (no static-pie self-relocation at start-up; ldd: "not a dynamic executable").
# The `agent` profile (Cargo.toml, ADR-0010): fat LTO, one codegen unit, opt-level z, panic=abort.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
  cargo build --quiet --locked --profile agent -p rgcs-agent --target "$TARGET"
cp "target/$TARGET/agent/gcs" out/gcs
lddout=$(ldd out/gcs 2>&1 || true)
case "$lddout" in
  *"not a dynamic executable"*) ;;
  *) echo "build: out/gcs is not a static executable: $lddout" >&2; exit 1 ;;
esac
cargo build --quiet --locked --release -p rgcs-host-shim
# /bin/busybox with a link per applet: the UVM's shell and tools (hcsshim's hosts run sh, mount,
# dmesg… in the UVM) and the source of the containers' busybox rootfs. mkfs.ext4 (with its
# libraries) lets EnsureFilesystem format a raw SCSI disk, as in hcsshim's LCOW rootfs.
TOOLS=(--busybox /bin/busybox --tool /usr/sbin/mkfs.ext4 --file /etc/mke2fs.conf)
target/release/rgcs initrd build --agent out/gcs "${TOOLS[@]}" -o out/initrd.img >&2
# The bench initrd adds Debian's runc and crun (with their ldd-resolved libraries and the loader)
# for `rgcs bench containers --initrd out/initrd-bench.img`.
target/release/rgcs initrd build --agent out/gcs "${TOOLS[@]}" \
  --tool /usr/sbin/runc --tool /usr/bin/crun -o out/initrd-bench.img >&2
echo "build: out/gcs out/initrd.img out/initrd-bench.img target/release/rgcs" >&2
