"""The files `autoresearch mcp-config --write` produces are accepted by the real agent CLIs, offline and logged out,
and a run configured for each agent runs experiments through the server those files start.

Install the CLIs with `scripts/install_agent_clis.sh`; each CLI test skips when its binary is absent. The experiment
tests need no agent binary: they read the written file back and start its command the way the agent does. HOME and
the XDG directories point into tmp_path, so nothing of the user's own configuration is read or changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import yaml
from helpers import git, make_workspace, set_constant
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from server.audit import AuditLog
from server.config import load_config
from server.runstate import init_run

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

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


# ---- a real experiment through the server each agent's written configuration starts ----


@dataclass(frozen=True)
class Written:
    """The stdio command an agent runs, as read back from the file `mcp-config --write` wrote for it."""

    path: Path
    command: str
    args: list[str]
    env: dict[str, str]
    cwd: str | None


def read_written(agent: str, workspace: Path, home: Path) -> Written:
    if agent == "codex":
        path = workspace / ".codex" / "config.toml"
        entry = tomllib.loads(path.read_text())["mcp_servers"]["autoresearch"]
        return Written(path, entry["command"], entry["args"], entry.get("env", {}), entry.get("cwd"))
    if agent == "opencode":
        path = workspace / "opencode.json"
        entry = json.loads(path.read_text())["mcp"]["autoresearch"]
        assert entry["type"] == "local" and entry["enabled"] is True
        return Written(path, entry["command"][0], entry["command"][1:], entry.get("environment", {}), entry.get("cwd"))
    if agent in ("gemini", "cursor"):
        path = workspace / (".gemini/settings.json" if agent == "gemini" else ".cursor/mcp.json")
        entry = json.loads(path.read_text())["mcpServers"]["autoresearch"]
        return Written(path, entry["command"], entry["args"], entry.get("env", {}), entry.get("cwd"))
    if agent == "goose":
        path = home / ".config" / "goose" / "config.yaml"
        entry = yaml.safe_load(path.read_text())["extensions"]["autoresearch"]
        assert entry["type"] == "stdio" and entry["enabled"] is True
        return Written(path, entry["cmd"], entry["args"], entry.get("envs", {}), None)
    raise AssertionError(agent)


def mcp_config_write(agent: str, workspace: Path, home: Path) -> Written:
    """`autoresearch mcp-config --agent AGENT --write`, run as a person runs it, then the file read back."""
    done = subprocess.run([sys.executable, "-m", "harness.cli", "mcp-config", "--agent", agent, "--write",
                           "--workspace", str(workspace), "--home", str(home)],
                          cwd=workspace, env={**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home)},
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert "wrote the autoresearch MCP server" in done.stdout
    return read_written(agent, workspace, home)


def launched_as_the_agent_would(written: Written, workspace: Path, home: Path) -> StdioServerParameters:
    """The written command, arguments, environment and folder; agents pass a small environment (PATH, HOME) plus the
    entry's own. PYTHONPATH only makes this checkout importable where the package is installed from another one."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "PYTHONPATH": str(REPO),
           **written.env}
    return StdioServerParameters(command=written.command, args=written.args, env=env,
                                 cwd=written.cwd or str(workspace))


async def one_experiment_decided(params: StdioServerParameters, workspace: Path) -> None:
    with anyio.fail_after(120):
        async with Client(params) as client:
            base = await client.call_tool("run_experiment", {"description": "baseline"})
            assert not base.is_error, base.content[0].text
            set_constant(workspace / "train.py", "LR", "0.3")
            tried = await client.call_tool("run_experiment", {"description": "LR 0.3"})
            assert not tried.is_error, tried.content[0].text
            decided = await client.call_tool("commit_or_revert", {})
            assert decided.structured_content["decision"] == "keep"


@pytest.mark.parametrize("agent", ["codex", "gemini", "opencode"])
def test_a_run_configured_for_the_agent_runs_an_experiment_through_the_written_command(
        agent: str, sandbox: tuple[Path, Path, dict[str, str]]) -> None:
    workspace, home, env = sandbox
    written = mcp_config_write(agent, workspace, home)
    assert written.path.relative_to(workspace).as_posix() in git(workspace, "status", "--porcelain",
                                                                 "--untracked-files=all")
    anyio.run(one_experiment_decided, launched_as_the_agent_would(written, workspace, home), workspace)
    run_dir = load_config(workspace).runs_dir / "t1"
    ledger = [json.loads(line) for line in (run_dir / "experiments.jsonl").read_text().splitlines()]
    assert [r["id"] for r in ledger if r["type"] == "experiment"] == [1, 2]
    assert [r["decision"] for r in ledger if r["type"] == "decision"] == ["keep"]
    tsv = (run_dir / "results.tsv").read_text().splitlines()
    assert len(tsv) == 3 and "keep" in tsv[2] and "LR 0.3" in tsv[2]
    assert "LR 0.3" in git(workspace, "log", "-1", "--format=%s", "autoresearch/t1")
    tools = [r.tool for r in AuditLog(run_dir / "audit.jsonl").records()]
    assert tools == ["run_experiment", "run_experiment", "commit_or_revert"]


@pytest.mark.parametrize("agent", ["cursor", "goose"])
def test_the_written_file_parses_and_its_command_starts_the_server_and_lists_the_tools(
        agent: str, sandbox: tuple[Path, Path, dict[str, str]]) -> None:
    workspace, home, _ = sandbox
    written = mcp_config_write(agent, workspace, home)
    params = launched_as_the_agent_would(written, workspace, home)

    async def listed() -> set[str]:
        with anyio.fail_after(60):
            async with Client(params) as client:
                return {tool.name for tool in (await client.list_tools()).tools}

    assert anyio.run(listed) == {"run_experiment", "read_results", "commit_or_revert"}
