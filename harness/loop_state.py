"""Where a run's loop stands, read from its files, written as text a model can act on.

The hooks and the supervisor put this text in front of the agent at the moments it is most likely to lose the
thread: at session start, when it tries to stop, and after its context ran out. Everything comes from the run's
files (the ledger, inflight.json, violations.jsonl, limits.json, supervisor.json, the stop file), never from the
agent's memory, so a fresh session continues exactly where the last one left off. Reading is cheap (no git, no
torch) because hooks run on every tool call.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from server.inflight import read_entries
from server import history
from server.config import Config
from server.jsonl import read_records
from server.ledger import Experiment, Ledger

log = logging.getLogger(__name__)

BRIEF_LIMIT = 1500
HANDOFF_DIFF_LIMIT = 4000
HANDOFF_TRIED_LIMIT = 40


class RunRef(Protocol):
    """What a loop state needs to know about a run (``server.runstate.RunInfo`` satisfies it)."""

    tag: str
    run_dir: Path


@dataclass(frozen=True)
class Limits:
    """The harness's limits for an unattended run (``runs/<tag>/limits.json``); all None for interactive sessions."""

    deadline: float | None = None  # wall-clock epoch seconds
    max_experiments: int | None = None
    max_cost_usd: float | None = None


@dataclass(frozen=True)
class InFlightExperiment:
    id: int
    description: str
    started_at: float
    deadline: float


@dataclass(frozen=True)
class LoopState:
    """A snapshot of one run's loop; ``now`` is when it was read, so every method agrees on the time."""

    tag: str
    metric: str
    direction: str
    mutable: tuple[str, ...]
    experiments: tuple[Experiment, ...]
    violations: int
    in_flight: InFlightExperiment | None
    limits: Limits
    cost_usd: float | None
    stop_file: bool
    now: float
    rejections: tuple[str, ...] = ()  # reasons people gave `autoresearch reject` for this run's result
    in_flight_all: tuple[InFlightExperiment, ...] = ()  # every running experiment (several with slots), by id

    # ---- facts ----

    @property
    def best(self) -> Experiment | None:
        return history.best_kept(list(self.experiments))

    @property
    def baseline(self) -> Experiment | None:
        return history.baseline(list(self.experiments))

    @property
    def pending(self) -> Experiment | None:
        return history.pending(list(self.experiments))

    @property
    def experiments_started(self) -> int:
        """Recorded experiments plus those running now (they count against a limit from the moment they start)."""
        recorded = {e.id for e in self.experiments}
        flying = self.in_flight_all or ((self.in_flight,) if self.in_flight is not None else ())
        return len(self.experiments) + sum(1 for f in flying if f.id not in recorded)

    def time_left_s(self) -> float | None:
        return None if self.limits.deadline is None else self.limits.deadline - self.now

    def stop_reason(self) -> str | None:
        """Why the loop should end now, or None when it must go on."""
        if self.stop_file:
            return f"a stop was requested (the run's stop file exists: `autoresearch stop --tag {self.tag}`)"
        left = self.time_left_s()
        if left is not None and left <= 0:
            return "the run's time limit has passed"
        cap = self.limits.max_experiments
        if cap is not None and len(self.experiments) >= cap:
            return f"{len(self.experiments)} experiments done, the limit is {cap}"
        if self.limits.max_cost_usd is not None and self.cost_usd is not None \
                and self.cost_usd >= self.limits.max_cost_usd:
            return f"the agent has cost ${self.cost_usd:.2f}, the limit is ${self.limits.max_cost_usd:.2f}"
        return None

    def next_action(self) -> str:
        files = ", ".join(self.mutable)
        reason = self.stop_reason()
        if reason:
            return f"Stop: {reason}. Summarise the best result and end."
        if len(self.in_flight_all) > 1:
            ids = ", ".join(str(f.id) for f in self.in_flight_all)
            return (f"Experiments {ids} are running (a wave): call read_results with wait_s to wait for the next "
                    "result, decide each finished one with commit_or_revert(experiment_id=...), and submit the next "
                    "variants with run_experiment(wait=false).")
        if self.in_flight is not None:
            return (f"Experiment {self.in_flight.id} is running; wait for run_experiment to return (or call "
                    "read_results with wait_s), then decide it with commit_or_revert.")
        waiting = self.pending
        if waiting is not None:
            return f"Call commit_or_revert to decide experiment {waiting.id}, then try the next idea."
        if self.baseline is None:
            return "Call run_experiment on the unmodified code to record the baseline."
        return f"Edit {files} with one new idea, then call run_experiment."

    # ---- text for the model ----

    def brief(self) -> str:
        """A compact status (< 1,500 characters) for session start and the stop hook."""
        better = "lower" if self.direction == "minimize" else "higher"
        counts = history.counts(list(self.experiments))
        lines = [
            f"autoresearch run {self.tag}: {self.metric} ({self.direction}, {better} is better). "
            f"Edit only {', '.join(self.mutable)}; run, keep and revert with the mcp__autoresearch tools.",
            f"baseline {_ref(self.baseline)}; best {_ref(self.best)}; {counts['total']} experiments (ok "
            f"{counts['ok']}, crash {counts['crash']}, timeout {counts['timeout']}, invalid {counts['invalid']}; "
            f"kept {counts['kept']}).",
        ]
        recent = self.experiments[-5:]
        if recent:
            lines.append("last experiments:")
            lines += [f"  #{e.id} {e.status} {_num(e.metric)} {e.decision or 'pending'}: {_cut(e.description, 70)}"
                      for e in recent]
        waiting = self.pending
        lines.append(f"pending decision: #{waiting.id}" if waiting else "pending decision: none")
        for current in self.in_flight_all[:8] or ((self.in_flight,) if self.in_flight is not None else ()):
            left = max(0.0, current.deadline - self.now)
            lines.append(f"in flight: #{current.id} {_cut(current.description, 60)} "
                         f"(hard limit in {_duration(left)})")
        lines.append(f"violations (locked files changed and restored): {self.violations}")
        left_s = self.time_left_s()
        lines.append("time left: " + ("no deadline" if left_s is None else _duration(max(0.0, left_s))))
        lines.append("next: " + self.next_action())
        return _cut("\n".join(lines), BRIEF_LIMIT)

    def handoff(self) -> str:
        """Everything a fresh session needs after the previous one ran out of context."""
        parts = [
            "You are continuing an autoresearch loop whose previous session ended (its context filled up). The "
            "server kept everything: the ledger, the best code (already in the working tree) and the branch.",
            self.brief(),
        ]
        best = self.best
        if best is not None:
            diff = best.diff.strip() or "(no change: the baseline is the best so far)"
            if len(diff) > HANDOFF_DIFF_LIMIT:
                diff = diff[:HANDOFF_DIFF_LIMIT] + "\n... (diff cut; call read_results with experiment_id for more)"
            parts.append(f"Best so far: experiment {best.id}, {self.metric} {_num(best.metric)}: "
                         f"{_cut(best.description, 200)}\nIts change against the code before it:\n{diff}")
            kept = [e for e in self.experiments if e.decision == "keep" and not e.is_baseline]
            if kept:
                parts.append("Kept changes, in order:\n" + "\n".join(
                    f"  #{e.id} {_num(e.metric)}: {_cut(e.description, 100)}" for e in kept[-HANDOFF_TRIED_LIMIT:]))
        tried = [e for e in self.experiments if e.decision != "keep" and not e.is_baseline]
        if tried:
            shown = tried[-HANDOFF_TRIED_LIMIT:]
            more = f" (the {len(tried) - len(shown)} before these are in read_results)" if len(tried) > len(shown) else ""
            parts.append(f"Tried and not kept{more}; do not repeat these unchanged:\n" + "\n".join(
                f"  #{e.id} {e.status} {_num(e.metric)} {e.decision or 'pending'}: {_cut(e.description, 100)}"
                for e in shown))
        if self.rejections:
            parts.append("A person reviewed this run's result and rejected it; take their reasons into account:\n"
                         + "\n".join(f"  - {_cut(r, 300)}" for r in self.rejections[-5:]))
        crashes = [e for e in self.experiments if e.status in ("crash", "timeout")][-10:]
        if crashes:
            parts.append("Crashes and timeouts (the cause, shortened):\n" + "\n".join(
                f"  #{e.id} {e.status}: {_cut(e.failure or 'no reason recorded', 150)}" for e in crashes))
        parts.append(
            "Continue the loop with the tools: call read_results, then " + self.next_action()[0].lower()
            + self.next_action()[1:] + " Repeat: one idea per experiment, run_experiment, commit_or_revert. When "
            "read_results shows more than one slot, run waves: submit one variant per slot with "
            "run_experiment(wait=false), wait with read_results(wait_s=...), decide each with "
            "commit_or_revert(experiment_id=...) (program.md, \"Waves\"). Do not stop to ask; the loop ends only "
            "when the harness says so.")
        return "\n\n".join(parts)


# ---- reading ----

def read_loop_state(config: Config, run: RunRef, *, now: float | None = None) -> LoopState:
    """Read the run's files; a missing or damaged optional file reads as "nothing there" (logged), never an error."""
    run_dir = Path(run.run_dir)
    experiments = tuple(Ledger(run_dir, metric_name=config.metric).experiments())
    flying = _in_flight(run_dir)
    try:
        violations = len(read_records(run_dir / "violations.jsonl"))
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", run_dir / "violations.jsonl", exc)
        violations = 0
    supervisor = _read_json(run_dir / "supervisor.json")
    return LoopState(
        tag=run.tag, metric=config.metric, direction=config.direction, mutable=tuple(config.mutable),
        experiments=experiments, violations=violations, in_flight=(flying[0] if flying else None),
        in_flight_all=flying,
        limits=_limits(run_dir / "limits.json"), cost_usd=_number(supervisor.get("cost_usd")),
        stop_file=(run_dir / "stop").exists(), now=time.time() if now is None else now,
        rejections=_rejections(run_dir / "rejections.jsonl"),
    )


def _rejections(path: Path) -> tuple[str, ...]:
    """Reasons from `autoresearch reject` (see harness.review), oldest first; unreadable reads as none."""
    try:
        return tuple(str(r["reason"]) for r in read_records(path) if r.get("reason"))
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return ()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _limits(path: Path) -> Limits:
    data = _read_json(path)
    cap = data.get("max_experiments")
    return Limits(deadline=_number(data.get("deadline")),
                  max_experiments=cap if isinstance(cap, int) and not isinstance(cap, bool) else None,
                  max_cost_usd=_number(data.get("max_cost_usd")))


def _in_flight(run_dir: Path) -> tuple[InFlightExperiment, ...]:
    """The running experiments of `inflight.json` (queued ones have no start or deadline yet)."""
    out = []
    for data in read_entries(run_dir):
        try:
            out.append(InFlightExperiment(id=int(data["id"]), description=str(data.get("description", "")),
                                          started_at=float(data["started_at"]), deadline=float(data["deadline"])))
        except (KeyError, TypeError, ValueError):
            continue
    return tuple(out)


# ---- formatting ----

def _ref(exp: Experiment | None) -> str:
    return "-" if exp is None or exp.metric is None else f"{exp.metric:.6f} (#{exp.id})"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split()) if "\n" not in text else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


# ---- the supervisor's view ----

class RunLoopView:
    """The supervisor's ``LoopView`` over a run's files; every call reads them afresh (they change under it)."""

    def __init__(self, config: Config, run: RunRef) -> None:
        self.config = config
        self.run = run

    def state(self) -> LoopState:
        return read_loop_state(self.config, self.run)

    def inflight_deadline(self) -> float | None:
        """The latest hard limit among the running experiments (the agent may be silent until then)."""
        flying = self.state().in_flight_all
        return max(f.deadline for f in flying) if flying else None

    def experiments_started(self) -> int:
        return self.state().experiments_started

    def stop_requested(self) -> bool:
        return (Path(self.run.run_dir) / "stop").exists()

    def violations(self) -> int:
        return self.state().violations

    def handoff_prompt(self) -> str:
        return self.state().handoff()

    def start_prompt(self) -> str:
        return ("Run the autoresearch loop in this workspace. Read program.md for the rules, then work through the "
                "mcp__autoresearch tools: read_results, one edit per experiment, run_experiment, commit_or_revert, "
                "again and again. Never stop to ask.\n\n" + self.state().brief())
