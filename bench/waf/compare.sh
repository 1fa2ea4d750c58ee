#!/usr/bin/env bash
# Runs bench/waf-corpus against nginx + ModSecurity + OWASP CRS at paranoia levels 1 and 4 and
# against Portcullis' WAF (block, PL 1), one after the other, each on its own ports.
#
#   bench/waf/compare.sh                      # all three; /tmp/waf-corpus-<kind>.{md,json}
#   bench/waf/compare.sh modsec-pl1 portcullis   # just these
#   OUT=/tmp/x LIMIT=20 bench/waf/compare.sh   # elsewhere, 20 samples per file
#
# Installs nginx, the ModSecurity module and the CRS from the OS packages when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=${OUT:-/tmp}
limit=${LIMIT:-0}
kinds=("$@")
[ ${#kinds[@]} -gt 0 ] || kinds=(modsec-pl1 modsec-pl4 portcullis)

need=()
command -v nginx >/dev/null || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_http_modsecurity_module.so ] || [ -e /usr/share/nginx/modules/ngx_http_modsecurity_module.so ] \
  || need+=(libnginx-mod-http-modsecurity)
[ -d /usr/share/modsecurity-crs/rules ] || need+=(modsecurity-crs)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

status=0
for kind in "${kinds[@]}"; do
  echo "== $kind" >&2
  if bench/waf-corpus --start "$kind" --limit "$limit" --markdown --json "$out/waf-corpus-$kind.json" \
      > "$out/waf-corpus-$kind.md.tmp"; then
    mv "$out/waf-corpus-$kind.md.tmp" "$out/waf-corpus-$kind.md"
    echo "   $out/waf-corpus-$kind.md" >&2
  else
    echo "   $kind failed (see above)" >&2
    rm -f "$out/waf-corpus-$kind.md.tmp"
    status=1
  fi
done
exit $status
