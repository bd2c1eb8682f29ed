"""Every argument a client can send is checked against an exact schema; every refusal says what, the value and what to
do, is audited with exactly what was sent, and leaves the ledger and results.tsv as they were. In-process, over stdio
and over HTTP."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from helpers import REPO_ROOT, make_engine, set_constant
from server.app import build_server
from server.engine import Engine

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# (tool, arguments as sent, words the refusal must contain)
REFUSED: list[tuple[str, dict[str, Any], list[str]]] = [
    ("run_experiment", {"description": "more steps", "time_budget_s": 99999},
     ["does not take 'time_budget_s'", "99999", "fixed by the server", "its arguments are description, hypothesis"]),
    ("commit_or_revert", {"force_keep": True}, ["does not take 'force_keep'", "true", "only the rule decides"]),
    ("read_results", {"last_n": 5, "include_diffs": True}, ["does not take 'include_diffs'",
                                                             "its arguments are last_n, status, experiment_id"]),
    ("read_results", {"last_n": "5"}, ["last_n must be an integer from 1 to 200", '"5"', "a string"]),
    ("read_results", {"last_n": 5.0}, ["last_n must be an integer", "5.0", "floating-point"]),
    ("read_results", {"last_n": True}, ["last_n must be an integer", "true", "a boolean"]),
    ("read_results", {"last_n": 500}, ["last_n must be an integer from 1 to 200", "500"]),
    ("read_results", {"status": "failed"}, ['status must be one of "ok", "crash"', '"failed"']),
    ("read_results", {"experiment_id": "1"}, ["experiment_id must be an integer", '"1"']),
    ("commit_or_revert", {"experiment_id": 1.5}, ["experiment_id must be", "1.5", "with a fraction"]),
    ("commit_or_revert", {"prefer": "keep"}, ['prefer must be "keep_if_better" or "revert"', '"keep"']),
    ("run_experiment", {"description": "x" * 301}, ["description must be a string of 3 to 300", "301 characters"]),
    ("run_experiment", {"description": 42}, ["description must be a string", "42", "an integer"]),
    ("run_experiment", {}, ["description is missing"]),
    ("run_experiment", {"description": "ok", "hypothesis": "h" * 1001}, ["hypothesis must be", "1001 characters"]),
    ("run_experiment", {"description": "clear \x1b[2J screen"}, ["U+001B (ESC)", "control character"]),
    ("run_experiment", {"description": "title \x1b]0;pwned\x07"}, ["U+001B (ESC)"]),
    ("run_experiment", {"description": "null \x00 byte"}, ["U+0000 (NUL)", "NUL byte"]),
    ("run_experiment", {"description": "csi \x9b2J"}, ["U+009B (CSI)"]),
    ("run_experiment", {"description": "bidi \u202etxt.exe"}, ["U+202E", "bidirectional"]),
    ("run_experiment", {"description": "fine", "hypothesis": "up\x1b[1A"}, ["hypothesis contains U+001B"]),
]


def ledger_files(engine: Engine) -> dict[str, bytes | None]:
    out = {}
    for name in ("experiments.jsonl", "results.tsv"):
        path = engine.run_dir / name
        out[name] = path.read_bytes() if path.exists() else None
    return out


async def check_refusals(client: Client, engine: Engine) -> None:
    """Run every REFUSED call; each is an error with our message, audited with what was sent, recording nothing."""
    before = ledger_files(engine)
    audited = len(engine.audit.records())
    for tool, args, words in REFUSED:
        result = await client.call_tool(tool, args)
        text = result.content[0].text
        assert result.is_error, (tool, args)
        for word in words:
            assert word in text, f"{word!r} missing from the refusal of {tool} {args!r}: {text}"
        assert "\x1b" not in text and "\x00" not in text and "\x9b" not in text, "the message never echoes controls"
        assert "again" in text, "the message says what to do next"
        records = engine.audit.records()
        assert len(records) == audited + 1, f"{tool} {args!r} was not audited exactly once"
        audited += 1
        assert records[-1].tool == tool and records[-1].status == "refused"
        assert records[-1].args == args, "the audit keeps exactly what was sent"
        assert records[-1].summary["error"] == text
    assert ledger_files(engine) == before, "refusals never touch the ledger or results.tsv"


async def test_every_schema_allows_no_extra_properties_and_declares_exact_types(workspace: Path) -> None:
    engine = make_engine(workspace)
    async with Client(build_server(engine)) as client:
        tools = {tool.name: tool.input_schema for tool in (await client.list_tools()).tools}
    assert all(schema["additionalProperties"] is False for schema in tools.values())
    assert tools["read_results"]["properties"]["last_n"]["type"] == "integer"
    assert tools["read_results"]["properties"]["last_n"]["maximum"] == 200
    assert {"type": "integer", "minimum": 1} in tools["commit_or_revert"]["properties"]["experiment_id"]["anyOf"]
    assert tools["run_experiment"]["required"] == ["description"]
    assert "pattern" in tools["run_experiment"]["properties"]["description"], "control characters are excluded"


async def test_every_malformed_call_is_refused_audited_and_records_nothing_in_process(workspace: Path) -> None:
    engine = make_engine(workspace)
    async with Client(build_server(engine)) as client:
        await check_refusals(client, engine)
        base = await client.call_tool("run_experiment", {"description": "baseline"})
        assert not base.is_error, "a well-formed call still works after refusals"
        await check_refusals(client, engine)


async def test_an_unknown_tool_is_refused_with_the_tools_that_exist_and_audited(workspace: Path) -> None:
    engine = make_engine(workspace)
    async with Client(build_server(engine)) as client:
        result = await client.call_tool("force_keep", {"experiment_id": 2})
    assert result.is_error
    assert "there is no tool \"force_keep\"" in result.content[0].text
    assert "run_experiment, read_results, commit_or_revert" in result.content[0].text
    record = engine.audit.records()[-1]
    assert (record.tool, record.status, record.args) == ("force_keep", "refused", {"experiment_id": 2})


async def test_a_nul_byte_in_the_baseline_description_is_refused_not_stored(workspace: Path) -> None:
    engine = make_engine(workspace)
    async with Client(build_server(engine)) as client:
        result = await client.call_tool("run_experiment", {"description": "base\x00line"})
        assert result.is_error and "NUL" in result.content[0].text
        assert engine.ledger.experiments() == []
        ok = await client.call_tool("run_experiment", {"description": "baseline"})
        assert not ok.is_error


async def test_the_already_decided_refusal_advises_a_call_that_works(workspace: Path) -> None:
    engine = make_engine(workspace)
    async with Client(build_server(engine)) as client:
        await client.call_tool("run_experiment", {"description": "baseline"})
        set_constant(workspace / "train.py", "LR", "0.9")
        await client.call_tool("run_experiment", {"description": "LR 0.9"})
        pending = await client.call_tool("commit_or_revert", {"experiment_id": 1})
        assert pending.is_error and "experiment 2 is the one pending" in pending.content[0].text
        assert "without experiment_id to decide it" in pending.content[0].text
        decided = await client.call_tool("commit_or_revert", {})
        assert decided.structured_content["decision"] == "discard"
        again = await client.call_tool("commit_or_revert", {"experiment_id": 2})
        assert again.is_error and "prefer='revert'" in again.content[0].text
        advised = await client.call_tool("commit_or_revert", {"prefer": "revert"})
        assert not advised.is_error and advised.structured_content["decision"] == "restored"


async def test_deltas_are_rounded_so_no_float_noise_reaches_the_agent(workspace: Path) -> None:
    from server.models import ExperimentRow, round_delta

    assert 0.96 - 1.0 == -0.040000000000000036
    assert round_delta(0.96 - 1.0) == -0.04
    row = ExperimentRow(id=2, status="ok", metric=0.96, delta=0.96 - 1.0, decision="keep", description="x")
    assert row.model_dump()["delta"] == -0.04
    assert round_delta(None) is None and round_delta(1.234567890123456) == 1.23456789012


def _stdio(workspace: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "server", "serve", "--workspace", str(workspace), "--tag", "t1"],
        env={"PYTHONPATH": str(REPO_ROOT), "HOME": os.environ["HOME"]}, cwd=str(REPO_ROOT))


@pytest.mark.slow
async def test_every_malformed_call_is_refused_audited_and_records_nothing_over_stdio(workspace: Path) -> None:
    engine = make_engine(workspace)
    async with Client(_stdio(workspace)) as client:
        await check_refusals(client, engine)


@pytest.mark.slow
async def test_every_malformed_call_is_refused_audited_and_records_nothing_over_http(workspace: Path) -> None:
    from test_http import TOKEN, mcp_client, serving

    engine = make_engine(workspace)
    with serving(engine, TOKEN) as running:
        async with mcp_client(running.url, TOKEN) as client:
            await check_refusals(client, engine)


async def test_audit_show_prints_refused_agent_text_escaped(workspace: Path) -> None:
    from server.audit import format_record

    engine = make_engine(workspace)
    async with Client(build_server(engine)) as client:
        await client.call_tool("run_experiment", {"description": "csi \x9b2J and \u202e and \x1b[2J"})
    line = format_record(engine.audit.records()[-1], width=400)
    assert "\x9b" not in line and "\u202e" not in line and "\x1b" not in line
    assert "\\x9b2J" in line and "\\u202e" in line
