"""The real Claude Code CLI, driven offline against the fake Messages API, launched as the harness launches it.

These pin down the CLI behaviours the supervisor relies on: MCP tool calls round-trip, hooks from --settings run in
headless mode, the CLI retries overloaded answers itself and reports each retry, an exhausted retry budget ends
with an api_error result and exit code 1, a hung stream leaves the process silent until its group is terminated,
--resume continues the same session, and a trusted workspace's allow rules are honoured.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.agent_events import EventKind
from harness.claude_launcher import SessionLaunch, ensure_workspace_trusted
from tests.fakes.fake_anthropic import (
    FakeAnthropic,
    Reply,
    ScriptedRequest,
    advertised_tools,
    call_tool,
    error,
    hang,
    latest_tool_results,
    text,
    tool_result_text,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

StartClaude = Callable[..., Any]  # the start_claude fixture: (base_url, SessionLaunch, **options) -> ClaudeProcess

RUN_TIMEOUT = 60.0  # one run takes 2-5 s; the bound only keeps a broken CLI from hanging the suite


def test_the_model_calls_an_mcp_tool_through_the_settings_hook_and_the_result_reaches_the_api(
        start_claude: StartClaude, tmp_path: Path) -> None:
    hook_log = tmp_path / "hook.jsonl"
    hook_script = tmp_path / "hook.py"
    hook_script.write_text(
        "import sys\n"
        f"with open({str(hook_log)!r}, 'a') as f:\n"
        "    f.write(sys.stdin.read().replace('\\n', ' ') + '\\n')\n", encoding="utf-8")
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"hooks": {"PreToolUse": [{"matcher": "mcp__echo__.*", "hooks": [
        {"type": "command", "command": f"{sys.executable} {hook_script}", "timeout": 10}]}]}}), encoding="utf-8")
    seen_results: list[str] = []

    def answer_after_tool(request: ScriptedRequest) -> Reply:
        seen_results.extend(tool_result_text(block) for block in request.tool_results())
        return text("the echo came back")

    with FakeAnthropic([call_tool("__echo", {"message": "ping-42"}), answer_after_tool]) as fake:
        claude = start_claude(fake.url, SessionLaunch("new", "use the echo tool"), settings=settings)
        assert claude.wait_exit(RUN_TIMEOUT) == 0, claude.transcript()

    assert "mcp__echo__echo" in advertised_tools(fake.main_requests[0].body)
    assert any("echo: ping-42" in result for result in seen_results), seen_results
    assert [e.tool_name for e in claude.of_kind(EventKind.TOOL_USE)] == ["mcp__echo__echo"]
    tool_results = claude.of_kind(EventKind.TOOL_RESULT)
    assert len(tool_results) == 1 and not tool_results[0].is_error and "ping-42" in tool_results[0].text
    (result,) = claude.of_kind(EventKind.RESULT)
    assert result.subtype == "success" and not result.is_error and result.terminal_reason == "completed"
    assert result.cost_usd is not None and result.cost_usd > 0
    hook_inputs = [json.loads(line) for line in hook_log.read_text(encoding="utf-8").splitlines()]
    assert [(h["hook_event_name"], h["tool_name"]) for h in hook_inputs] == [("PreToolUse", "mcp__echo__echo")]
    assert hook_inputs[0]["session_id"] == result.session_id


def test_an_overloaded_api_is_retried_by_the_cli_itself_and_each_retry_is_reported(
        start_claude: StartClaude) -> None:
    script = [error(529, "overloaded_error"), error(529, "overloaded_error"), text("recovered")]
    with FakeAnthropic(script, counting="calls") as fake:
        claude = start_claude(fake.url, SessionLaunch("new", "hello"), env={"CLAUDE_CODE_MAX_RETRIES": "3"})
        assert claude.wait_exit(RUN_TIMEOUT) == 0, claude.transcript()

    assert len(fake.main_requests) == 3
    retries = claude.of_kind(EventKind.API_RETRY)
    assert [e.api_error_status for e in retries] == [529, 529]
    (result,) = claude.of_kind(EventKind.RESULT)
    assert not result.is_error and result.subtype == "success" and result.text == "recovered"


def test_an_api_error_past_the_retry_budget_ends_the_run_with_an_api_error_result_and_exit_code_1(
        start_claude: StartClaude) -> None:
    with FakeAnthropic([error(529, "overloaded_error")] * 5, counting="calls") as fake:
        claude = start_claude(fake.url, SessionLaunch("new", "hello"), env={"CLAUDE_CODE_MAX_RETRIES": "1"})
        assert claude.wait_exit(RUN_TIMEOUT) == 1, claude.transcript()

    assert len(fake.main_requests) == 2  # the first attempt and one retry
    assert [e.api_error_status for e in claude.of_kind(EventKind.API_RETRY)] == [529]
    (result,) = claude.of_kind(EventKind.RESULT)
    assert result.is_error and result.terminal_reason == "api_error" and result.api_error_status == 529
    assert result.subtype == "success"  # the subtype alone does not tell an API failure apart


def test_a_hung_api_stream_leaves_the_cli_silent_until_its_process_group_is_terminated(
        start_claude: StartClaude, live_group_members: Callable[[int], list[int]],
        group_gone: Callable[[int, float], list[int]]) -> None:
    with FakeAnthropic([hang(after_start=True)], counting="calls") as fake:
        # The client timeout is short, yet a stream that stalls after its first event is never timed out.
        claude = start_claude(fake.url, SessionLaunch("new", "hello"), env={"API_TIMEOUT_MS": "1500"})
        claude.wait_for_event(lambda e: e.kind is EventKind.INIT, RUN_TIMEOUT)
        assert fake.wait_for_hang(RUN_TIMEOUT)

        assert claude.stays_silent(4.0), claude.transcript()
        assert claude.popen.poll() is None
        group = claude.popen.pid
        assert len(live_group_members(group)) >= 2  # claude and the MCP server it spawned share the group

        code = claude.terminate_group(grace=10)

    assert code != 0
    assert group_gone(group, 10.0) == []
    assert claude.of_kind(EventKind.RESULT) == []


def test_resume_continues_the_same_session_with_its_earlier_conversation(start_claude: StartClaude) -> None:
    with FakeAnthropic([text("first answer"), text("second answer")]) as fake:
        first = start_claude(fake.url, SessionLaunch("new", "first prompt"))
        assert first.wait_exit(RUN_TIMEOUT) == 0, first.transcript()
        (init,) = first.of_kind(EventKind.INIT)
        assert init.session_id is not None

        second = start_claude(fake.url, SessionLaunch("resume", "second prompt", session_id=init.session_id))
        assert second.wait_exit(RUN_TIMEOUT) == 0, second.transcript()

    assert [e.session_id for e in second.of_kind(EventKind.INIT)] == [init.session_id]
    (first_result,) = first.of_kind(EventKind.RESULT)
    (result,) = second.of_kind(EventKind.RESULT)
    assert result.session_id == init.session_id and result.text == "second answer"
    # The cost a resumed run reports is the session's total so far, not this process's share.
    assert result.cost_usd is not None and first_result.cost_usd is not None
    assert result.cost_usd > first_result.cost_usd
    resumed_request = json.dumps(fake.main_requests[-1].body["messages"])
    assert "first prompt" in resumed_request and "first answer" in resumed_request
    assert "second prompt" in resumed_request


def test_resuming_an_unknown_session_fails_at_once_with_an_error_result(start_claude: StartClaude) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    with FakeAnthropic([text("never asked")]) as fake:
        claude = start_claude(fake.url, SessionLaunch("resume", "hello", session_id=unknown))
        assert claude.wait_exit(RUN_TIMEOUT) == 1, claude.transcript()

    assert fake.main_requests == []
    (result,) = claude.of_kind(EventKind.RESULT)
    assert result.is_error and result.subtype == "error_during_execution"
    assert "No conversation found" in result.text


def test_a_trusted_workspace_honours_its_project_allow_rules(
        start_claude: StartClaude, claude_home: Path, agent_workspace: Path) -> None:
    (agent_workspace / ".claude").mkdir()
    (agent_workspace / ".claude" / "settings.json").write_text(
        json.dumps({"permissions": {"allow": ["mcp__echo__echo"]}}), encoding="utf-8")
    ensure_workspace_trusted(claude_home, agent_workspace)

    with FakeAnthropic([call_tool("__echo", {"message": "allowed"}), text("done")]) as fake:
        claude = start_claude(fake.url, SessionLaunch("new", "hello"), allowed_tools=[])
        assert claude.wait_exit(RUN_TIMEOUT) == 0, claude.transcript()

    (result_block,) = latest_tool_results(fake.main_requests[-1].body)
    assert "echo: allowed" in tool_result_text(result_block)
    (result,) = claude.of_kind(EventKind.RESULT)
    assert result.raw["permission_denials"] == []
