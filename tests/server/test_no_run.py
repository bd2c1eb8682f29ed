"""An agent opened in the repository before `autoresearch init` finds a server that connects, lists its tools and
answers each call with how to create the run; the first call after `init` opens the run, with no restart."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from helpers import REPO_ROOT
from server.app import build_server
from server.config import load_config
from server.runstate import init_run
from server.serve import open_slot

pytestmark = pytest.mark.anyio

TOOLS = {"run_experiment", "read_results", "commit_or_revert"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_without_a_run_the_tools_are_listed_and_each_call_says_how_to_start_one(workspace: Path) -> None:
    slot = open_slot(workspace, None, None, None)
    assert slot.engine is None
    async with Client(build_server(slot)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        assert "5 seconds" in tools["run_experiment"].description, "the configuration still describes the tools"
        for name, args in (("run_experiment", {"description": "baseline"}), ("read_results", {}),
                           ("commit_or_revert", {"prefer": "revert"})):
            result = await client.call_tool(name, args)
            assert result.is_error
            text = result.content[0].text
            assert "no experiment run is open, so nothing was done" in text
            assert "autoresearch init --tag TAG" in text and f"call {name} again" in text
        bad = await client.call_tool("read_results", {"last_n": "5"})
        assert bad.is_error and "last_n must be an integer" in bad.content[0].text, "arguments are still checked"
        assert not (workspace / "runs" / "t1").exists()
        init_run(load_config(workspace), "t1")
        base = await client.call_tool("run_experiment", {"description": "baseline"})
        assert not base.is_error and base.structured_content["status"] == "ok"
    assert slot.engine is not None and [r.tool for r in slot.engine.audit.records() if r.event == "tool_call"] == ["run_experiment"]


async def test_a_named_tag_that_does_not_exist_is_named_in_the_answer(workspace: Path) -> None:
    slot = open_slot(workspace, "nov23", None, None)
    async with Client(build_server(slot)) as client:
        result = await client.call_tool("read_results", {})
    assert result.is_error and "no run with tag 'nov23'" in result.content[0].text
    assert "autoresearch init --tag nov23" in result.content[0].text


async def test_a_workspace_without_a_configuration_still_serves_and_says_what_is_wrong(tmp_path: Path) -> None:
    slot = open_slot(tmp_path, None, None, None)
    async with Client(build_server(slot)) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        result = await client.call_tool("read_results", {})
    assert tools == TOOLS
    assert result.is_error and "no experiment run is open" in result.content[0].text


@pytest.mark.slow
async def test_the_stdio_server_starts_before_init_and_answers_with_how_to_start_a_run(workspace: Path) -> None:
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "server", "serve", "--workspace", str(workspace)],
                                   env={"PYTHONPATH": str(REPO_ROOT), "HOME": os.environ["HOME"]}, cwd=str(workspace))
    async with Client(params) as client:
        assert {t.name for t in (await client.list_tools()).tools} == TOOLS
        result = await client.call_tool("run_experiment", {"description": "baseline"})
        assert result.is_error and "autoresearch init" in result.content[0].text
        init_run(load_config(workspace), "t1")
        view = await client.call_tool("read_results", {})
        assert not view.is_error and view.structured_content["tag"] == "t1"
    assert (workspace / "runs" / "t1" / "server.log").exists(), "the run's log starts once the run is opened"


async def test_over_http_without_a_run_the_tools_are_listed_and_each_call_says_how_to_start_one(
        workspace: Path) -> None:
    from test_http import mcp_client, serving

    slot = open_slot(workspace, None, None, None)
    with serving(slot, None) as running:  # type: ignore[arg-type]
        async with mcp_client(running.url, None) as client:
            assert {t.name for t in (await client.list_tools()).tools} == TOOLS
            result = await client.call_tool("commit_or_revert", {})
    assert result.is_error and "autoresearch init --tag TAG" in result.content[0].text
