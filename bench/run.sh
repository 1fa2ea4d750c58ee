#!/usr/bin/env bash
# The benchmark harness: Portcullis side by side with nginx on this machine, one command.
#
#   bench/run.sh                # full run (about 21 minutes), writes docs/performance.md
#   bench/run.sh --quick        # short runs, prints results, writes nothing
#   bench/run.sh --only waf     # just the WAF scenario (Portcullis' WAF vs nginx + ModSecurity + CRS),
#                               # prints results, writes nothing (add --quick for short runs)
#   bench/run.sh --only plain   # the plain proxy vs nginx and the upstream (small, 16k, h2), in
#                               # rounds; --compare BIN adds another build (A/B); prints only
#   bench/run.sh --only instructions  # user-space instructions per request under valgrind (nginx,
#                               # the plain proxy; --compare BIN adds another build): a count the
#                               # machine's load does not move; prints only
#   bench/run.sh --pgo          # also builds the profile-guided binary (bench/pgo.sh, about 10 more
#                               # minutes) and measures it beside the default build (full run, or
#                               # with --only plain as the other build of the A/B)
#   BENCH_KEEP=1 bench/run.sh --only ...   # keeps the work directory (configs, logs, callgrind
#                               # dumps for callgrind_annotate) and prints its path
#   bench/run.sh --only contract  # just the API contract scenario (a route validated against
#                               # bench/contract/orders.yaml vs the plain proxy and nginx, JSON POSTs),
#                               # prints results, writes nothing (add --quick for short runs)
#
# Installs what it needs from the OS packages (nginx, wrk, h2load, redis-server, valgrind, the nginx ModSecurity
# module and the OWASP CRS), builds the release binary,
# pins servers to CPU 0 and load generators to CPU 1, repeats each run, reports medians.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v redis-server >/dev/null || need+=(redis-server)
command -v valgrind >/dev/null || need+=(valgrind)
[ -e /usr/lib/nginx/modules/ngx_http_modsecurity_module.so ] || [ -e /usr/share/nginx/modules/ngx_http_modsecurity_module.so ] \
  || need+=(libnginx-mod-http-modsecurity)
[ -d /usr/share/modsecurity-crs/rules ] || need+=(modsecurity-crs)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The package may start a system nginx on port 80; ours run on their own ports.

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
