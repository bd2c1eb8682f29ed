"""Small things the engine's parts share: the two refusals, limits on text, and how times are written."""

from __future__ import annotations

from datetime import datetime, timezone

MAX_DESCRIPTION = 300
MAX_HYPOTHESIS = 1000
MAX_TAIL_CHARS = 1500
MAX_DIFF_CHARS = 20_000

# Per engine of this process (by its token): the ids of its entries whose task is alive. Module-wide, so a second
# engine opened on the same run in this process (a reopen) tells a live experiment from one whose task died.
LIVE: dict[str, set[int]] = {}


class Refusal(Exception):
    """The agent asked for something the rules forbid right now; the message says what to do instead."""


class InvalidArgument(Refusal):
    """A tool argument is malformed or names something that does not exist."""


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def bounded_tail(text: str, limit: int = MAX_TAIL_CHARS) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3):]
