#!/usr/bin/env bash
# Create .venv and install the project into it, with the extras in $EXTRAS (default: test). Idempotent.
# On a machine without an NVIDIA GPU it asks PyTorch's CPU wheel index first (a few hundred MB instead of several GB)
# and falls back to the default index when that one cannot be reached.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "setup: $PYTHON is missing or older than Python 3.11 (the hooks and the server run with -P, new in 3.11); install Python 3.11+ or set PYTHON=/path/to/python3" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)

if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing the CUDA build of torch"
    "${PIP[@]}" "torch>=2.4"
  elif [ "$(uname -s)" = "Linux" ]; then
    echo "setup: no NVIDIA GPU: installing the CPU build of torch"
    "${PIP[@]}" --timeout 20 --retries 1 --index-url https://download.pytorch.org/whl/cpu "torch>=2.4" 2>/dev/null \
      || "${PIP[@]}" "torch>=2.4"
  else
    "${PIP[@]}" "torch>=2.4"
  fi
fi
"${PIP[@]}" -e ".[${EXTRAS:-test}]"  # EXTRAS=test,ray also installs Ray (scripts/test.sh does)
echo "setup: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
