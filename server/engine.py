"""The experiment engine: the three operations the tools expose, with every rule enforced here, not in a prompt.

- `run_experiment` refuses while a locked file differs from its pin, while the repository is not as the engine left
  it, or while the run has as many experiments outstanding (queued, running or undecided) as it may (one with one
  slot: the single loop's "decide before you run the next"); otherwise it snapshots the mutable files at call time
  and queues the snapshot for a slot (server/slots.py). With `wait=True` (the default) it returns the result; with
  `wait=False` it returns at once with the experiment's id and place, and the agent edits the next variant meanwhile.
- `commit_or_revert` decides any finished experiment by the acceptance rule (server/acceptance.py) against the best
  at decision time. A kept change becomes the new tip of the run branch even when it started from an older tip: the
  commit holds exactly the code that was measured, with the tip it replaces as first parent and the experiment's
  snapshot as second parent, so both are recorded.
- `read_results` is a compact view of the ledger and of what is in flight; `wait_s` blocks (bounded) until the next
  experiment finishes, so an agent running a wave never polls in a loop.

Concurrency. The records (ledger, branch, inflight.json, decision intents) change only under the run's state lock,
an `flock` on `experiment.lock` held for milliseconds, never across an `await` (so tasks of one process and servers of
several processes interleave safely). Experiments run as asyncio tasks of the server that queued them, each holding
its slot's own lock while it runs. Crash safety is in server/recovery.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator

import anyio

from server import history, sandbox
from server.acceptance import AcceptanceMixin
from server.decisions import DecisionMixin
from server.scheduling import SchedulingMixin
from server.shared import (  # noqa: F401 - Refusal and InvalidArgument are imported from here by callers
    LIVE,
    MAX_DESCRIPTION,
    MAX_DIFF_CHARS,
    MAX_HYPOTHESIS,
    InvalidArgument,
    Refusal,
    bounded_tail,
    iso,
)
from server.arguments import MAX_WAIT_S
from server.agent_files import is_agent_config
from server.audit import AuditLog
from server.config import Config
from server.experiment import execute
from server.gitrepo import GitRepo
from server import inflight as inflight_table
from server.inflight import owner_alive, read_entries, remaining_s
from server.integrity import check_pins, restore_pin
from server.jsonl import append_record, read_records
from server.ledger import Experiment, Ledger, LedgerLine
from server.models import (
    ExperimentDetail,
    ExperimentRow,
    InFlightRow,
    ReadResultsResult,
    Reference,
    RunExperimentResult,
)
from server.recovery import RecoveryMixin
from server.runstate import RunInfo, frozen_config, private_dir
from server.slots import Slot, SlotPool, plan_slots
from server.text import UnsafeText, check_agent_text

log = logging.getLogger(__name__)

STATE_LOCK_WAIT_S = 60.0
WAIT_POLL_S = 0.2


@dataclass(frozen=True)
class InFlight:
    id: int
    description: str
    started_at: float
    deadline: float
    pgid: int | None
    slot: int | None = None
    device: str | None = None

    @property
    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.time())


def _clean(value: object, name: str, *, min_len: int, max_len: int) -> str:
    """Agent text as stored: whitespace folded to single spaces, control characters refused (see server/text.py)."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string, got {type(value).__name__}")
    try:
        check_agent_text(value, name)
    except UnsafeText as exc:
        raise InvalidArgument(str(exc)) from None
    text = " ".join(value.split())
    if len(text) < min_len:
        raise InvalidArgument(f"{name} is too short ({len(text)} chars): say in {min_len}+ characters what changed")
    if len(text) > max_len:
        raise InvalidArgument(f"{name} is {len(text)} characters; keep it under {max_len}")
    return text


def _fresh_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


Executor = Callable[..., Any]  # execute(config, plan, paths, on_started, integrity_problems) -> Outcome


async def _until_recorded(task: asyncio.Task[Experiment]) -> None:
    """A cancelled call waits, shielded, until its experiment is killed and recorded as a crash, so the call ends
    with the records whole (as before slots, when the run was killed inside the call)."""
    task.cancel()
    with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
        await task


class Engine(SchedulingMixin, DecisionMixin, AcceptanceMixin, RecoveryMixin):
    """One run (tag) of one workspace. Several engines (processes) may share a run; files and locks keep it whole."""

    def __init__(self, config: Config, run: RunInfo, slots: list[Slot] | None = None) -> None:
        self.config = frozen_config(config, run)  # later edits of pyproject.toml change nothing for this run
        config = self.config
        self.run = run
        reason = sandbox.probe() if config.sandbox.mode == "bwrap" else "sandbox.mode is 'off'"
        self.sealed = reason is None
        self.unsealed_reason = reason
        self.private_dir = private_dir(run)
        self.run_dir = run.run_dir
        self.repo = GitRepo(config.workspace)
        self.audit = AuditLog(self.run_dir / "audit.jsonl")
        self.ledger = Ledger(self.run_dir, metric_name=config.metric, on_append=self._seal)
        self._unsealed: list[LedgerLine] = []  # ledger lines whose audit seal failed (a full disk); retried
        self._finished_intent: Experiment | None = None  # a decision recovery completed, reported by the next decide
        self._last_recovery_note: str | None = None
        self.inflight_path = self.run_dir / "inflight.json"
        self.intent_path = self.run_dir / "decision.json"
        self.violations_path = self.run_dir / "violations.jsonl"
        self.lock_path = self.run_dir / "experiment.lock"
        self.pinned_dir = self.run_dir / "pinned"
        self.next_seed: Callable[[], int] = _fresh_seed  # each run's AUTORESEARCH_SEED (tests replay chosen seeds)
        self.pool = SlotPool(slots if slots is not None else plan_slots(config), self.run_dir / "slots")
        self.executor: Executor = self._make_executor()
        self._tasks: dict[int, asyncio.Task[Experiment]] = {}
        self._token = os.urandom(8).hex()  # tells this engine's entries from those of other engines of the process
        self._live: set[int] = LIVE.setdefault(self._token, set())  # its entries whose task is alive
        self._deciding: set[int] = set()
        self._lock_depth = threading.local()

    @staticmethod
    def session() -> str | None:
        """The agent session this server answers (set by the harness), so every server record names it."""
        return os.environ.get("AUTORESEARCH_SESSION_ID")

    def _make_executor(self) -> Executor:
        """The local sandboxes (server/experiment.py), or one Ray task per experiment (server/ray_executor.py)."""
        if self.config.slots.executor == "ray":
            from server.ray_executor import RayExecutor  # optional extra: imported only when configured

            slots = self.config.slots
            self.ray = RayExecutor(address=slots.ray_address, gpus_per_experiment=slots.gpus_per_experiment,
                                   cpus_per_experiment=slots.cpus_per_experiment)
            return self.ray
        self.ray = None
        return execute

    @property
    def max_outstanding(self) -> int:
        """How many experiments may be queued, running or undecided at once (1 with one slot: the single loop)."""
        if len(self.pool) == 1:
            return 1
        return self.config.slots.max_queued or 2 * len(self.pool)

    # ---- the state lock and the in-flight table ----

    @contextmanager
    def _state(self) -> Iterator[None]:
        """The run's state lock (re-entrant within a thread). Held for milliseconds, never across an `await`.
        Whoever takes it first completes what a dead holder left (see `_recover_locked`)."""
        depth = getattr(self._lock_depth, "n", 0)
        if depth:
            self._lock_depth.n = depth + 1
            try:
                yield
            finally:
                self._lock_depth.n = depth
            return
        fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            waited = time.monotonic() + STATE_LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > waited:
                        raise Refusal("the run's records stayed locked by another process for over "
                                      f"{STATE_LOCK_WAIT_S:g} s; call read_results and try again") from None
                    time.sleep(0.002)
            self._lock_depth.n = 1
            try:
                self._recover_locked()
                yield
            finally:
                self._lock_depth.n = 0
        finally:
            os.close(fd)

    def _entries(self) -> list[dict[str, Any]]:
        return read_entries(self.run_dir)

    def _write_entries(self, entries: list[dict[str, Any]]) -> None:
        inflight_table.write_entries(self.run_dir, entries)

    def _put_entry(self, entry: dict[str, Any]) -> None:
        with self._state():
            self._write_entries([e for e in self._entries() if e["id"] != entry["id"]] + [dict(entry)])

    def _drop_entry(self, exp_id: int) -> None:
        with self._state():
            self._write_entries([e for e in self._entries() if e["id"] != exp_id])

    @staticmethod
    def entry_alive(entry: dict[str, Any]) -> bool:
        """An entry made in this process is alive while its task is; one of another process while that process is."""
        owner = entry.get("owner")
        if isinstance(owner, dict) and owner.get("pid") == os.getpid() and owner_alive(owner):
            return entry["id"] in LIVE.get(str(owner.get("engine")), ())
        return owner_alive(owner)

    def in_flight_all(self) -> list[dict[str, Any]]:
        """Every queued or running experiment whose server is alive, in id order."""
        return [e for e in self._entries() if self.entry_alive(e) and self.ledger.get(e["id"]) is None]

    def in_flight(self) -> InFlight | None:
        """The first running experiment; None when none is (a dead server's leftovers do not count)."""
        for data in self.in_flight_all():
            if data.get("started_at") is None:
                continue
            try:
                return InFlight(id=int(data["id"]), description=str(data["description"]),
                                started_at=float(data["started_at"]), deadline=float(data["deadline"]),
                                pgid=data.get("pgid"), slot=data.get("slot"), device=data.get("device"))
            except (KeyError, TypeError, ValueError):
                continue
        return None

    # ---- integrity ----

    def _record_violation(self, description: str, path: str, when: str, experiment_id: int | None) -> None:
        record = {"time": iso(time.time()), "source": "server", "path": path, "when": when,
                  "experiment_id": experiment_id, "detail": description, "restored": True}
        append_record(self.violations_path, record)
        self.audit.append("server", "violation", session=self.session(), status="blocked", summary=record)

    def _enforce_pins(self, when: str, experiment_id: int | None) -> list[str]:
        """Restore every locked file that differs from its pin; returns what was wrong (empty when all is well)."""
        problems: list[str] = []
        pins = {pin.path: pin for pin in self.run.pins}
        for mismatch in check_pins(self.config.workspace, self.run.pins):
            pin = pins[mismatch.path]
            source = (self.pinned_dir / pin.path).read_bytes()
            restore_pin(self.config.workspace, pin, source)
            text = f"{mismatch.describe()}; restored it from commit {pin.commit[:7]}"
            problems.append(text)
            self._record_violation(text, pin.path, when, experiment_id)
        return problems

    def violations_count(self) -> int:
        return len(read_records(self.violations_path))

    def _violations_since(self, since: float) -> list[dict[str, object]]:
        out = []
        for rec in read_records(self.violations_path):
            try:
                ts = datetime.fromisoformat(str(rec["time"]).replace("Z", "+00:00")).timestamp()
            except (KeyError, ValueError):
                continue
            if ts >= since and rec.get("source") != "server":
                out.append(rec)
        return out

    def _check_repo_state(self) -> None:
        branch = self.repo.current_branch()
        if branch != self.run.branch:
            raise Refusal(
                f"the repository is on {branch or 'a detached HEAD'}, not on the run branch {self.run.branch}. "
                f"A person must run `git checkout {self.run.branch}` before experiments continue."
            )
        expected = self._expected_tip()
        tip = self.repo.branch_tip(self.run.branch)
        if tip != expected:
            raise Refusal(
                f"branch {self.run.branch} is at {tip[:7]} but the server left it at {expected[:7]}; commits are made "
                f"only by commit_or_revert. A person must run `git reset --hard {expected[:7]}` (or start a new tag)."
            )
        mutable = set(self.config.mutable)
        runs_rel = self._runs_rel()
        stray = [p for p in self.repo.worktree_changes(expected, [runs_rel] if runs_rel else [])
                 if p not in mutable and not is_agent_config(self.config.workspace, p)]
        if stray:
            raise Refusal(
                f"files other than the mutable ones ({', '.join(self.config.mutable)}) differ from the last commit: "
                f"{', '.join(stray[:8])}. Only {', '.join(self.config.mutable)} may change; a person must remove or "
                "restore those files."
            )

    def _started_count(self) -> int:
        """Experiments started or queued: recorded ones plus those in flight (what every limit counts)."""
        return self.ledger.counts()["total"] + sum(1 for e in self._entries() if self.ledger.get(e["id"]) is None)

    def _past_limits(self, extra: int = 0) -> str | None:
        """Why the harness's limits (`limits.json`) forbid one more experiment now, or None."""
        try:
            limits = json.loads((self.run_dir / "limits.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        cap = limits.get("max_experiments")
        if isinstance(cap, int) and self._started_count() + extra >= cap:
            return (f"the run's limit of {cap} experiments is reached; the harness is stopping the loop. "
                    "Do not start another experiment.")
        deadline = limits.get("deadline")
        if isinstance(deadline, (int, float)) and time.time() >= deadline:
            return "the run's deadline has passed; the harness is stopping the loop. Do not start another experiment."
        return None

    def _runs_rel(self) -> str | None:
        try:
            return self.config.runs_dir.relative_to(self.config.workspace).as_posix()
        except ValueError:
            return None

    def _expected_tip(self) -> str:
        """Where the server left the branch: the last kept experiment's commit, else the run's base."""
        return self.ledger.last_kept_commit() or self.run.base_commit

    # ---- run_experiment ----

    async def run_experiment(self, description: str, hypothesis: str | None = None,
                             caller: str | None = None, wait: bool = True) -> RunExperimentResult:
        description = _clean(description, "description", min_len=3, max_len=MAX_DESCRIPTION)
        if hypothesis is not None:
            hypothesis = _clean(hypothesis, "hypothesis", min_len=0, max_len=MAX_HYPOTHESIS) or None
        if not isinstance(wait, bool):
            raise InvalidArgument(f"wait must be true or false, got {wait!r}")
        base = self.ledger.baseline()
        if base is not None and self.noise_missing(base) and not self._repeats_in_flight(base.id):
            await self._measure_noise(base, caller)  # a kill cut the baseline's noise runs short: finish them first
        with self._state():
            entry = self._admit(description, hypothesis, caller)
            best = self.ledger.best_kept()
        task = self._spawn(entry)
        if not wait:
            await asyncio.sleep(0)  # let it take a free slot, so the answer says "running" when it is
            return self._queued_result(entry["id"], best)
        try:
            exp = await task
        except asyncio.CancelledError:
            await _until_recorded(task)
            raise
        return self._run_result(exp, best)

    def _admit(self, description: str, hypothesis: str | None, caller: str | None) -> dict[str, Any]:
        """Under the state lock: every check a new experiment must pass, then its snapshot and entry."""
        self._finished_intent = None  # a completed decision is reported only to a decision that directly follows
        if not self.sealed and not self.config.sandbox.allow_unsealed:
            raise Refusal(f"experiments of run {self.run.tag} must run sealed, but {self.unsealed_reason}. "
                          "A person must fix that, or create the run with `autoresearch init --allow-unsealed` "
                          "(results are then marked unsealed).")
        stop = self._past_limits()
        if stop is not None:
            raise Refusal(stop)
        self._refuse_if_full()
        problems = self._enforce_pins("before a run", None)
        if problems:
            raise Refusal("; ".join(problems) + f". Edit only {', '.join(self.config.mutable)}; then call "
                                                "run_experiment again.")
        self._check_repo_state()
        parent = self.repo.branch_tip(self.run.branch)
        diff = self.repo.diff_worktree(parent, list(self.config.mutable))
        base = self.ledger.baseline()
        in_flight = self.in_flight_all()
        if base is None and in_flight:
            raise Refusal(f"the baseline (experiment {in_flight[0]['id']}) is still running; every later result is "
                          "compared with it. Call read_results with wait_s to wait for it.")
        is_baseline = base is None
        if is_baseline and diff.strip():
            raise Refusal(
                f"the first experiment of run {self.run.tag} must be the unmodified baseline, but "
                f"{', '.join(self.config.mutable)} differ from commit {parent[:7]}. Call commit_or_revert with "
                "prefer='revert' to restore them, then run_experiment."
            )
        return self._submit(description, hypothesis, caller, parent, diff, is_baseline)

    def _refuse_if_full(self) -> None:
        pending = self.ledger.pending_ids()
        flying = self.in_flight_all()
        outstanding = len(pending) + len(flying)
        if outstanding < self.max_outstanding:
            return
        if len(self.pool) == 1:
            if pending:
                waiting = self.ledger.get(pending[0])
                assert waiting is not None
                raise Refusal(f"experiment {waiting.id} ({waiting.description!r}) is still undecided: call "
                              "commit_or_revert first, then run the next experiment")
            current = flying[0]
            left = remaining_s(current)
            raise Refusal(f"experiment {current['id']} ({current['description']!r}"
                          + (f", {left:.0f} s left" if left is not None else "") + ") is running on this workspace now; "
                          "only one runs at a time with one slot. Wait for it to finish (read_results with wait_s), "
                          "then decide it and continue.")
        raise Refusal(f"{outstanding} experiments are outstanding ({len(flying)} queued or running, {len(pending)} "
                      f"undecided: {', '.join(str(i) for i in pending[:10]) or 'none'}), the most this run allows "
                      f"({self.max_outstanding}). Call read_results with wait_s to wait for one, decide the finished "
                      "ones with commit_or_revert(experiment_id=...), then submit more.")

    def _queued_result(self, exp_id: int, best: Experiment | None) -> RunExperimentResult:
        exp = self.ledger.get(exp_id)
        if exp is not None:  # finished already (a failure that never started, say)
            return self._run_result(exp, best)
        entry = next((e for e in self._entries() if e["id"] == exp_id), {})
        running = entry.get("started_at") is not None
        position = None if running else self.pool.position(exp_id)
        where = (f"running in slot {entry.get('slot')} ({entry.get('device')})" if running
                 else f"queued (place {position if position is not None else '?'} in line for a slot)")
        return RunExperimentResult(
            id=exp_id, status="running" if running else "queued", metric_name=self.config.metric, metric=None,
            verified=False, best=best.metric if best else None, delta=None, would_keep=False, decision="pending",
            duration_s=0.0, slot=entry.get("slot"), queue_position=position,
            next_step=(f"Experiment {exp_id} is {where}. Edit {', '.join(self.config.mutable)} for the next variant "
                       "and submit it with wait=false, or call read_results with wait_s to wait for results; then "
                       "decide each finished one with commit_or_revert(experiment_id=...)."))

    def _run_result(self, exp: Experiment, best: Experiment | None) -> RunExperimentResult:
        best_metric = best.metric if best else None
        delta = exp.metric - best_metric if exp.metric is not None and best_metric is not None else None
        margin = self.config.margin(self.noise_floor())
        best_mean = statistics.fmean(self._run_values(best)) if best is not None and best_metric is not None else None
        would_keep = bool(exp.status == "ok" and (exp.is_baseline or (
            exp.metric is not None and best_mean is not None and self.config.beats(exp.metric, best_mean, margin))))
        confirm = self.config.confirm_runs
        mutable = ", ".join(self.config.mutable)
        if exp.status == "ok" and exp.is_baseline:
            floor = self.noise_floor()
            measured = f" (noise floor {floor:.6f} over {len(self._run_values(exp))} runs)" if floor is not None else ""
            step = f"Baseline recorded{measured}. Edit {mutable} with one idea, then call run_experiment."
        elif exp.status == "ok" and would_keep and confirm:
            step = (f"Call commit_or_revert: it beats the best by more than {margin:.6f}, so it re-runs this change "
                    f"{confirm} more time(s) with fresh seeds and keeps it only if the mean still does.")
        elif exp.status == "ok":
            step = ("Call commit_or_revert: it will KEEP this change." if would_keep else
                    "Call commit_or_revert: it will REVERT this change (not better than the best by more than "
                    f"{margin:g}).")
        elif exp.status == "crash":
            step = (f"Read log_tail. Fix a trivial bug in {mutable} and run again, or call commit_or_revert with "
                    "prefer='revert' to return to the best code.")
        elif exp.status == "timeout":
            step = "Too slow for the hard limit. Make it cheaper or call commit_or_revert with prefer='revert'."
        else:
            step = f"The result is void. Edit only {mutable}; call commit_or_revert with prefer='revert' if unsure."
        return RunExperimentResult(
            id=exp.id, status=exp.status, metric_name=exp.metric_name, metric=exp.metric, verified=exp.verified,
            best=best_metric, delta=delta, would_keep=would_keep, decision=exp.decision or "pending",
            duration_s=exp.duration_s, train_s=exp.train_s, peak_memory_mb=exp.peak_memory_mb, failure=exp.failure,
            log_tail=bounded_tail(exp.log_tail) if exp.status != "ok" else None, slot=exp.slot, next_step=step,
        )

    # ---- read_results ----

    async def wait_for_next(self, wait_s: float) -> None:
        """Return when one of the experiments in flight now is recorded, when none is in flight, or after `wait_s`."""
        if not isinstance(wait_s, (int, float)) or isinstance(wait_s, bool) or not 0 <= wait_s <= MAX_WAIT_S:
            raise InvalidArgument(f"wait_s must be a number of seconds from 0 to {MAX_WAIT_S:g}, got {wait_s!r}")
        watched = [e["id"] for e in self.in_flight_all()]
        deadline = time.monotonic() + float(wait_s)
        while watched and time.monotonic() < deadline:
            if any(self.ledger.get(i) is not None for i in watched):
                return
            if not self.in_flight_all():
                return
            await asyncio.sleep(min(WAIT_POLL_S, max(0.0, deadline - time.monotonic())))

    def read_results(self, last_n: int = 10, status: str | None = None,
                     experiment_id: int | None = None) -> ReadResultsResult:
        """A view of the ledger whose cost follows what it shows (`last_n` rows), not the length of the run."""
        if not isinstance(last_n, int) or not 1 <= last_n <= 200:
            raise InvalidArgument(f"last_n must be an integer from 1 to 200, got {last_n!r}")
        if status is not None and status not in ("ok", "crash", "timeout", "invalid"):
            raise InvalidArgument(f"status must be one of ok, crash, timeout, invalid; got {status!r}")
        ledger = self.ledger
        rows = [history.Annotated(e, ledger.best_before(e.id)) for e in ledger.last(last_n, status)]
        detail = None
        if experiment_id is not None:
            e = ledger.get(experiment_id)
            if e is None:
                top = ledger.max_id()
                known = f"1..{top}" if top else "none yet"
                raise InvalidArgument(f"no experiment {experiment_id} (ids: {known})")
            diff = e.diff if len(e.diff) <= MAX_DIFF_CHARS else e.diff[:MAX_DIFF_CHARS] + "\n... (diff cut)"
            detail = ExperimentDetail(id=e.id, description=e.description, hypothesis=e.hypothesis, status=e.status,
                                      failure=e.failure, metrics=e.metrics, decision=e.decision or "pending",  # type: ignore[arg-type]
                                      decision_reason=e.decision_reason, commit=e.commit[:12], parent=e.parent[:12],
                                      diff=diff, log_tail=bounded_tail(e.log_tail))
        base = ledger.baseline()
        best = ledger.best_kept()
        pending = ledger.pending_ids()
        flying = self.in_flight_all()
        current = self.in_flight()
        return ReadResultsResult(
            tag=self.run.tag, metric_name=self.config.metric, direction=self.config.direction,
            baseline=Reference(id=base.id, metric=base.metric, commit=base.commit[:12]) if base and base.metric is not None
            else None,
            best=Reference(id=best.id, metric=best.metric, commit=(best.kept_commit or best.commit)[:12])
            if best and best.metric is not None else None,
            counts=ledger.counts(), pending_id=pending[0] if pending else None,
            in_flight_id=current.id if current else None, violations=self.violations_count(),
            noise_floor=self.noise_floor(), pending_ids=pending[:50],
            in_flight=[InFlightRow(id=e["id"], state="running" if e.get("started_at") is not None else "queued",
                                   description=str(e.get("description", ""))[:MAX_DESCRIPTION], slot=e.get("slot"),
                                   device=e.get("device"), remaining_s=remaining_s(e), repeat_of=e.get("repeat_of"))
                       for e in flying],
            slots=len(self.pool),
            experiments=[ExperimentRow(id=a.experiment.id, status=a.experiment.status, metric=a.experiment.metric,
                                       delta=a.delta, decision=a.decision, description=a.experiment.description,  # type: ignore[arg-type]
                                       verified=a.experiment.verified, repeat_of=a.experiment.repeat_of)
                         for a in rows],
            detail=detail,
        )
