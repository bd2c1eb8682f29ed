"""The stream-json parser, fed lines captured from Claude Code 2.1.330 running against the fake Messages API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.agent_events import AgentEvent, EventKind
from harness.claude_stream import GIST_CHARS, parse_line

DATA = Path(__file__).resolve().parent / "data"


def parse_fixture(name: str) -> list[AgentEvent]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [event for line in lines for event in parse_line(line)]


def kinds(events: list[AgentEvent]) -> list[EventKind]:
    return [e.kind for e in events]


def test_a_tool_call_session_yields_init_tool_use_tool_result_and_a_successful_result() -> None:
    events = parse_fixture("claude_tool_call.jsonl")

    assert kinds(events) == [EventKind.INIT, EventKind.ASSISTANT, EventKind.TOOL_USE, EventKind.TOOL_RESULT,
                             EventKind.ASSISTANT, EventKind.RESULT]
    init, _, tool_use, tool_result, answer, result = events
    assert init.session_id == "56b410f8-d083-400f-82b5-c0e4c950fe40"
    assert "echo=connected" in init.text
    assert tool_use.tool_name == "mcp__echo__echo" and '"message":"hello"' in tool_use.text
    assert not tool_result.is_error and "echo: hello" in tool_result.text
    assert answer.text == "all done"
    assert (result.subtype, result.is_error, result.terminal_reason) == ("success", False, "completed")
    assert result.cost_usd == pytest.approx(0.035368)
    assert result.api_error_status is None and result.text == "all done"
    assert {e.session_id for e in events} == {init.session_id}


def test_a_failed_tool_call_is_a_tool_result_with_is_error() -> None:
    (tool_result,) = [e for e in parse_fixture("claude_tool_error.jsonl") if e.kind is EventKind.TOOL_RESULT]

    assert tool_result.is_error
    assert "fail was asked to fail: because" in tool_result.text


def test_overloaded_retries_are_api_retry_events_with_their_status() -> None:
    events = parse_fixture("claude_529_recovered.jsonl")

    retries = [e for e in events if e.kind is EventKind.API_RETRY]
    assert [e.api_error_status for e in retries] == [529, 529, 529]
    assert "1/3" in retries[0].text and "overloaded" in retries[0].text
    assert events[-1].kind is EventKind.RESULT and not events[-1].is_error


def test_retries_exhausted_end_in_an_error_result_that_names_the_api_status() -> None:
    events = parse_fixture("claude_529_exhausted.jsonl")

    synthetic = [e for e in events if e.kind is EventKind.ASSISTANT]
    assert len(synthetic) == 1 and synthetic[0].is_error and synthetic[0].api_error_status == 529
    result = events[-1]
    assert result.kind is EventKind.RESULT
    assert result.is_error and result.terminal_reason == "api_error" and result.api_error_status == 529
    assert result.subtype == "success"  # what the CLI says; is_error and terminal_reason carry the failure
    assert result.cost_usd == 0
    assert result.text.startswith("API Error: 529")


def test_the_turn_limit_ends_in_an_error_max_turns_result() -> None:
    result = parse_fixture("claude_max_turns.jsonl")[-1]

    assert (result.kind, result.subtype, result.is_error, result.terminal_reason) == (
        EventKind.RESULT, "error_max_turns", True, "max_turns")
    assert "maximum number of turns" in result.text


def test_resuming_an_unknown_session_is_an_error_during_execution_result() -> None:
    (result,) = parse_fixture("claude_resume_unknown.jsonl")

    assert result.kind is EventKind.RESULT and result.subtype == "error_during_execution" and result.is_error
    assert "No conversation found" in result.text


def test_hook_lines_are_other_events_that_keep_their_session_and_subtype() -> None:
    events = parse_fixture("claude_hooks.jsonl")

    hook_events = [e for e in events if e.kind is EventKind.OTHER]
    assert [e.subtype for e in hook_events] == ["hook_started", "hook_response"]
    assert all(e.session_id == "0b95ba5c-1167-42dd-a644-0dc756b62a17" for e in hook_events)
    assert hook_events[0].text == "system/hook_started"


def test_one_assistant_message_with_several_tool_calls_yields_one_tool_use_each() -> None:
    line = json.dumps({"type": "assistant", "session_id": "s", "message": {"content": [
        {"type": "text", "text": "running two"},
        {"type": "tool_use", "id": "a", "name": "mcp__x__one", "input": {}},
        {"type": "tool_use", "id": "b", "name": "mcp__x__two", "input": {"k": 1}}]}})

    events = parse_line(line)

    assert kinds(events) == [EventKind.ASSISTANT, EventKind.TOOL_USE, EventKind.TOOL_USE]
    assert events[0].text == "running two" and not events[0].is_error
    assert [e.tool_name for e in events[1:]] == ["mcp__x__one", "mcp__x__two"]


def test_a_retry_after_a_timeout_has_no_status() -> None:
    line = ('{"type":"system","subtype":"api_retry","attempt":1,"max_retries":1,"retry_delay_ms":516,'
            '"error_status":null,"error":"unknown","session_id":"s"}')

    (event,) = parse_line(line)

    assert event.kind is EventKind.API_RETRY and event.api_error_status is None and "unknown" in event.text


@pytest.mark.parametrize("line", [
    "plain text from a crashing CLI",
    "{not json",
    "[1, 2, 3]",
    '"a string"',
    "null",
    '{"type": "assistant", "message": "not an object"}',
    '{"type": "assistant", "message": {"content": [{"type": "tool_use", "name": 7, "input": {"x": NaN}}]}}',
    '{"type": "user", "message": {"content": [{"type": "tool_result", "content": {"weird": true}}]}}',
    '{"type": "result", "total_cost_usd": "cheap", "api_error_status": "oops", "errors": "not a list"}',
    '{"type": "system", "subtype": "init", "mcp_servers": "none", "tools": 3, "session_id": 12}',
    '{"type": "system", "subtype": "api_retry", "error_status": true}',
    '{"no_type": 1}',
])
def test_garbage_never_raises_and_still_counts_as_a_sign_of_life(line: str) -> None:
    events = parse_line(line)

    assert len(events) >= 1
    assert all(isinstance(e, AgentEvent) for e in events)


def test_a_non_json_line_is_other_with_its_text() -> None:
    (event,) = parse_line("Error: Session ID 1234 is already in use.\n")

    assert event.kind is EventKind.OTHER and event.text == "Error: Session ID 1234 is already in use."


def test_a_blank_line_yields_no_event() -> None:
    assert parse_line("") == [] and parse_line("  \n") == []


def test_fields_of_the_wrong_type_become_none_instead_of_raising() -> None:
    (event,) = parse_line('{"type": "result", "total_cost_usd": "cheap", "api_error_status": "529", '
                          '"is_error": "yes", "session_id": 12}')

    assert event.kind is EventKind.RESULT
    assert event.cost_usd is None and event.api_error_status == 529
    assert event.is_error is False and event.session_id is None


def test_long_texts_are_cut_to_a_gist() -> None:
    line = json.dumps({"type": "assistant", "message": {"content": [{"type": "text", "text": "word " * 500}]}})

    (event,) = parse_line(line)

    assert len(event.text) == GIST_CHARS and event.text.endswith("…")
