# Sourced by bench/run.sh and bench/pgo.sh: installs the OS packages the benchmark needs.
#
#   install_missing WHAT:PACKAGE ...
#
# WHAT is a command looked for on the PATH, or (starting with /) a file or directory; several
# separated by | mean any one of them will do. PACKAGE is installed with apt-get when none is
# there. The package may start a system nginx on port 80; the bench's run on their own ports.
install_missing() {
  local need=() alts=() item what pkg alt found
  for item in "$@"; do
    what=${item%%:*}
    pkg=${item#*:}
    found=0
    IFS='|' read -ra alts <<<"$what"
    for alt in "${alts[@]}"; do
      if [ "${alt#/}" != "$alt" ]; then
        [ -e "$alt" ] && found=1
      else
        command -v "$alt" >/dev/null && found=1
      fi
    done
    [ "$found" = 1 ] || need+=("$pkg")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}
