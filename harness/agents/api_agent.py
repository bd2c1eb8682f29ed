"""`autoresearch run --agent api`: the loop driven through the Messages API directly, for people without Claude Code.

    python -m harness.agents.api_agent --workspace W --tag T --mode new|resume|fresh --session-id S --prompt-file F
                                       [--model M] [--max-turns N]

It is an MCP client of the same locked server any agent uses (stdio child process), so it gets exactly the three run
tools, plus `view_file`/`edit_file`/`write_file` confined to the mutable files (`file_tools`). `program.md` is the
system prompt; the prompt file is the first user message. Stdout carries only `api_events` lines (the supervisor's
view); logs go to stderr.

The process never ends by the model's wish: an `end_turn` is answered with "continue", and only after
`MAX_IDLE_END_TURNS` of them in a row does the session end (RESULT success; the supervisor resumes it). It ends on
its own when the conversation outgrows `AUTORESEARCH_API_MAX_CONTEXT_TOKENS` (RESULT terminal_reason
"context_exhausted": the supervisor starts a fresh session with a handoff from the ledger), at `--max-turns`
(subtype "error_max_turns"), when the API keeps failing after its own retries (terminal_reason "api_error" with the
HTTP status: the supervisor backs off), and on SIGTERM/SIGINT. The conversation is saved after every turn to
`runs/<tag>/agent/api-<session>.json`, so `--mode resume` carries on where the last process stopped.

Environment: ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN), ANTHROPIC_BASE_URL, ANTHROPIC_MODEL, and
AUTORESEARCH_API_MAX_CONTEXT_TOKENS, AUTORESEARCH_API_MAX_TOKENS, AUTORESEARCH_API_RETRIES,
AUTORESEARCH_API_RETRY_BASE_S, AUTORESEARCH_API_RETRY_CAP_S, AUTORESEARCH_API_TIMEOUT_S.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import anyio

from harness.agent_events import AgentEvent, EventKind
from harness.agents.api_events import event_to_line
from harness.agents.file_tools import FileTools
from harness.agents.pricing import Usage, cost_usd
from harness.backoff import Backoff

log = logging.getLogger(__name__)

DEFAULT_MODEL = "claude-sonnet-4-6"
DEFAULT_MAX_CONTEXT_TOKENS = 150_000
DEFAULT_MAX_TOKENS = 8192
MAX_IDLE_END_TURNS = 3  # end_turns in a row without a tool call before the session ends (the supervisor resumes)
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
MCP_PREFIX = "mcp__autoresearch__"  # the names Claude Code gives the same tools, so logs and briefs read alike
EPHEMERAL = {"type": "ephemeral"}
GIST = 200
STARTUP_HEARTBEAT_S = 120  # report "still starting" at most this long; then silence lets the stall detector act
CHARS_PER_TOKEN = 4  # for the part of the conversation the API has not counted yet
NUDGE = ("The run is not over: the harness decides when it stops. Continue the loop now with a tool call: read the "
         "results if you need to, make the next one-idea change, run_experiment, then commit_or_revert.")
CUT_OFF = "Your reply hit the output limit and was cut off. Continue in smaller steps (one tool call at a time)."
INTERRUPTED = ("interrupted: the session was restarted before this call returned; call read_results to see what "
               "happened (an experiment that was running has been recorded).")


@dataclass(frozen=True)
class AgentOptions:
    workspace: Path
    tag: str
    mode: str  # new | resume | fresh
    session_id: str
    prompt: str
    model: str = DEFAULT_MODEL
    max_turns: int | None = None
    max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS
    max_tokens: int = DEFAULT_MAX_TOKENS
    api_retries: int = 4  # attempts after the first, per API call
    retry_base_s: float = 2.0
    retry_cap_s: float = 60.0
    timeout_s: float = 600.0


@dataclass(frozen=True)
class Outcome:
    """How a session ended: the RESULT event's fields and the process exit status."""

    subtype: str
    text: str
    is_error: bool = False
    terminal_reason: str | None = None
    api_error_status: int | None = None
    exit_code: int = 0


@dataclass
class SessionState:
    """What is persisted between the processes of one session."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    turns: int = 0
    context_tokens: int = 0  # the conversation's size as the API last counted it (0: not counted yet)
    counted_chars: int = 0  # the conversation's JSON length at that moment

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "messages": self.messages, "usage": self.usage.to_json(), "cost_usd": self.cost_usd,
                "turns": self.turns, "context_tokens": self.context_tokens, "counted_chars": self.counted_chars}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionState:
        return cls(messages=list(data.get("messages") or []), usage=Usage.from_object(data.get("usage") or {}),
                   cost_usd=float(data.get("cost_usd") or 0.0), turns=int(data.get("turns") or 0),
                   context_tokens=int(data.get("context_tokens") or 0),
                   counted_chars=int(data.get("counted_chars") or 0))

    def estimated_context_tokens(self) -> int:
        """The API's last count plus about a token per four characters added since; 0 before the first count."""
        if self.context_tokens <= 0:
            return 0
        added = max(0, conversation_chars(self.messages) - self.counted_chars)
        return self.context_tokens + added // CHARS_PER_TOKEN


def conversation_chars(messages: list[dict[str, Any]]) -> int:
    return len(json.dumps(messages, ensure_ascii=False, separators=(",", ":")))


def state_path(workspace: Path, tag: str, session_id: str) -> Path:
    return workspace / "runs" / tag / "agent" / f"api-{session_id}.json"


def load_state(path: Path) -> SessionState | None:
    try:
        return SessionState.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("cannot read the saved conversation %s (%s); starting the session afresh", path, exc)
        return None


def save_state(path: Path, state: SessionState) -> None:
    from server.jsonl import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(state.to_json(), ensure_ascii=False))


def append_user(messages: list[dict[str, Any]], blocks: list[dict[str, Any]]) -> None:
    """Add user content, merged into the last message when that is the user's too (roles must alternate)."""
    if messages and messages[-1].get("role") == "user":
        last = messages[-1]
        content = last["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        last["content"] = [*content, *blocks]
    else:
        messages.append({"role": "user", "content": list(blocks)})


def open_conversation(state: SessionState, prompt: str) -> None:
    """Start or continue: a call left unanswered by a killed process gets an error result, then the prompt."""
    blocks: list[dict[str, Any]] = []
    if state.messages and state.messages[-1].get("role") == "assistant":
        content = state.messages[-1].get("content")
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                blocks.append({"type": "tool_result", "tool_use_id": block.get("id"), "content": INTERRUPTED,
                               "is_error": True})
    blocks.append({"type": "text", "text": prompt})
    append_user(state.messages, blocks)


def with_cache_mark(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of `message` whose last block carries a cache breakpoint (the stored history stays unmarked)."""
    marked = copy.deepcopy(message)
    content = marked["content"]
    if isinstance(content, str):
        marked["content"] = [{"type": "text", "text": content, "cache_control": EPHEMERAL}]
    elif content:
        content[-1]["cache_control"] = EPHEMERAL
    return marked


# ---- events on stdout ----

class Emitter:
    """Writes AgentEvents as lines to the protocol stream (stdout's original descriptor)."""

    def __init__(self, stream: IO[str], session_id: str) -> None:
        self._stream, self.session_id = stream, session_id
        self._lock = threading.Lock()
        self._ready = threading.Event()

    def heartbeat_until_ready(self, limit_s: int = STARTUP_HEARTBEAT_S) -> None:
        """Proof of life while the process starts: importing the SDKs and starting the MCP server can take several
        seconds on a busy machine. Bounded, so a server that never answers falls silent and the supervisor's stall
        detection acts."""
        def beat() -> None:
            for second in range(1, limit_s + 1):
                if self._ready.wait(1.0):
                    return
                self.emit(EventKind.OTHER, subtype="starting", text=f"starting the MCP server ({second} s)")

        threading.Thread(target=beat, name="startup-heartbeat", daemon=True).start()

    def ready(self) -> None:
        self._ready.set()

    def emit(self, kind: EventKind, **fields: Any) -> None:
        event = AgentEvent(kind, session_id=self.session_id, **fields)
        with self._lock:
            self._stream.write(event_to_line(event) + "\n")
            self._stream.flush()


def gist(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= GIST else flat[: GIST - 1] + "…"


# ---- tools ----

class ToolBox(Protocol):
    def definitions(self) -> list[dict[str, Any]]: ...
    async def call(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool]: ...


class McpToolBox:
    """The server's tools (from an open `mcp.Client`) under `MCP_PREFIX`, plus the local file tools."""

    def __init__(self, client: Any, mcp_tools: list[Any], files: FileTools) -> None:
        self._client, self._files = client, files
        self._mcp = {MCP_PREFIX + t.name: t for t in mcp_tools}

    def definitions(self) -> list[dict[str, Any]]:
        out = [{"name": name, "description": tool.description or tool.title or tool.name,
                "input_schema": dict(tool.input_schema or {"type": "object", "properties": {}})}
               for name, tool in self._mcp.items()]
        return out + self._files.definitions()

    async def call(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        if name in self._files.names:
            return self._files.call(name, arguments)
        tool = self._mcp.get(name)
        if tool is None:
            known = ", ".join([*self._mcp, *sorted(self._files.names)])
            return f"unknown tool {name!r}; available: {known}", True
        from mcp.shared.exceptions import MCPError

        try:
            result = await self._client.call_tool(tool.name, arguments)
        except MCPError as exc:
            return f"{tool.name} was rejected by the server: {exc}", True
        return mcp_result_text(result), bool(result.is_error)


def mcp_result_text(result: Any) -> str:
    """Structured content as compact JSON (what Claude Code shows the model too), else the text blocks."""
    if result.structured_content is not None and not result.is_error:
        return json.dumps(result.structured_content, ensure_ascii=False, separators=(",", ":"), default=str)
    parts = [getattr(block, "text", None) or f"[{getattr(block, 'type', 'content')} omitted]"
             for block in result.content or []]
    return "\n".join(parts) or ("(error without a message)" if result.is_error else "(empty result)")


# ---- the loop ----

class ApiSession:
    """One process's share of a session: the model loop over a toolbox, with retries, accounting and limits."""

    def __init__(self, options: AgentOptions, client: Any, tools: ToolBox, system: str, emitter: Emitter,
                 state: SessionState, save: Any) -> None:
        self.o, self.client, self.tools, self.system, self.emitter = options, client, tools, system, emitter
        self.state, self._save = state, save
        self.turns = 0  # this process's turns (--max-turns counts these)

    async def run(self) -> Outcome:
        idle = 0
        while True:
            if self.o.max_turns is not None and self.turns >= self.o.max_turns:
                return Outcome("error_max_turns", f"reached --max-turns {self.o.max_turns}", is_error=True,
                               exit_code=1)
            size = self.state.estimated_context_tokens()
            if size > self.o.max_context_tokens:
                return Outcome("success", f"the conversation is about {size} tokens, over the limit of "
                               f"{self.o.max_context_tokens} (AUTORESEARCH_API_MAX_CONTEXT_TOKENS)",
                               terminal_reason="context_exhausted")
            reply = await self._ask()
            if isinstance(reply, Outcome):
                return reply
            content = self._absorb(reply)
            tool_uses = [b for b in content if b["type"] == "tool_use"]
            if tool_uses:
                idle = 0
                append_user(self.state.messages, [await self._run_tool(b) for b in tool_uses])
            elif reply.stop_reason == "max_tokens":
                append_user(self.state.messages, [{"type": "text", "text": CUT_OFF}])
            else:
                idle += 1
                if idle >= MAX_IDLE_END_TURNS:
                    self._save(self.state)
                    return Outcome("success", f"the model ended its turn {idle} times in a row without a tool call")
                append_user(self.state.messages, [{"type": "text", "text": NUDGE}])
            self._save(self.state)

    def request(self) -> dict[str, Any]:
        """The Messages request: tools, system and the latest turn marked for prompt caching."""
        tools = copy.deepcopy(self.tools.definitions())
        if tools:
            tools[-1]["cache_control"] = EPHEMERAL
        messages = self.state.messages[:-1] + [with_cache_mark(self.state.messages[-1])]
        return {"model": self.o.model, "max_tokens": self.o.max_tokens, "tools": tools, "messages": messages,
                "system": [{"type": "text", "text": self.system, "cache_control": EPHEMERAL}]}

    async def _ask(self) -> Any:
        """The model's next message, retrying transient failures with capped, jittered backoff; else an Outcome."""
        import anthropic

        backoff = Backoff(self.o.retry_base_s, max(self.o.retry_cap_s, self.o.retry_base_s), 0.25)
        attempts = self.o.api_retries + 1
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                async with self.client.messages.stream(**self.request()) as stream:
                    return await stream.get_final_message()
            except anthropic.APIStatusError as exc:
                status: int | None = exc.status_code
                message = _error_message(exc)
                if status == 400 and "prompt is too long" in message.lower():
                    return Outcome("success", f"the API refused the conversation as too long: {message}",
                                   terminal_reason="context_exhausted")
                if status not in RETRYABLE_STATUSES:
                    return _api_failure(status, f"the API refused the request (HTTP {status}): {message}")
                retry_after = _retry_after(exc)
            except anthropic.APIError as exc:  # connection refused, timeout, a broken stream
                status, message = None, f"{type(exc).__name__}: {exc}"
            if attempt == attempts:
                return _api_failure(status, f"gave up after {attempts} attempts; last error "
                                            f"(status {status if status is not None else 'none'}): {message}")
            delay = min(self.o.retry_cap_s, retry_after) if retry_after is not None else backoff.next_delay()
            log.warning("API call failed (status %s): %s; retry %d/%d in %.1f s", status, message, attempt,
                        attempts - 1, delay)
            self.emitter.emit(EventKind.API_RETRY, api_error_status=status, subtype="api_retry",
                              text=gist(f"API retry {attempt}/{attempts - 1} in {delay * 1000:.0f} ms: {message} "
                                        f"(status {status if status is not None else 'none'})"),
                              raw={"attempt": attempt, "max_retries": attempts - 1, "error_status": status,
                                   "retry_delay_ms": round(delay * 1000)})
            await anyio.sleep(delay)
        raise AssertionError("unreachable")

    def _absorb(self, reply: Any) -> list[dict[str, Any]]:
        """Record the model's message: usage, cost, the conversation, the ASSISTANT event."""
        usage = Usage.from_object(reply.usage)
        self.turns += 1
        st = self.state
        st.turns += 1
        st.usage = st.usage + usage
        st.cost_usd += cost_usd(self.o.model, usage)
        content = [b for b in (_block_json(block) for block in reply.content) if b is not None]
        st.messages.append({"role": "assistant", "content": content or [{"type": "text", "text": "(no reply)"}]})
        st.context_tokens = usage.context_tokens
        st.counted_chars = conversation_chars(st.messages)
        self._save(st)
        texts = " ".join(b["text"] for b in content if b["type"] == "text")
        calls = ", ".join(f"calls {b['name']}" for b in content if b["type"] == "tool_use")
        self.emitter.emit(EventKind.ASSISTANT, text=gist(texts or calls or "(no reply)"),
                          raw={"stop_reason": reply.stop_reason, "usage": usage.to_json(),
                               "context_tokens": st.context_tokens, "cost_usd": round(st.cost_usd, 6)})
        return content

    async def _run_tool(self, block: dict[str, Any]) -> dict[str, Any]:
        name, arguments = block["name"], block.get("input") or {}
        self.emitter.emit(EventKind.TOOL_USE, tool_name=name, text=gist(f"{name} {json.dumps(arguments)[:150]}"),
                          raw={"id": block["id"]})
        if not isinstance(arguments, dict):
            text, is_error = f"{name}: the input must be a JSON object, got {type(arguments).__name__}", True
        else:
            text, is_error = await self.tools.call(name, arguments)
        self.emitter.emit(EventKind.TOOL_RESULT, tool_name=name, is_error=is_error, text=gist(text),
                          raw={"tool_use_id": block["id"]})
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": block["id"], "content": text}
        if is_error:
            result["is_error"] = True
        return result


def _block_json(block: Any) -> dict[str, Any] | None:
    kind = getattr(block, "type", None)
    if kind == "text":
        return {"type": "text", "text": block.text} if block.text else None  # the API refuses empty text blocks
    if kind == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    return None  # thinking and server-side blocks are not requested


def _api_failure(status: int | None, text: str) -> Outcome:
    return Outcome("success", text, is_error=True, terminal_reason="api_error", api_error_status=status, exit_code=1)


def _error_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or body["error"].get("type") or exc)
    return str(exc)


def _retry_after(exc: Any) -> float | None:
    try:
        value = float(exc.response.headers.get("retry-after"))
    except (AttributeError, TypeError, ValueError):
        return None
    return value if value >= 0 else None


# ---- the process ----

def system_prompt(workspace: Path, files: FileTools, server_instructions: str | None) -> str:
    program = workspace / "program.md"
    try:
        body = program.read_text(encoding="utf-8").strip()
    except OSError:
        body = server_instructions or "Improve the mutable files against the locked metric, one experiment at a time."
    return (f"{body}\n\nYour tools: {MCP_PREFIX}read_results, {MCP_PREFIX}run_experiment and "
            f"{MCP_PREFIX}commit_or_revert run and decide experiments; view_file, edit_file and write_file read and "
            f"change {', '.join(files.mutable)} (nothing else can be changed). There is no shell.")


def handoff_text(workspace: Path, tag: str) -> str | None:
    """Where the loop stands, from the run's files, for a session whose saved conversation is gone."""
    try:
        from harness.loop_state import read_loop_state
        from server.config import load_config
        from server.runstate import load_run

        config = load_config(workspace)
        return read_loop_state(config, load_run(config, tag)).handoff()
    except Exception as exc:  # noqa: BLE001 - the handoff is a help, not a requirement
        log.warning("could not build a handoff from the ledger: %s", exc)
        return None


def server_env(options: AgentOptions) -> dict[str, str]:
    """What the MCP server child needs: the run's variables (the agent marker included), never the API key."""
    env = {k: v for k, v in os.environ.items() if k.startswith("AUTORESEARCH_") or k in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"AUTORESEARCH_SESSION_ID": options.session_id, "AUTORESEARCH_TAG": options.tag,
                "AUTORESEARCH_WORKSPACE": str(options.workspace)})
    return env


async def run_session(options: AgentOptions, emitter: Emitter, api_client: Any) -> Outcome:
    """Connect to the server, prepare the conversation and run the loop until it ends or is cancelled."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters
    from mcp.types import Implementation

    from server.config import load_config

    config = load_config(options.workspace)
    files = FileTools(options.workspace, tuple(config.mutable), tuple(config.locked))
    path = state_path(options.workspace, options.tag, options.session_id)
    state = load_state(path) if options.mode == "resume" else None
    prompt = options.prompt
    if state is None:
        if options.mode == "resume":
            log.warning("no saved conversation at %s; starting the session from the ledger", path)
            prompt = "\n\n".join(p for p in (handoff_text(options.workspace, options.tag), prompt) if p)
        state = SessionState()
    open_conversation(state, prompt)
    save_state(path, state)
    params = StdioServerParameters(command=sys.executable, args=["-m", "server", "serve", "--workspace",
                                   str(options.workspace), "--tag", options.tag], env=server_env(options),
                                   cwd=str(options.workspace))
    try:
        async with Client(params, read_timeout_seconds=None,
                          client_info=Implementation(name="autoresearch-api-agent", version="1")) as client:
            listed = await client.list_tools()
            emitter.ready()
            toolbox = McpToolBox(client, list(listed.tools), files)
            emitter.emit(EventKind.OTHER, subtype="mcp_connected",
                         text=f"MCP server connected: {', '.join(t.name for t in listed.tools)}")
            session = ApiSession(options, api_client, toolbox, system_prompt(options.workspace, files,
                                 client.instructions), emitter, state, lambda s: save_state(path, s))
            return await session.run()
    finally:
        emitter.ready()
        save_state(path, state)


def finish(emitter: Emitter, outcome: Outcome, state_file: Path) -> None:
    saved = load_state(state_file)
    emitter.emit(EventKind.RESULT, subtype=outcome.subtype, is_error=outcome.is_error,
                 terminal_reason=outcome.terminal_reason, api_error_status=outcome.api_error_status,
                 cost_usd=round(saved.cost_usd, 6) if saved else 0.0, text=gist(outcome.text),
                 raw={"num_turns": saved.turns if saved else 0,
                      "usage": saved.usage.to_json() if saved else Usage().to_json()})


async def amain(options: AgentOptions, emitter: Emitter, api_client: Any) -> Outcome:
    """The session under a signal watcher: SIGTERM/SIGINT cancel it cleanly (the MCP client closes its server)."""
    work = anyio.CancelScope()
    received: list[str] = []

    async def watch() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                received.append(signal.Signals(signum).name)
                log.warning("received %s; ending the session", received[-1])
                work.cancel()
                return

    outcome: Outcome | None = None
    # The API client is closed here, in the loop that opened its connections: left to the garbage collector, it
    # schedules its own close on whatever loop runs then, where the connections' closed loop makes it fail.
    async with api_client, anyio.create_task_group() as group:
        group.start_soon(watch)
        await anyio.sleep(0)  # let the watcher install its handlers before the work starts
        with work:
            try:
                outcome = await run_session(options, emitter, api_client)
            except Exception as exc:  # noqa: BLE001 - the supervisor must get a RESULT whatever broke
                log.exception("the session failed")
                outcome = Outcome("error_during_execution", f"{type(exc).__name__}: {exc}", is_error=True,
                                  exit_code=1)
        group.cancel_scope.cancel()
    if outcome is None:
        why = received[0] if received else "cancelled"
        outcome = Outcome("error_during_execution", f"stopped by {why}", is_error=True, terminal_reason="interrupted",
                          exit_code=128 + (signal.Signals[why].value if why in signal.Signals.__members__ else 15))
    return outcome


def _env_number(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"api agent: {name}={raw!r} is not a number; unset it or give a number >= {minimum:g}")
    if value < minimum:
        raise SystemExit(f"api agent: {name}={raw!r} is below the minimum {minimum:g}")
    return value


def parse_options(argv: list[str] | None = None) -> AgentOptions:
    parser = argparse.ArgumentParser(prog="python -m harness.agents.api_agent", description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--mode", choices=("new", "resume", "fresh"), required=True)
    parser.add_argument("--session-id", required=True)
    parser.add_argument("--prompt-file", type=Path, required=True)
    parser.add_argument("--model", default=None, help=f"default: $ANTHROPIC_MODEL, else {DEFAULT_MODEL}")
    parser.add_argument("--max-turns", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        prompt = args.prompt_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise SystemExit(f"api agent: cannot read --prompt-file {args.prompt_file}: {exc}")
    return AgentOptions(
        workspace=args.workspace.resolve(), tag=args.tag, mode=args.mode, session_id=args.session_id,
        prompt=prompt.strip() or "Continue the experiment loop.",
        model=args.model or os.environ.get("ANTHROPIC_MODEL") or DEFAULT_MODEL, max_turns=args.max_turns,
        max_context_tokens=int(_env_number("AUTORESEARCH_API_MAX_CONTEXT_TOKENS", DEFAULT_MAX_CONTEXT_TOKENS, 1)),
        max_tokens=int(_env_number("AUTORESEARCH_API_MAX_TOKENS", DEFAULT_MAX_TOKENS, 1)),
        api_retries=int(_env_number("AUTORESEARCH_API_RETRIES", 4, 0)),
        retry_base_s=_env_number("AUTORESEARCH_API_RETRY_BASE_S", 2.0, 0.001),
        retry_cap_s=_env_number("AUTORESEARCH_API_RETRY_CAP_S", 60.0, 0.001),
        timeout_s=_env_number("AUTORESEARCH_API_TIMEOUT_S", 600.0, 1))


def main(argv: list[str] | None = None) -> int:
    # Stdout is the protocol: keep its descriptor for events and point fd 1 (and print) at stderr.
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=os.environ.get("AUTORESEARCH_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "httpcore"):  # one line per request drowns the agent's own log
        logging.getLogger(noisy).setLevel(logging.WARNING)
    options = parse_options(argv)
    emitter = Emitter(protocol, options.session_id)
    emitter.emit(EventKind.INIT, subtype="init", text=f"api agent, model {options.model}, {options.mode} session",
                 raw={"model": options.model, "mode": options.mode, "pid": os.getpid()})
    key = os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")
    if not key:
        message = ("ANTHROPIC_API_KEY is not set: export your Anthropic API key (and ANTHROPIC_BASE_URL for a proxy "
                   "or a compatible endpoint), or use --agent claude")
        print(f"api agent: {message}", file=sys.stderr)
        emitter.emit(EventKind.RESULT, subtype="error_during_execution", is_error=True,
                     terminal_reason="configuration", cost_usd=0.0, text=message)
        return 2
    emitter.heartbeat_until_ready()
    import anthropic

    api_client = anthropic.AsyncAnthropic(max_retries=0, timeout=options.timeout_s)  # retries are ours, and visible
    outcome = anyio.run(amain, options, emitter, api_client)
    finish(emitter, outcome, state_path(options.workspace, options.tag, options.session_id))
    log.info("session %s ended: %s (%s)", options.session_id, outcome.subtype, outcome.text)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
