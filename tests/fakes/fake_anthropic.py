"""A scriptable fake of the Anthropic Messages API, served on 127.0.0.1 from a background thread.

Tests point a real client at it (Claude Code through `ANTHROPIC_BASE_URL`, or the `anthropic` SDK through
`base_url=fake.url`) so a whole agent session runs offline and deterministically.

How a reply is chosen
---------------------
A request that carries `tools` is a *main* request: the agent's own turn. Its reply comes from the script. Requests
without `tools` are background calls (titles, summaries, quota probes) and get a short text reply.

The script is either a list of steps or a function `(ScriptedRequest) -> Step`. For a list, the step is picked by

- ``counting="turns"`` (default): the number of assistant turns already in the request's `messages`. A retry or a
  resumed session re-asks the same step, so the conversation, not the transport, decides what happens next.
- ``counting="calls"``: the number of main requests answered before this one. Use it to script transport behaviour,
  e.g. ``[error(529), error(529), text("ok")]`` makes the first two attempts fail and the third succeed.

Past the end of a list the fake answers ``text("(script exhausted)")`` and logs a warning.

Steps
-----
``text(s)`` ends the turn; ``tool_use(name, input)`` asks for a tool; ``turn(block, block, ...)`` sends several blocks
(``text_block``, ``tool_use_block``) in one turn; ``error(status, type, message, retry_after=...)`` answers an HTTP
error; ``hang()`` accepts the request and never answers until ``release()`` or ``close()``; a callable step receives
the `ScriptedRequest` and returns another step (to assert on tool results or decide at request time);
``call_tool(suffix, input)`` is such a step, calling whichever advertised tool ends with `suffix`
(e.g. ``"__run_experiment"`` finds ``mcp__autoresearch__run_experiment``). An exception raised by a callable step
answers that request with a 500 and is raised again when the fake's ``with`` block ends.

Besides ``POST /v1/messages`` (streamed SSE when the body says ``stream: true``, JSON otherwise) the fake answers
``POST /v1/messages/count_tokens`` and the CLI's ``/api/hello`` probe; any other path gets a 404 in the API's error
shape. ``requests`` holds every request received (parsed body included), ``main_requests`` the scripted ones.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Union
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]


# ---- Steps ----


@dataclass(frozen=True)
class TextBlock:
    text: str


@dataclass(frozen=True)
class ToolUseBlock:
    name: str
    input: Mapping[str, Any]
    id: str | None = None  # generated when None, so every call gets a unique tool_use_id


Block = Union[TextBlock, ToolUseBlock]


@dataclass(frozen=True)
class Reply:
    """One assistant message. stop_reason defaults to tool_use when any block asks for a tool, else end_turn."""

    blocks: tuple[Block, ...]
    stop_reason: str | None = None

    def resolved_stop_reason(self) -> str:
        if self.stop_reason is not None:
            return self.stop_reason
        return "tool_use" if any(isinstance(b, ToolUseBlock) for b in self.blocks) else "end_turn"


@dataclass(frozen=True)
class ErrorReply:
    status: int
    error_type: str
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hang:
    """Never answer. With `after_start` the SSE headers and `message_start` go out first (a stream that stalls)."""

    after_start: bool = False


StepFn = Callable[["ScriptedRequest"], "Step"]
Step = Union[Reply, ErrorReply, Hang, StepFn]
Script = Union[Sequence[Step], StepFn]


def text_block(s: str) -> TextBlock:
    return TextBlock(s)


def tool_use_block(name: str, input: Mapping[str, Any] | None = None, id: str | None = None) -> ToolUseBlock:
    return ToolUseBlock(name, dict(input or {}), id)


def text(s: str) -> Reply:
    """A reply that says `s` and ends the turn."""
    return Reply((TextBlock(s),))


def tool_use(name: str, input: Mapping[str, Any] | None = None, *, preamble: str | None = None) -> Reply:
    """A reply asking for one tool call (stop_reason tool_use), optionally after a line of text."""
    blocks: list[Block] = [TextBlock(preamble)] if preamble else []
    blocks.append(tool_use_block(name, input))
    return Reply(tuple(blocks))


def turn(*blocks: Block, stop_reason: str | None = None) -> Reply:
    """A reply made of several blocks, e.g. text then two tool calls."""
    return Reply(tuple(blocks), stop_reason)


def error(status: int, error_type: str, message: str = "", *, retry_after: float | None = None,
          headers: Mapping[str, str] | None = None) -> ErrorReply:
    """An HTTP error in the API's JSON shape, e.g. error(529, "overloaded_error") or error(429, ..., retry_after=1)."""
    all_headers = dict(headers or {})
    if retry_after is not None:
        all_headers["retry-after"] = f"{retry_after:g}"
    return ErrorReply(status, error_type, message or error_type.replace("_", " "), all_headers)


def call_tool(suffix: str, input: Mapping[str, Any] | None = None) -> StepFn:
    """A step that calls the advertised tool whose name ends with `suffix` (the agent decides the full name)."""

    def step(request: ScriptedRequest) -> Reply:
        return tool_use(request.find_tool(suffix), input)

    return step


def hang(*, after_start: bool = False) -> Hang:
    """Accept the request and stay silent until release() or close()."""
    return Hang(after_start)


# ---- What a step sees ----


@dataclass(frozen=True)
class RecordedRequest:
    """Every request the fake received, in arrival order."""

    method: str
    path: str  # without the query string
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None when the body was empty or not JSON
    main: bool  # a Messages request with tools, answered from the script


@dataclass(frozen=True)
class ScriptedRequest:
    """A main request, with the index of the step chosen for it."""

    body: JsonDict
    step_index: int
    call_index: int  # how many main requests were answered before this one

    @property
    def messages(self) -> list[JsonDict]:
        return list(self.body.get("messages", []))

    @property
    def tool_names(self) -> list[str]:
        return advertised_tools(self.body)

    def find_tool(self, suffix: str) -> str:
        return find_tool(self.body, suffix)

    def tool_results(self) -> list[JsonDict]:
        return latest_tool_results(self.body)


def advertised_tools(body: Mapping[str, Any]) -> list[str]:
    """Names of the tools a Messages request offered the model."""
    return [t.get("name", "") for t in body.get("tools") or [] if isinstance(t, dict)]


def find_tool(body: Mapping[str, Any], suffix: str) -> str:
    """The advertised tool whose name equals `suffix` or ends with it (e.g. "__run_experiment")."""
    names = advertised_tools(body)
    for name in names:
        if name == suffix or name.endswith(suffix):
            return name
    raise LookupError(f"no advertised tool matches {suffix!r}; advertised: {', '.join(names) or '(none)'}")


def latest_tool_results(body: Mapping[str, Any]) -> list[JsonDict]:
    """The tool_result blocks of the last user message (what the agent sends back after a tool call)."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if not isinstance(content, list):
            return []
        return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
    return []


def tool_result_text(block: Mapping[str, Any]) -> str:
    """The text of a tool_result block, whether its content is a string or a list of text blocks."""
    content = block.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def count_assistant_turns(body: Mapping[str, Any]) -> int:
    return sum(1 for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "assistant")


# ---- Wire format ----


def _estimate_tokens(value: Any) -> int:
    """About four characters a token: plausible enough for cost accounting to show non-zero figures."""
    return max(1, len(json.dumps(value, ensure_ascii=False)) // 4)


def _content_json(reply: Reply) -> list[JsonDict]:
    out: list[JsonDict] = []
    for block in reply.blocks:
        if isinstance(block, TextBlock):
            out.append({"type": "text", "text": block.text})
        else:
            out.append({"type": "tool_use", "id": block.id or f"toolu_{uuid.uuid4().hex[:24]}",
                        "name": block.name, "input": dict(block.input)})
    return out


def _usage(body: Mapping[str, Any], content: Any) -> JsonDict:
    input_tokens = _estimate_tokens(body.get("messages", [])) + _estimate_tokens(body.get("system", ""))
    return {"input_tokens": input_tokens, "output_tokens": _estimate_tokens(content),
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def message_json(body: Mapping[str, Any], reply: Reply) -> JsonDict:
    """A complete non-streaming Messages response."""
    content = _content_json(reply)
    return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
            "model": body.get("model", "claude-fake"), "content": content,
            "stop_reason": reply.resolved_stop_reason(), "stop_sequence": None, "usage": _usage(body, content)}


def sse_events(body: Mapping[str, Any], reply: Reply) -> Iterator[tuple[str, JsonDict]]:
    """The server-sent events of a streamed Messages response, as (event name, data) pairs."""
    message = message_json(body, reply)
    usage = message["usage"]
    start = dict(message, content=[], stop_reason=None,
                 usage=dict(usage, output_tokens=1))
    yield "message_start", {"type": "message_start", "message": start}
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield "content_block_start", {"type": "content_block_start", "index": index,
                                          "content_block": {"type": "text", "text": ""}}
            yield "content_block_delta", {"type": "content_block_delta", "index": index,
                                          "delta": {"type": "text_delta", "text": block["text"]}}
        else:
            yield "content_block_start", {"type": "content_block_start", "index": index,
                                          "content_block": dict(block, input={})}
            raw = json.dumps(block["input"])
            # Two fragments, as the real API splits tool input: clients must concatenate before parsing.
            for part in (raw[: len(raw) // 2], raw[len(raw) // 2:]):
                yield "content_block_delta", {"type": "content_block_delta", "index": index,
                                              "delta": {"type": "input_json_delta", "partial_json": part}}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield "message_delta", {"type": "message_delta",
                            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                            "usage": {"output_tokens": usage["output_tokens"]}}
    yield "message_stop", {"type": "message_stop"}


def error_json(error_type: str, message: str) -> JsonDict:
    return {"type": "error", "error": {"type": error_type, "message": message}}


# ---- Server ----


class FakeAnthropic:
    """The fake API. Use as a context manager; `url` is the base URL to hand to the client."""

    def __init__(self, script: Script = (), *, counting: Literal["turns", "calls"] = "turns",
                 background_text: str = "ok") -> None:
        if counting not in ("turns", "calls"):
            raise ValueError(f"counting must be 'turns' or 'calls', got {counting!r}")
        self.script = script
        self.counting = counting
        self.background_text = background_text
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._main_calls = 0
        self._closed = False
        self._releases = 0  # bumped by release(); a hung request waits for a change or for close()
        self._hanging = 0
        self._hanging_changed = threading.Condition(self._lock)
        self._server: ThreadingHTTPServer | None = None
        self.step_errors: list[BaseException] = []  # exceptions raised by callable steps, re-raised on exit
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> FakeAnthropic:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-anthropic", daemon=True)
        self._thread.start()
        logger.debug("fake Anthropic API listening on %s", self.url)
        return self

    def close(self) -> None:
        """Stop serving; hanging requests are let go (their connections dropped) so shutdown never blocks."""
        with self._hanging_changed:
            self._closed = True
            self._hanging_changed.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
        if exc is None and self.step_errors:
            raise self.step_errors[0]

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeAnthropic is not started; use it as a context manager or call start()")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- what tests read --

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def main_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.main]

    @property
    def hanging(self) -> int:
        """How many requests are being held by a hang() step right now."""
        with self._lock:
            return self._hanging

    def wait_for_hang(self, timeout: float) -> bool:
        """Block until at least one request is hanging; False when `timeout` seconds pass first."""
        with self._hanging_changed:
            return self._hanging_changed.wait_for(lambda: self._hanging > 0, timeout=timeout)

    def release(self) -> None:
        """Let the requests hanging now go (their connections are dropped); later hang() steps hang again."""
        with self._hanging_changed:
            self._releases += 1
            self._hanging_changed.notify_all()

    # -- what the handler calls --

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _choose(self, body: JsonDict) -> tuple[Reply | ErrorReply | Hang, ScriptedRequest]:
        with self._lock:
            call_index = self._main_calls
            self._main_calls += 1
        index = count_assistant_turns(body) if self.counting == "turns" else call_index
        request = ScriptedRequest(body=body, step_index=index, call_index=call_index)
        step: Step
        if callable(self.script) and not isinstance(self.script, Sequence):
            step = self.script(request)
        elif index < len(self.script):
            step = self.script[index]
        else:
            logger.warning("fake Anthropic script has %d steps; request asked for step %d", len(self.script), index)
            step = text("(script exhausted)")
        # A callable step may return another callable; a bounded unwrap avoids looping forever on a bad script.
        for _ in range(10):
            if not callable(step) or isinstance(step, (Reply, ErrorReply, Hang)):
                break
            step = step(request)
        if not isinstance(step, (Reply, ErrorReply, Hang)):
            raise TypeError(f"a script step must resolve to Reply, ErrorReply or Hang, got {step!r}")
        return step, request

    def _hold(self) -> None:
        with self._hanging_changed:
            releases = self._releases
            self._hanging += 1
            self._hanging_changed.notify_all()
            try:
                self._hanging_changed.wait_for(lambda: self._closed or self._releases != releases)
            finally:
                self._hanging -= 1
                self._hanging_changed.notify_all()


class _Handler(BaseHTTPRequestHandler):
    """One connection. HTTP/1.1 with chunked SSE, so the client may keep connections alive as with the real API."""

    protocol_version = "HTTP/1.1"
    fake: FakeAnthropic  # set on the subclass made in FakeAnthropic.start()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("fake Anthropic: " + format, *args)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _handle(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        is_messages = self.command == "POST" and split.path == "/v1/messages"
        main = is_messages and isinstance(body, dict) and bool(body.get("tools"))
        self.fake._record(RecordedRequest(
            method=self.command, path=split.path, query=parse_qs(split.query),
            headers={k.lower(): v for k, v in self.headers.items()}, body=body, main=main))

        if split.path == "/api/hello":  # the CLI's connectivity probe when nonessential traffic is allowed
            self._send_json(200, {"message": "hello"})
        elif self.command == "POST" and split.path == "/v1/messages/count_tokens":
            self._send_json(200, {"input_tokens": _estimate_tokens((body or {}).get("messages", []))})
        elif is_messages and isinstance(body, dict):
            if main:
                try:
                    step, _ = self.fake._choose(body)
                except Exception as exc:  # an assertion in a test's step: keep it for the test, fail the call
                    logger.exception("fake Anthropic script step failed")
                    self.fake.step_errors.append(exc)
                    step = error(500, "api_error", f"fake script step failed: {exc!r}")
            else:
                step = text(self.fake.background_text)
            self._answer(body, step)
        else:
            message = f"{self.command} {split.path} is not served by the fake Anthropic API"
            self._send_json(404, error_json("not_found_error", message))

    def _answer(self, body: JsonDict, step: Reply | ErrorReply | Hang) -> None:
        if isinstance(step, ErrorReply):
            self._send_json(step.status, error_json(step.error_type, step.message), step.headers)
        elif isinstance(step, Hang):
            if step.after_start and body.get("stream"):
                self._start_sse()
                name, data = next(sse_events(body, text("")))
                self._write_chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self.fake._hold()
            self.close_connection = True
        elif body.get("stream"):
            self._start_sse()
            for name, data in sse_events(body, step):
                self._write_chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self._write_chunk(b"")
        else:
            self._send_json(200, message_json(body, step))

    def _start_sse(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:24]}")
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _send_json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:24]}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


__all__ = [
    "Block", "ErrorReply", "FakeAnthropic", "Hang", "RecordedRequest", "Reply", "Script", "ScriptedRequest", "Step",
    "TextBlock", "ToolUseBlock", "advertised_tools", "call_tool", "count_assistant_turns", "error", "find_tool", "hang",
    "latest_tool_results", "message_json", "sse_events", "text", "text_block", "tool_result_text", "tool_use",
    "tool_use_block", "turn",
]
