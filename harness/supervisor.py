"""The state machine that keeps an agent working through the night, whichever agent it is.

One `tick()` drains what the agent said, then decides: stop (a limit or a request), restart (the session ended, was
silent too long, or ran out of context), back off (the API is overloaded or the agent keeps dying at start), or give
up (a crash loop, FATAL, with a message that says what to check). Every state change goes through `_transition`, is
logged `OLD -> NEW (reason)` and reported to `on_event`. The clock and the spawner are injected, so tests replay a
night in milliseconds; `tick()` never sleeps (only terminating a real process waits, bounded by its grace).
"""

from __future__ import annotations

import enum
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol

from harness.agent_events import AgentEvent, EventKind
from harness.backoff import Backoff, Rng

log = logging.getLogger(__name__)

TRANSIENT_API_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
CONTINUE_PROMPT = (
    "The run is not over: the harness decides when it stops, not the agent. Continue the experiment loop: "
    "read the results so far, pick the next idea, and run the next experiment."
)
RESUME_PROMPT = "The session was interrupted ({why}). Continue the experiment loop where you left off."


class State(enum.Enum):
    STARTING = "STARTING"  # spawned, not yet alive for `startsecs`: a death now is a quick death
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"  # waiting before the next start
    STOPPING = "STOPPING"  # a stop condition holds; waiting for the in-flight experiment, then terminating
    STOPPED = "STOPPED"
    FATAL = "FATAL"  # gave up: restarting would only repeat the same failure


class EventName(str, enum.Enum):
    START = "start"
    STALL = "stall"
    RESTART = "restart"
    RESUME = "resume"
    FRESH = "fresh"
    BACKOFF = "backoff"
    VIOLATION = "violation"
    STOP = "stop"
    FATAL = "fatal"
    STATE = "state"


@dataclass(frozen=True)
class SupervisorEvent:
    name: EventName
    state: State  # the state after the event
    message: str
    session_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Launch:
    mode: Literal["new", "resume", "fresh"]  # resume: same session id; fresh: new session, handoff prompt
    session_id: str | None
    prompt: str


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def time(self) -> float: ...  # wall clock, for deadlines
    def wait(self, seconds: float) -> None: ...  # used only by run()


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def wait(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


class AgentProcess(Protocol):
    pid: int

    def events(self) -> list[AgentEvent]: ...  # non-blocking drain of what arrived
    def returncode(self) -> int | None: ...
    def terminate(self, grace_s: float) -> None: ...  # SIGTERM the group, grace, SIGKILL; returns when it is gone


class Spawner(Protocol):
    def spawn(self, launch: Launch) -> AgentProcess: ...


class LoopView(Protocol):
    """The supervisor's read-only window on the run (the ledger, the in-flight file, the stop file)."""

    def inflight_deadline(self) -> float | None: ...  # wall time the in-flight experiment hits its hard limit
    def experiments_started(self) -> int: ...
    def stop_requested(self) -> bool: ...
    def handoff_prompt(self) -> str: ...
    def start_prompt(self) -> str: ...
    def violations(self) -> int: ...


def _check(owner: str, name: str, value: Any, ok: Callable[[float], bool], allowed: str) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (number and ok(value)):
        raise ValueError(f"{owner}.{name} = {value!r} is out of range; allowed: {allowed}")


@dataclass(frozen=True)
class Policy:
    stall_timeout_s: float = 600.0  # silence longer than this, with no experiment in flight, is a stall
    inflight_grace_s: float = 60.0  # an in-flight experiment excuses silence until its hard limit + this
    backoff_base_s: float = 5.0
    backoff_cap_s: float = 300.0
    backoff_jitter: float = 0.25  # fraction of each delay that is randomised
    startsecs: float = 15.0  # a death sooner after spawn is a quick death
    crash_loop_deaths: int = 5  # this many consecutive quick deaths -> FATAL
    max_resumes: int = 3  # this many consecutive failed resumes -> the next start is fresh
    stop_grace_s: float = 30.0

    def __post_init__(self) -> None:
        def check(name: str, ok: Callable[[float], bool], allowed: str) -> None:
            _check("Policy", name, getattr(self, name), ok, allowed)

        check("stall_timeout_s", lambda v: v > 0, "seconds > 0")
        check("inflight_grace_s", lambda v: v >= 0, "seconds >= 0")
        check("backoff_base_s", lambda v: v > 0, "seconds > 0")
        check("backoff_cap_s", lambda v: v >= self.backoff_base_s, f"seconds >= backoff_base_s ({self.backoff_base_s})")
        check("backoff_jitter", lambda v: 0 <= v < 1, "a fraction, 0 <= x < 1")
        check("startsecs", lambda v: v >= 0, "seconds >= 0")
        check("crash_loop_deaths", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
        check("max_resumes", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
        check("stop_grace_s", lambda v: v >= 0, "seconds >= 0")


@dataclass(frozen=True)
class Limits:
    deadline: float | None = None  # wall-clock time (epoch seconds) when the run stops
    max_experiments: int | None = None
    max_cost_usd: float | None = None

    def __post_init__(self) -> None:
        if self.deadline is not None:
            _check("Limits", "deadline", self.deadline, lambda v: True, "epoch seconds, or None")
        if self.max_experiments is not None:
            _check("Limits", "max_experiments", self.max_experiments, lambda v: isinstance(v, int) and v >= 1,
                   "an integer >= 1, or None")
        if self.max_cost_usd is not None:
            _check("Limits", "max_cost_usd", self.max_cost_usd, lambda v: v > 0, "dollars > 0, or None")


@dataclass(frozen=True)
class SupervisorStatus:
    state: State
    reason: str  # why the last transition happened
    session_id: str | None
    pid: int | None
    uptime_s: float
    silent_s: float | None  # since the agent last said anything; None when no agent runs
    restarts: int
    resumes: int
    fresh_starts: int
    stalls: int
    backoffs: int
    quick_deaths: int
    cost_usd: float
    sessions: tuple[str, ...]
    violations: int
    stop_reason: str | None
    fatal_message: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for `supervisor.json`."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["state"] = self.state.value
        out["sessions"] = list(self.sessions)
        return out


def is_context_exhausted(result: AgentEvent) -> bool:
    """True when a session ended because its context window is full, so resuming it would fail again.

    `terminal_reason` is a machine word, so any mention of "context" counts ("context_exhausted", "context_window").
    The free text is only read on an error result, and only for phrases that name the failure ("prompt is too long"
    is the Messages API's own wording): a successful agent's final message may say "context" about anything.
    """
    if result.terminal_reason and "context" in result.terminal_reason.lower():
        return True
    if not result.is_error:
        return False
    text = result.text.lower()
    return any(p in text for p in ("prompt is too long", "context window", "context length", "context limit",
                                   "maximum context", "too many tokens"))


class EndKind(enum.Enum):
    API_OUTAGE = "the API is overloaded or down"  # transient: back off, never a crash loop
    API_ERROR = "the API call failed"  # e.g. 401 or no connection: back off, and a quick one counts as a death
    CONTEXT_EXHAUSTED = "the context window is full"
    AGENT_STOPPED = "the agent ended its session"
    CRASHED = "the session ended abnormally"


def classify_end(result: AgentEvent | None, last_kind: EventKind | None, returncode: int | None) -> EndKind:
    """Why a session ended, from its last RESULT (if any), its last event and its exit status."""
    if result is not None and result.is_error and result.api_error_status in TRANSIENT_API_STATUSES:
        return EndKind.API_OUTAGE
    if last_kind is EventKind.API_RETRY:
        return EndKind.API_OUTAGE  # it died while retrying the API itself
    if result is not None and result.terminal_reason == "api_error":
        return EndKind.API_ERROR
    if result is not None and is_context_exhausted(result):
        return EndKind.CONTEXT_EXHAUSTED
    if result is not None and not result.is_error and result.subtype in (None, "success") and returncode == 0:
        return EndKind.AGENT_STOPPED
    return EndKind.CRASHED


_ALLOWED: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.RUNNING, State.BACKOFF, State.STOPPING, State.FATAL}),
    State.RUNNING: frozenset({State.STARTING, State.BACKOFF, State.STOPPING}),
    State.BACKOFF: frozenset({State.STARTING, State.STOPPING}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.STOPPED: frozenset(),
    State.FATAL: frozenset(),
}
_NAME_OF_MODE: dict[str, EventName] = {"new": EventName.START, "resume": EventName.RESUME, "fresh": EventName.FRESH}


class Supervisor:
    """Keeps one agent session alive until a limit, a stop request, or a crash loop ends the run."""

    def __init__(
        self,
        spawner: Spawner,
        view: LoopView,
        policy: Policy | None = None,
        limits: Limits | None = None,
        clock: Clock | None = None,
        on_event: Callable[[SupervisorEvent], None] | None = None,
        *,
        rng: Rng | None = None,
        log_hint: str | None = None,  # where the agent's output is logged, named in the FATAL message
    ) -> None:
        self._spawner = spawner
        self._view = view
        self.policy = policy if policy is not None else Policy()
        self.limits = limits if limits is not None else Limits()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._on_event = on_event
        self._log_hint = log_hint
        self._backoff = Backoff(self.policy.backoff_base_s, self.policy.backoff_cap_s, self.policy.backoff_jitter, rng)
        self._state = State.STARTING
        self._reason = "supervisor created"
        self._began: float | None = None  # monotonic time of the first tick
        # The current agent process and what is known of its session.
        self._proc: AgentProcess | None = None
        self._launch: Launch | None = None
        self._spawned_at = 0.0
        self._last_activity = 0.0
        self._last_kind: EventKind | None = None
        self._result: AgentEvent | None = None
        self._healthy = False
        self._session_id: str | None = None
        # What happens next, and why the run is ending.
        self._pending: Launch | None = None
        self._backoff_until = 0.0
        self._stop_request: str | None = None
        self._stop_reason: str | None = None
        self._stop_graceful = False
        self._stopping_since = 0.0
        self._fatal_message: str | None = None
        # Counters.
        self._consecutive_quick = 0
        self._failed_resumes = 0
        self._spawns = self._restarts = self._resumes = self._fresh = 0
        self._stalls = self._backoffs = self._quick_deaths = 0
        self._cost_by_session: dict[str, float] = {}
        self._sessions: list[str] = []
        self._violations: int | None = None

    @property
    def state(self) -> State:
        return self._state

    @property
    def cost_usd(self) -> float:
        return sum(self._cost_by_session.values())

    def request_stop(self, reason: str) -> None:
        """Stop now (on SIGINT/SIGTERM): the next tick terminates the agent without waiting for the experiment."""
        if self._stop_request is None:
            self._stop_request = reason

    # ---- The loop ----

    def run(self) -> State:
        while True:
            state = self.tick()
            if state in (State.STOPPED, State.FATAL):
                return state
            self._clock.wait(self._next_wait())

    def tick(self) -> State:
        """One step: drain the agent's events, then stop, restart, back off or carry on. Never sleeps."""
        now = self._clock.monotonic()
        if self._began is None:
            self._began = now
        if self._state in (State.STOPPED, State.FATAL):
            return self._state
        code = None
        if self._proc is not None:
            code = self._proc.returncode()  # before draining, so a process seen dead has had all its output read
            self._absorb(self._proc.events(), now)
        self._watch_violations()
        if self._state is not State.STOPPING:
            stop = self._stop_condition()
            if stop is not None:
                self._stop_reason, self._stop_graceful = stop
                self._stopping_since = now
                self._transition(State.STOPPING, self._stop_reason)
                self._emit(EventName.STOP, self._stop_reason, graceful=self._stop_graceful)
        if self._state is State.STOPPING:
            self._continue_stopping(code, now)
        elif self._proc is None:
            if self._state is State.STARTING:  # the first tick
                self._spawn(self._next_launch(fresh=False, prompt=""), now)
            elif self._state is State.BACKOFF and now >= self._backoff_until:
                assert self._pending is not None
                self._transition(State.STARTING, f"backoff over; {self._pending.mode} session")
                self._spawn(self._pending, now)
        elif code is not None:
            # The leader is gone, but its group (an MCP server, an experiment) may not be: take it all down.
            self._proc.terminate(self.policy.stop_grace_s)
            quick = self._state is State.STARTING
            end = classify_end(self._result, self._last_kind, code)
            self._end_session(end, quick, f"exit code {code}", now)
        elif self._state is State.RUNNING and self._stalled(now):
            silent = now - self._last_activity
            self._stalls += 1
            self._emit(EventName.STALL, f"no event for {silent:.0f} s with no experiment in flight; restarting",
                       silent_s=round(silent, 1), pid=self._proc.pid)
            self._proc.terminate(self.policy.stop_grace_s)
            self._absorb(self._proc.events(), now)
            # Silence before any tool answered is most likely the API hanging (or a slow start): back off rather than
            # restart at once, without counting it toward the crash loop, so a hung API cannot cause a restart storm.
            end = EndKind.CRASHED if self._healthy else EndKind.API_OUTAGE
            self._end_session(end, False, f"silent for {silent:.0f} s", now)
        elif self._state is State.STARTING and now - self._spawned_at >= self.policy.startsecs:
            self._consecutive_quick = 0
            self._transition(State.RUNNING, f"alive for {self.policy.startsecs:g} s")
        return self._state

    def _next_wait(self) -> float:
        now = self._clock.monotonic()
        waits = [1.0]
        if self._state is State.BACKOFF:
            waits.append(self._backoff_until - now)
        if self._state is State.STARTING and self._proc is not None:
            waits.append(self._spawned_at + self.policy.startsecs - now)
        if self.limits.deadline is not None:
            waits.append(self.limits.deadline - self._clock.time())
        return max(0.01, min(waits))

    # ---- What the agent said ----

    def _absorb(self, events: list[AgentEvent], now: float) -> None:
        for event in events:
            self._last_activity = now
            self._last_kind = event.kind
            if event.session_id and event.session_id != self._session_id:
                self._session_id = event.session_id
                if event.session_id not in self._sessions:
                    self._sessions.append(event.session_id)
            if event.kind is EventKind.TOOL_RESULT and not self._healthy:
                self._healthy = True  # tools answer: the API, the agent and the server all work
                self._backoff.reset()
            if event.kind is EventKind.RESULT:
                self._result = event
                if event.cost_usd is not None:
                    key = event.session_id or self._session_id or f"process-{self._spawns}"
                    self._cost_by_session[key] = event.cost_usd

    def _watch_violations(self) -> None:
        count = self._view.violations()
        if self._violations is not None and count > self._violations:
            self._emit(EventName.VIOLATION, f"{count - self._violations} new locked-file violation(s); {count} in all",
                       new=count - self._violations, total=count)
        self._violations = count

    def _stalled(self, now: float) -> bool:
        if now - self._last_activity <= self.policy.stall_timeout_s:
            return False
        deadline = self._view.inflight_deadline()
        return deadline is None or self._clock.time() > deadline + self.policy.inflight_grace_s

    # ---- Deciding what comes next ----

    def _stop_condition(self) -> tuple[str, bool] | None:
        """(reason, graceful) when the run must stop; graceful stops let the in-flight experiment finish first."""
        if self._stop_request is not None:
            return self._stop_request, False
        lim = self.limits
        if lim.deadline is not None and self._clock.time() >= lim.deadline:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(lim.deadline))
            return f"the deadline {stamp} has passed", True
        # The last allowed experiment is let finish: the limit holds once nothing is in flight.
        if lim.max_experiments is not None and self._view.experiments_started() >= lim.max_experiments \
                and self._view.inflight_deadline() is None:
            return f"{lim.max_experiments} experiments have run (the limit)", True
        if lim.max_cost_usd is not None and self.cost_usd >= lim.max_cost_usd:
            return f"the agent has cost ${self.cost_usd:.2f}, at or over the ${lim.max_cost_usd:.2f} limit", True
        if self._view.stop_requested():
            return "a stop was requested", True
        return None

    def _continue_stopping(self, code: int | None, now: float) -> None:
        if self._proc is not None and code is None:
            graceful = self._stop_graceful and self._stop_request is None
            waited = now - self._stopping_since
            if graceful and waited < self.policy.stop_grace_s and self._view.inflight_deadline() is not None:
                return  # let the experiment finish; the server records it either way
            self._proc.terminate(self.policy.stop_grace_s)
            self._absorb(self._proc.events(), now)
        self._proc = None
        self._transition(State.STOPPED, self._stop_reason or "stopped")

    def _end_session(self, end: EndKind, quick: bool, what: str, now: float) -> None:
        """The agent process is gone: count it, then restart now, after a backoff, or never (FATAL)."""
        if self._healthy:
            self._failed_resumes = 0
        elif self._launch is not None and self._launch.mode == "resume" and end is not EndKind.API_OUTAGE:
            self._failed_resumes += 1  # an outage is not the session's fault: resuming it later is still right
        self._proc = None
        if quick and end is not EndKind.API_OUTAGE:
            self._quick_deaths += 1
            self._consecutive_quick += 1
            if self._consecutive_quick >= self.policy.crash_loop_deaths:
                self._fatal(what)
                return
        fresh = end is EndKind.CONTEXT_EXHAUSTED or self._failed_resumes >= self.policy.max_resumes
        prompt = CONTINUE_PROMPT if end is EndKind.AGENT_STOPPED else RESUME_PROMPT.format(why=f"{what}; {end.value}")
        launch = self._next_launch(fresh, prompt)
        reason = f"{end.value} ({what}); {launch.mode} session"
        self._emit(EventName.RESTART, reason, end=end.name, quick=quick, next_mode=launch.mode,
                   failed_resumes=self._failed_resumes)
        if quick or end in (EndKind.API_OUTAGE, EndKind.API_ERROR):
            delay = self._backoff.next_delay()
            self._backoffs += 1
            self._pending = launch
            self._backoff_until = now + delay
            self._transition(State.BACKOFF, f"{end.value} ({what}); next start in {delay:.1f} s")
            self._emit(EventName.BACKOFF, f"waiting {delay:.1f} s before a {launch.mode} session",
                       delay_s=delay, attempt=self._backoff.attempt)
        else:
            self._transition(State.STARTING, reason)
            self._spawn(launch, now)

    def _next_launch(self, fresh: bool, prompt: str) -> Launch:
        """New and fresh sessions get their id here, so every event about them (start, stall, ...) names it."""
        if fresh or (self._session_id is None and self._sessions):
            return Launch("fresh", str(uuid.uuid4()), self._view.handoff_prompt())
        if self._session_id is None:
            return Launch("new", str(uuid.uuid4()), self._view.start_prompt())
        return Launch("resume", self._session_id, prompt)

    def _spawn(self, launch: Launch, now: float) -> None:
        self._launch = launch
        self._spawned_at = self._last_activity = now
        self._last_kind, self._result, self._healthy = None, None, False
        if launch.mode == "fresh":
            self._fresh += 1
            self._failed_resumes = 0
            self._session_id = None  # confirmed by the session's INIT event; until then events name launch.session_id
        elif launch.mode == "resume":
            self._resumes += 1
        if self._spawns > 0:
            self._restarts += 1
        self._spawns += 1
        try:
            self._proc = self._spawner.spawn(launch)
        except Exception as exc:  # a missing CLI or a bad path: a quick death, so a persistent one ends in FATAL
            log.exception("could not start the agent (%s session)", launch.mode)
            self._end_session(EndKind.CRASHED, True, f"could not start the agent: {exc}", now)
            return
        self._emit(_NAME_OF_MODE[launch.mode], f"{launch.mode} session, pid {self._proc.pid}",
                   session_id=launch.session_id, pid=self._proc.pid, mode=launch.mode, prompt=launch.prompt[:500])

    def _fatal(self, what: str) -> None:
        where = f"; see {self._log_hint}" if self._log_hint else ""
        self._fatal_message = (
            f"the agent died {self._consecutive_quick} times in a row within {self.policy.startsecs:g} s of starting; "
            f"last: {what}. Check the API key and base URL (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL), that the agent "
            f"command is installed and runs by hand, and the agent's output{where}."
        )
        self._transition(State.FATAL, self._fatal_message)
        self._emit(EventName.FATAL, self._fatal_message, quick_deaths=self._consecutive_quick)

    # ---- Reporting ----

    def _transition(self, new: State, reason: str) -> None:
        """The only place the state changes."""
        old = self._state
        if new not in _ALLOWED[old]:
            raise RuntimeError(f"illegal supervisor transition {old.name} -> {new.name} ({reason})")
        log.info("%s -> %s (%s)", old.name, new.name, reason)
        self._state, self._reason = new, reason
        self._emit(EventName.STATE, f"{old.name} -> {new.name} ({reason})", old=old.value, new=new.value,
                   reason=reason)

    def _emit(self, name: EventName, message: str, *, session_id: str | None = None, **details: Any) -> None:
        if self._on_event is None:
            return
        launched = self._launch.session_id if self._launch is not None else None
        event = SupervisorEvent(name, self._state, message, session_id or self._session_id or launched, details)
        try:
            self._on_event(event)
        except Exception:  # a failing sink (disk full) must not end supervision; the log still has it
            log.exception("could not report supervisor event %s: %s", name.value, message)

    def snapshot(self) -> SupervisorStatus:
        now = self._clock.monotonic()
        return SupervisorStatus(
            state=self._state,
            reason=self._reason,
            session_id=self._session_id or (self._launch.session_id if self._launch is not None else None),
            pid=self._proc.pid if self._proc is not None else None,
            uptime_s=now - self._began if self._began is not None else 0.0,
            silent_s=now - self._last_activity if self._proc is not None else None,
            restarts=self._restarts,
            resumes=self._resumes,
            fresh_starts=self._fresh,
            stalls=self._stalls,
            backoffs=self._backoffs,
            quick_deaths=self._quick_deaths,
            cost_usd=self.cost_usd,
            sessions=tuple(self._sessions),
            violations=self._violations or 0,
            stop_reason=self._stop_reason,
            fatal_message=self._fatal_message,
        )
