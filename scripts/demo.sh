#!/usr/bin/env bash
# The main job on its embedded default: set up, prepare the offline corpus, and let the random-search agent run a
# short loop of experiments on the CPU through the locked tools, then write the report. Extra flags go to
# `autoresearch demo` (for example --max-experiments 10).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/autoresearch demo "$@"
