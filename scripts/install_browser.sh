#!/usr/bin/env bash
# Make sure a Chromium the dashboard tests can drive is installed, and print its path.
#
# The tests open the dashboard in a real headless browser through Playwright (the Python package, installed with the
# [test] extra). Playwright's own browser download is not used: it needs a CDN this project does not rely on. The tests
# launch the system's Chromium instead (Debian's `chromium` package, /usr/bin/chromium), or the one named by
# AUTORESEARCH_CHROMIUM. Without one, the browser tests skip and say how to get it.
set -euo pipefail

if [ -n "${AUTORESEARCH_CHROMIUM:-}" ]; then
  [ -x "$AUTORESEARCH_CHROMIUM" ] || { echo "install_browser: AUTORESEARCH_CHROMIUM=$AUTORESEARCH_CHROMIUM is not an executable" >&2; exit 1; }
  echo "$AUTORESEARCH_CHROMIUM"; exit 0
fi
if command -v chromium >/dev/null 2>&1; then
  command -v chromium; exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: no chromium and no apt-get here; install Chromium yourself and set AUTORESEARCH_CHROMIUM to" \
       "its executable (the dashboard's browser tests skip until then)" >&2
  exit 0
fi
SUDO=()
if [ "$(id -u)" != "0" ]; then
  if sudo -n true 2>/dev/null; then SUDO=(sudo -n); else
    echo "install_browser: chromium is missing and installing it needs root: run" \
         "'sudo apt-get install -y --no-install-recommends chromium' (the dashboard's browser tests skip until then)" >&2
    exit 0
  fi
fi
echo "install_browser: installing Debian's chromium with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get install -y --no-install-recommends chromium >/dev/null \
  || { "${SUDO[@]}" apt-get update -q >/dev/null && "${SUDO[@]}" apt-get install -y --no-install-recommends chromium >/dev/null; }
command -v chromium
