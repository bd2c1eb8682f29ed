"""The `---` summary block: the one machine-readable result a target or an evaluator prints.

A run ends with a line that is exactly `---` followed by `key: value` lines, e.g.

    ---
    val_bpb:          0.997900
    training_seconds: 300.1

Checking a result is then one anchored pattern per line instead of scraping free text. Only the LAST block counts,
so a target that prints progress blocks (or echoes an old result) is judged by what it printed at the end.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

__all__ = ["parse_summary", "format_summary", "SummaryValue"]

SummaryValue = float | str

_SEPARATOR = "---"
_KEY_VALUE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):(.*)")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Plain decimal/scientific numbers and the IEEE specials. Python's float() would also accept "1_000" and
# surrounding whitespace; a summary value like that is more likely a label than a number, so it stays a string.
_NUMBER = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|nan|inf|infinity)",
    re.IGNORECASE,
)


def _parse_value(raw: str) -> SummaryValue:
    value = raw.strip()
    if _NUMBER.fullmatch(value):
        return float(value)
    return value


def _blocks(lines: list[str]) -> list[dict[str, SummaryValue]]:
    """Every non-empty block in order. A block runs from a `---` line to the first line that is not `key: value`."""
    blocks: list[dict[str, SummaryValue]] = []
    current: dict[str, SummaryValue] | None = None
    for line in lines:
        if line == _SEPARATOR:
            if current:
                blocks.append(current)
            current = {}
            continue
        if current is None:
            continue
        match = _KEY_VALUE.fullmatch(line)
        if match is None:
            if current:
                blocks.append(current)
            current = None
            continue
        current[match.group(1)] = _parse_value(match.group(2))
    if current:
        blocks.append(current)
    return blocks


def parse_summary(text: str) -> dict[str, SummaryValue]:
    """Return the last summary block of `text` as a dict, or `{}` when there is none.

    Rules (kept strict so a result cannot hide in noise):
    - a block starts at a line that is exactly `---` (a trailing `\\r` or trailing spaces are tolerated, because
      Windows line ends and padded prints are common; leading spaces are not);
    - it continues with lines `key: value` where the key matches `[A-Za-z_][A-Za-z0-9_]*` at the start of the
      line; the value is trimmed; a repeated key keeps its last value;
    - it ends at the first line of any other form (an empty line included);
    - a `---` followed directly by a non `key: value` line is an empty block and is skipped, so a stray separator
      after the real result (say, in a warning banner) does not erase it;
    - numbers (`1`, `-2.5e-3`, `nan`, `inf`, `-Infinity`) become floats, everything else stays a string.
      `nan` and `inf` are returned as floats on purpose: the caller decides that a non-finite metric is a failure
      and can then say so precisely, instead of the parser silently dropping the key.
    """
    lines = [line.rstrip() for line in text.splitlines()]
    blocks = _blocks(lines)
    return blocks[-1] if blocks else {}


def _format_value(value: object) -> str:
    if isinstance(value, bool):
        raise ValueError(f"summary value {value!r} is a bool; pass a number or a string")
    if isinstance(value, float):
        # repr() is the shortest text that round-trips to the same float, so parse_summary(format_summary(d)) == d.
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if "\n" in value or "\r" in value:
            raise ValueError(f"summary value {value!r} contains a line break; a summary value must be one line")
        return value.strip()
    raise ValueError(f"summary value {value!r} has type {type(value).__name__}; pass a float, an int or a str")


def format_summary(summary: Mapping[str, object]) -> str:
    """Render `summary` as a block that `parse_summary` reads back unchanged.

    Layout: `---`, then one `key:` per line padded with spaces so the values start in the same column, ending with
    a newline. Floats are written with `repr` (shortest round-tripping form, e.g. `0.9979`, `1e-05`, `nan`), ints
    as integers, strings as given (a string that looks like a number is read back as a float). Raises ValueError naming the key for an invalid key or value.
    """
    for key in summary:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"summary key {key!r} is not of the form [A-Za-z_][A-Za-z0-9_]*; rename it")
    rendered: dict[str, str] = {}
    for key, value in summary.items():
        try:
            rendered[key] = _format_value(value)
        except ValueError as exc:
            raise ValueError(f"summary key {key!r}: {exc}") from None
    width = max((len(key) for key in rendered), default=0) + 1
    lines = [_SEPARATOR]
    for key, value in rendered.items():
        lines.append(f"{key + ':':<{width}} {value}".rstrip())
    return "\n".join(lines) + "\n"
