#!/usr/bin/env bash
# Set up everything the tests need (the venv, the pinned Claude Code CLI and the other agents' CLIs from npm, the
# MCP Inspector) and run the whole suite. Extra arguments go to pytest (for example -m "not slow" while iterating).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test,ray bash scripts/setup.sh  # Ray: the tests of the Ray executor start a small local cluster
bash scripts/install_claude_code.sh
bash scripts/install_sandbox_deps.sh
bash scripts/install_agent_clis.sh
[ -f scripts/install_inspector.sh ] && bash scripts/install_inspector.sh
bash scripts/install_browser.sh
exec .venv/bin/python -m pytest "$@"
