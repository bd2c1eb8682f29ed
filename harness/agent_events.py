"""What the supervisor learns from an agent process, independent of which agent it is.

Claude Code's stream-json lines and the built-in API agent's own reports are both turned into `AgentEvent`s, so the
supervisor's state machine never parses an agent-specific format.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class EventKind(enum.Enum):
    INIT = "init"  # the session started; session_id is known
    ASSISTANT = "assistant"  # the model said something (text or a tool call)
    TOOL_USE = "tool_use"  # the model asked for a tool; tool_name set
    TOOL_RESULT = "tool_result"  # a tool answered; is_error set
    API_RETRY = "api_retry"  # the agent is retrying an API call itself; api_error_status may be set
    RESULT = "result"  # the session ended its run; subtype, is_error, cost_usd, terminal_reason set
    OTHER = "other"  # anything else that still proves the agent is alive


@dataclass(frozen=True)
class AgentEvent:
    kind: EventKind
    session_id: str | None = None
    tool_name: str | None = None
    is_error: bool = False
    subtype: str | None = None  # RESULT: "success", "error_max_turns", "error_during_execution", ...
    terminal_reason: str | None = None  # RESULT: e.g. "api_error", "context_exhausted" (agent-specific words)
    api_error_status: int | None = None  # HTTP status of the failing API call (429, 500, 529, ...)
    cost_usd: float | None = None  # RESULT: total cost of the session so far
    text: str = ""  # short human-readable gist, for the live panel and the audit log
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
