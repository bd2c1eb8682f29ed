"""The supervisor's state machine, replayed with a fake clock and scripted agent processes: no sleeping."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field

import pytest

from harness.agent_events import AgentEvent, EventKind
from harness.supervisor import (
    CONTINUE_PROMPT,
    EventName,
    Launch,
    Limits,
    Policy,
    State,
    Supervisor,
    SupervisorEvent,
    is_context_exhausted,
)

WALL0 = 1_800_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = WALL0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.advance(seconds)
        if self.mono > 100 + 2 * 86400:
            raise AssertionError("the supervisor ran for two simulated days without stopping")


class FakeProcess:
    def __init__(self, pid: int, launch: Launch) -> None:
        self.pid = pid
        self.launch = launch
        self.pending: list[AgentEvent] = []
        self.code: int | None = None
        self.terminated_with: float | None = None

    def say(self, *events: AgentEvent) -> None:
        self.pending.extend(events)

    def exit(self, code: int, *events: AgentEvent) -> None:
        self.pending.extend(events)
        self.code = code

    def events(self) -> list[AgentEvent]:
        out, self.pending = self.pending, []
        return out

    def returncode(self) -> int | None:
        return self.code

    def terminate(self, grace_s: float) -> None:
        self.terminated_with = grace_s
        if self.code is None:
            self.code = -15


class FakeSpawner:
    """Hands out a fresh FakeProcess per launch; `script`, if set, is applied to each new process."""

    def __init__(self) -> None:
        self.procs: list[FakeProcess] = []
        self.script = None

    def spawn(self, launch: Launch) -> FakeProcess:
        proc = FakeProcess(1000 + len(self.procs), launch)
        self.procs.append(proc)
        if self.script is not None:
            self.script(proc)
        return proc

    @property
    def current(self) -> FakeProcess:
        return self.procs[-1]

    @property
    def modes(self) -> list[str]:
        return [p.launch.mode for p in self.procs]


@dataclass
class FakeView:
    deadline: float | None = None
    started: int = 0
    stop: bool = False
    violation_count: int = 0

    def inflight_deadline(self) -> float | None:
        return self.deadline

    def experiments_started(self) -> int:
        return self.started

    def stop_requested(self) -> bool:
        return self.stop

    def handoff_prompt(self) -> str:
        return "HANDOFF: 3 experiments so far, best val_bpb 1.02"

    def start_prompt(self) -> str:
        return "START: read program.md"

    def violations(self) -> int:
        return self.violation_count


@dataclass
class Rig:
    sup: Supervisor
    clock: FakeClock
    spawner: FakeSpawner
    view: FakeView
    events: list[SupervisorEvent] = field(default_factory=list)

    def transitions(self) -> list[tuple[str, str]]:
        return [(e.details["old"], e.details["new"]) for e in self.events if e.name is EventName.STATE]

    def names(self) -> list[EventName]:
        return [e.name for e in self.events]


def make_rig(policy: Policy | None = None, limits: Limits | None = None, seed: int = 1) -> Rig:
    clock, spawner, view = FakeClock(), FakeSpawner(), FakeView()
    events: list[SupervisorEvent] = []
    sup = Supervisor(spawner, view, policy or Policy(), limits or Limits(), clock, events.append,
                     rng=random.Random(seed), log_hint="runs/t/agent.log")
    return Rig(sup, clock, spawner, view, events)


def init(session: str) -> AgentEvent:
    return AgentEvent(EventKind.INIT, session_id=session)


TOOL_OK = AgentEvent(EventKind.TOOL_RESULT)


def result(**kw) -> AgentEvent:
    return AgentEvent(EventKind.RESULT, **kw)


def running_rig(session: str = "s1", **kw) -> Rig:
    """A rig whose first session has said hello, used a tool, and passed `startsecs`."""
    rig = make_rig(**kw)
    rig.sup.tick()
    rig.spawner.current.say(init(session), TOOL_OK)
    rig.clock.advance(rig.sup.policy.startsecs)
    assert rig.sup.tick() is State.RUNNING
    return rig


# ---- Starting and staying alive ----


def test_the_first_tick_starts_a_new_session_with_the_start_prompt_and_it_runs_after_startsecs():
    rig = make_rig()
    assert rig.sup.tick() is State.STARTING
    launch = rig.spawner.current.launch
    assert (launch.mode, launch.prompt) == ("new", "START: read program.md")
    assert launch.session_id and rig.sup.snapshot().session_id == launch.session_id, "events must name the session"
    rig.clock.advance(14.9)
    assert rig.sup.tick() is State.STARTING
    rig.clock.advance(0.2)
    assert rig.sup.tick() is State.RUNNING
    assert rig.names()[:2] == [EventName.START, EventName.STATE]


def test_a_silent_agent_is_terminated_and_its_session_resumed():
    rig = running_rig()
    first = rig.spawner.current
    rig.clock.advance(600)
    assert rig.sup.tick() is State.RUNNING  # exactly at the timeout is not yet a stall
    rig.clock.advance(1)
    assert rig.sup.tick() is State.STARTING
    assert first.terminated_with == 30
    assert rig.spawner.current.launch.mode == "resume"
    assert rig.spawner.current.launch.session_id == "s1"
    assert "silent for 601 s" in rig.spawner.current.launch.prompt
    assert rig.sup.snapshot().stalls == 1
    assert EventName.STALL in rig.names()


def test_a_stall_before_any_tool_answered_backs_off_instead_of_restarting_at_once():
    rig = make_rig()
    rig.sup.tick()
    rig.spawner.current.say(init("s1"))  # the session started but no tool ever answered: the API hangs
    rig.clock.advance(rig.sup.policy.startsecs)
    assert rig.sup.tick() is State.RUNNING
    rig.clock.advance(601)
    assert rig.sup.tick() is State.BACKOFF
    assert len(rig.spawner.procs) == 1, "no restart before the backoff delay"
    assert rig.sup.snapshot().quick_deaths == 0 and rig.sup.snapshot().stalls == 1
    rig.clock.advance(rig.sup.policy.backoff_cap_s)
    assert rig.sup.tick() is State.STARTING
    assert rig.spawner.current.launch.mode == "resume" and rig.spawner.current.launch.session_id == "s1"


def test_any_event_postpones_the_stall():
    rig = running_rig()
    for _ in range(5):
        rig.clock.advance(500)
        rig.spawner.current.say(AgentEvent(EventKind.ASSISTANT, text="thinking"))
        assert rig.sup.tick() is State.RUNNING
    assert len(rig.spawner.procs) == 1


def test_silence_during_an_experiment_is_no_stall_until_its_hard_limit_plus_grace():
    rig = running_rig()
    rig.view.deadline = rig.clock.time() + 1800  # a long experiment, silent while the tool call blocks
    rig.clock.advance(1800 + 60)
    assert rig.sup.tick() is State.RUNNING
    assert len(rig.spawner.procs) == 1
    rig.clock.advance(1)
    assert rig.sup.tick() is State.STARTING
    assert rig.spawner.procs[0].terminated_with is not None
    assert rig.spawner.current.launch.mode == "resume"


# ---- Sessions that end ----


def test_a_session_that_dies_is_resumed_at_once_and_what_it_left_running_is_taken_down():
    rig = running_rig()
    dead = rig.spawner.current
    dead.exit(-9)
    assert rig.sup.tick() is State.STARTING
    assert dead.terminated_with is not None, "the dead agent's process group (MCP server, experiment) must be killed"
    launch = rig.spawner.current.launch
    assert (launch.mode, launch.session_id) == ("resume", "s1")
    assert "exit code -9" in launch.prompt
    assert rig.sup.snapshot().restarts == 1


def test_a_session_that_hits_max_turns_is_resumed():
    rig = running_rig()
    rig.spawner.current.exit(1, result(subtype="error_max_turns", is_error=True, session_id="s1"))
    rig.sup.tick()
    assert rig.spawner.modes == ["new", "resume"]


def test_an_agent_that_decides_to_stop_is_resumed_with_a_continue_prompt():
    rig = running_rig()
    rig.spawner.current.exit(0, result(subtype="success", text="All done, stopping here.", session_id="s1"))
    assert rig.sup.tick() is State.STARTING
    assert rig.spawner.current.launch == Launch("resume", "s1", CONTINUE_PROMPT)


def test_repeated_failed_resumes_lead_to_a_fresh_session_with_the_handoff_prompt():
    rig = running_rig()
    for _ in range(3):  # each resume runs past startsecs but never gets a tool to answer
        rig.spawner.current.exit(1)
        rig.sup.tick()
        assert rig.spawner.current.launch.mode == "resume"
        rig.clock.advance(20)
        rig.sup.tick()
    rig.spawner.current.exit(1)
    rig.sup.tick()
    assert rig.spawner.modes == ["new", "resume", "resume", "resume", "fresh"]
    fresh = rig.spawner.current.launch
    assert (fresh.mode, fresh.prompt) == ("fresh", "HANDOFF: 3 experiments so far, best val_bpb 1.02")
    assert fresh.session_id is not None
    rig.spawner.current.say(init("s2"), TOOL_OK)
    rig.clock.advance(20)
    rig.sup.tick()
    rig.spawner.current.exit(1)
    rig.sup.tick()
    assert rig.spawner.current.launch.session_id == "s2"
    status = rig.sup.snapshot()
    assert (status.resumes, status.fresh_starts, status.sessions) == (4, 1, ("s1", "s2"))


def test_a_healthy_resume_clears_the_count_of_failed_resumes():
    rig = running_rig()
    for _ in range(6):
        rig.spawner.current.exit(1)
        rig.sup.tick()
        rig.spawner.current.say(TOOL_OK)
        rig.clock.advance(20)
        rig.sup.tick()
    assert set(rig.spawner.modes[1:]) == {"resume"}


def test_a_full_context_window_starts_fresh_with_the_handoff():
    rig = running_rig()
    rig.spawner.current.exit(1, result(is_error=True, text="Prompt is too long", session_id="s1"))
    rig.sup.tick()
    assert rig.spawner.current.launch.mode == "fresh"
    assert rig.spawner.current.launch.prompt.startswith("HANDOFF")


@pytest.mark.parametrize(
    ("event", "exhausted"),
    [
        (result(is_error=True, text="API Error: 400 prompt is too long: 210000 tokens > 200000 maximum"), True),
        (result(terminal_reason="context_exhausted"), True),
        (result(is_error=True, text="input exceeds the context window"), True),
        (result(text="I added more context to the comments; prompt is too long to matter"), False),
        (result(is_error=True, text="tool failed"), False),
    ],
)
def test_the_context_matcher_reads_the_reason_and_only_error_text(event, exhausted):
    assert is_context_exhausted(event) is exhausted


# ---- The API is down ----


def test_an_overloaded_api_backs_off_with_growing_capped_jittered_delays_then_resumes_and_resets():
    policy = Policy(backoff_base_s=5, backoff_cap_s=60, backoff_jitter=0.25)
    rig = running_rig(policy=policy)
    overloaded = result(is_error=True, api_error_status=529, terminal_reason="api_error", session_id="s1")
    delays = []
    for n in range(8):  # an outage: every resume fails at once, which is not a crash loop
        rig.spawner.current.exit(1, overloaded)
        assert rig.sup.tick() is State.BACKOFF
        delay = rig.events[-1].details["delay_s"]
        raw = min(60, 5 * 2**n)
        assert raw * 0.75 <= delay <= raw
        delays.append(delay)
        rig.clock.advance(delay - 0.01)
        assert rig.sup.tick() is State.BACKOFF
        rig.clock.advance(0.02)
        assert rig.sup.tick() is State.STARTING
        assert rig.spawner.current.launch.mode == "resume"
    assert delays[3] > delays[0] and max(delays) <= 60
    assert len(set(delays)) == len(delays)  # jittered, not lockstep
    rig.spawner.current.say(TOOL_OK)  # the API is back
    rig.clock.advance(20)
    rig.sup.tick()
    rig.spawner.current.exit(1, overloaded)
    rig.sup.tick()
    assert 3.75 <= rig.events[-1].details["delay_s"] <= 5
    assert rig.sup.snapshot().backoffs == 9
    assert rig.sup.snapshot().quick_deaths == 0


def test_an_exit_right_after_api_retries_is_treated_as_an_outage():
    rig = running_rig()
    rig.spawner.current.exit(1, AgentEvent(EventKind.API_RETRY, api_error_status=None))
    assert rig.sup.tick() is State.BACKOFF


# ---- Crash loops ----


def test_an_agent_that_keeps_dying_at_start_ends_in_fatal_with_a_message_that_says_what_to_check():
    rig = make_rig()
    rig.spawner.script = lambda proc: proc.exit(1)
    assert rig.sup.run() is State.FATAL
    assert len(rig.spawner.procs) == 5
    message = rig.sup.snapshot().fatal_message
    assert message is not None
    for words in ("5 times", "within 15 s", "exit code 1", "API key", "runs/t/agent.log"):
        assert words in message
    assert rig.names()[-1] is EventName.FATAL
    assert rig.sup.snapshot().backoffs == 4
    assert rig.clock.mono - 100 < 5 + 10 + 20 + 40 + 1  # it backed off between the tries, no longer


def test_an_agent_that_cannot_be_spawned_at_all_ends_in_fatal():
    rig = make_rig()

    def broken(launch: Launch):
        raise FileNotFoundError("claude: not found")

    rig.spawner.spawn = broken
    assert rig.sup.run() is State.FATAL
    assert "claude: not found" in (rig.sup.snapshot().fatal_message or "")


def test_a_session_that_lived_past_startsecs_resets_the_quick_death_count():
    rig = make_rig()
    for _ in range(3):
        rig.sup.tick()
        rig.spawner.current.exit(1)
        rig.sup.tick()
        rig.clock.advance(400)
    rig.sup.tick()
    rig.clock.advance(15)
    assert rig.sup.tick() is State.RUNNING
    rig.spawner.script = lambda proc: proc.exit(1)
    rig.spawner.current.exit(1)
    rig.sup.tick()
    for _ in range(4):
        rig.clock.advance(400)
        rig.sup.tick()
        assert rig.sup.state is not State.FATAL
        rig.sup.tick()
    rig.clock.advance(400)
    rig.sup.tick()
    rig.sup.tick()
    assert rig.sup.state is State.FATAL


# ---- Stopping ----


@pytest.mark.parametrize("limit", ["deadline", "experiments", "cost", "stop file"])
def test_each_limit_stops_the_run_and_terminates_the_agent(limit):
    limits = {
        "deadline": Limits(deadline=WALL0 + 3600),
        "experiments": Limits(max_experiments=4),
        "cost": Limits(max_cost_usd=2.0),
        "stop file": Limits(),
    }[limit]
    rig = running_rig(limits=limits)
    assert rig.sup.tick() is State.RUNNING
    agent = rig.spawner.current
    if limit == "deadline":
        rig.clock.advance(3600)
    elif limit == "experiments":
        rig.view.started = 4
    elif limit == "cost":
        agent.say(result(cost_usd=0.5, session_id="s1"), result(cost_usd=1.25, session_id="s1"))
        assert rig.sup.tick() is State.RUNNING  # the last cost of a session counts, not the sum of its reports
        assert rig.sup.snapshot().cost_usd == 1.25
        agent.say(result(cost_usd=0.75, session_id="s9"))
    else:
        rig.view.stop = True
    assert rig.sup.tick() is State.STOPPED
    assert agent.terminated_with == 30
    assert rig.transitions()[-2:] == [(rig.transitions()[-2][0], "STOPPING"), ("STOPPING", "STOPPED")]
    assert EventName.STOP in rig.names()
    assert rig.sup.snapshot().stop_reason
    assert rig.sup.tick() is State.STOPPED


def test_the_last_allowed_experiment_is_let_finish_before_the_experiment_limit_stops_the_run():
    rig = running_rig(limits=Limits(max_experiments=2))
    rig.view.started, rig.view.deadline = 2, rig.clock.time() + 300
    rig.clock.advance(200)
    rig.spawner.current.say(AgentEvent(EventKind.OTHER))
    assert rig.sup.tick() is State.RUNNING
    rig.view.deadline = None
    assert rig.sup.tick() is State.STOPPED


def test_a_deadline_stop_waits_for_the_in_flight_experiment_but_no_longer_than_the_grace():
    rig = running_rig(limits=Limits(deadline=WALL0 + 100))
    rig.view.deadline = WALL0 + 10_000
    rig.clock.advance(100)
    assert rig.sup.tick() is State.STOPPING
    rig.clock.advance(29)
    assert rig.sup.tick() is State.STOPPING
    assert rig.spawner.current.terminated_with is None
    rig.clock.advance(1)
    assert rig.sup.tick() is State.STOPPED
    assert rig.spawner.current.terminated_with == 30


def test_a_deadline_stop_ends_as_soon_as_the_experiment_is_recorded():
    rig = running_rig(limits=Limits(deadline=WALL0 + 100))
    rig.view.deadline = WALL0 + 10_000
    rig.clock.advance(100)
    assert rig.sup.tick() is State.STOPPING
    rig.view.deadline = None
    assert rig.sup.tick() is State.STOPPED


def test_request_stop_terminates_at_once_even_with_an_experiment_in_flight():
    rig = running_rig()
    rig.view.deadline = rig.clock.time() + 600
    rig.sup.request_stop("SIGINT")
    assert rig.sup.tick() is State.STOPPED
    assert rig.spawner.current.terminated_with == 30
    assert rig.sup.snapshot().stop_reason == "SIGINT"


def test_a_stop_during_backoff_stops_without_starting_another_agent():
    rig = running_rig()
    rig.spawner.current.exit(1, result(is_error=True, api_error_status=503))
    assert rig.sup.tick() is State.BACKOFF
    rig.sup.request_stop("SIGTERM")
    assert rig.sup.tick() is State.STOPPED
    assert len(rig.spawner.procs) == 1


def test_run_returns_stopped_when_the_deadline_passes_and_waits_at_most_a_second_at_a_time():
    rig = make_rig(limits=Limits(deadline=WALL0 + 120))
    rig.spawner.script = lambda proc: proc.say(init("s1"), TOOL_OK)
    assert rig.sup.run() is State.STOPPED
    assert 0 < max(rig.clock.waits) <= 1.0
    assert rig.clock.wall == pytest.approx(WALL0 + 120)


# ---- Reporting ----


def test_every_transition_is_logged_and_reported_to_the_sink_in_order(caplog):
    caplog.set_level(logging.INFO, logger="harness.supervisor")
    rig = running_rig()
    rig.spawner.current.exit(1, result(is_error=True, api_error_status=429))
    rig.sup.tick()
    rig.clock.advance(10)
    rig.sup.tick()
    rig.clock.advance(15)
    rig.sup.tick()
    rig.sup.request_stop("SIGINT")
    rig.sup.tick()
    expected = [("STARTING", "RUNNING"), ("RUNNING", "BACKOFF"), ("BACKOFF", "STARTING"), ("STARTING", "RUNNING"),
                ("RUNNING", "STOPPING"), ("STOPPING", "STOPPED")]
    assert rig.transitions() == expected
    logged = [r.getMessage() for r in caplog.records if " -> " in r.getMessage()]
    assert [m.split(" (")[0] for m in logged] == [f"{a} -> {b}" for a, b in expected]
    assert logged[-1] == "STOPPING -> STOPPED (SIGINT)"
    assert rig.names() == [
        EventName.START, EventName.STATE, EventName.RESTART, EventName.STATE, EventName.BACKOFF, EventName.STATE,
        EventName.RESUME, EventName.STATE, EventName.STATE, EventName.STOP, EventName.STATE,
    ]
    assert all(e.session_id == "s1" for e in rig.events[2:])


def test_new_locked_file_violations_are_reported_once():
    rig = running_rig()
    rig.view.violation_count = 2
    rig.sup.tick()
    rig.sup.tick()
    violations = [e for e in rig.events if e.name is EventName.VIOLATION]
    assert len(violations) == 1 and violations[0].details == {"new": 2, "total": 2}


def test_a_failing_sink_does_not_stop_supervision():
    clock, spawner, view = FakeClock(), FakeSpawner(), FakeView()

    def broken(event: SupervisorEvent) -> None:
        raise OSError("disk full")

    sup = Supervisor(spawner, view, Policy(), Limits(), clock, broken)
    sup.tick()
    clock.advance(20)
    assert sup.tick() is State.RUNNING


def test_the_snapshot_is_json_ready_and_counts_what_happened():
    rig = running_rig()
    rig.spawner.current.say(result(cost_usd=0.42, session_id="s1"))
    rig.sup.tick()
    rig.clock.advance(601)
    rig.sup.tick()
    status = rig.sup.snapshot()
    data = json.loads(json.dumps(status.to_dict()))
    assert data["state"] == "STARTING"
    assert (data["stalls"], data["restarts"], data["resumes"], data["cost_usd"]) == (1, 1, 1, 0.42)
    assert data["sessions"] == ["s1"] and data["pid"] == rig.spawner.current.pid
    assert data["uptime_s"] == pytest.approx(616)


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("stall_timeout_s", 0, "> 0"),
        ("inflight_grace_s", -1, ">= 0"),
        ("backoff_base_s", float("nan"), "> 0"),
        ("backoff_cap_s", 1, ">= backoff_base_s"),
        ("backoff_jitter", 1.0, "0 <= x < 1"),
        ("startsecs", -5, ">= 0"),
        ("crash_loop_deaths", 0, "integer >= 1"),
        ("max_resumes", 2.5, "integer >= 1"),
        ("stop_grace_s", "30", ">= 0"),
    ],
)
def test_invalid_policy_values_are_rejected_naming_the_field_and_the_allowed_range(name, value, allowed):
    with pytest.raises(ValueError) as info:
        Policy(**{name: value})
    assert f"Policy.{name} = {value!r}" in str(info.value)
    assert allowed in str(info.value)


@pytest.mark.parametrize(("kw", "name"), [({"max_experiments": 0}, "max_experiments"),
                                          ({"max_cost_usd": -1.0}, "max_cost_usd")])
def test_invalid_limits_are_rejected(kw, name):
    with pytest.raises(ValueError, match=f"Limits.{name}"):
        Limits(**kw)
