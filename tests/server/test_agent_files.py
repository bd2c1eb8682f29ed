"""Agent configuration files written by `mcp-config --write` are not changes to the repository under test, before or
after `init`; the same files edited afterwards (by the agent, by train.py, by hand) are changes again."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from helpers import git, make_engine, set_constant
from harness.mcp_config import server_launch, write_config
from server.agent_files import AGENT_CONFIG_PATHS, is_agent_config
from server.config import load_config
from server.engine import Refusal
from server.runstate import RunError, init_run

IN_REPO_AGENTS = ("claude", "codex", "gemini", "cursor", "opencode")


def write(agent: str, workspace: Path, home: Path) -> Path:
    return write_config(agent, server_launch(workspace, 1320.0, python=sys.executable), home)


@pytest.mark.parametrize("agent", IN_REPO_AGENTS)
def test_a_run_configured_for_each_agent_runs_and_keeps_experiments(agent: str, workspace: Path,
                                                                    isolated_home: Path) -> None:
    engine = make_engine(workspace)
    path = write(agent, workspace, isolated_home)
    assert path.relative_to(workspace).as_posix() in AGENT_CONFIG_PATHS
    assert path.relative_to(workspace).as_posix() in git(workspace, "status", "--porcelain", "--untracked-files=all")
    base = anyio.run(engine.run_experiment, "baseline")
    assert base.status == "ok"
    set_constant(workspace / "train.py", "LR", "0.3")
    better = anyio.run(engine.run_experiment, "LR 0.3")
    assert better.would_keep
    assert engine.commit_or_revert().decision == "keep"
    assert "train.py" in git(workspace, "show", "--stat", "--format=", "HEAD")
    assert path.name not in git(workspace, "show", "--stat", "--format=", "HEAD"), "the config is never committed"


@pytest.mark.parametrize("agent", IN_REPO_AGENTS)
def test_init_accepts_an_agent_config_written_before_it(agent: str, workspace: Path, isolated_home: Path) -> None:
    write(agent, workspace, isolated_home)
    info = init_run(load_config(workspace), "t1")
    assert info.branch == "autoresearch/t1"


def test_an_agent_config_edited_after_it_was_written_is_a_change_again(workspace: Path, isolated_home: Path) -> None:
    engine = make_engine(workspace)
    path = write("codex", workspace, isolated_home)
    anyio.run(engine.run_experiment, "baseline")
    # the agent points the server entry at a program of its own
    path.write_text(path.read_text().replace("-m", "/tmp/fake_server.py", 1))
    assert not is_agent_config(workspace, ".codex/config.toml")
    with pytest.raises(Refusal, match=r"\.codex/config\.toml"):
        anyio.run(engine.run_experiment, "after the edit")
    write("codex", workspace, isolated_home)  # writing it again records the new content
    assert is_agent_config(workspace, ".codex/config.toml")


def test_a_file_at_an_agent_config_path_not_written_by_mcp_config_is_a_change(workspace: Path) -> None:
    engine = make_engine(workspace)
    (workspace / "opencode.json").write_text('{"mcp": {}}\n')
    with pytest.raises(Refusal, match=r"opencode\.json"):
        anyio.run(engine.run_experiment, "baseline")


def test_only_the_listed_paths_can_ever_be_exempt(workspace: Path, isolated_home: Path) -> None:
    from server.agent_files import record_written

    (workspace / "notes.txt").write_text("x")
    assert record_written(workspace, "notes.txt", b"x", "codex") is False
    assert not is_agent_config(workspace, "notes.txt")
    with pytest.raises(RunError, match="notes.txt"):
        init_run(load_config(workspace), "t1")


def test_a_tracked_mcp_json_rewritten_for_claude_does_not_stop_the_run(workspace: Path, isolated_home: Path) -> None:
    (workspace / ".mcp.json").write_text('{"mcpServers": {"other": {"command": "true"}}}\n')
    git(workspace, "add", ".mcp.json")
    git(workspace, "commit", "-q", "-m", "project MCP servers")
    engine = make_engine(workspace)
    write("claude", workspace, isolated_home)
    assert "M .mcp.json" in git(workspace, "status", "--porcelain")
    assert anyio.run(engine.run_experiment, "baseline").status == "ok"
