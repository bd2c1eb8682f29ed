"""Find and change the UPPER_CASE numeric hyperparameters at the top of a script, the way a person edits them."""

from __future__ import annotations

import re
from dataclasses import dataclass

# `NAME = 123`, `NAME = 3e-4`, `NAME = 2**19` (a literal, optionally a power of two), with an optional comment.
_ASSIGN = re.compile(
    r"^(?P<name>[A-Z][A-Z0-9_]*)(?P<eq>\s*=\s*)(?P<value>-?(?:\d+\*\*\d+|\d+\.\d*(?:[eE][-+]?\d+)?|\d*\.\d+(?:[eE][-+]?\d+)?"
    r"|\d+(?:[eE][-+]?\d+)?))(?P<rest>\s*(?:#.*)?)$"
)


@dataclass(frozen=True)
class Hyperparameter:
    name: str
    value: float
    is_int: bool
    is_power_of_two_literal: bool
    line: int  # 0-based


def find_hyperparameters(source: str) -> list[Hyperparameter]:
    """Module-level numeric constants; lines inside functions or classes are indented and never match."""
    found: list[Hyperparameter] = []
    for i, line in enumerate(source.splitlines()):
        match = _ASSIGN.match(line)
        if not match:
            continue
        raw = match.group("value")
        if "**" in raw:
            base, exp = raw.split("**")
            value, is_int, pow2 = float(int(base) ** int(exp)), True, base == "2"
        else:
            is_int = re.fullmatch(r"-?\d+", raw) is not None
            value, pow2 = float(raw), False
        found.append(Hyperparameter(match.group("name"), value, is_int, pow2, i))
    return found


def format_value(param: Hyperparameter, value: float) -> str:
    if param.is_power_of_two_literal and value >= 1:
        exponent = max(0, round(__import__("math").log2(value)))
        return f"2**{exponent}"
    if param.is_int:
        return str(max(1, int(round(value))))
    return f"{value:.6g}"


def set_hyperparameter(source: str, name: str, new_value: str) -> str:
    """Replace the value of `name`, keeping the spacing and comment of the line. Raises KeyError if absent."""
    lines = source.splitlines(keepends=True)
    for i, line in enumerate(lines):
        body = line.rstrip("\r\n")
        match = _ASSIGN.match(body)
        if match and match.group("name") == name:
            ending = line[len(body):]
            lines[i] = f"{name}{match.group('eq')}{new_value}{match.group('rest')}{ending}"
            return "".join(lines)
    raise KeyError(f"no numeric UPPER_CASE assignment named {name}")
