"""What each tool accepts, exactly, and the message a client gets when it sends anything else.

Each tool's arguments are a strict pydantic model: no property beyond the declared ones (`additionalProperties:
false` in the published schema), integers only as JSON integers (`"5"`, `5.0` and `true` are refused), strings only as
strings, and agent text without control characters (`server/text.py`). The server validates every call against these
models before the SDK sees it, so a refusal reads like every other refusal of this project (what happened, the value,
what to do) and is audited with exactly what was sent, instead of arguments being silently dropped or coerced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.text import SCHEMA_PATTERN, check_agent_text, UnsafeText

MAX_DESCRIPTION = 300
MAX_HYPOTHESIS = 1000
MAX_LAST_N = 200
MAX_WAIT_S = 1200.0  # read_results(wait_s): below the agent's per-call timeout (1500 s in .mcp.json)

_STRICT = ConfigDict(extra="forbid", strict=True)


class RunExperimentArgs(BaseModel):
    model_config = _STRICT
    description: Annotated[str, Field(min_length=3, max_length=MAX_DESCRIPTION, pattern=SCHEMA_PATTERN,
                                      description="What this experiment changes, in one line of plain text.")]
    hypothesis: Annotated[str | None, Field(max_length=MAX_HYPOTHESIS, pattern=SCHEMA_PATTERN,
                                            description="Why it should help, in plain text.")] = None
    wait: Annotated[bool, Field(description="true (default): return the result. false: queue it and return at "
                                "once with its id, then edit the next variant (a wave).")] = True


class ReadResultsArgs(BaseModel):
    model_config = _STRICT
    last_n: Annotated[int, Field(ge=1, le=MAX_LAST_N, description="How many recent experiments to list.")] = 10
    status: Annotated[Literal["ok", "crash", "timeout", "invalid"] | None,
                      Field(description="Only list experiments with this status.")] = None
    experiment_id: Annotated[int | None, Field(ge=1, description="Also return this experiment's diff and log.")] = None
    wait_s: Annotated[float, Field(ge=0, le=MAX_WAIT_S, description="Block up to this many seconds until the next "
                                   "running experiment finishes (0: answer at once).")] = 0


class CommitOrRevertArgs(BaseModel):
    model_config = _STRICT
    experiment_id: Annotated[int | None, Field(ge=1, description="The finished experiment to decide (required "
                                                                 "when several are undecided).")] = None
    prefer: Annotated[Literal["keep_if_better", "revert"],
                      Field(description="keep_if_better applies the rule; revert always reverts.")] = "keep_if_better"


@dataclass(frozen=True)
class ToolArgs:
    model: type[BaseModel]
    rules: dict[str, str]  # field -> what is allowed, in words ("an integer from 1 to 200, default 10")


TOOL_ARGS: dict[str, ToolArgs] = {
    "run_experiment": ToolArgs(RunExperimentArgs, {
        "description": f"a string of 3 to {MAX_DESCRIPTION} characters of plain text, required",
        "hypothesis": f"a string of up to {MAX_HYPOTHESIS} characters of plain text, or omitted",
        "wait": "true or false (a JSON boolean), or omitted for true",
    }),
    "read_results": ToolArgs(ReadResultsArgs, {
        "last_n": f"an integer from 1 to {MAX_LAST_N} (a JSON number without a fraction), or omitted for 10",
        "status": "one of \"ok\", \"crash\", \"timeout\", \"invalid\", or omitted for all",
        "experiment_id": "an integer from 1 (a JSON number without a fraction), or omitted",
        "wait_s": f"a number of seconds from 0 to {MAX_WAIT_S:g}, or omitted for 0",
    }),
    "commit_or_revert": ToolArgs(CommitOrRevertArgs, {
        "experiment_id": "the id of a finished, undecided experiment as an integer from 1, or omitted when only "
                         "one is undecided",
        "prefer": "\"keep_if_better\" or \"revert\", or omitted for keep_if_better",
    }),
}

# Arguments agents try that the server deliberately does not take, with the reason.
_NOT_YOURS = {
    "time_budget_s": "the time budget is fixed by the server's configuration",
    "timeout": "the time limits are fixed by the server's configuration",
    "force_keep": "only the rule decides what is kept",
    "force": "only the rule decides what is kept",
    "keep": "only the rule decides what is kept",
    "metric": "the metric comes from the locked evaluation",
}


def input_schema(tool: str) -> dict[str, Any]:
    """The JSON Schema published for `tool`: exactly what `validate` accepts."""
    schema = TOOL_ARGS[tool].model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema


def shown(value: Any, limit: int = 80) -> str:
    """A sent value as JSON, ASCII only (control characters escaped), cut to `limit` characters."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(value).encode("ascii", "backslashreplace").decode()
    return text if len(text) <= limit else text[:limit - 3] + "..."


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction" if not float(value).is_integer() else "a floating-point number"
    if isinstance(value, str):
        return f"a string of {len(value)} character{'' if len(value) == 1 else 's'}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class ArgumentsRefused(ValueError):
    """The arguments do not match the tool's schema; the message lists every problem and what to send instead."""


def _problem(tool: str, spec: ToolArgs, error: dict[str, Any], arguments: dict[str, Any]) -> str:
    loc = error.get("loc") or ()
    name = str(loc[0]) if loc else "arguments"
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        why = _NOT_YOURS.get(name, "it is not one of its arguments")
        return (f"{tool} does not take {name!r} (sent {shown(arguments.get(name))}): {why}; "
                f"its arguments are {', '.join(spec.rules)}")
    rule = spec.rules.get(name, "as the input schema says")
    if kind == "missing":
        return f"{name} is missing: it must be {rule}"
    value = arguments.get(name)
    if kind == "string_pattern_mismatch" and isinstance(value, str):
        try:
            check_agent_text(value, name)
        except UnsafeText as exc:
            return str(exc).split(" Write ", 1)[0].rstrip(".")
    return f"{name} must be {rule}; got {shown(value)} ({json_type(value)})"


def validate(tool: str, arguments: dict[str, Any]) -> BaseModel:
    """The parsed arguments of a call to `tool`; `ArgumentsRefused` when they do not match its schema exactly."""
    spec = TOOL_ARGS[tool]
    try:
        return spec.model.model_validate(arguments)
    except ValidationError as exc:
        problems = [_problem(tool, spec, dict(err), arguments) for err in exc.errors()]
        raise ArgumentsRefused(
            f"{tool} refused its arguments and nothing was done: {'; '.join(problems)}. "
            f"Call {tool} again with arguments that match its input schema."
        ) from None
