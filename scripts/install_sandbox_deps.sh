#!/usr/bin/env bash
# Install what Claude Code's shell sandbox needs on Linux (bubblewrap and socat), when they are missing.
#
# Only `autoresearch run --agent claude --allow-bash` uses it. Debian and Ubuntu: through apt-get (as root, or with
# sudo when it is available). Elsewhere it prints what to install and exits 0, so the rest of the setup goes on;
# the harness then refuses --allow-bash with a message naming what is missing. Idempotent.
set -euo pipefail
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v socat >/dev/null 2>&1 || missing+=(socat)
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if [ "$(uname -s)" != "Linux" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_sandbox_deps: ${missing[*]} missing and no apt-get here; install them with your package manager" \
         "to use --allow-bash" >&2
    exit 0
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install_sandbox_deps: ${missing[*]} missing; run 'apt-get install ${missing[*]}' as root" >&2
        exit 0
    fi
    sudo=(sudo)
fi
echo "install_sandbox_deps: installing ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq >&2 || true
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >&2
