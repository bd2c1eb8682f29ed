#!/usr/bin/env bash
# Install the pinned Claude Code CLI into <repo>/.tools/claude-code/ (git-ignored) and print the binary's path.
#
# Pinned so the stream-json format and retry behaviour the harness parses are the ones its tests were written
# against. Idempotent. Without npm, set AUTORESEARCH_CLAUDE_BIN to an existing claude binary instead.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${REPO_ROOT}/scripts/npm_pinned.sh"
install_pinned "@anthropic-ai/claude-code" "2.1.330" "${REPO_ROOT}/.tools/claude-code" claude
