"""Agent configuration files the project writes into the repository, and when they do not count as changes.

`autoresearch mcp-config --agent X --write` puts the file agent X reads into the repository under test
(`.mcp.json`, `.codex/config.toml`, `.gemini/settings.json`, `.cursor/mcp.json`, `opencode.json`). The engine refuses
to run while any file other than the mutable ones differs from the last commit, so without an exception the command
that configures an agent would stop that agent from running a single experiment.

The exception is narrow on purpose. A file is exempt only when both hold:
- its path is one of `AGENT_CONFIG_PATHS`, and
- its bytes are exactly the bytes `mcp-config --write` last wrote there, as recorded (sha256) in
  `<git dir>/autoresearch/agent-configs.json`, outside the working tree.
Anything else, an edit by the agent or by train.py included (say, pointing the server entry at another program), makes
the file an ordinary change again, and the repository check refuses as before. Running `mcp-config --write` again
records the new content.

Why not ignore the files with a rule, or commit them at `init`? An ignore rule cannot cover `.mcp.json`, which the
project tracks, and would hide every later edit to the files; committing at `init` would put machine-specific paths
into the run branch and still leave a file written after `init` counted as a change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from server.jsonl import atomic_write_text

log = logging.getLogger(__name__)

AGENT_CONFIG_PATHS = (".mcp.json", ".codex/config.toml", ".gemini/settings.json", ".cursor/mcp.json", "opencode.json")
RECORD_NAME = "autoresearch/agent-configs.json"


def _record_path(workspace: Path) -> Path | None:
    done = subprocess.run(["git", "rev-parse", "--git-dir"], cwd=workspace, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        return None
    return (workspace / done.stdout.strip()).resolve() / RECORD_NAME


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(record: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    paths = data.get("paths") if isinstance(data, dict) else None
    return paths if isinstance(paths, dict) else {}


def record_written(workspace: Path, rel_path: str, data: bytes, agent: str) -> bool:
    """Remember that `mcp-config` wrote `data` to `rel_path`; False when the path is not exempt or there is no git."""
    if rel_path not in AGENT_CONFIG_PATHS:
        return False
    record = _record_path(workspace)
    if record is None:
        log.warning("%s is not a git repository: %s is not recorded as an agent configuration", workspace, rel_path)
        return False
    paths = _read(record)
    paths[rel_path] = {"sha256": _digest(data), "agent": agent,
                       "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps({"paths": paths}, indent=2, sort_keys=True) + "\n")
    return True


def is_agent_config(workspace: Path, rel_path: str) -> bool:
    """True when `rel_path` holds exactly what `mcp-config --write` last wrote there (so it is not a change)."""
    if rel_path not in AGENT_CONFIG_PATHS:
        return False
    record = _record_path(workspace)
    if record is None:
        return False
    expected = _read(record).get(rel_path, {}).get("sha256")
    try:
        actual = _digest((workspace / rel_path).read_bytes())
    except OSError:
        return False
    return expected is not None and actual == expected
