"""The fake Messages API, checked with the real `anthropic` SDK and plain HTTP, so tests built on it can trust it."""

from __future__ import annotations

import threading
from typing import Any

import anthropic
import httpx
import pytest

from tests.fakes.fake_anthropic import (
    FakeAnthropic,
    ScriptedRequest,
    call_tool,
    error,
    find_tool,
    hang,
    latest_tool_results,
    text,
    text_block,
    tool_use,
    tool_use_block,
    turn,
)

TOOLS: list[Any] = [{"name": "mcp__autoresearch__run_experiment", "description": "run one experiment",
                     "input_schema": {"type": "object", "properties": {"description": {"type": "string"}}}}]
USER = [{"role": "user", "content": "go"}]


def sdk(fake: FakeAnthropic) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.url, api_key="sk-test", max_retries=0, timeout=30)


def test_a_non_streaming_request_gets_the_scripted_tool_call_with_plausible_usage() -> None:
    with FakeAnthropic([call_tool("__run_experiment", {"description": "lr 3e-4"})]) as fake:
        message = sdk(fake).messages.create(model="m", max_tokens=100, messages=USER, tools=TOOLS)

    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert block.type == "tool_use" and block.name == "mcp__autoresearch__run_experiment"
    assert block.input == {"description": "lr 3e-4"}
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_a_streamed_turn_with_text_and_two_tool_calls_reassembles_in_the_sdk() -> None:
    reply = turn(text_block("trying two things"), tool_use_block("a", {"x": [1, 2, {"y": "z"}]}),
                 tool_use_block("b", {}))
    with FakeAnthropic([reply]) as fake:
        with sdk(fake).messages.stream(model="m", max_tokens=100, messages=USER, tools=TOOLS) as stream:
            message = stream.get_final_message()

    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].text == "trying two things"  # type: ignore[union-attr]
    assert message.content[1].input == {"x": [1, 2, {"y": "z"}]}  # type: ignore[union-attr]
    assert message.content[1].id != message.content[2].id  # type: ignore[union-attr]
    assert message.usage.output_tokens > 0


def test_requests_without_tools_are_background_calls_that_do_not_use_up_the_script() -> None:
    with FakeAnthropic([text("scripted")], counting="calls", background_text="title") as fake:
        client = sdk(fake)
        background = client.messages.create(model="m", max_tokens=10, messages=USER)
        main = client.messages.create(model="m", max_tokens=10, messages=USER, tools=TOOLS)

    assert background.content[0].text == "title"  # type: ignore[union-attr]
    assert main.content[0].text == "scripted"  # type: ignore[union-attr]
    assert [r.main for r in fake.requests] == [False, True]


def test_counting_turns_re_asks_the_same_step_on_a_retry_and_follows_the_conversation() -> None:
    with FakeAnthropic([text("step 0"), text("step 1")]) as fake:
        client = sdk(fake)
        first = client.messages.create(model="m", max_tokens=10, messages=USER, tools=TOOLS)
        retry = client.messages.create(model="m", max_tokens=10, messages=USER, tools=TOOLS)
        later = client.messages.create(model="m", max_tokens=10, tools=TOOLS, messages=[
            *USER, {"role": "assistant", "content": "step 0"}, {"role": "user", "content": "more"}])

    texts = [m.content[0].text for m in (first, retry, later)]  # type: ignore[union-attr]
    assert texts == ["step 0", "step 0", "step 1"]


def test_counting_calls_scripts_failures_then_success_and_the_error_has_the_api_shape() -> None:
    script = [error(429, "rate_limit_error", "slow down", retry_after=2), text("ok")]
    with FakeAnthropic(script, counting="calls") as fake:
        client = sdk(fake)
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(model="m", max_tokens=10, messages=USER, tools=TOOLS)
        ok = client.messages.create(model="m", max_tokens=10, messages=USER, tools=TOOLS)

    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.body == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    assert ok.content[0].text == "ok"  # type: ignore[union-attr]


def test_an_overloaded_answer_is_a_529() -> None:
    with FakeAnthropic([error(529, "overloaded_error")]) as fake:
        with pytest.raises(anthropic.APIStatusError) as caught:
            sdk(fake).messages.create(model="m", max_tokens=10, messages=USER, tools=TOOLS)

    assert caught.value.status_code == 529


def test_a_callable_step_sees_the_tool_results_and_decides_the_reply() -> None:
    def decide(request: ScriptedRequest) -> Any:
        (result,) = request.tool_results()
        return text(f"saw {result['content']}")

    messages = [*USER, {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "x", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "val_bpb 1.2"}]}]
    with FakeAnthropic([tool_use("x"), decide]) as fake:
        reply = sdk(fake).messages.create(model="m", max_tokens=10, messages=messages, tools=TOOLS)

    assert reply.content[0].text == "saw val_bpb 1.2"  # type: ignore[union-attr]


def test_an_exception_in_a_step_fails_the_call_and_is_raised_again_when_the_fake_closes() -> None:
    def broken(request: ScriptedRequest) -> Any:
        raise AssertionError("the tool result was not what the test expected")

    with pytest.raises(AssertionError, match="not what the test expected"):
        with FakeAnthropic([broken]) as fake:
            with pytest.raises(anthropic.InternalServerError):
                sdk(fake).messages.create(model="m", max_tokens=10, messages=USER, tools=TOOLS)


def test_a_hung_request_is_held_until_release_and_does_not_block_shutdown() -> None:
    outcome: list[BaseException | int] = []

    def ask(url: str) -> None:
        try:
            outcome.append(httpx.post(f"{url}/v1/messages", json={"messages": USER, "tools": TOOLS, "stream": True},
                                      timeout=60).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    with FakeAnthropic([hang(after_start=True)]) as fake:
        asker = threading.Thread(target=ask, args=(fake.url,))
        asker.start()
        assert fake.wait_for_hang(timeout=30)
        assert fake.hanging == 1
    asker.join(timeout=30)

    assert not asker.is_alive()
    assert fake.hanging == 0
    assert len(outcome) == 1


def test_release_lets_a_hung_request_go_with_its_connection_dropped_and_later_hangs_hang_again() -> None:
    with FakeAnthropic([hang()]) as fake:
        errors: list[BaseException] = []
        asker = threading.Thread(target=lambda: errors.extend(_post_expecting_error(fake.url)))
        asker.start()
        assert fake.wait_for_hang(timeout=30)
        fake.release()
        asker.join(timeout=30)

        assert not asker.is_alive() and len(errors) == 1
        assert isinstance(errors[0], httpx.RemoteProtocolError)

        again = threading.Thread(target=lambda: errors.extend(_post_expecting_error(fake.url)))
        again.start()
        assert fake.wait_for_hang(timeout=30)
    again.join(timeout=30)
    assert not again.is_alive() and len(errors) == 2


def _post_expecting_error(url: str) -> list[BaseException]:
    try:
        httpx.post(f"{url}/v1/messages", json={"messages": USER, "tools": TOOLS}, timeout=60)
    except httpx.HTTPError as exc:
        return [exc]
    return []


def test_count_tokens_answers_and_unknown_paths_are_404_json() -> None:
    with FakeAnthropic() as fake:
        counted = sdk(fake).messages.count_tokens(model="m", messages=USER)
        missing = httpx.get(f"{fake.url}/v1/nothing-here")

    assert counted.input_tokens > 0
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    assert [r.path for r in fake.requests] == ["/v1/messages/count_tokens", "/v1/nothing-here"]


def test_a_script_past_its_end_answers_that_it_is_exhausted() -> None:
    with FakeAnthropic([], counting="calls") as fake:
        reply = sdk(fake).messages.create(model="m", max_tokens=10, messages=USER, tools=TOOLS)

    assert reply.content[0].text == "(script exhausted)"  # type: ignore[union-attr]


def test_finding_a_tool_by_suffix_names_the_advertised_tools_when_none_matches() -> None:
    body = {"tools": TOOLS, "messages": USER}

    assert find_tool(body, "__run_experiment") == "mcp__autoresearch__run_experiment"
    with pytest.raises(LookupError, match="advertised: mcp__autoresearch__run_experiment"):
        find_tool(body, "__read_results")
    assert latest_tool_results(body) == []
