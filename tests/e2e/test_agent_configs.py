"""The files `autoresearch mcp-config --write` produces are accepted by the real agent CLIs, offline and logged out.

Install the CLIs with `scripts/install_agent_clis.sh`; each test skips when its binary is absent. HOME and the XDG
directories point into tmp_path, so nothing of the user's own configuration is read or changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_workspace

from server.config import load_config
from server.runstate import init_run

from harness.mcp_config import ServerLaunch, server_launch, tool_timeout_for, toml_string, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
AGENT_BIN = REPO / ".tools" / "agents" / "node_modules" / ".bin"
TOOL_TIMEOUT_S = tool_timeout_for(600, 600)
CLI_TIMEOUT_S = 120


def launch_under_test(workspace: Path) -> ServerLaunch:
    """The real server launch that `autoresearch mcp-config` writes for this workspace."""
    return server_launch(workspace, TOOL_TIMEOUT_S, python=sys.executable)


def agent_binary(name: str) -> str:
    found = AGENT_BIN / name
    if found.exists():
        return str(found)
    on_path = shutil.which(name)
    if on_path is None:
        pytest.skip(f"{name} CLI not installed: run scripts/install_agent_clis.sh")
    return on_path


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """(workspace, home, env) with the agent's whole world under tmp_path."""
    home = tmp_path / "home"
    workspace = tmp_path / "project"
    home.mkdir()
    make_workspace(workspace)  # a real target with a run, so the agents start the real server
    init_run(load_config(workspace), "t1")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "NO_COLOR": "1",
        "CI": "1",
    }
    return workspace, home, env


def run_cli(argv: list[str], workspace: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=workspace, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, stdin=subprocess.DEVNULL
    )


def test_codex_lists_the_written_server_with_its_timeouts(sandbox: tuple[Path, Path, dict[str, str]]) -> None:
    codex = agent_binary("codex")
    workspace, home, env = sandbox
    launch = launch_under_test(workspace)
    write_config("codex", launch, home)
    # What accepting Codex's trust prompt records; without it the project file is ignored.
    (home / ".codex").mkdir(exist_ok=True)
    (home / ".codex" / "config.toml").write_text(
        f'[projects.{toml_string(str(workspace))}]\ntrust_level = "trusted"\n'
    )
    done = run_cli([codex, "mcp", "list", "--json"], workspace, env)
    assert done.returncode == 0, done.stderr
    servers = {s["name"]: s for s in json.loads(done.stdout)}
    entry = servers["autoresearch"]
    assert entry["enabled"] is True
    assert entry["transport"]["command"] == launch.command
    assert entry["transport"]["args"] == launch.args
    assert entry["transport"]["env"] == {"AUTORESEARCH_WORKSPACE": str(workspace)}
    assert entry["tool_timeout_sec"] > 1200


def test_codex_ignores_the_project_file_until_the_project_is_trusted(
    sandbox: tuple[Path, Path, dict[str, str]],
) -> None:
    codex = agent_binary("codex")
    workspace, home, env = sandbox
    write_config("codex", launch_under_test(workspace), home)
    done = run_cli([codex, "mcp", "list", "--json"], workspace, env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_gemini_connects_to_the_written_server(sandbox: tuple[Path, Path, dict[str, str]]) -> None:
    gemini = agent_binary("gemini")
    workspace, home, env = sandbox
    write_config("gemini", launch_under_test(workspace), home)
    (home / ".gemini").mkdir(exist_ok=True)
    (home / ".gemini" / "trustedFolders.json").write_text(json.dumps({str(workspace): "TRUST_FOLDER"}))
    done = run_cli([gemini, "mcp", "list"], workspace, env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    line = next(ln for ln in out.splitlines() if "autoresearch" in ln)
    assert "Connected" in line, out


def test_opencode_connects_to_the_written_server(sandbox: tuple[Path, Path, dict[str, str]]) -> None:
    opencode = agent_binary("opencode")
    workspace, home, env = sandbox
    write_config("opencode", launch_under_test(workspace), home)
    done = run_cli([opencode, "mcp", "list"], workspace, env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    line = next(ln for ln in out.splitlines() if "autoresearch" in ln)
    assert "connected" in line and "✓" in line, out
