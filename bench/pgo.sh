#!/usr/bin/env bash
# A profile-guided (PGO) release build of Portcullis, one command:
#
#   bench/pgo.sh        # writes target/pgo/release/portcullis (about 10 minutes on 2 cores)
#
# 1. builds an instrumented binary (target/pgo-generate/),
# 2. runs it through `bench/run.py --only train`: every profile the benchmark measures (plain,
#    secure with WAF and audit, JWT, authorization, rate limits, the WAF's configuration, an OpenAPI
#    contract), each sent small and 16 KiB GETs, h2c streams, GETs with a query and JSON POSTs,
#    plus attacks the WAF blocks and orders the contract refuses, against a local nginx upstream,
# 3. merges the profiles and builds the release binary with them (target/pgo/).
#
# The result is the same program as `cargo build --release`, laid out by the compiler for the
# paths requests take: docs/performance.md has what it gains. `bench/run.sh --pgo` builds it and
# measures it beside the default build.
#
# Needs rustup (for llvm-profdata: the llvm-tools component of the active toolchain); installs
# it and nginx, wrk and h2load (from the OS packages) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

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
# An explicit --target keeps RUSTFLAGS off build scripts and proc-macros: only the program itself
# is instrumented, and only it is optimised with the profile.
host=$(rustc -vV | sed -n 's/^host: //p')

# RUSTFLAGS replaces any flags from the environment: these builds are the PGO ones only.
RUSTFLAGS="-Cprofile-generate=$data" CARGO_TARGET_DIR=$root/target/pgo-generate \
  cargo build --release --locked -p portcullis --target "$host"
# Each instrumented process writes its profile when it exits (the bench stops them with SIGTERM).
python3 bench/run.py --only train --bin "target/pgo-generate/$host/release/portcullis"
ls "$data"/*.profraw >/dev/null
"$profdata" merge -o "$data/merged.profdata" "$data"/*.profraw
RUSTFLAGS="-Cprofile-use=$data/merged.profdata" CARGO_TARGET_DIR=$root/target/pgo \
  cargo build --release --locked -p portcullis --target "$host"
mkdir -p target/pgo/release
cp "target/pgo/$host/release/portcullis" target/pgo/release/portcullis
echo "built: target/pgo/release/portcullis"
