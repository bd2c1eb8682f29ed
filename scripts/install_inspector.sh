#!/usr/bin/env bash
# Install the pinned MCP Inspector into <repo>/.tools/inspector/ (git-ignored) and print the binary's path.
#
# The Inspector is an MCP client written independently of the Python SDK; its command-line mode
# (`mcp-inspector --cli ...`) is what tests/e2e/test_inspector.py uses to check the server works with a third-party
# client over stdio and streamable HTTP. Pinned so its flags and output format are the ones the test was written
# against. Idempotent: does nothing when that version is already installed and runs.
set -euo pipefail

VERSION="2.12.0"
PACKAGE="@modelcontextprotocol/inspector"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${REPO_ROOT}/.tools/inspector"
BIN="${PREFIX}/node_modules/.bin/mcp-inspector"

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
    echo "Install Node.js 20 or newer (the package asks for 22; its --cli mode runs on 20), then run this again." >&2
    exit 1
fi

mkdir -p "${PREFIX}"
[ -f "${PREFIX}/package.json" ] || echo '{"private": true}' > "${PREFIX}/package.json"
echo "installing ${PACKAGE}@${VERSION} into ${PREFIX}" >&2
# --engine-strict=false: the package declares node >= 22.19 for its web UI; the CLI mode used here runs on node 20.
npm install --prefix "${PREFIX}" --no-audit --no-fund --loglevel=error --engine-strict=false \
    "${PACKAGE}@${VERSION}" >&2

got="$(installed_version)"
if [ "${got}" != "${VERSION}" ]; then
    echo "error: ${BIN} reports version '${got:-<does not run>}', expected ${VERSION}." >&2
    echo "Remove ${PREFIX} and run this script again; check the npm output above for errors." >&2
    exit 1
fi
echo "${BIN}"
