"""The built-in API agent's pieces: pricing, its event lines, the conversation it keeps, and its loop against the fake
Messages API with a stand-in toolbox (no MCP server, so these run in well under a second each)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anthropic
import anyio
import pytest

from harness.agent_events import AgentEvent, EventKind
from harness.agents.api_agent import (
    INTERRUPTED,
    MAX_IDLE_END_TURNS,
    AgentOptions,
    ApiSession,
    Emitter,
    SessionState,
    amain,
    load_state,
    open_conversation,
    save_state,
)
from harness.agents.api_events import event_to_line, parse_api_line
from harness.agents.pricing import UNKNOWN_MODEL_PRICE, Usage, cost_usd, price_for
from harness.supervisor import EndKind, classify_end
from tests.fakes.fake_anthropic import FakeAnthropic, error, text, tool_use

REPO_ROOT = Path(__file__).resolve().parents[2]


# ---- pricing ----

def test_models_are_priced_by_family_with_dated_names_and_aliases_alike() -> None:
    assert price_for("claude-sonnet-4-6") == price_for("claude-sonnet-4-5-20250929")
    assert price_for("claude-opus-4-5-20251101").input == 5.0
    assert price_for("claude-opus-4-1-20250805").input == 15.0
    assert price_for("claude-haiku-4-5").output == 5.0


def test_an_unknown_model_is_priced_at_the_dearest_rate_so_cost_limits_err_on_the_safe_side() -> None:
    assert price_for("someone-elses-model") == UNKNOWN_MODEL_PRICE
    assert all(UNKNOWN_MODEL_PRICE.input >= price_for(m).input for m in ("claude-opus-4-8", "claude-sonnet-5"))


def test_cost_counts_input_output_and_cache_tokens_at_their_own_rates() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cache_creation_input_tokens=1_000_000,
                  cache_read_input_tokens=1_000_000)

    assert cost_usd("claude-sonnet-4-6", usage) == pytest.approx(3 + 15 + 3.75 + 0.30)
    assert usage.context_tokens == 4_000_000


# ---- event lines ----

@pytest.mark.parametrize("event", [
    AgentEvent(EventKind.INIT, session_id="s1", subtype="init", text="api agent"),
    AgentEvent(EventKind.TOOL_RESULT, session_id="s1", tool_name="edit_file", is_error=True, text="refused"),
    AgentEvent(EventKind.API_RETRY, session_id="s1", api_error_status=529, text="retry 1/4", raw={"attempt": 1}),
    AgentEvent(EventKind.RESULT, session_id="s1", subtype="success", is_error=True, terminal_reason="api_error",
               api_error_status=529, cost_usd=0.125, text="gave up"),
])
def test_every_event_survives_the_trip_through_a_stdout_line(event: AgentEvent) -> None:
    line = event_to_line(event)

    assert "\n" not in line
    (back,) = parse_api_line(line)
    assert back == event and back.raw == event.raw


def test_a_line_that_is_not_the_protocol_is_kept_as_proof_of_life_not_an_error() -> None:
    assert parse_api_line("   ") == []
    (other,) = parse_api_line("Traceback (most recent call last):")
    assert other.kind is EventKind.OTHER and other.text.startswith("Traceback")
    (weird,) = parse_api_line('{"type": "nonsense", "cost_usd": "lots"}')
    assert weird.kind is EventKind.OTHER and weird.cost_usd is None


# ---- the conversation ----

def test_resuming_after_a_kill_mid_tool_answers_the_dangling_call_then_adds_the_prompt(tmp_path: Path) -> None:
    state = SessionState(messages=[{"role": "user", "content": "go"}, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "mcp__autoresearch__run_experiment", "input": {}}]}])
    save_state(tmp_path / "s.json", state)
    loaded = load_state(tmp_path / "s.json")
    assert loaded is not None

    open_conversation(loaded, "continue please")

    last = loaded.messages[-1]
    assert last["role"] == "user"
    assert last["content"][0] == {"type": "tool_result", "tool_use_id": "toolu_1", "content": INTERRUPTED,
                                  "is_error": True}
    assert last["content"][1] == {"type": "text", "text": "continue please"}


def test_a_prompt_after_a_user_turn_is_merged_so_roles_keep_alternating() -> None:
    state = SessionState(messages=[{"role": "user", "content": "go"}])

    open_conversation(state, "more")

    assert state.messages == [{"role": "user", "content": [{"type": "text", "text": "go"},
                                                             {"type": "text", "text": "more"}]}]


# ---- the loop, against the fake API ----

class StubTools:
    """Answers every tool call with a fixed text, recording the calls."""

    def __init__(self, answer: str = "ok") -> None:
        self.answer = answer
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def definitions(self) -> list[dict[str, Any]]:
        return [{"name": "mcp__autoresearch__read_results", "description": "read",
                 "input_schema": {"type": "object", "properties": {}}},
                {"name": "edit_file", "description": "edit", "input_schema": {"type": "object", "properties": {}}}]

    async def call(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        self.calls.append((name, arguments))
        return self.answer, False


def run_loop(fake: FakeAnthropic, tools: StubTools, **option_overrides: Any) -> tuple[Any, list[AgentEvent],
                                                                                       SessionState]:
    defaults: dict[str, Any] = dict(workspace=Path("."), tag="t", mode="new", session_id="s1", prompt="go",
                                    model="claude-sonnet-4-6", retry_base_s=0.01, retry_cap_s=0.05)
    options = AgentOptions(**{**defaults, **option_overrides})
    out = io.StringIO()
    state = SessionState()
    open_conversation(state, options.prompt)
    client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="sk-test", max_retries=0, timeout=30)
    session = ApiSession(options, client, tools, "system prompt", Emitter(out, "s1"), state, lambda s: None)

    async def run_and_close() -> Any:
        async with client:  # closed in the loop that opened its connections, not by a later test's loop
            return await session.run()

    outcome = anyio.run(run_and_close)
    events = [e for line in out.getvalue().splitlines() for e in parse_api_line(line)]
    return outcome, events, state


def test_a_session_closes_its_api_client_in_its_own_event_loop_even_when_it_fails(tmp_path: Path) -> None:
    """Left open, the SDK client schedules its own close on a later event loop, where it fails on the dead one."""
    client = anthropic.AsyncAnthropic(base_url="http://127.0.0.1:9", api_key="sk-test", max_retries=0)
    options = AgentOptions(workspace=tmp_path / "no-such-workspace", tag="t", mode="new", session_id="s1",
                           prompt="go")
    outcome = anyio.run(amain, options, Emitter(io.StringIO(), "s1"), client)
    assert outcome.is_error and outcome.subtype == "error_during_execution"
    assert client.is_closed()


def test_the_session_ends_with_context_exhausted_once_the_conversation_outgrows_the_limit() -> None:
    script = [tool_use("mcp__autoresearch__read_results", {})] * 10
    with FakeAnthropic(script) as fake:
        outcome, events, state = run_loop(fake, StubTools("x" * 4000), max_context_tokens=1000)

    assert outcome.terminal_reason == "context_exhausted" and not outcome.is_error
    assert len(fake.main_requests) == 1  # the 4000-character result alone (~1000 tokens) tipped it over
    assert state.estimated_context_tokens() > 1000
    result = AgentEvent(EventKind.RESULT, subtype=outcome.subtype, is_error=outcome.is_error,
                        terminal_reason=outcome.terminal_reason)
    assert classify_end(result, EventKind.RESULT, outcome.exit_code) is EndKind.CONTEXT_EXHAUSTED


def test_a_conversation_under_the_limit_keeps_going() -> None:
    script = [tool_use("mcp__autoresearch__read_results", {})] * 3
    with FakeAnthropic(script) as fake:
        outcome, events, _ = run_loop(fake, StubTools("short"), max_context_tokens=100_000, max_turns=3)

    assert outcome.subtype == "error_max_turns" and outcome.exit_code != 0
    assert len(fake.main_requests) == 3
    kinds = [e.kind for e in events]
    assert kinds.count(EventKind.TOOL_USE) == kinds.count(EventKind.TOOL_RESULT) == 3


def test_an_end_turn_is_answered_with_continue_and_only_repeated_ones_end_the_session() -> None:
    with FakeAnthropic([text("done, I think")] * 10) as fake:
        outcome, _, state = run_loop(fake, StubTools())

    assert outcome.subtype == "success" and outcome.terminal_reason is None and not outcome.is_error
    assert len(fake.main_requests) == MAX_IDLE_END_TURNS
    nudge = state.messages[2]["content"][0]["text"]
    assert state.messages[2]["role"] == "user" and "Continue" in nudge


def test_requests_mark_the_system_prompt_tools_and_latest_turn_for_prompt_caching() -> None:
    with FakeAnthropic([text("hi")] * 3) as fake:
        run_loop(fake, StubTools())

    body = fake.main_requests[0].body
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    later = fake.main_requests[1].body["messages"]
    assert sum("cache_control" in json.dumps(m) for m in later) == 1  # the stored history carries no old marks


def test_an_overloaded_api_is_retried_with_visible_retry_events_then_recovers() -> None:
    script = [error(529, "overloaded_error"), error(529, "overloaded_error"), text("ok")] + [text("ok")] * 5
    with FakeAnthropic(script, counting="calls") as fake:
        outcome, events, state = run_loop(fake, StubTools())

    retries = [e for e in events if e.kind is EventKind.API_RETRY]
    assert [e.api_error_status for e in retries] == [529, 529]
    assert outcome.subtype == "success" and not outcome.is_error
    assert state.cost_usd > 0 and state.usage.output_tokens > 0


def test_an_api_that_stays_overloaded_ends_the_session_as_an_api_error_with_its_status() -> None:
    with FakeAnthropic([error(529, "overloaded_error")] * 10, counting="calls") as fake:
        outcome, events, _ = run_loop(fake, StubTools(), api_retries=2)

    assert len(fake.main_requests) == 3
    assert outcome.is_error and outcome.terminal_reason == "api_error" and outcome.api_error_status == 529
    result = AgentEvent(EventKind.RESULT, is_error=True, terminal_reason="api_error", api_error_status=529)
    assert classify_end(result, EventKind.RESULT, 1) is EndKind.API_OUTAGE


def test_a_refused_key_is_not_retried() -> None:
    with FakeAnthropic([error(401, "authentication_error", "invalid x-api-key")] * 3, counting="calls") as fake:
        outcome, events, _ = run_loop(fake, StubTools())

    assert len(fake.main_requests) == 1 and not [e for e in events if e.kind is EventKind.API_RETRY]
    assert outcome.api_error_status == 401 and "invalid x-api-key" in outcome.text


def test_a_prompt_too_long_refusal_ends_the_session_as_context_exhausted() -> None:
    with FakeAnthropic([error(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000")]) as fake:
        outcome, _, _ = run_loop(fake, StubTools())

    assert outcome.terminal_reason == "context_exhausted"


# ---- the process ----

def test_the_agent_without_an_api_key_exits_at_once_with_a_clear_message_and_a_result_line(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("go", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    proc = subprocess.run([sys.executable, "-m", "harness.agents.api_agent", "--workspace", str(tmp_path), "--tag",
                           "t", "--mode", "new", "--session-id", "s1", "--prompt-file", str(prompt)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)

    assert proc.returncode != 0
    assert "ANTHROPIC_API_KEY is not set" in proc.stderr
    events = [e for line in proc.stdout.splitlines() for e in parse_api_line(line)]
    assert [e.kind for e in events] == [EventKind.INIT, EventKind.RESULT]
    assert events[-1].is_error and events[-1].session_id == "s1"
