#!/usr/bin/env bash
# Install the pinned Claude Code CLI into <repo>/.tools/claude-code/ (git-ignored) and print the binary's path.
#
# Pinned so the stream-json format and retry behaviour the harness parses are the ones its tests were written
# against. Idempotent: does nothing when that version is already installed and runs.
set -euo pipefail

VERSION="2.1.330"
PACKAGE="@anthropic-ai/claude-code"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${REPO_ROOT}/.tools/claude-code"
BIN="${PREFIX}/node_modules/.bin/claude"
PKG_DIR="${PREFIX}/node_modules/${PACKAGE}"

installed_version() {
    # Prints the version the installed binary reports, or nothing when it is absent or does not run.
    [ -x "${BIN}" ] || return 0
    "${BIN}" --version 2>/dev/null | awk 'NR==1 {print $1}' || true
}

if [ "$(installed_version)" = "${VERSION}" ]; then
    echo "${BIN}"
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "error: npm not found on PATH; it is needed to install ${PACKAGE}@${VERSION}." >&2
    echo "Install Node.js (which ships npm), or set AUTORESEARCH_CLAUDE_BIN to an existing claude binary." >&2
    exit 1
fi

mkdir -p "${PREFIX}"
[ -f "${PREFIX}/package.json" ] || echo '{"private": true}' > "${PREFIX}/package.json"
echo "installing ${PACKAGE}@${VERSION} into ${PREFIX}" >&2
npm install --prefix "${PREFIX}" --no-audit --no-fund --loglevel=error "${PACKAGE}@${VERSION}" >&2

# Some npm configurations skip install scripts; the postinstall is what puts the native binary in place.
if [ "$(installed_version)" != "${VERSION}" ] && [ -f "${PKG_DIR}/install.cjs" ]; then
    (cd "${PKG_DIR}" && node install.cjs) >&2
fi

got="$(installed_version)"
if [ "${got}" != "${VERSION}" ]; then
    echo "error: ${BIN} reports version '${got:-<does not run>}', expected ${VERSION}." >&2
    echo "Remove ${PREFIX} and run this script again; check the npm output above for a failed postinstall." >&2
    exit 1
fi
echo "${BIN}"
