"""Find and change the UPPER_CASE hyperparameters at the top of a script, the way a person edits them, and read the
range each one may take from its comment.

The comment convention (one clause in the trailing comment, after any description, separated by `;`):

    LR = 0.04           # learning rate; range: 0.001..0.1 log     float, sampled on a log scale
    DEPTH = 4           # blocks; range: 2..8                       int (the literal and the bounds are integers)
    DROPOUT = 0.1       # range: 0..0.5                             float, linear scale
    BATCH = 2**14       # range: 2**12..2**16                       a power of two stays a power of two
    ACT = "relu2"       # choices: relu2, gelu                      categorical (strings, numbers or True/False)
    SEED = 42           # fixed                                     never tuned

Without a clause the defaults apply, anchored to the value in the file: a positive float from x/4 to x*4 on a log
scale, a positive int from max(1, x//2) to x*2, a power of two from half to double, a bool both ways. Zero, negative
numbers and strings without `choices:` are left alone, and so are names that change what is measured (`SKIP`).
Only literal values are tunable: `DEPTH = by_device(8, 6, 4)` is code, not a hyperparameter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, Union

_NUMBER = r"-?(?:\d+\*\*\d+|\d+\.\d*(?:[eE][-+]?\d+)?|\d*\.\d+(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?)"
_STRING = r"\"[^\"\\\n]*\"|'[^'\\\n]*'"
# `NAME = 123`, `NAME = 3e-4`, `NAME = 2**19`, `NAME = True`, `NAME = "gelu"`, with an optional comment.
_ASSIGN = re.compile(
    rf"^(?P<name>[A-Z][A-Z0-9_]*)(?P<eq>\s*=\s*)(?P<value>{_NUMBER}|True|False|{_STRING})(?P<rest>\s*(?:#.*)?)$"
)
_RANGE = re.compile(rf"(?:^|;)\s*range:\s*(?P<lo>{_NUMBER})\s*\.\.\s*(?P<hi>{_NUMBER})"
                    r"(?P<flags>(?:\s+(?:log|linear|int))*)\s*(?:;|$)")
_CHOICES = re.compile(r"(?:^|;)\s*choices:\s*(?P<items>[^;]+?)\s*(?:;|$)")
_FIXED = re.compile(r"(?:^|;)\s*fixed\s*(?:;|$)")

# Changing these tells us nothing about the model (or breaks the contract with the evaluation).
SKIP = frozenset({"SEED", "EVAL_TOKENS", "MAX_SEQ_LEN", "VOCAB_SIZE", "TIME_BUDGET", "MAX_LOSS", "UNTIMED_STEPS"})

Value = Union[float, int, bool, str]
Kind = Literal["float", "int", "pow2", "categorical"]


class RangeError(ValueError):
    """A range comment that cannot be used; the message names the line and what to write instead."""


@dataclass(frozen=True)
class Hyperparameter:
    name: str
    value: float
    is_int: bool
    is_power_of_two_literal: bool
    line: int  # 0-based


@dataclass(frozen=True)
class Tunable:
    """One hyperparameter and the values it may take. For `pow2`, `low`/`high` are exponents."""
    name: str
    kind: Kind
    current: Value
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Value, ...] = ()
    declared: bool = False  # the range came from the comment, not the defaults

    def contains(self, value: Value) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        if isinstance(value, (bool, str)):
            return False
        number = math.log2(value) if self.kind == "pow2" and value > 0 else float(value)
        return self.low <= number <= self.high

    def clip(self, value: float) -> float:
        """A number moved into the range (pow2: the value, not its exponent)."""
        if self.kind == "pow2":
            return 2.0 ** min(max(round(math.log2(max(value, 1.0))), self.low), self.high)
        return min(max(value, self.low), self.high)

    def format(self, value: Value) -> str:
        """The literal to write into the file."""
        if isinstance(value, bool):
            return str(value)
        if isinstance(value, str):
            return repr(value)
        if self.kind == "pow2":
            return f"2**{round(math.log2(value))}"
        if self.kind == "int" or isinstance(value, int):
            return str(int(round(value)))
        text = f"{value:.4g}"
        return text if any(c in text for c in ".en") else text + ".0"  # a float stays a float literal


def _literal(raw: str) -> Value:
    if raw in ("True", "False"):
        return raw == "True"
    if raw[:1] in "\"'":
        return raw[1:-1]
    if "**" in raw:
        base, exp = raw.split("**")
        return int(base) ** int(exp)
    return int(raw) if re.fullmatch(r"-?\d+", raw) else float(raw)


def _choice(raw: str) -> Value:
    raw = raw.strip()
    if re.fullmatch(_NUMBER, raw) or raw in ("True", "False") or re.fullmatch(_STRING, raw):
        return _literal(raw)
    return raw  # a bare word is a string: `choices: relu2, gelu`


def find_hyperparameters(source: str) -> list[Hyperparameter]:
    """Module-level numeric constants; lines inside functions or classes are indented and never match."""
    found: list[Hyperparameter] = []
    for i, line in enumerate(source.splitlines()):
        match = _ASSIGN.match(line)
        if not match:
            continue
        raw = match.group("value")
        value = _literal(raw)
        if isinstance(value, (bool, str)):
            continue
        pow2 = "**" in raw and raw.split("**")[0] == "2"
        found.append(Hyperparameter(match.group("name"), float(value), isinstance(value, int), pow2, i))
    return found


def find_tunables(source: str, skip: frozenset[str] = SKIP) -> list[Tunable]:
    """Every hyperparameter that may be tuned, with its range (declared in the comment, or the defaults)."""
    found: list[Tunable] = []
    for i, line in enumerate(source.splitlines()):
        match = _ASSIGN.match(line)
        if not match:
            continue
        name, raw, comment = match.group("name"), match.group("value"), match.group("rest").strip().lstrip("#")
        value = _literal(raw)
        if _FIXED.search(comment):
            continue
        tunable = _declared(name, raw, value, comment, i + 1)
        if tunable is None and name not in skip:
            tunable = _default(name, raw, value)
        if tunable is not None:
            found.append(tunable)
    return found


def _declared(name: str, raw: str, value: Value, comment: str, lineno: int) -> Tunable | None:
    choices = _CHOICES.search(comment)
    if choices:
        items = tuple(_choice(item) for item in choices.group("items").split(","))
        if len(items) < 2:
            raise RangeError(f"line {lineno}: {name} has `choices: {choices.group('items')}`, one choice; list at "
                             "least two, separated by commas, e.g. `choices: relu2, gelu`")
        return Tunable(name, "categorical", value, choices=items, declared=True)
    found = _RANGE.search(comment)
    if not found:
        if "range:" in comment:
            raise RangeError(f"line {lineno}: cannot read the range of {name} in {comment.strip()!r}; write it as "
                             "`range: LOW..HIGH` with optional `log` or `int`, e.g. `range: 0.001..0.1 log`")
        return None
    if isinstance(value, (bool, str)):
        raise RangeError(f"line {lineno}: {name} = {raw} is not a number, so `range:` does not apply; use "
                         "`choices: a, b` instead")
    lo_raw, hi_raw, flags = found.group("lo"), found.group("hi"), found.group("flags").split()
    lo, hi = float(_literal(lo_raw)), float(_literal(hi_raw))
    if not lo < hi:
        raise RangeError(f"line {lineno}: {name} has range {lo_raw}..{hi_raw}; the low end must be below the high end")
    log = "log" in flags
    if log and lo <= 0:
        raise RangeError(f"line {lineno}: {name} has a log range starting at {lo_raw}; a log scale needs a positive "
                         "low end (or drop `log`)")
    if "**" in raw and raw.startswith("2**"):
        if lo < 1 or not math.log2(lo).is_integer() or not math.log2(hi).is_integer():
            raise RangeError(f"line {lineno}: {name} = {raw} is a power of two but its range {lo_raw}..{hi_raw} is "
                             "not; write the bounds as powers of two, e.g. `range: 2**12..2**16`")
        return Tunable(name, "pow2", value, math.log2(lo), math.log2(hi), declared=True)
    is_int = "int" in flags or (isinstance(value, int) and lo.is_integer() and hi.is_integer() and "." not in lo_raw
                                and "." not in hi_raw)
    return Tunable(name, "int" if is_int else "float", value, lo, hi, log=log, declared=True)


def _default(name: str, raw: str, value: Value) -> Tunable | None:
    if isinstance(value, bool):
        return Tunable(name, "categorical", value, choices=(True, False))
    if isinstance(value, str) or value <= 0:
        return None
    if "**" in raw and raw.startswith("2**"):
        exponent = math.log2(value)
        return Tunable(name, "pow2", value, max(0.0, exponent - 1), exponent + 1)
    if isinstance(value, int):
        return Tunable(name, "int", value, max(1, value // 2), value * 2)
    return Tunable(name, "float", value, value / 4, value * 4, log=True)


def read_values(source: str) -> dict[str, Value]:
    """Every literal UPPER_CASE assignment's value, by name."""
    values: dict[str, Value] = {}
    for line in source.splitlines():
        match = _ASSIGN.match(line)
        if match:
            values[match.group("name")] = _literal(match.group("value"))
    return values


def format_value(param: Hyperparameter, value: float) -> str:
    if param.is_power_of_two_literal and value >= 1:
        exponent = max(0, round(math.log2(value)))
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
    raise KeyError(f"no literal UPPER_CASE assignment named {name}")
