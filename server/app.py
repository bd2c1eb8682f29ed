"""The MCP server: three thin tools over the engine, every call written to the audit chain.

Errors split by who can fix them: a `Refusal` (the agent can act on it) becomes a tool result with `is_error` and a
message that says what to do next; anything unexpected is logged with its traceback and reported as an error too, so the
agent is never told that a failed call succeeded.

Every call is checked against the tool's exact schema (`server/arguments.py`) before the SDK sees it: an unknown tool,
an unknown argument or a value of the wrong type is refused with a message that names it, and audited with exactly the
arguments that were sent. Before a run exists (`autoresearch init` not done yet) the server still starts and lists its
tools; each call then says how to create the run, and the first call after `init` opens it without a restart.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from contextvars import ContextVar
from typing import Any, Awaitable, Callable, NoReturn, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import Tool, ToolAnnotations
from pydantic import BaseModel

from server.arguments import TOOL_ARGS, ArgumentsRefused, input_schema, shown, validate
from server.config import Config, ConfigError
from server.audit import AuditError
from server.engine import Engine, Refusal
from server.models import DecisionResult, ReadResultsResult, RunExperimentResult
from server.runstate import RunError
from server.text import for_terminal

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


# The arguments exactly as the client sent them, for the audit record of the call being served.
_SENT: ContextVar[dict[str, Any] | None] = ContextVar("autoresearch_sent_arguments", default=None)


class NoRunYet(Exception):
    """No run can be opened yet; the message says how to create one."""


class EngineSlot:
    """The engine the tools use. Without a run it keeps the reason, and tries `opener` again on every call."""

    def __init__(self, engine: Engine | None = None, *, config: Config | None = None,
                 opener: Callable[[], Engine] | None = None, reason: str = "") -> None:
        self._engine = engine
        self._config = config if engine is None else engine.config
        self._opener = opener
        self.reason = reason

    @property
    def engine(self) -> Engine | None:
        return self._engine

    @property
    def config(self) -> Config | None:
        return self._config

    def get(self) -> Engine:
        if self._engine is None:
            if self._opener is not None:
                try:
                    self._engine = self._opener()
                    self._config = self._engine.config
                    log.info("run %s opened on a call", self._engine.run.tag)
                except (RunError, ConfigError) as exc:
                    self.reason = str(exc)
            if self._engine is None:
                raise NoRunYet(self.reason or "no run is open")
        return self._engine


def _refuse_early(slot: EngineSlot, tool: str, sent: dict[str, Any], ctx: Context | None, message: str) -> NoReturn:
    """Audit a call refused before it reached the engine (when a run is open), then refuse it."""
    caller = _caller(ctx)
    engine = slot.engine
    if engine is None:
        try:
            engine = slot.get()
        except NoRunYet:
            engine = None
    if engine is not None:
        engine.audit.append("server", "tool_call", session=os.environ.get("AUTORESEARCH_SESSION_ID"), tool=tool,
                            args=sent, status="refused", summary={"error": message, "caller": caller},
                            duration_ms=0.0)
    log.info("refused %s from %s: %s", tool, caller, message)
    raise AgentFacingError(message)


class LockedToolServer(MCPServer):
    """MCPServer whose calls are validated against `server/arguments.py` first, and whose schemas are those models."""

    def __init__(self, slot: EngineSlot, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slot = slot

    async def list_tools(self) -> list[Tool]:
        tools = await super().list_tools()
        return [t.model_copy(update={"input_schema": input_schema(t.name)}) if t.name in TOOL_ARGS else t
                for t in tools]

    async def call_tool(self, name: str, arguments: dict[str, Any],
                        context: Context | None = None) -> Any:
        sent = dict(arguments)
        if name not in TOOL_ARGS:
            _refuse_early(self.slot, for_terminal(name)[:60], sent, context,
                          f"there is no tool {shown(name, 60)}; the tools are {', '.join(TOOL_ARGS)}. "
                          "Call one of them (list them with tools/list).")
        try:
            validate(name, sent)
        except ArgumentsRefused as exc:
            _refuse_early(self.slot, name, sent, context, str(exc))
        token = _SENT.set(sent)
        try:
            return await super().call_tool(name, arguments, context)
        finally:
            _SENT.reset(token)


async def _audited(slot: EngineSlot, tool: str, ctx: Context | None, call: Callable[[Engine, str], Awaitable[T]]) -> T:
    args = _SENT.get()
    if args is None:
        args = {}
    try:
        engine = slot.get()
    except NoRunYet as exc:
        log.info("%s called before a run exists: %s", tool, exc)
        raise AgentFacingError(
            f"no experiment run is open, so nothing was done: {exc}. Then call {tool} again: this server opens the "
            "run on the next call, no restart needed."
        ) from None
    caller = _caller(ctx)
    start = time.monotonic()
    session = os.environ.get("AUTORESEARCH_SESSION_ID")
    try:
        result = await call(engine, caller)
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


def _slot_count(cfg: Config | None) -> int:
    """How many experiments the run executes at once (1 when the slots cannot be planned: the engine says why)."""
    if cfg is None:
        return 1
    from server.slots import SlotError, plan_slots

    try:
        return len(plan_slots(cfg))
    except SlotError:
        return 1


def _docs(cfg: Config | None) -> dict[str, str]:
    """What each tool's description says; the numbers come from the configuration when there is one."""
    slots = _slot_count(cfg)
    if cfg is None:
        mutable, locked, metric, better = "the mutable file(s)", "the locked files", "the metric", "see read_results"
        budget = "a fixed budget set by the server"
        hard = "the server's hard limit"
        margin = "the configured minimum improvement"
    else:
        mutable = ", ".join(cfg.mutable)
        locked = ", ".join(cfg.locked) or "none"
        metric = f"'{cfg.metric}'"
        better = "lower is better" if cfg.direction == "minimize" else "higher is better"
        budget = f"a fixed budget of {cfg.time_budget_s:g} seconds set by the server (you cannot change it)"
        hard = f"{cfg.hard_timeout_s:g} s"
        margin = f"{cfg.min_improvement:g}"
    run_doc = (
        f"Run the experiment once on the current {mutable} and return its result. The command trains for {budget}; "
        f"a run still going at {hard} is killed and recorded as status 'timeout'. The metric {metric} ({better}) "
        "comes from the locked evaluation, not from anything the script prints. status: ok | crash | timeout | "
        "invalid (a locked file changed: the result is void). The first experiment of a run must be the unmodified "
        "baseline. Refused (error result, nothing runs) while an earlier result is undecided (call commit_or_revert), "
        f"when a locked file ({locked}) was changed (it is restored), or when the repository was changed by other "
        "means. description: one line of plain text saying what this experiment changes (3-300 chars). hypothesis: "
        "optional, why it should help (up to 1000 chars). wait: optional, default true."
        + (f" This run has {slots} slots, so run experiments in WAVES: edit a variant, call run_experiment with "
           "wait=false (it snapshots the file now and returns at once with its id), edit the next variant, submit it "
           f"the same way, up to {slots} at once (more are queued); then call read_results with wait_s to wait for "
           "results and decide each finished one with commit_or_revert(experiment_id=...). A variant kept after "
           "another replaces the best code (it is compared with the best at decision time)." if slots > 1 else "")
        + " No other arguments; control characters are refused."
    )
    results_doc = (
        f"Read the history of this run: baseline and best {metric} ({better}), counts by status, the "
        "last experiments (id, status, metric, delta = metric minus the best kept before it, decision, description), "
        "the pending experiment if any. Pass experiment_id to also get that experiment's full diff, log tail, metrics "
        "and failure reason, so failed ideas are never lost. last_n: integer 1-200 (default 10). status: filter rows "
        "by ok | crash | timeout | invalid. in_flight lists queued and running experiments (slot, seconds left); "
        "pending_ids the finished, undecided ones. wait_s: optional, block up to that many seconds until the next "
        "running experiment finishes (use it instead of calling repeatedly). Read-only."
    )
    decide_doc = (
        f"Decide the pending experiment; the server applies the rule. It is KEPT (committed on the run branch with "
        f"its metric in the message) only if its {metric} beats the best kept result by more than {margin} "
        f"({better}); otherwise {mutable} is restored to the best commit. You can never keep a result that does not "
        "improve; you may always ask to revert (prefer='revert'). With no experiment pending, prefer='revert' "
        "restores the best code (use it after a crash you will not fix). experiment_id: optional integer, a finished "
        "undecided experiment (required when several are undecided)."
    )
    if cfg is not None and (cfg.noise_runs > 1 or cfg.confirm_runs > 0):
        decide_doc += (
            f" Honest acceptance: the baseline ran {cfg.noise_runs} times and their spread is the noise floor "
            "(read_results: noise_floor); the result must beat the mean of the best's runs by more than "
            f"max({margin}, {cfg.noise_k:g} x noise floor)"
            + (f", and a result that does is first re-run {cfg.confirm_runs} more time(s) with fresh seeds in this "
               "call and kept only if the mean of its runs still does (the call lasts that long)."
               if cfg.confirm_runs else ".")
        )
    return {"run_experiment": run_doc, "read_results": results_doc, "commit_or_revert": decide_doc}


def build_server(source: Engine | EngineSlot) -> MCPServer:
    """The three tools over an engine, or over a slot that may not hold a run yet (see `EngineSlot`)."""
    slot = source if isinstance(source, EngineSlot) else EngineSlot(source)
    docs = _docs(slot.config)
    server = LockedToolServer(slot, name="autoresearch", instructions=INSTRUCTIONS, version="0.1.0")

    @server.tool(description=docs["run_experiment"],
                 annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                                             open_world_hint=False))
    async def run_experiment(description: str, hypothesis: str | None = None, wait: bool = True,
                             ctx: Context | None = None) -> RunExperimentResult:
        return await _audited(slot, "run_experiment", ctx,
                              lambda engine, caller: engine.run_experiment(description, hypothesis, caller, wait))

    @server.tool(description=docs["read_results"],
                 annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False))
    async def read_results(last_n: int = 10, status: str | None = None, experiment_id: int | None = None,
                           wait_s: float = 0, ctx: Context | None = None) -> ReadResultsResult:
        async def call(engine: Engine, caller: str) -> ReadResultsResult:
            if wait_s:
                await engine.wait_for_next(wait_s)
            return engine.read_results(last_n, status, experiment_id)

        return await _audited(slot, "read_results", ctx, call)

    @server.tool(description=docs["commit_or_revert"],
                 annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False,
                                             open_world_hint=False))
    async def commit_or_revert(experiment_id: int | None = None, prefer: str = "keep_if_better",
                               ctx: Context | None = None) -> DecisionResult:
        async def call(engine: Engine, caller: str) -> DecisionResult:
            return await engine.decide(experiment_id, prefer, caller)

        return await _audited(slot, "commit_or_revert", ctx, call)

    return server
