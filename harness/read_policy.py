"""What the agent may not read: the folders that hold the person's secrets, whichever tool asks.

Two folders outside every workspace hold what the agent must never see: the run's private folder (holdout scores and
the evaluation's raw output, `server/private.py`) and the audit chain's keys (`server/audit.py`). Claude Code's read
tools (Read, Grep, Glob, LS, NotebookRead) may otherwise read any path the user can, so the pre-tool-use hook asks
`read_refusal` first; the shell sandbox denies the same folders to every command (`claude_sandbox`).

A path is resolved (`~`, `..` and symlinks) before it is compared. A search (Grep, Glob) is refused too when it
starts at a folder that contains a secret one, because it would descend into it; a Glob pattern's fixed leading
folders count as where it starts. The hook runs in a process of its own, but as the agent's user: this is a policy
the agent cannot edit (its settings and the hook's code are read-only to it), not a wall against code that already
runs as that user, which is what the shell sandbox is for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from server.audit import key_dir
from server.private import private_base

READ_TOOLS = {"Read": ("file_path",), "NotebookRead": ("notebook_path",), "LS": ("path",),
              "Grep": ("path",), "Glob": ("path", "pattern")}
SEARCH_TOOLS = frozenset({"Grep", "Glob"})  # they descend into folders below the path they are given
_GLOB_CHARS = frozenset("*?[{")


def secret_roots() -> list[Path]:
    """The folders no agent tool may read, resolved."""
    return sorted({Path(os.path.realpath(os.path.expanduser(str(p)))) for p in (private_base(), key_dir())})


def _fixed_prefix(pattern: str) -> str:
    """The leading folders of a glob pattern before its first component with a wildcard."""
    parts = pattern.split("/")
    kept = []
    for part in parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        kept.append(part)
    else:
        if not _GLOB_CHARS & set(parts[-1]):
            kept.append(parts[-1])
    return "/".join(kept) or ("/" if pattern.startswith("/") else ".")


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def read_refusal(tool: str, tool_input: Any, cwd: str) -> str | None:
    """Why this read must not happen, or None. `cwd` is the folder relative paths start from."""
    keys = READ_TOOLS.get(tool)
    if keys is None or not isinstance(tool_input, dict):
        return None
    roots = secret_roots()
    given = tool_input.get("path")
    has_path = isinstance(given, str) and bool(given.strip())
    search_base = os.path.join(cwd, os.path.expanduser(given.strip())) if has_path else cwd
    starts: list[tuple[str, str]] = []  # (as the agent wrote it, the folder or file it reaches)
    for key in keys:
        raw = tool_input.get(key)
        if not isinstance(raw, str) or not raw.strip():
            continue
        if key == "pattern":  # relative to the search's path
            starts.append((raw, os.path.join(search_base, os.path.expanduser(_fixed_prefix(raw.strip())))))
        else:
            starts.append((raw, os.path.join(cwd, os.path.expanduser(raw.strip()))))
    if tool in SEARCH_TOOLS and not has_path:
        starts.append(("(the working folder)", cwd))
    for raw, target in starts:
        real = Path(os.path.realpath(target))
        for root in roots:
            if _within(real, root) or (tool in SEARCH_TOOLS and _within(root, real)):
                return (f"{tool} of {raw} was refused: it reaches {root}, which holds what only the person may read "
                        "(holdout scores, raw evaluation output, audit keys). Read the workspace's files and use "
                        "read_results for the results.")
    return None
