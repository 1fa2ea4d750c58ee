#!/usr/bin/env bash
# A profile-guided (PGO) release build of Portcullis, one command:
#
#   bench/pgo.sh            # writes target/pgo/release/portcullis (about 10 minutes on 2 cores)
#   bench/pgo.sh --record   # the same, and records the profile as the one every release build of
#                           # this checkout uses (pgo/portcullis.profdata and pgo/recorded.txt, read
#                           # by scripts/rustc-pgo; commit both)
#
# 1. builds an instrumented binary (target/pgo-generate/),
# 2. runs it through `bench/run.py --only train`: every profile the benchmark measures (plain,
#    secure with WAF and audit, JWT, authorization, rate limits, the WAF's configuration, an OpenAPI
#    contract), each sent small and 16 KiB GETs, h2c streams, GETs with a query and JSON POSTs,
#    plus attacks the WAF blocks and orders the contract refuses, against a local nginx upstream,
# 3. merges the profiles and builds the release binary with them (target/pgo/).
#
# The result is the same program as `cargo build --release`, laid out by the compiler for the
# paths requests take, from a profile of this code made on this machine now; `cargo build
# --release` uses the profile last recorded (pgo/, ADR 0016). docs/performance.md has what a
# profile gains. `bench/run.sh --pgo` builds this one and measures it beside the release build.
#
# Needs rustup (for llvm-profdata: the llvm-tools component of the active toolchain); installs
# it and nginx, wrk and h2load (from the OS packages) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

record=0
case "${1-}" in
  "") ;;
  --record) record=1 ;;
  *) echo "usage: bench/pgo.sh [--record]" >&2; exit 2 ;;
esac

. bench/packages.sh
install_missing nginx:nginx wrk:wrk h2load:nghttp2-client
command -v rustup >/dev/null || { echo "bench/pgo.sh needs rustup (for the llvm-tools component)" >&2; exit 1; }
rustup component add llvm-tools-preview >/dev/null 2>&1 || rustup component add llvm-tools >/dev/null
sysroot=$(rustc --print sysroot)
profdata=$(find "$sysroot/lib/rustlib" -name llvm-profdata -type f | head -n1)
[ -x "$profdata" ] || { echo "llvm-profdata not found under $sysroot/lib/rustlib" >&2; exit 1; }

root=$PWD
data=$root/target/pgo-data
rm -rf "$data"
mkdir -p "$data"

# Both builds go through scripts/rustc-pgo, cargo's rustc wrapper here, exactly as a release build
# does: the same compilations instrumented, then the same given the profile. A profile names
# functions by their symbols, whose hashes cargo derives from how it builds (the compiler, an
# explicit --target, the profile's settings, features): anything but `cargo build --release -p
# portcullis` as users run it would record a profile their builds find nothing of. (The
# environment's RUSTFLAGS do not enter those hashes; they are left as they are, so that the
# profile is made from the code the release build compiles.)
PORTCULLIS_PGO=generate PORTCULLIS_PGO_DATA=$data CARGO_TARGET_DIR=$root/target/pgo-generate \
  cargo build --release --locked -p portcullis
# Each instrumented process writes its profile when it exits (the bench stops them with SIGTERM).
python3 bench/run.py --only train --bin target/pgo-generate/release/portcullis
ls "$data"/*.profraw >/dev/null
# Sparse: functions the training never ran are left out (a sixth of the size, the same layout:
# docs/performance.md).
"$profdata" merge --sparse -o "$data/merged.profdata" "$data"/*.profraw
PORTCULLIS_PGO_PROFILE=$data/merged.profdata CARGO_TARGET_DIR=$root/target/pgo \
  cargo build --release --locked -p portcullis
echo "built: target/pgo/release/portcullis"
if [ "$record" = 1 ]; then
  # The compiler's version goes beside it: scripts/rustc-pgo uses the profile only with the
  # compiler and target that recorded it.
  mkdir -p pgo
  cp "$data/merged.profdata" pgo/portcullis.profdata
  {
    echo "# The profile in pgo/portcullis.profdata, made by bench/pgo.sh --record; read by scripts/rustc-pgo."
    echo "code: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates Cargo.toml Cargo.lock || echo ' (with uncommitted changes)')"
    echo "recorded: $(date -u +%Y-%m-%dT%H:%MZ)"
    rustc -vV
  } > pgo/recorded.txt
  echo "recorded: pgo/portcullis.profdata ($(du -k pgo/portcullis.profdata | cut -f1) KiB), pgo/recorded.txt"
fi
