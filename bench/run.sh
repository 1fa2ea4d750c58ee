#!/usr/bin/env bash
# The benchmark harness: Portcullis side by side with nginx on this machine, one command.
#
#   bench/run.sh                # full run (about 21 minutes), writes docs/performance.md
#   bench/run.sh --quick        # short runs, prints results, writes nothing
#   bench/run.sh --only waf     # just the WAF scenario (Portcullis' WAF vs nginx + ModSecurity + CRS),
#                               # prints results, writes nothing (add --quick for short runs)
#   bench/run.sh --only plain   # the plain proxy vs nginx, nginx-same (nginx made to send and return
#                               # the header fields Portcullis does by default) and the upstream
#                               # (small, 16k, h2), in rounds; --compare BIN adds another build
#                               # (A/B); prints only
#   bench/run.sh --only instructions  # user-space instructions, cache misses and the size of the
#                               # code run per request under valgrind (nginx, the plain proxy;
#                               # --compare BIN adds another build): counts the machine's load does
#                               # not move; prints only
#   bench/run.sh --pgo          # also builds the profile-guided binary (bench/pgo.sh, about 10 more
#                               # minutes) and measures it beside the default build (full run, or
#                               # with --only plain as the other build of the A/B)
#   bench/run.sh --only plain --rounds 12  # more rounds (default 3): the report then also says
#                               # in how many rounds Portcullis beat nginx, with a sign test;
#                               # one warm-up round runs first and is not counted (--warmup N)
#   BENCH_KEEP=1 bench/run.sh --only ...   # keeps the work directory (configs, logs, callgrind
#                               # dumps for callgrind_annotate) and prints its path
#   bench/run.sh --only contract  # just the API contract scenario (a route validated against
#                               # bench/contract/orders.yaml vs the plain proxy and nginx, JSON POSTs),
#                               # prints results, writes nothing (add --quick for short runs)
#
# Installs what it needs from the OS packages (nginx, wrk, h2load, redis-server, valgrind, the nginx ModSecurity
# module and the OWASP CRS), builds the release binary,
# pins servers to CPU 0 and load generators to CPU 1, runs every case in rounds (each once per round,
# so that a drift of the machine falls on all alike), reports medians.
set -euo pipefail
cd "$(dirname "$0")/.."

# Arguments are checked before anything is installed or built: a typo must not start a run.
expect=""
for a in "$@"; do
  if [ -n "$expect" ]; then expect=""; continue; fi
  case "$a" in
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; python3 bench/run.py --help; exit 0 ;;
    --quick|--pgo|--only=*) ;;
    --only|--compare|--bin|--rounds|--warmup) expect=$a ;;
    *) echo "unknown argument '$a'; see bench/run.sh --help" >&2; exit 2 ;;
  esac
done
if [ -n "$expect" ]; then echo "$expect needs a value; see bench/run.sh --help" >&2; exit 2; fi

. bench/packages.sh
install_missing nginx:nginx wrk:wrk h2load:nghttp2-client redis-server:redis-server valgrind:valgrind \
  "/usr/lib/nginx/modules/ngx_http_modsecurity_module.so|/usr/share/nginx/modules/ngx_http_modsecurity_module.so:libnginx-mod-http-modsecurity" \
  /usr/share/modsecurity-crs/rules:modsecurity-crs

# --pgo builds for ten minutes: refused up front where run.py would refuse it after.
pgo=0 only="" prev=""
for a in "$@"; do
  case "$a" in --pgo) pgo=1 ;; --only=*) only=${a#--only=} ;; esac
  [ "$prev" = --only ] && only=$a
  prev=$a
done
if [ "$pgo" = 1 ] && [ -n "$only" ] && [ "$only" != plain ]; then
  echo "--pgo goes with the full run or --only plain" >&2
  exit 2
fi
cargo build --release --locked -p portcullis
# --pgo: also the profile-guided build (bench/pgo.sh), measured beside the default one.
args=()
for a in "$@"; do
  if [ "$a" = --pgo ]; then
    bench/pgo.sh
    args+=(--pgo target/pgo/release/portcullis)
  else
    args+=("$a")
  fi
done
exec python3 bench/run.py ${args[@]+"${args[@]}"}
