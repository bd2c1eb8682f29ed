"""The built-in API agent's stdout protocol: one JSON object a line, each line one `AgentEvent`.

The agent writes with `event_to_line`, the supervisor reads with `parse_api_line` (through
`harness.procs.LineAgentProcess`). A line looks like

    {"type": "result", "session_id": "...", "is_error": true, "subtype": "success", "terminal_reason": "api_error",
     "api_error_status": 529, "cost_usd": 0.0123, "text": "gave up after 5 attempts", "data": {...}}

`type` is an `EventKind` value; the other keys are the `AgentEvent` fields of the same names, left out when empty;
`data` carries extra facts (usage, attempt numbers) into `AgentEvent.raw`. Since the agent and its reader ship
together there is no version negotiation, but the reader is tolerant: it never raises, and a line it cannot read
(a stray print, a traceback) becomes an OTHER event, which still proves the agent alive.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from harness.agent_events import AgentEvent, EventKind

log = logging.getLogger(__name__)

TEXT_LIMIT = 2000  # a reader keeps at most this much of a line's text; writers send gists far shorter
_KINDS = {kind.value: kind for kind in EventKind}


def event_to_line(event: AgentEvent) -> str:
    """One line (without the newline) that `parse_api_line` turns back into an equal event."""
    body: dict[str, Any] = {"type": event.kind.value}
    for name, value in (("session_id", event.session_id), ("tool_name", event.tool_name),
                        ("is_error", event.is_error), ("subtype", event.subtype),
                        ("terminal_reason", event.terminal_reason), ("api_error_status", event.api_error_status),
                        ("cost_usd", event.cost_usd), ("text", event.text)):
        if value is not None and value is not False and value != "":
            body[name] = value
    if event.raw:
        body["data"] = event.raw
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str)


def parse_api_line(line: str) -> list[AgentEvent]:
    """The events one stdout line of the API agent stands for: none for a blank line, else exactly one."""
    stripped = line.strip()
    if not stripped:
        return []
    try:
        data = json.loads(stripped)
    except ValueError:
        return [AgentEvent(EventKind.OTHER, text=stripped[:TEXT_LIMIT])]
    if not isinstance(data, dict):
        return [AgentEvent(EventKind.OTHER, text=stripped[:TEXT_LIMIT])]
    kind = _KINDS.get(data.get("type")) if isinstance(data.get("type"), str) else None
    raw = data.get("data")
    return [AgentEvent(
        kind if kind is not None else EventKind.OTHER,
        session_id=_str(data.get("session_id")),
        tool_name=_str(data.get("tool_name")),
        is_error=data.get("is_error") is True,
        subtype=_str(data.get("subtype")),
        terminal_reason=_str(data.get("terminal_reason")),
        api_error_status=_int(data.get("api_error_status")),
        cost_usd=_float(data.get("cost_usd")),
        text=(_str(data.get("text")) or ("" if kind is not None else stripped))[:TEXT_LIMIT],
        raw=raw if isinstance(raw, dict) else {},
    )]


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
