"""The MCP server: three thin tools over the engine, every call written to the audit chain.

Errors split by who can fix them: a `Refusal` (the agent can act on it) becomes a tool result with `is_error` and a
message that says what to do next; anything unexpected is logged with its traceback and reported as an error too, so the
agent is never told that a failed call succeeded.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from typing import Annotated, Any, Awaitable, Callable, Literal, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from server.audit import AuditError
from server.engine import Engine, Refusal
from server.models import DecisionResult, ReadResultsResult, RunExperimentResult

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

INSTRUCTIONS = """\
Locked research tools. You improve the mutable file(s) against a fixed metric. Loop: read_results -> edit the mutable
file with ONE idea -> run_experiment -> commit_or_revert -> repeat, forever. The server enforces the rules: the time
budget, the evaluation, which files may change, and whether a change is kept."""


class AgentFacingError(ToolError):
    """Reported to the model as an `is_error` tool result."""


def _caller(ctx: Context | None) -> str:
    """Who is calling: the harness's session id when it set one, else the MCP client's name."""
    session = os.environ.get("AUTORESEARCH_SESSION_ID")
    name = None
    try:
        params = ctx.session.client_params if ctx is not None else None  # type: ignore[union-attr]
        if params is not None:
            name = f"{params.client_info.name}/{params.client_info.version}"
        peer = getattr(getattr(ctx.request_context, "request", None), "client", None) if ctx is not None else None
        if peer is not None:  # over HTTP: who connected, for the morning audit
            name = f"{name or 'client'}@{peer.host}:{peer.port}"
    except Exception:  # noqa: BLE001 - the identity is best effort; the call itself must not fail over it
        name = None
    return ":".join(x for x in (session, name) if x) or "unknown"


def _summary(result: BaseModel) -> dict[str, Any]:
    """The audit record keeps the gist of a result, not diffs or logs."""
    data = result.model_dump(mode="json")
    for bulky in ("log_tail", "experiments", "detail", "next_step"):
        data.pop(bulky, None)
    return data


def _try_audit(engine: Engine, **record: Any) -> str | None:
    """Append the call's audit record; a failure (a full disk) is logged and returned as a sentence instead of
    replacing the tool's own result with a bare "Error executing tool"."""
    try:
        engine.audit.append("server", "tool_call", **record)
        return None
    except (OSError, AuditError) as exc:
        log.error("could not write the audit record of %s: %s", record.get("tool"), exc)
        return f"(The audit record of this call could not be written: {exc})"


def describe_os_error(tool: str, exc: OSError) -> str:
    """What an I/O failure means for the agent: the cause, what was and was not recorded, and what to do next."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        cause = "the disk holding the run's records is full"
    elif exc.errno == errno.EROFS:
        cause = "the file system holding the run's records is read-only"
    else:
        cause = f"an I/O error occurred ({os.strerror(exc.errno) if exc.errno else type(exc).__name__})"
    return (f"{tool} could not finish: {cause}: {exc}. Nothing half-done is kept: an experiment that started is "
            "recorded and a decision that began is completed exactly once as soon as the server can write again. "
            "A person must free disk space (old runs/*/experiments/*/checkpoint.pt files are the usual culprits); "
            "stop making changes and call read_results in a few minutes.")


async def _audited(engine: Engine, tool: str, args: dict[str, Any], ctx: Context | None,
                   call: Callable[[str], Awaitable[T]]) -> T:
    caller = _caller(ctx)
    start = time.monotonic()
    session = os.environ.get("AUTORESEARCH_SESSION_ID")
    try:
        result = await call(caller)
    except Refusal as exc:
        note = _try_audit(engine, session=session, tool=tool, args=args, status="refused",
                          summary={"error": str(exc), "caller": caller}, duration_ms=(time.monotonic() - start) * 1000)
        raise AgentFacingError(" ".join(x for x in (str(exc), note) if x)) from None
    except BaseException as exc:
        status = "cancelled" if type(exc).__name__ in ("CancelledError", "Cancelled") else "error"
        note = _try_audit(engine, session=session, tool=tool, args=args, status=status,
                          summary={"error": f"{type(exc).__name__}: {exc}"[:500], "caller": caller},
                          duration_ms=(time.monotonic() - start) * 1000)
        if isinstance(exc, OSError):
            log.error("%s failed: %s", tool, exc)
            raise AgentFacingError(" ".join(x for x in (describe_os_error(tool, exc), note) if x)) from exc
        if isinstance(exc, Exception) and not isinstance(exc, ToolError):
            log.exception("%s failed", tool)
            raise AgentFacingError(f"{tool} failed inside the server ({type(exc).__name__}: {exc}). "
                                   "Nothing was recorded as kept; call read_results to see the state.") from exc
        raise
    summary = _summary(result)
    summary["caller"] = caller
    _try_audit(engine, session=session, tool=tool, args=args, status="ok", summary=summary,
               duration_ms=(time.monotonic() - start) * 1000)  # the effect is recorded: the call succeeded
    return result


def build_server(engine: Engine) -> MCPServer:
    cfg = engine.config
    mutable = ", ".join(cfg.mutable)
    locked = ", ".join(cfg.locked) or "none"
    better = "lower" if cfg.direction == "minimize" else "higher"
    server: MCPServer = MCPServer("autoresearch", instructions=INSTRUCTIONS, version="0.1.0")

    run_doc = (
        f"Run the experiment once on the current {mutable} and return its result. The command trains for a fixed "
        f"budget of {cfg.time_budget_s:g} seconds set by the server (you cannot change it); a run still going at "
        f"{cfg.hard_timeout_s:g} s is killed and recorded as status 'timeout'. The metric '{cfg.metric}' ({better} is "
        "better) comes from the locked evaluation, not from anything the script prints. status: ok | crash | timeout | "
        "invalid (a locked file changed: the result is void). The first experiment of a run must be the unmodified "
        "baseline. Refused (error result, nothing runs) while an earlier result is undecided (call commit_or_revert), "
        f"when a locked file ({locked}) was changed (it is restored), or when the repository was changed by other "
        "means. description: one line saying what this experiment changes (3-300 chars). hypothesis: optional, why "
        "it should help (up to 1000 chars)."
    )

    @server.tool(description=run_doc, annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False,
                                                                  idempotent_hint=False, open_world_hint=False))
    async def run_experiment(
        description: Annotated[str, Field(min_length=3, max_length=300,
                                          description="What this experiment changes, in one line.")],
        hypothesis: Annotated[str | None, Field(max_length=1000, description="Why it should help.")] = None,
        ctx: Context | None = None,
    ) -> RunExperimentResult:
        args = {"description": description, "hypothesis": hypothesis}
        return await _audited(engine, "run_experiment", args, ctx,
                              lambda caller: engine.run_experiment(description, hypothesis, caller))

    results_doc = (
        f"Read the history of this run: baseline and best '{cfg.metric}' ({better} is better), counts by status, the "
        "last experiments (id, status, metric, delta = metric minus the best kept before it, decision, description), "
        "the pending experiment if any. Pass experiment_id to also get that experiment's full diff, log tail, metrics "
        "and failure reason, so failed ideas are never lost. last_n: 1-200 (default 10). status: filter rows by "
        "ok | crash | timeout | invalid. Read-only."
    )

    @server.tool(description=results_doc, annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True,
                                                                      open_world_hint=False))
    async def read_results(
        last_n: Annotated[int, Field(ge=1, le=200, description="How many recent experiments to list.")] = 10,
        status: Annotated[Literal["ok", "crash", "timeout", "invalid"] | None,
                          Field(description="Only list experiments with this status.")] = None,
        experiment_id: Annotated[int | None, Field(ge=1, description="Also return this experiment's diff and log.")]
        = None,
        ctx: Context | None = None,
    ) -> ReadResultsResult:
        args = {"last_n": last_n, "status": status, "experiment_id": experiment_id}

        async def call(caller: str) -> ReadResultsResult:
            return engine.read_results(last_n, status, experiment_id)

        return await _audited(engine, "read_results", args, ctx, call)

    decide_doc = (
        f"Decide the pending experiment; the server applies the rule. It is KEPT (committed on the run branch with "
        f"its metric in the message) only if its '{cfg.metric}' beats the best kept result by more than "
        f"{cfg.min_improvement:g} ({better} is better); otherwise {mutable} is restored to the best commit. You can "
        "never keep a result that does not improve; you may always ask to revert (prefer='revert'). With no "
        "experiment pending, prefer='revert' restores the best code (use it after a crash you will not fix). "
        "experiment_id: optional, must be the pending experiment."
    )

    @server.tool(description=decide_doc, annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True,
                                                                     idempotent_hint=False, open_world_hint=False))
    async def commit_or_revert(
        experiment_id: Annotated[int | None, Field(ge=1, description="The pending experiment's id.")] = None,
        prefer: Annotated[Literal["keep_if_better", "revert"],
                          Field(description="keep_if_better applies the rule; revert always reverts.")]
        = "keep_if_better",
        ctx: Context | None = None,
    ) -> DecisionResult:
        args = {"experiment_id": experiment_id, "prefer": prefer}

        async def call(caller: str) -> DecisionResult:
            return engine.commit_or_revert(experiment_id, prefer, caller)

        return await _audited(engine, "commit_or_revert", args, ctx, call)

    return server
