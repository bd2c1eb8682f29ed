"""Shared fixtures: an isolated HOME, and a real git repository holding a tiny fake target."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import FAKE_TARGET, REPO_ROOT, git, make_workspace, set_constant  # noqa: F401 - re-exported for tests


@pytest.fixture
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of its own, so tests never read or write the user's git or agent configuration."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.delenv("AUTORESEARCH_SESSION_ID", raising=False)
    monkeypatch.delenv("AUTORESEARCH_TAG", raising=False)
    return home


@pytest.fixture
def workspace(tmp_path: Path, isolated_home: Path) -> Path:
    return make_workspace(tmp_path / "ws")


@pytest.fixture(autouse=True)
def _no_stray_agent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variables the harness sets for its children must not leak in from the shell running the tests."""
    for key in ("AUTORESEARCH_SESSION_ID", "AUTORESEARCH_TAG", "AUTORESEARCH_WORKSPACE", "AUTORESEARCH_PROFILE",
                "AUTORESEARCH_CHECKPOINT", "AUTORESEARCH_TIME_BUDGET", "AUTORESEARCH_TOKEN"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(autouse=True)
def _private_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Person-only files (holdout scores, raw evaluation logs) go to a temporary folder, never the user's."""
    if "AUTORESEARCH_PRIVATE_DIR" not in os.environ:
        monkeypatch.setenv("AUTORESEARCH_PRIVATE_DIR", str(tmp_path_factory.mktemp("private")))


@pytest.fixture(autouse=True)
def _audit_keys_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run keys of the audit chain go to a folder of the test's own, never the user's ~/.config."""
    keys = tmp_path_factory.mktemp("keys")
    monkeypatch.setenv("AUTORESEARCH_KEY_DIR", str(keys))
    return keys
