#!/usr/bin/env bash
# Install the pinned MCP Inspector into <repo>/.tools/inspector/ (git-ignored) and print the binary's path.
#
# The Inspector is an MCP client written independently of the Python SDK; its command-line mode
# (`mcp-inspector --cli ...`) is what tests/e2e/test_inspector.py uses to check the server with a third-party client
# over stdio and streamable HTTP. Pinned so its flags and output are the ones the test was written against.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${REPO_ROOT}/scripts/npm_pinned.sh"
# --engine-strict=false: the package declares node >= 22.19 for its web UI; the CLI mode used here runs on node 20.
install_pinned "@modelcontextprotocol/inspector" "2.12.0" "${REPO_ROOT}/.tools/inspector" mcp-inspector \
    --engine-strict=false
