#!/usr/bin/env bash
# Install pinned agent CLIs from the npm registry into <repo>/.tools/agents (git-ignored), for the e2e tests in
# tests/e2e/test_agent_configs.py and for running those agents against this repository.
#
#   scripts/install_agent_clis.sh          # install what is missing or at another version
#   scripts/install_agent_clis.sh --check  # exit 1 if anything is missing, install nothing
#
# Binaries end up in .tools/agents/node_modules/.bin/{codex,gemini,opencode}.
# Cursor's and Goose's CLIs are not published on npm or PyPI, so they are not installed here.
set -euo pipefail

CODEX_VERSION="0.169.0"      # @openai/codex
GEMINI_VERSION="0.61.0"      # @google/gemini-cli (needs Node >= 20)
OPENCODE_VERSION="1.18.33"   # opencode-ai (ships its binary in a per-platform npm package)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$repo/.tools/agents"
check_only=0
[[ "${1:-}" == "--check" ]] && check_only=1

if ! command -v npm >/dev/null 2>&1; then
  echo "npm not found: install Node.js >= 20 (with npm), then rerun $0" >&2
  exit 1
fi

installed_version() {  # prints the installed version of package $1, or nothing
  local manifest="$prefix/node_modules/$1/package.json"
  [[ -f "$manifest" ]] && node -e 'process.stdout.write(require(process.argv[1]).version)' "$manifest"
}

wanted=("@openai/codex@$CODEX_VERSION" "@google/gemini-cli@$GEMINI_VERSION" "opencode-ai@$OPENCODE_VERSION")
missing=()
for spec in "${wanted[@]}"; do
  name="${spec%@*}"; version="${spec##*@}"
  have="$(installed_version "$name" || true)"
  if [[ "$have" == "$version" ]]; then
    echo "ok       $name $version"
  else
    echo "missing  $name $version (found: ${have:-none})"
    missing+=("$spec")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
if [[ $check_only -eq 1 ]]; then
  exit 1
fi

mkdir -p "$prefix"
[[ -f "$prefix/package.json" ]] || echo '{"name": "autoresearch-agent-clis", "private": true}' > "$prefix/package.json"
npm install --prefix "$prefix" --save-exact --no-audit --no-fund --loglevel=error "${missing[@]}"
for bin in codex gemini opencode; do
  "$prefix/node_modules/.bin/$bin" --version >/dev/null 2>&1 || { echo "$bin installed but does not run" >&2; exit 1; }
done
echo "installed into $prefix/node_modules/.bin"
