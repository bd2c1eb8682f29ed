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
import concurrent.futures
import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import shutil
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from server import history, sandbox
from server.acceptance import AcceptanceMixin
from server.arguments import MAX_WAIT_S
from server.agent_files import is_agent_config
from server.audit import AuditError, AuditLog
from server.config import Config
from server.experiment import ExperimentPaths, Outcome, Plan, as_float, execute, read_tail
from server.gitrepo import GitError, GitRepo
from server.inflight import owner_alive, owner_token, read_entries, remaining_s, write_entries
from server.integrity import check_pins, restore_pin
from server.jsonl import append_record, atomic_write_text, read_records
from server.ledger import Experiment, Ledger, LedgerLine
from server.models import (
    DecisionResult,
    ExperimentDetail,
    ExperimentRow,
    InFlightRow,
    ReadResultsResult,
    Reference,
    RunExperimentResult,
)
from server.promotion import OBSERVE_PREFIX, auto_promote
from server.recovery import RecoveryMixin
from server.runstate import RunInfo, frozen_config, private_dir
from server.slots import Slot, SlotPool, device_class, plan_slots
from server.text import UnsafeText, check_agent_text

log = logging.getLogger(__name__)

MAX_DESCRIPTION = 300
MAX_HYPOTHESIS = 1000
MAX_TAIL_CHARS = 1500
MAX_DIFF_CHARS = 20_000
STATE_LOCK_WAIT_S = 60.0
WAIT_POLL_S = 0.2


class Refusal(Exception):
    """The agent asked for something the rules forbid right now; the message says what to do instead."""


class InvalidArgument(Refusal):
    """A tool argument is malformed or names something that does not exist."""


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


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


def _bounded_tail(text: str, limit: int = MAX_TAIL_CHARS) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


# Per engine of this process (by its token): the ids of its entries whose task is alive. Module-wide, so a second
# engine opened on the same run in this process (a reopen) tells a live experiment from one whose task died.
_LIVE: dict[str, set[int]] = {}

Executor = Callable[..., Any]  # execute(config, plan, paths, on_started, integrity_problems) -> Outcome


class Engine(RecoveryMixin, AcceptanceMixin):
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
        self._live: set[int] = _LIVE.setdefault(self._token, set())  # its entries whose task is alive
        self._deciding: set[int] = set()
        self._lock_depth = threading.local()

    @staticmethod
    def session() -> str | None:
        """The agent session this server answers (set by the harness), so every server record names it."""
        return os.environ.get("AUTORESEARCH_SESSION_ID")

    def _make_executor(self) -> Executor:
        if self.config.slots.executor == "ray":
            from server.ray_executor import RayExecutor  # optional extra: imported only when configured

            slots = self.config.slots
            return RayExecutor(address=slots.ray_address, gpus_per_experiment=slots.gpus_per_experiment,
                               cpus_per_experiment=slots.cpus_per_experiment).run
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
        write_entries(self.run_dir, entries)

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
            return entry["id"] in _LIVE.get(str(owner.get("engine")), ())
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

    # ---- experiment ids and records of a start ----

    def _next_id(self) -> int:
        """One past the highest id the ledger, the snapshot refs and the experiment folders have used, so an id is
        never given twice, even after a ledger write failed or a kill lost an inflight entry."""
        exp_id = max(self.ledger.max_id(), getattr(self, "_max_seen_id", 0),
                     max((e["id"] for e in self._entries()), default=0)) + 1
        while (self.run_dir / "experiments" / f"{exp_id:04d}").exists() or self.repo.ref_exists(self._ref(exp_id)):
            exp_id += 1
        self._max_seen_id = exp_id
        return exp_id

    def _ref(self, exp_id: int) -> str:
        return f"refs/autoresearch/{self.run.tag}/{exp_id:04d}"

    def _record_start(self, entry: dict[str, Any]) -> None:
        """Write the `experiment_started` audit record; nothing runs until it is durable, so no experiment can run
        without a trace. When it cannot be written, the start is undone (snapshot ref, folder, entry)."""
        exp_id = int(entry["id"])
        try:
            self.audit.append("server", "experiment_started", session=self.session(), status="ok", summary={
                "experiment_id": exp_id, "description": entry["description"], "parent": entry["parent"],
                "commit": entry["commit"], "is_baseline": entry["is_baseline"], "caller": entry["caller"],
                "repeat_of": entry.get("repeat_of")})
        except (OSError, AuditError) as exc:
            self._live.discard(exp_id)
            self._drop_entry(exp_id)
            with contextlib.suppress(GitError):
                self.repo.delete_ref(self._ref(exp_id), str(entry["commit"]))
            shutil.rmtree(self.run_dir / "experiments" / f"{exp_id:04d}", ignore_errors=True)
            raise OSError(getattr(exc, "errno", None) or errno.EIO,
                          f"experiment {exp_id} was not started: its start could not be recorded in the audit chain "
                          f"({exc})") from exc

    # ---- integrity ----

    def _record_violation(self, description: str, path: str, when: str, experiment_id: int | None) -> None:
        record = {"time": _iso(time.time()), "source": "server", "path": path, "when": when,
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
        exp = await task
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
                          + (f", {left:.0f} s left" if left is not None else "") + ") is running on this run now; "
                          "only one runs at a time with one slot. Wait for it to finish (read_results with wait_s), "
                          "then decide it and continue.")
        raise Refusal(f"{outstanding} experiments are outstanding ({len(flying)} queued or running, {len(pending)} "
                      f"undecided: {', '.join(str(i) for i in pending[:10]) or 'none'}), the most this run allows "
                      f"({self.max_outstanding}). Call read_results with wait_s to wait for one, decide the finished "
                      "ones with commit_or_revert(experiment_id=...), then submit more.")

    def _submit(self, description: str, hypothesis: str | None, caller: str | None, parent: str, diff: str,
                is_baseline: bool) -> dict[str, Any]:
        """Under the state lock: an id, a folder holding the snapshot of the mutable files, a snapshot commit, the
        queued entry and its `experiment_started` record."""
        exp_id = self._next_id()
        exp_dir = self.run_dir / "experiments" / f"{exp_id:04d}"
        snapshot = exp_dir / "snapshot"
        for rel in self.config.mutable:
            src = self.config.workspace / rel
            dst = snapshot / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.exists():
                shutil.copy2(src, dst)
        (exp_dir / "diff.patch").write_text(diff, encoding="utf-8")
        label = "baseline" if is_baseline else description
        commit = self.repo.snapshot_commit(parent, list(self.config.mutable), f"experiment {exp_id}: {label}",
                                           self._ref(exp_id))
        return self._enqueue(exp_id, description, hypothesis, caller, parent, commit, diff, is_baseline, None)

    def _submit_repeat(self, source: Experiment, purpose: str, caller: str | None) -> dict[str, Any]:
        """Under the state lock: queue `source`'s snapshot again (a fresh seed is drawn when it starts)."""
        exp_id = self._next_id()
        exp_dir = self.run_dir / "experiments" / f"{exp_id:04d}"
        shutil.copytree(self.run_dir / "experiments" / f"{source.id:04d}" / "snapshot", exp_dir / "snapshot")
        (exp_dir / "diff.patch").write_text(source.diff, encoding="utf-8")
        (exp_dir / "repeat_of").write_text(str(source.id), encoding="utf-8")  # for `_recover_orphans`
        self.repo.point_ref(self._ref(exp_id), source.commit, f"experiment {exp_id}: {purpose} of {source.id}")
        label = "baseline" if source.is_baseline else source.description
        description = f"{purpose} of experiment {source.id}: {label}"[:MAX_DESCRIPTION]
        return self._enqueue(exp_id, description, source.hypothesis, caller, source.parent, source.commit, source.diff,
                             False, source.id)

    def _enqueue(self, exp_id: int, description: str, hypothesis: str | None, caller: str | None, parent: str,
                 commit: str, diff: str, is_baseline: bool, repeat_of: int | None) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": exp_id, "tag": self.run.tag, "state": "queued", "description": description,
            "hypothesis": hypothesis, "parent": parent, "commit": commit, "diff": diff, "is_baseline": is_baseline,
            "caller": caller, "queued_at": time.time(), "started_at": None, "deadline": None,
            "exp_dir": str(self.run_dir / "experiments" / f"{exp_id:04d}"), "pgid": None, "marker": None,
            "seed": None, "sealed": self.sealed, "repeat_of": repeat_of, "slot": None, "device": None,
            "owner": {**owner_token(), "engine": self._token},
        }
        self._live.add(exp_id)
        self._put_entry(entry)
        self._record_start(entry)
        return entry

    def _spawn(self, entry: dict[str, Any]) -> asyncio.Task[Experiment]:
        """Start the experiment's task (it waits for a slot). With wait=false nobody awaits it: it is kept here, and
        a failure is logged, never lost (its ledger line says what happened)."""
        exp_id = int(entry["id"])
        runner = self._baseline_then_noise(entry) if entry["is_baseline"] else self._execute(entry)
        task = asyncio.get_running_loop().create_task(runner, name=f"experiment-{exp_id}")
        self._tasks[exp_id] = task

        def done(t: asyncio.Task[Experiment]) -> None:
            self._tasks.pop(exp_id, None)
            self._live.discard(exp_id)  # a task that died without recording: the next state lock records it
            if not t.cancelled() and t.exception() is not None:
                log.error("experiment %d failed inside the server: %r", exp_id, t.exception())

        task.add_done_callback(done)
        return task

    async def _baseline_then_noise(self, entry: dict[str, Any]) -> Experiment:
        exp = await self._execute(entry)
        if exp.status == "ok":
            await self._measure_noise(exp, entry.get("caller"))
        return exp

    async def _execute(self, entry: dict[str, Any]) -> Experiment:
        exp_id = int(entry["id"])
        try:
            slot = await self.pool.acquire(exp_id)
        except asyncio.CancelledError:
            self._live.discard(exp_id)
            with self._state():
                self._record_failure(entry, "cancelled: the call was cancelled (or the server is stopping) while it "
                                            "waited for a slot; it never ran")
            raise
        try:
            return await self._run_in_slot(entry, slot)
        finally:
            self.pool.release(slot)
            self._live.discard(exp_id)  # recorded, or failed without a record: the next state lock records it

    def _record_failure(self, entry: dict[str, Any], failure: str) -> Experiment:
        exp_dir = Path(str(entry["exp_dir"]))
        exp = self._append_experiment({**entry, "started_at": entry.get("started_at") or entry["queued_at"]},
                                      status="crash", failure=failure, metric=None, verified=False, metrics={},
                                      finished=time.time(), train_s=None, eval_s=None,
                                      log_tail=read_tail(exp_dir / "run.log", self.config.tail_lines),
                                      fingerprint=None, decision="discard", decision_reason=failure)
        self._drop_entry(int(entry["id"]))
        return exp

    async def _run_in_slot(self, entry: dict[str, Any], slot: Slot) -> Experiment:
        """Run the queued snapshot in `slot` with a fresh seed and record one ledger line. A repeat is never a
        candidate: it is recorded decided (`discard`), linked to the experiment it re-runs, and a repeat of the
        baseline carries the noise floor measured so far."""
        exp_id = int(entry["id"])
        exp_dir = Path(str(entry["exp_dir"]))
        started = time.time()
        limit = self.config.hard_timeout_s + (self.config.evaluate.timeout_s if self.config.evaluate.mode ==
                                              "checkpoint" else 0.0)
        entry.update(state="running", started_at=started, deadline=started + limit, seed=self.next_seed(),
                     slot=slot.index, device=slot.device)
        self._put_entry(entry)

        def on_started(pgid: int, marker: str) -> None:
            entry.update(pgid=pgid, marker=marker)
            self._put_entry(entry)

        def integrity_problems() -> list[str]:
            problems = self._enforce_pins("during a run", exp_id)
            return problems + [str(v.get("detail") or v.get("path")) for v in self._violations_since(started)]

        paths = ExperimentPaths(exp_dir, self.pinned_dir, self.run_dir, self.private_dir)
        frozen = self.run.frozen or {}
        plan = Plan(exp_id=exp_id, seed=int(entry["seed"]), sealed=self.sealed, pins=self.run.pins,
                    data_sha256=dict(frozen.get("data_sha256") or {}),  # type: ignore[arg-type]
                    passed_env=dict(frozen.get("env") or {}),  # type: ignore[arg-type]
                    gpu=slot.gpu, cpus=slot.cpus)
        try:
            outcome: Outcome = await self.executor(self.config, plan, paths, on_started, integrity_problems)
        except asyncio.CancelledError:
            with self._state():
                self._record_failure(entry, "cancelled: the client cancelled the call (or the server is stopping); "
                                            "the run was killed")
            raise
        with self._state():
            return self._record_outcome(entry, outcome, slot)

    def _record_outcome(self, entry: dict[str, Any], outcome: Outcome, slot: Slot) -> Experiment:
        exp_id = int(entry["id"])
        for text in outcome.violations:
            self._record_violation(text, text.split(" copy of ", 1)[-1].split(" differs", 1)[0], "during a run",
                                   exp_id)
        status, failure, fingerprint = outcome.status, outcome.failure, outcome.fingerprint
        device = outcome.device or slot.device
        reference = self.ledger.baseline()
        if status == "ok" and reference is not None and reference.id != exp_id:
            if reference.fingerprint and fingerprint and fingerprint != reference.fingerprint:
                status, failure = "invalid", (
                    f"evaluated on different data (fingerprint {fingerprint[:12]} != baseline "
                    f"{reference.fingerprint[:12]}); results on different data are never compared")
            elif device_class(reference.device) and device_class(device) != device_class(reference.device):
                status, failure = "invalid", (
                    f"ran on {device}, a different kind of device than the baseline ({reference.device}); results "
                    "from different device classes are never compared (one kind of device per run)")
        repeat_of = self.ledger.get(entry["repeat_of"]) if entry.get("repeat_of") is not None else None
        noise_floor = None
        if repeat_of is not None:
            decision: str | None = "discard"
            reason = f"repeat of experiment {repeat_of.id}" + ("" if status == "ok" else f" ({status}: {failure})")
            if repeat_of.is_baseline:
                values = self._run_values(repeat_of)
                if status == "ok" and outcome.metric is not None:
                    values.append(outcome.metric)
                noise_floor = statistics.stdev(values) if len(values) >= 2 else None
        elif entry["is_baseline"]:
            decision = "keep" if status == "ok" else "discard"
            reason = "baseline" if status == "ok" else f"baseline {status}: {failure}"
        else:
            decision = None if status == "ok" else "discard"
            reason = None if status == "ok" else f"{status}: {failure}"
        exp = self._append_experiment(entry, status=status, failure=failure,
                                      metric=outcome.metric if status == "ok" else None, verified=outcome.verified,
                                      metrics=outcome.metrics, finished=time.time(), train_s=outcome.train_s,
                                      eval_s=outcome.eval_s, log_tail=outcome.tail, fingerprint=fingerprint,
                                      decision=decision, decision_reason=reason,
                                      kept_commit=str(entry["parent"]) if decision == "keep" else None,
                                      sealed=outcome.sealed, noise_floor=noise_floor, device=device, slot=slot.index)
        if outcome.private:
            append_record(self.private_dir / "holdout.jsonl",
                          {"experiment_id": exp_id, "time": _iso(time.time()), **outcome.private})
        self._drop_entry(exp_id)
        return exp

    def _append_experiment(self, data: dict[str, Any], *, status: str, failure: str | None, metric: float | None,
                           verified: bool, metrics: dict[str, float | str], finished: float, train_s: float | None,
                           eval_s: float | None, log_tail: str, fingerprint: str | None, decision: str | None,
                           decision_reason: str | None, kept_commit: str | None = None,
                           sealed: bool | None = None, noise_floor: float | None = None,
                           device: str | None = None, slot: int | None = None) -> Experiment:
        started = float(data["started_at"])
        memory = as_float(metrics.get(self.config.memory_metric)) if self.config.memory_metric else None
        clean_metrics = {k: v for k, v in metrics.items() if not (isinstance(v, float) and not math.isfinite(v))}
        exp = Experiment(
            id=int(data["id"]), tag=self.run.tag, parent=str(data["parent"]), commit=str(data["commit"]),
            description=str(data["description"]), hypothesis=data.get("hypothesis"),
            diff=str(data.get("diff", "")), status=status, metric_name=self.config.metric,  # type: ignore[arg-type]
            metric=metric, verified=verified, metrics=clean_metrics, started_at=_iso(started),
            finished_at=_iso(finished), duration_s=round(finished - started, 3), train_s=train_s, eval_s=eval_s,
            peak_memory_mb=memory, failure=failure, log_tail=_bounded_tail(log_tail, 4000),
            log_path=str(Path(str(data["exp_dir"])) / "run.log"), fingerprint=fingerprint,
            is_baseline=bool(data.get("is_baseline")), caller=data.get("caller"),
            decision=decision, decision_reason=decision_reason, kept_commit=kept_commit,  # type: ignore[arg-type]
            seed=data.get("seed"), sealed=bool(data.get("sealed", self.sealed) if sealed is None else sealed),
            repeat_of=data.get("repeat_of"), noise_floor=noise_floor,
            device=device or data.get("device"), slot=slot if slot is not None else data.get("slot"),
        )
        self.ledger.append_experiment(exp)
        return exp

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
            measured = f" (noise floor {floor:.6f} over {self.config.noise_runs} runs)" if floor is not None else ""
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
            log_tail=_bounded_tail(exp.log_tail) if exp.status != "ok" else None, slot=exp.slot, next_step=step,
        )

    # ---- commit_or_revert ----

    def commit_or_revert(self, experiment_id: int | None = None, prefer: str = "keep_if_better",
                         caller: str | None = None) -> DecisionResult:
        """`decide` for synchronous callers (tests, benchmarks, the CLI). Called from inside a running event loop it
        runs on a thread of its own and blocks that loop until the decision is made, as a synchronous call does."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.decide(experiment_id, prefer, caller))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.decide(experiment_id, prefer, caller)).result()

    async def decide(self, experiment_id: int | None = None, prefer: str = "keep_if_better",
                     caller: str | None = None) -> DecisionResult:
        """Keep or revert a finished experiment by the acceptance rule (server/acceptance.py).

        Confirmation re-runs happen here, inside commit_or_revert, not inside run_experiment: run_experiment stays
        one experiment per call, so its duration and the agent's per-call timeout (1500 s in .mcp.json) keep their
        meaning, and only a result the agent asks to keep that already beats the best pays for re-runs (they share
        the slots, so with several they run side by side). The stall detector sees a tool call in flight all that
        time, and a cancelled call kills the re-runs and records them as crashes like any run. The decision intent
        is written only after the confirmations, against the best at that moment: a kill -9 during one leaves the
        candidate pending with the repeats recorded, and the next commit_or_revert runs only the missing ones."""
        if prefer not in ("keep_if_better", "revert"):
            raise InvalidArgument(f"prefer must be 'keep_if_better' or 'revert', got {prefer!r}")
        with self._state():
            finished = self._finished_intent
            if finished is not None and experiment_id in (None, finished.id):
                self._finished_intent = None
                return self._decision_result(finished, "completed the decision an interrupted call had started")
            target = self._target(experiment_id, prefer)
            if target is None:  # prefer == "revert" with nothing to decide: restore the best code
                tip = self.repo.branch_tip(self.run.branch)
                best = self.ledger.best_kept()
                self.repo.restore_paths(tip, list(self.config.mutable))
                return DecisionResult(experiment_id=None, decision="restored",
                                      reason=f"restored {', '.join(self.config.mutable)} to the best commit",
                                      commit=tip[:12], best=best.metric if best else None,
                                      best_id=best.id if best else None,
                                      next_step="Edit with one idea, then call run_experiment.")
            screen = self._screen(target, self.ledger.best_kept()) if prefer == "keep_if_better" else None
            self._deciding.add(target.id)
        try:
            values: list[float] = [target.metric] if target.metric is not None else []
            stopped = None
            if screen is not None and screen.keep and self.config.confirm_runs:
                values, stopped = await self._confirm(target, caller)
            with self._state():
                return self._conclude(target, prefer, screen, values, stopped)
        finally:
            self._deciding.discard(target.id)

    def _target(self, experiment_id: int | None, prefer: str) -> Experiment | None:
        """The experiment a decision is about; refusals name what to do. None: nothing to decide, revert asked."""
        pending = self.ledger.pending_ids()
        flying = {e["id"]: e for e in self.in_flight_all()}
        if experiment_id is None:
            if len(pending) > 1:
                raise Refusal(f"experiments {', '.join(str(i) for i in pending)} are finished and undecided; name one: "
                              "commit_or_revert(experiment_id=...).")
            if not pending:
                if prefer != "revert":
                    running = f" ({len(flying)} still running or queued: read_results with wait_s)" if flying else ""
                    raise Refusal("no experiment is waiting for a decision" + running + ". To discard your edits and "
                                  "return to the best code, call commit_or_revert with prefer='revert'.")
                return None
            experiment_id = pending[0]
        exp = self.ledger.get(experiment_id)
        if exp is None:
            if experiment_id in flying:
                raise Refusal(f"experiment {experiment_id} has not finished yet ({flying[experiment_id]['state']}); "
                              "call read_results with wait_s to wait for it, then decide it")
            top = self.ledger.max_id()
            known = f"1..{top}" if top else "none yet"
            raise InvalidArgument(f"no experiment {experiment_id} (ids: {known}); call read_results")
        if exp.decision is not None:
            waiting = ", ".join(str(i) for i in pending)
            raise Refusal(
                f"experiment {experiment_id} was already decided ({exp.decision}); "
                + (f"experiment {pending[0]} is the one pending. Call commit_or_revert without experiment_id to decide "
                   "it." if len(pending) == 1 else
                   f"undecided: {waiting}. Call commit_or_revert with one of them." if pending else
                   "nothing is pending. Call commit_or_revert with prefer='revert' (and no experiment_id) to restore "
                   "the best code."))
        if exp.id in self._deciding or any(e.get("repeat_of") == exp.id for e in flying.values()):
            raise Refusal(f"experiment {exp.id} is being decided by another call (its confirmation runs are running); "
                          "call read_results with wait_s and look at its decision")
        base = self.ledger.baseline()
        if prefer == "keep_if_better" and base is not None and self._repeats_in_flight(base.id):
            raise Refusal("the noise floor is still being measured (the baseline's noise runs are running); every "
                          "decision needs it. Call read_results with wait_s, then decide.")
        return exp

    def _conclude(self, target: Experiment, prefer: str, screen: Any, values: list[float],
                  stopped: str | None) -> DecisionResult:
        """Under the state lock: the verdict against the best now, the intent, then the branch and the ledger."""
        current = self.ledger.get(target.id)
        if current is not None and current.decision is not None:
            return self._decision_result(current, "decided meanwhile by another call")
        best = self.ledger.best_kept()
        if prefer != "keep_if_better":
            verdict_keep, why, facts = False, "revert requested", {}
        elif not screen.keep:
            verdict_keep, why, facts = False, screen.reason, screen.facts
        else:
            verdict = self._final(target, values, stopped, best)
            verdict_keep, why, facts = verdict.keep, verdict.reason, verdict.facts
        tip = self.repo.branch_tip(self.run.branch)
        intent: dict[str, object] = {"experiment_id": target.id, "from_tip": tip, "time": _iso(time.time()),
                                     "facts": facts}
        observe_only = self.config.autonomy == "observe" and verdict_keep
        best_metric = best.metric if best else None
        if verdict_keep and not observe_only:
            assert target.metric is not None and best_metric is not None
            delta = target.metric - best_metric
            started = "" if target.parent == tip else f" (started from {target.parent[:7]}, replaces {tip[:7]})"
            intent.update(decision="keep", reason=why,
                          message=f"{self.config.metric} {target.metric:.6f} ({delta:+.6f}) experiment "
                                  f"{target.id}: {target.description}{started}")
        else:
            intent.update(decision="discard", reason=(
                f"{OBSERVE_PREFIX} {target.metric:.6f} beats the best {best_metric:.6f}; autonomy is 'observe', so "
                f"nothing is kept (`autoresearch review` proposes it); {why}" if observe_only else why))
        atomic_write_text(self.intent_path, json.dumps(intent))  # before anything moves: recovery finishes it
        decided = self._apply_intent(intent)
        assert decided is not None
        if decided.decision == "keep" and self.config.autonomy == "auto-promote":
            auto_promote(self.config, self.run, self.audit)  # within the written limits, else left for review
        return self._decision_result(decided, None, best_before=best)

    def _workspace_is_free(self, deciding: int) -> bool:
        """True when no other experiment is queued, running or undecided: only then does a decision put the best
        code back into the workspace (during a wave the agent is editing the next variant there)."""
        return not self.in_flight_all() and not [i for i in self.ledger.pending_ids() if i != deciding]

    def _apply_intent(self, intent: dict[str, object]) -> Experiment | None:
        """Carry out a written decision intent exactly once, whatever happened to an earlier attempt: the branch moves
        only if it is still where the intent found it, and the ledger line is written only if it is not there."""
        exp_id = int(intent["experiment_id"])  # type: ignore[call-overload]
        exp = self.ledger.get(exp_id)
        if exp is None:
            self.intent_path.unlink(missing_ok=True)
            return None
        if exp.decision is not None:  # done, but killed before removing the intent
            self._reseal(exp_id, "decision")
            self.intent_path.unlink(missing_ok=True)
            return exp
        mutable = list(self.config.mutable)
        from_tip = str(intent["from_tip"])
        facts = intent.get("facts") if isinstance(intent.get("facts"), dict) else None
        tip = self.repo.branch_tip(self.run.branch)
        restore = self._workspace_is_free(exp_id)
        if intent["decision"] == "keep":
            if tip == from_tip:
                extra = exp.commit if exp.parent != from_tip else None  # a wave's variant: record where it started
                kept = self.repo.advance_branch(self.run.branch, exp.commit, str(intent["message"]),
                                                second_parent=extra)
            elif self.repo.parent_and_tree(tip) == (from_tip, self.repo.parent_and_tree(exp.commit)[1]):
                kept = tip  # the branch moved before the kill; only the ledger line is missing
            else:
                raise Refusal(f"branch {self.run.branch} is at {tip[:7]}, neither where the decision on experiment "
                              f"{exp_id} found it ({from_tip[:7]}) nor that commit's child holding experiment "
                              f"{exp_id}. A person must run `git reset --hard {from_tip[:7]}` and call "
                              "commit_or_revert again.")
            if restore:
                self.repo.restore_paths(kept, mutable)
            decided = self.ledger.append_decision(exp_id, "keep", str(intent["reason"]), kept, facts)
        else:
            if restore:
                self.repo.restore_paths(tip, mutable)
            decided = self.ledger.append_decision(exp_id, "discard", str(intent["reason"]), None, facts)
            (self.run_dir / "experiments" / f"{exp_id:04d}" / "model" / "checkpoint").unlink(missing_ok=True)
        self.intent_path.unlink(missing_ok=True)
        return decided

    def _decision_result(self, exp: Experiment, note: str | None,
                         best_before: Experiment | None = None) -> DecisionResult:
        busy = not self._workspace_is_free(exp.id)
        left = (f" The workspace's {', '.join(self.config.mutable)} was left as you have it: other experiments are "
                "outstanding (call commit_or_revert with prefer='revert' and no experiment_id to restore the best "
                "code when the wave is done).") if busy else ""
        if exp.decision == "keep":
            before = self.ledger.best_before(exp.id)
            reason = exp.decision_reason or (f"{exp.metric:.6f} beats the best {before:.6f}"
                                             if before is not None and exp.metric is not None else "kept")
            return DecisionResult(experiment_id=exp.id, decision="keep", reason=(note + ": " if note else "") + reason,
                                  commit=(exp.kept_commit or exp.commit)[:12], best=exp.metric, best_id=exp.id,
                                  next_step="Kept. Edit with the next idea, then call run_experiment." + left)
        best = best_before or self.ledger.best_kept()
        tip = self.repo.branch_tip(self.run.branch)
        return DecisionResult(experiment_id=exp.id, decision="discard",
                              reason=(note + ": " if note else "") + (exp.decision_reason or "discarded"),
                              commit=tip[:12], best=best.metric if best else None, best_id=best.id if best else None,
                              next_step=("Reverted to the best code. Try a different idea." if not busy
                                         else "Discarded." + left))

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
                                      diff=diff, log_tail=_bounded_tail(e.log_tail))
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
