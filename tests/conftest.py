"""Shared fixtures: a real git repository holding a tiny fake target, and an isolated HOME for git and agents."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE_TARGET = Path(__file__).resolve().parent / "fixtures" / "fake_target"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of its own, so tests never read or write the user's git or agent configuration."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.delenv("AUTORESEARCH_SESSION_ID", raising=False)
    monkeypatch.delenv("AUTORESEARCH_TAG", raising=False)
    return home


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


@pytest.fixture
def workspace(tmp_path: Path, isolated_home: Path) -> Path:
    return make_workspace(tmp_path / "ws")


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


@pytest.fixture(autouse=True)
def _no_stray_agent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variables the harness sets for its children must not leak in from the shell running the tests."""
    for key in ("AUTORESEARCH_SESSION_ID", "AUTORESEARCH_TAG", "AUTORESEARCH_WORKSPACE", "AUTORESEARCH_PROFILE",
                "AUTORESEARCH_CHECKPOINT", "AUTORESEARCH_TIME_BUDGET", "AUTORESEARCH_TOKEN"):
        monkeypatch.delenv(key, raising=False)
