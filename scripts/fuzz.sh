#!/usr/bin/env bash
# Fuzzes rgcs-protocol: builds the cargo-fuzz targets of fuzz/ and runs them, one after the other,
# each as a single libFuzzer process, then prints a table (target, runs, exec/s, crashes, corpus).
# Installs what it needs on a fresh Debian 12 machine with rustup: a nightly toolchain (minimal
# profile), cargo-fuzz (pinned, into $RGCS_TOOLS_DIR, default /opt/rgcs-tools) and, if missing,
# a C++ compiler (libFuzzer) and python3 (fuzz/seed.py). Works from any directory.
#
#   bash scripts/fuzz.sh [--runs N | --seconds S] [TARGET...] [-- LIBFUZZER_ARGS...]
#       run TARGETs (default: all) for N executions each (default 10000000) or S seconds each
#   bash scripts/fuzz.sh --build-only     build every target (CI: keeps the targets compiling)
#   bash scripts/fuzz.sh --cmin [TARGET...]
#       minimise fuzz/corpus/<t> ∪ fuzz/work/corpus/<t> ∪ the seeds (cargo fuzz cmin) into
#       fuzz/corpus/<t>, and empty fuzz/work/corpus/<t>
#
# Corpora, all read by libFuzzer, only the first one written while fuzzing:
#   fuzz/work/corpus/<t>/  new inputs (git-ignored, like all of fuzz/work)
#   fuzz/corpus/<t>/       the minimised corpus (--cmin writes it; committed where small, see
#                          fuzz/.gitignore)
#   fuzz/work/seed/<t>/    the fixtures' seeds, made by fuzz/seed.py if absent
# Logs: fuzz/work/logs/<t>.log. A crash leaves fuzz/artifacts/<t>/crash-…;
# the script then exits 1 after the table and prints the artifact path(s).
#
# Environment: RGCS_TOOLS_DIR (where cargo-fuzz is installed), RGCS_FUZZ_TOOLCHAIN (default
# nightly; e.g. nightly-2026-05-19 to pin one).
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
TOOLS_DIR="${RGCS_TOOLS_DIR:-/opt/rgcs-tools}"
TOOLCHAIN="${RGCS_FUZZ_TOOLCHAIN:-nightly}"
FUZZ="$(cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz" && pwd)"
WORK="$FUZZ/work"
log() { echo "fuzz: $*" >&2; }
die() { log "$*"; exit 2; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

mode=run runs= seconds= targets=() extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) [ $# -ge 2 ] || usage; runs=$2; shift 2 ;;
    --runs=*) runs=${1#*=}; shift ;;
    --seconds) [ $# -ge 2 ] || usage; seconds=$2; shift 2 ;;
    --seconds=*) seconds=${1#*=}; shift ;;
    --build-only) mode=build; shift ;;
    --cmin) mode=cmin; shift ;;
    -h|--help) usage 0 ;;
    --) shift; extra=("$@"); break ;;
    -*) log "unknown option $1"; usage ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ -z "$runs" ] || [ -z "$seconds" ] || die "--runs and --seconds are exclusive"
[ -z "$runs" ] || [[ "$runs" =~ ^[0-9]+$ ]] || die "--runs wants a number, got '$runs'"
[ -z "$seconds" ] || [[ "$seconds" =~ ^[0-9]+$ ]] || die "--seconds wants a number, got '$seconds'"
[ -n "$runs" ] || [ -n "$seconds" ] || runs=10000000

# --- prerequisites -------------------------------------------------------------------------------
apt_install() {
  [ "$(id -u)" = 0 ] || die "missing $*: install it (apt-get install $*) or run as root"
  log "apt-get install $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
command -v rustup >/dev/null || die "rustup is missing (https://rustup.rs)"
if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  log "rustup toolchain install $TOOLCHAIN --profile minimal"
  rustup toolchain install "$TOOLCHAIN" --profile minimal
fi
# libfuzzer-sys compiles libFuzzer (C++).
command -v c++ >/dev/null || apt_install g++
export PATH="$TOOLS_DIR/bin:$PATH"
if ! "$TOOLS_DIR/bin/cargo-fuzz" --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  log "cargo install cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS_DIR (takes ~2 min once)"
  (cd / && cargo "+$TOOLCHAIN" install --locked --quiet --root "$TOOLS_DIR" cargo-fuzz --version "$CARGO_FUZZ_VERSION")
fi

cd "$FUZZ"
fuzz() { cargo "+$TOOLCHAIN" fuzz "$@"; }

if [ "$mode" = build ]; then
  start=$SECONDS
  fuzz build
  log "built $(fuzz list | tr '\n' ' ')in $((SECONDS - start)) s ($(rustup run "$TOOLCHAIN" rustc --version), cargo-fuzz $CARGO_FUZZ_VERSION)"
  exit 0
fi

mapfile -t all < <(fuzz list)
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do
  printf '%s\n' "${all[@]}" | grep -qx -- "$t" || die "no fuzz target '$t' (have: ${all[*]})"
done

# files/bytes of the union of corpus directories
corpus_size() {
  local d dirs=()
  for d in "$@"; do [ -d "$d" ] && dirs+=("$d"); done
  [ ${#dirs[@]} -gt 0 ] || { echo 0/0; return; }
  find "${dirs[@]}" -maxdepth 1 -type f -printf '%f %s\n' |
    awk '!seen[$1]++ { n++; b += $2 } END { printf "%d/%d\n", n, b }'
}

# The fixtures' seeds, in work/seed/<t>/: seed.py writes to its CORPUS (fuzz/corpus/), which
# holds committed corpora, so it runs with CORPUS pointed at work/seed.
seed() {
  [ ! -d work/seed ] || return 0
  command -v python3 >/dev/null || apt_install python3
  log "seeding work/seed from the fixtures (fuzz/seed.py)"
  rm -rf work/seed.tmp
  python3 - >&2 <<'PY'
import importlib.util
from pathlib import Path
spec = importlib.util.spec_from_file_location("seed", "seed.py")
seed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seed)
seed.CORPUS = Path("work/seed.tmp").resolve()
seed.main()
PY
  mv work/seed.tmp work/seed
}

# the existing corpus directories of target $1, the written one (work/corpus/$1) first
corpus_dirs() {
  local d
  mkdir -p "work/corpus/$1"
  for d in "work/corpus/$1" "corpus/$1" "work/seed/$1"; do
    [ ! -d "$d" ] || echo "$d"
  done
}

if [ "$mode" = cmin ]; then
  seed
  fuzz build
  printf '%-16s %s\n' target 'corpus files/bytes (before -> after)'
  for t in "${targets[@]}"; do
    mapfile -t dirs < <(corpus_dirs "$t")
    before=$(corpus_size "${dirs[@]}")
    rm -rf "work/cmin/$t"
    mkdir -p "work/cmin/$t"
    find "${dirs[@]}" -maxdepth 1 -type f -exec cp -t "work/cmin/$t" {} +
    fuzz cmin "$t" "work/cmin/$t" >"work/cmin/$t.log" 2>&1 || { tail -20 "work/cmin/$t.log" >&2; die "cmin $t failed"; }
    rm -rf "corpus/$t" "work/corpus/$t"
    mv "work/cmin/$t" "corpus/$t"
    mkdir -p "work/corpus/$t"
    after=$(corpus_size "corpus/$t")
    printf '%-16s %s -> %s\n' "$t" "$before" "$after"
  done
  exit 0
fi

# --- run -----------------------------------------------------------------------------------------
seed
mkdir -p "$WORK/logs"
log "building"
fuzz build
budget=(-runs="$runs")
[ -z "$seconds" ] || budget=(-max_total_time="$seconds")

rows=() artifacts=() failed=0
for t in "${targets[@]}"; do
  mapfile -t dirs < <(corpus_dirs "$t")
  out="$WORK/logs/$t.log"
  log "$t: ${budget[*]} (log: $out)"
  start=$SECONDS
  # --jobs 1: one libFuzzer process (cargo-fuzz passes no -fork/-jobs); new inputs go to the
  # first corpus directory (work/), the committed corpus is read only.
  set +e
  fuzz run --jobs 1 "$t" "${dirs[@]}" -- "${budget[@]}" -print_final_stats=1 \
    ${extra[@]+"${extra[@]}"} >"$out" 2>&1
  rc=$?
  set -e
  secs=$((SECONDS - start))
  n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out" | tail -1)
  crash=0
  if [ $rc -ne 0 ]; then
    crash=1 failed=1
    a=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$out" | tail -1)
    [ -z "$a" ] || artifacts+=("$t $FUZZ/${a#"$FUZZ"/}")
    tail -40 "$out" >&2
    log "$t FAILED (exit $rc) after $secs s; artifact: ${a:-none (see $out)}"
  else
    log "$t: ${n:-?} runs in $secs s, ${rate:-?} exec/s"
  fi
  rows+=("$(printf '%-16s %12s %8s %7s %16s %6s' "$t" "${n:-?}" "${rate:-?}" "$crash" \
    "$(corpus_size "${dirs[@]}")" "$secs")")
done

printf '\n%-16s %12s %8s %7s %16s %6s\n' target runs exec/s crashes corpus_files/B secs
printf '%s\n' "${rows[@]}"
if [ $failed -ne 0 ]; then
  for a in ${artifacts[@]+"${artifacts[@]}"}; do
    echo "crash artifact: ${a#* }  (reproduce: cd fuzz && cargo +$TOOLCHAIN fuzz run ${a%% *} ${a#* })"
  done
  exit 1
fi
