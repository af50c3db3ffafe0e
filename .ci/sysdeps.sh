#!/usr/bin/env bash
# Installs the Debian packages that tests drive for real, only when they are missing.
# Each entry: <command that proves presence> <package>.
set -uo pipefail
need=()
# a probe containing "/" is a path glob (e.g. /usr/lib/postgresql/*/bin/initdb), else a command
check() {
  if [[ "$1" == */* ]]; then compgen -G "$1" >/dev/null || need+=("$2")
  else command -v "$1" >/dev/null 2>&1 || need+=("$2"); fi
}
# (entries are added as the stages that need them land)
[ -f .ci/sysdeps.list ] && while read -r cmd pkg; do
  [ -n "${cmd:-}" ] && [ "${cmd:0:1}" != "#" ] && check "$cmd" "$pkg"
done < .ci/sysdeps.list
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
      || echo "warning: could not install ${need[*]}; tests that need them will skip with a reason"
  else
    echo "warning: missing ${need[*]} and not root; tests that need them will skip with a reason"
  fi
fi
exit 0
