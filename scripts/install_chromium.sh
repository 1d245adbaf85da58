#!/usr/bin/env bash
# Debian's Chromium for the dashboard tests (playwright launches /usr/bin/chromium; it fetches no browser).
# apt needs root: as root it runs directly, otherwise through sudo. A machine whose package lists are
# empty gets them first.
set -euo pipefail
as_root=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install Debian's chromium (apt-get install chromium) as root: the dashboard tests need /usr/bin/chromium" >&2; exit 2; }
  as_root=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get install -y -q chromium >/dev/null || { "${as_root[@]}" apt-get update -q >/dev/null && "${as_root[@]}" apt-get install -y -q chromium >/dev/null; }
test -x /usr/bin/chromium
