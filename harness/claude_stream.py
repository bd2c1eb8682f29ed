"""Turn Claude Code's `--output-format stream-json` lines into `AgentEvent`s.

The supervisor reads the agent's stdout line by line; every line is proof of life, and a few lines carry facts it
acts on (the session id, API retries, the final result and why it ended). This module is the only place that knows
Claude Code's line format, so a change in a CLI release is fixed here and nowhere else.

Shapes handled (observed from Claude Code 2.1.330):

- `{"type": "system", "subtype": "init", "session_id", "tools", "mcp_servers": [{"name", "status"}]}`
- `{"type": "assistant", "message": {"content": [text | tool_use{id, name, input}]}}`; an API failure the CLI gave
  up on arrives as a synthetic assistant message with `"is_api_error_message": true` and `"api_error_status"`.
- `{"type": "user", "message": {"content": [tool_result{tool_use_id, content, is_error?}]}}`
- `{"type": "system", "subtype": "api_retry", "attempt", "max_retries", "retry_delay_ms", "error_status", "error"}`
  (`error_status` is null when the request timed out or the connection failed)
- `{"type": "result", "subtype", "is_error", "total_cost_usd", "terminal_reason", "api_error_status", "result",
  "errors"}`; API failures end with `subtype: "success"` yet `is_error: true` and `terminal_reason: "api_error"`.
  After `--resume`, `total_cost_usd` is the whole session's cost so far, earlier processes included: do not add up
  the costs of successive resumed runs.

`parse_line` never raises: a malformed line becomes an OTHER event, because a crash in the reader would blind the
supervisor exactly when the agent misbehaves.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from harness.agent_events import AgentEvent, EventKind

logger = logging.getLogger(__name__)

GIST_CHARS = 200  # the live panel and the audit log want a gist, not a transcript


def parse_line(line: str) -> list[AgentEvent]:
    """The events one stdout line of `claude -p --output-format stream-json --verbose` stands for.

    A blank line yields no event; anything else yields at least one.
    """
    stripped = line.strip()
    if not stripped:
        return []
    try:
        data = json.loads(stripped)
    except ValueError:
        return [AgentEvent(EventKind.OTHER, text=_gist(stripped))]
    if not isinstance(data, dict):
        return [AgentEvent(EventKind.OTHER, text=_gist(stripped))]
    try:
        return _parse_object(data)
    except Exception:  # a shape this parser did not foresee must not stop the reader
        logger.warning("could not interpret a stream-json line; kept as OTHER: %s", _gist(stripped), exc_info=True)
        return [AgentEvent(EventKind.OTHER, session_id=_str(data.get("session_id")), text=_gist(stripped), raw=data)]


def _parse_object(data: dict[str, Any]) -> list[AgentEvent]:
    kind = data.get("type")
    subtype = data.get("subtype")
    session_id = _str(data.get("session_id"))
    if kind == "system" and subtype == "init":
        return [_init(data, session_id)]
    if kind == "system" and subtype == "api_retry":
        return [_api_retry(data, session_id)]
    if kind == "assistant":
        return _assistant(data, session_id)
    if kind == "user":
        return _user(data, session_id)
    if kind == "result":
        return [_result(data, session_id)]
    label = "/".join(str(part) for part in (kind, subtype) if part is not None) or "unknown"
    return [AgentEvent(EventKind.OTHER, session_id=session_id, subtype=_str(subtype), text=label, raw=data)]


def _init(data: dict[str, Any], session_id: str | None) -> AgentEvent:
    servers = [s for s in _list(data.get("mcp_servers")) if isinstance(s, dict)]
    server_text = ", ".join(f"{s.get('name')}={s.get('status')}" for s in servers) or "none"
    tools = _list(data.get("tools"))
    text = f"session {session_id}; {len(tools)} tools; mcp servers: {server_text}"
    return AgentEvent(EventKind.INIT, session_id=session_id, subtype="init", text=_gist(text), raw=data)


def _api_retry(data: dict[str, Any], session_id: str | None) -> AgentEvent:
    status = _int(data.get("error_status"))
    text = (f"API retry {data.get('attempt')}/{data.get('max_retries')} in {data.get('retry_delay_ms')} ms: "
            f"{data.get('error')} (status {status if status is not None else 'none'})")
    return AgentEvent(EventKind.API_RETRY, session_id=session_id, subtype="api_retry", api_error_status=status,
                      text=_gist(text), raw=data)


def _assistant(data: dict[str, Any], session_id: str | None) -> list[AgentEvent]:
    message = data.get("message") if isinstance(data.get("message"), dict) else {}
    blocks = [b for b in _list(message.get("content")) if isinstance(b, dict)]
    texts = [str(b.get("text", "")) for b in blocks if b.get("type") == "text"]
    tool_uses = [b for b in blocks if b.get("type") == "tool_use"]
    is_api_error = data.get("is_api_error_message") is True
    gist = " ".join(t for t in texts if t) or ", ".join(f"calls {b.get('name')}" for b in tool_uses)
    events = [AgentEvent(EventKind.ASSISTANT, session_id=session_id, is_error=is_api_error,
                         api_error_status=_int(data.get("api_error_status")), text=_gist(gist), raw=data)]
    for block in tool_uses:
        name = _str(block.get("name"))
        events.append(AgentEvent(EventKind.TOOL_USE, session_id=session_id, tool_name=name,
                                 text=_gist(f"{name} {_compact(block.get('input'))}"), raw=block))
    return events


def _user(data: dict[str, Any], session_id: str | None) -> list[AgentEvent]:
    message = data.get("message") if isinstance(data.get("message"), dict) else {}
    results = [b for b in _list(message.get("content")) if isinstance(b, dict) and b.get("type") == "tool_result"]
    if not results:
        return [AgentEvent(EventKind.OTHER, session_id=session_id, text="user message", raw=data)]
    return [AgentEvent(EventKind.TOOL_RESULT, session_id=session_id, is_error=block.get("is_error") is True,
                       text=_gist(_result_text(block.get("content"))), raw=block)
            for block in results]


def _result(data: dict[str, Any], session_id: str | None) -> AgentEvent:
    errors = [str(e) for e in _list(data.get("errors"))]
    summary = data.get("result") if isinstance(data.get("result"), str) else "; ".join(errors)
    return AgentEvent(
        EventKind.RESULT, session_id=session_id, is_error=data.get("is_error") is True,
        subtype=_str(data.get("subtype")), terminal_reason=_str(data.get("terminal_reason")),
        api_error_status=_int(data.get("api_error_status")), cost_usd=_float(data.get("total_cost_usd")),
        text=_gist(summary or ""), raw=data)


# ---- Tolerant field readers: a wrong type becomes None, never an exception ----


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = [str(p.get("text", "")) for p in _list(content) if isinstance(p, dict) and p.get("type") == "text"]
    return " ".join(parts)


def _compact(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        return repr(value)


def _gist(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= GIST_CHARS else flat[: GIST_CHARS - 1] + "…"
