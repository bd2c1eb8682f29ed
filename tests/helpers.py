"""Helpers shared by the tests: a real git repository holding a tiny fake target, and edits as an agent makes them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.engine import Engine

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE_TARGET = Path(__file__).resolve().parent / "fixtures" / "fake_target"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_workspace(root: Path, source: Path = FAKE_TARGET) -> Path:
    """Copy a target into `root`, make it a git repository with one commit on main."""
    root.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name == "__pycache__":
            continue
        dest = root / item.name
        if item.is_dir():
            shutil.copytree(item, dest)
        else:
            shutil.copy2(item, dest)
    (root / ".gitignore").write_text("__pycache__/\nruns/\n", encoding="utf-8")
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "test@example.com")
    git(root, "config", "user.name", "test")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial target")
    return root


def set_constant(path: Path, name: str, value: str) -> None:
    """Rewrite `NAME = ...` at the top of a script, keeping the trailing comment, as an agent's edit would."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(f"{name} ="):
            comment = line[line.index("#"):] if "#" in line else "\n"
            lines[i] = f"{name} = {value}  {comment}" if "#" in line else f"{name} = {value}\n"
            break
    else:
        raise KeyError(name)
    path.write_text("".join(lines), encoding="utf-8")


def make_engine(workspace: Path, tag: str = "t1") -> "Engine":
    """Initialise run `tag` on a workspace and open the engine for it, as `autoresearch init` + the server do."""
    from server.config import load_config
    from server.engine import Engine
    from server.runstate import init_run, load_run

    config = load_config(workspace)
    init_run(config, tag)
    return Engine(config, load_run(config, tag))
