"""The tools through a real MCP client: in-process, and over stdio against `python -m server serve`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from helpers import REPO_ROOT, make_engine, set_constant
from server.app import build_server
from server.audit import AuditLog

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"



async def test_the_server_lists_exactly_the_three_tools_with_their_schemas(workspace: Path) -> None:
    engine = make_engine(workspace)
    async with Client(build_server(engine)) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {"run_experiment", "read_results", "commit_or_revert"}
    run_schema = tools["run_experiment"].input_schema
    assert run_schema["required"] == ["description"]
    assert run_schema["properties"]["description"]["maxLength"] == 300
    assert "ctx" not in run_schema["properties"]
    assert tools["read_results"].annotations.read_only_hint is True
    assert "5 seconds" in tools["run_experiment"].description
    assert tools["commit_or_revert"].output_schema is not None


async def test_the_loop_runs_through_the_tools_and_every_call_is_audited(workspace: Path) -> None:
    engine = make_engine(workspace)
    async with Client(build_server(engine)) as client:
        base = await client.call_tool("run_experiment", {"description": "baseline"})
        assert not base.is_error and base.structured_content["decision"] == "keep"
        set_constant(workspace / "train.py", "LR", "0.3")
        better = await client.call_tool("run_experiment", {"description": "LR 0.3", "hypothesis": "closer to 0.3"})
        assert better.structured_content["would_keep"] is True
        assert len(better.content[0].text) < 1024, "a normal result must stay compact"
        kept = await client.call_tool("commit_or_revert", {})
        assert kept.structured_content["decision"] == "keep"
        view = await client.call_tool("read_results", {"last_n": 5})
        assert view.structured_content["best"]["id"] == 2
    records = [r for r in AuditLog(engine.run_dir / "audit.jsonl").records() if r.event == "tool_call"]
    assert [r.tool for r in records] == ["run_experiment", "run_experiment", "commit_or_revert", "read_results"]
    assert all(r.actor == "server" and r.status == "ok" for r in records)
    assert records[1].args == {"description": "LR 0.3", "hypothesis": "closer to 0.3"}
    assert AuditLog(engine.run_dir / "audit.jsonl").verify().ok


async def test_a_worse_result_is_reverted_through_the_tools_and_keeping_it_is_impossible(workspace: Path) -> None:
    engine = make_engine(workspace)
    original = (workspace / "train.py").read_text()
    async with Client(build_server(engine)) as client:
        await client.call_tool("run_experiment", {"description": "baseline"})
        set_constant(workspace / "train.py", "LR", "0.9")
        worse = await client.call_tool("run_experiment", {"description": "LR 0.9"})
        assert worse.structured_content["would_keep"] is False and worse.structured_content["delta"] > 0
        verdict = await client.call_tool("commit_or_revert", {"experiment_id": 2, "prefer": "keep_if_better"})
        assert verdict.structured_content["decision"] == "discard"
        again = await client.call_tool("commit_or_revert", {"experiment_id": 2})
        assert again.is_error and "already decided" in again.content[0].text
    assert (workspace / "train.py").read_text() == original
    assert [e.decision for e in engine.ledger.experiments()] == ["keep", "discard"]


async def test_invalid_arguments_are_errors_the_agent_can_act_on(workspace: Path) -> None:
    engine = make_engine(workspace)
    async with Client(build_server(engine)) as client:
        short = await client.call_tool("run_experiment", {"description": "x"})
        assert short.is_error and "description" in short.content[0].text
        wrong_type = await client.call_tool("read_results", {"last_n": "many"})
        assert wrong_type.is_error
        bad_status = await client.call_tool("read_results", {"status": "great"})
        assert bad_status.is_error
        unknown = await client.call_tool("read_results", {"experiment_id": 42})
        assert unknown.is_error and "no experiment 42" in unknown.content[0].text
        bad_prefer = await client.call_tool("commit_or_revert", {"prefer": "keep_anyway"})
        assert bad_prefer.is_error
        nothing = await client.call_tool("commit_or_revert", {})
        assert nothing.is_error and "prefer='revert'" in nothing.content[0].text
    refused = [r for r in AuditLog(engine.run_dir / "audit.jsonl").records() if r.status == "refused"]
    assert refused, "refusals must be visible in the audit log"


async def test_a_refusal_says_what_to_do_next(workspace: Path) -> None:
    engine = make_engine(workspace)
    set_constant(workspace / "train.py", "LR", "0.3")
    async with Client(build_server(engine)) as client:
        result = await client.call_tool("run_experiment", {"description": "skip the baseline"})
    assert result.is_error
    assert "unmodified baseline" in result.content[0].text and "prefer='revert'" in result.content[0].text


def _stdio_params(workspace: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "server", "serve", "--workspace", str(workspace), "--tag", "t1"],
        env={"PYTHONPATH": str(REPO_ROOT), "HOME": os.environ["HOME"], "AUTORESEARCH_SESSION_ID": "stdio-test"},
        cwd=str(REPO_ROOT),
    )


@pytest.mark.slow
async def test_the_tools_work_over_stdio_and_the_session_id_reaches_the_audit_log(workspace: Path) -> None:
    engine = make_engine(workspace)
    async with Client(_stdio_params(workspace)) as client:
        base = await client.call_tool("run_experiment", {"description": "baseline"})
        assert base.structured_content["status"] == "ok"
        view = await client.call_tool("read_results", {})
        assert view.structured_content["baseline"]["id"] == 1
    records = [r for r in engine.audit.records() if r.event == "tool_call"]
    assert {r.session for r in records} == {"stdio-test"}
    assert "stdio-test" in records[0].summary["caller"]


@pytest.mark.slow
async def test_a_call_cancelled_by_the_client_kills_the_run_and_records_it(workspace: Path) -> None:
    engine = make_engine(workspace)
    async with Client(_stdio_params(workspace)) as client:
        await client.call_tool("run_experiment", {"description": "baseline"})
        set_constant(workspace / "train.py", "BEHAVIOUR", '"hang"')
        with pytest.raises(Exception):
            await client.call_tool("run_experiment", {"description": "hangs"}, read_timeout_seconds=3)
        with anyio.fail_after(30):
            while engine.ledger.get(2) is None:
                await anyio.sleep(0.05)
    exp = engine.ledger.get(2)
    assert exp is not None and exp.status == "crash" and "cancelled" in (exp.failure or "")
    assert not (engine.run_dir / "inflight.json").exists()
