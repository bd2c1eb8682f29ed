"""The experiment engine: the three operations the tools expose, with every rule enforced here, not in a prompt.

- `run_experiment` refuses while a result is undecided, while a locked file differs from its pin, or while the
  repository is not as the engine left it; runs the configured command under the configured hard limit in its own
  process group; evaluates with the pinned evaluation; records one ledger line.
- `commit_or_revert` applies the keep/revert rule itself (honest acceptance, see `decide` and `_accept`): a change is
  kept only when its metric beats the mean of the best's runs by more than max(min_improvement, noise_k x noise
  floor), and, when `confirm_runs` > 0, only when the mean of its own runs (itself plus `confirm_runs` re-runs of its
  snapshot with fresh seeds) still does. The noise floor is the sample standard deviation of the baseline's
  `noise_runs` runs, measured once at the start of a run and never re-measured automatically: a re-measurement costs
  `noise_runs` experiments, the spread it measures comes from the seed and the machine far more than from the code,
  and a floor that moved during a night would make early and late decisions incomparable. A person who changes the
  model a lot starts a new tag, which measures a new floor. Re-runs are ledger lines of their own (`repeat_of`), never
  candidates, and count in every limit.
- `read_results` is a compact view of the ledger.

A kill -9 or a full disk at any moment leaves a state that recovery completes: `inflight.json` is written before the
command starts and removed after the ledger line is durable, and an `experiment_started` audit record precedes the
command; a decision is written as an intent (`decision.json`) before the branch moves and removed after its ledger line
is durable. Recovery runs whenever the experiment lock is taken (cheap: two `stat`s) and fully when an engine opens
(`recover()`): a leftover experiment becomes a `crash` record, a leftover intent is carried out (exactly once: the
branch is moved only if it has not moved yet), ledger lines are sealed into the audit chain, `.tmp` litter is removed
and results.tsv is rewritten if it is behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from server import history, jsonl
from server.agent_files import is_agent_config
from server.audit import AuditError, AuditLog
from server.config import Config
from server.gitrepo import GitError, GitRepo
from server.integrity import check_pins, restore_pin
from server.jsonl import append_record, atomic_write_text, read_records
from server.ledger import Experiment, Ledger, LedgerLine
from server.promotion import OBSERVE_PREFIX, auto_promote
from server.models import (
    DecisionResult,
    ExperimentDetail,
    ExperimentRow,
    ReadResultsResult,
    Reference,
    RunExperimentResult,
)
from server import sandbox
from server.experiment import ExperimentPaths, Plan, as_float, execute, read_tail
from server.runner import is_our_group, kill_group, kill_marked
from server.runstate import RunInfo, frozen_config, private_dir
from server.text import UnsafeText, check_agent_text

log = logging.getLogger(__name__)

MAX_DESCRIPTION = 300
MAX_HYPOTHESIS = 1000
MAX_TAIL_CHARS = 1500
MAX_DIFF_CHARS = 20_000


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

    @property
    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.time())


def _session() -> str | None:
    """The agent session this server answers (set by the harness), so every server record names it."""
    return os.environ.get("AUTORESEARCH_SESSION_ID")


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


def _repeat_mark(exp_dir: Path) -> int | None:
    """The experiment a repeat's folder re-runs (written before it starts), None for an ordinary experiment."""
    try:
        return int((exp_dir / "repeat_of").read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def _fresh_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def _bounded_tail(text: str, limit: int = MAX_TAIL_CHARS) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


class Engine:
    """One run (tag) of one workspace. Several engines (processes) may share a run; files and locks keep it whole."""

    def __init__(self, config: Config, run: RunInfo) -> None:
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
        self._finished_intent: Experiment | None = None  # a decision recovery carried out during the current call
        self.inflight_path = self.run_dir / "inflight.json"
        self.intent_path = self.run_dir / "decision.json"
        self.violations_path = self.run_dir / "violations.jsonl"
        self.lock_path = self.run_dir / "experiment.lock"
        self.pinned_dir = self.run_dir / "pinned"
        self.next_seed: Callable[[], int] = _fresh_seed  # each run's AUTORESEARCH_SEED (tests replay chosen seeds)

    # ---- locking and recovery ----

    @contextmanager
    def _experiment_lock(self) -> Iterator[None]:
        """One experiment at a time per run, across threads and processes (a second caller is refused, not queued).
        Whoever takes the lock first completes what a dead holder left (see `_recover_locked`)."""
        fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                current = self.in_flight()
                what = f"experiment {current.id} ({current.description!r}, {current.remaining_s:.0f} s left)" if current \
                    else "another experiment"
                raise Refusal(
                    f"{what} is running on this workspace now; only one runs at a time on one device. "
                    "Wait for it to finish, then call read_results and continue."
                ) from None
            self._finished_intent = None
            self._recover_locked()
            yield
        finally:
            os.close(fd)

    def _lock_is_free(self) -> bool:
        fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True
        finally:
            os.close(fd)

    def recover(self) -> str | None:
        """Complete what a dead server left (run when an engine opens): the experiment in flight becomes a `crash`
        record, a decision intent is carried out, unrecorded snapshot refs are recorded or removed, ledger lines are
        sealed, `.tmp` litter is removed and results.tsv is brought up to date. None when nothing was left."""
        try:
            with self._experiment_lock():
                notes = [n for n in (self._last_recovery_note, self._recover_orphans()) if n]
                with jsonl.locked(self.ledger.path):
                    litter = jsonl.remove_temp_files(self.run_dir, ["results.tsv", "experiments.idx"])
                with jsonl.locked(self.audit.path):
                    litter += jsonl.remove_temp_files(self.run_dir, ["audit.head"])
                litter += jsonl.remove_temp_files(self.run_dir, ["inflight.json", "decision.json"])
                if litter:
                    log.info("removed %d temporary file(s) left by an interrupted write", len(litter))
                if self.ledger.sync_results_tsv():
                    notes.append("results.tsv was behind the ledger; rewrote it")
                return "; ".join(notes) or None
        except Refusal:
            return None  # another live server holds the lock: the experiment is genuinely running

    def _recover_locked(self) -> None:
        """With the experiment lock held: finish a decision intent, record an experiment left in flight, retry
        audit seals that failed. Two `stat`s when nothing was left."""
        self._last_recovery_note: str | None = None
        if self._unsealed:
            self._retry_seals()
        if self.intent_path.exists():
            self._finished_intent = self._finish_intent()
            if self._finished_intent is not None:
                self._last_recovery_note = (f"the decision on experiment {self._finished_intent.id} "
                                            f"({self._finished_intent.decision}) was completed")
        if self.inflight_path.exists():
            self._last_recovery_note = self._recover_inflight()

    def _recover_inflight(self) -> str | None:
        try:
            data = json.loads(self.inflight_path.read_text(encoding="utf-8"))
            exp_id = int(data["id"])
        except (OSError, ValueError, KeyError, TypeError):
            self.inflight_path.unlink(missing_ok=True)
            return "removed an unreadable inflight.json"
        marker = data.get("marker")
        killed = 0
        if marker:
            pgid = data.get("pgid")
            if pgid and is_our_group(int(pgid), marker):
                kill_group(int(pgid), marker, grace_s=1.0)
            killed = kill_marked(marker)
        note = None
        if self.ledger.get(exp_id) is None:
            log_path = Path(data["exp_dir"]) / "run.log"
            tail = read_tail(log_path, self.config.tail_lines)
            failure = "interrupted: the server stopped during this run (recorded when it restarted)"
            self._append_experiment(data, status="crash", failure=failure, metric=None, verified=False,
                                    metrics={}, finished=time.time(), train_s=None, eval_s=None,
                                    log_tail=tail, fingerprint=None, decision="discard",
                                    decision_reason=failure)
            note = f"experiment {exp_id} was interrupted by a server stop; recorded as crash"
            self.audit.append("server", "recovery", session=_session(), status="ok",
                              summary={"experiment_id": exp_id, "killed_processes": killed})
        else:
            self._reseal(exp_id, "experiment")  # killed between the ledger line and its seal
        self.inflight_path.unlink(missing_ok=True)
        return note

    def in_flight(self) -> InFlight | None:
        """The experiment running now; None when none is, including when `inflight.json` is a leftover of a server
        that died (the experiment lock is free, or the ledger already holds the experiment)."""
        try:
            data = json.loads(self.inflight_path.read_text(encoding="utf-8"))
            current = InFlight(id=int(data["id"]), description=str(data["description"]),
                               started_at=float(data["started_at"]), deadline=float(data["deadline"]),
                               pgid=data.get("pgid"))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if self._lock_is_free() or self.ledger.get(current.id) is not None:
            return None
        return current

    # ---- sealing ledger lines into the audit chain ----

    def _seal(self, line: LedgerLine) -> None:
        """Called under the ledger lock for every line this engine writes: an audit record with the line's sha256,
        so `audit verify` can tell a ledger line the server wrote from one written or edited by anything else. A
        failed seal (a full disk) does not fail the call whose line is already durable; it is retried."""
        try:
            self._append_seal(line)
        except (OSError, AuditError) as exc:
            log.error("could not seal ledger line at byte %d into the audit chain (%s); retrying later", line.offset,
                      exc)
            self._unsealed.append(line)

    def _append_seal(self, line: LedgerLine, status: str = "ok") -> None:
        self.audit.append("server", "ledger_append", session=_session(), status=status, summary={
            "offset": line.offset, "length": len(line.data), "sha256": hashlib.sha256(line.data).hexdigest(),
            "type": line.kind, "experiment_id": line.experiment_id})

    def _retry_seals(self) -> None:
        while self._unsealed:
            self._append_seal(self._unsealed[0])
            self._unsealed.pop(0)

    def _reseal(self, exp_id: int, kind: str) -> None:
        """Seal the ledger line a dead server wrote for this experiment (it may have died before sealing it). A
        second seal of the same line is harmless; only the line recorded by the inflight or intent file is sealed
        this way, never any other unsealed line."""
        line = self.ledger.line_of(exp_id, kind)
        if line is None:
            return
        sealed = any(r.event == "ledger_append" and r.summary and r.summary.get("offset") == line.offset
                     for r in self.audit.tail_records())
        if not sealed:
            self._append_seal(line, status="recovered")

    # ---- decisions: intent first, then the branch, then the ledger ----

    def _finish_intent(self) -> Experiment | None:
        try:
            intent = json.loads(self.intent_path.read_text(encoding="utf-8"))
            int(intent["experiment_id"])
        except (OSError, ValueError, KeyError, TypeError):
            self.intent_path.unlink(missing_ok=True)
            log.warning("removed an unreadable %s", self.intent_path)
            return None
        exp = self._apply_intent(intent)
        self.audit.append("server", "recovery", session=_session(), status="ok",
                          summary={"experiment_id": intent["experiment_id"], "decision": intent["decision"],
                                   "completed": exp is not None})
        return exp

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
        if intent["decision"] == "keep":
            if tip == from_tip:
                kept = self.repo.advance_branch(self.run.branch, exp.commit, str(intent["message"]))
            elif self.repo.parent_and_tree(tip) == (from_tip, self.repo.parent_and_tree(exp.commit)[1]):
                kept = tip  # the branch moved before the kill; only the ledger line is missing
            else:
                raise Refusal(f"branch {self.run.branch} is at {tip[:7]}, neither where the decision on experiment "
                              f"{exp_id} found it ({from_tip[:7]}) nor that commit's child holding experiment "
                              f"{exp_id}. A person must run `git reset --hard {from_tip[:7]}` and call "
                              "commit_or_revert again.")
            self.repo.restore_paths(kept, mutable)
            decided = self.ledger.append_decision(exp_id, "keep", str(intent["reason"]), kept, facts)
        else:
            self.repo.restore_paths(tip, mutable)
            decided = self.ledger.append_decision(exp_id, "discard", str(intent["reason"]), None, facts)
            (self.run_dir / "experiments" / f"{exp_id:04d}" / "model" / "checkpoint").unlink(missing_ok=True)
        self.intent_path.unlink(missing_ok=True)
        return decided

    # ---- experiment ids and records of a start ----

    def _next_id(self) -> int:
        """One past the highest id the ledger, the snapshot refs and the experiment folders have used, so an id is
        never given twice, even after a ledger write failed or a kill lost `inflight.json`."""
        exp_id = max(self.ledger.max_id(), getattr(self, "_max_seen_id", 0)) + 1
        while (self.run_dir / "experiments" / f"{exp_id:04d}").exists() or self.repo.ref_exists(self._ref(exp_id)):
            exp_id += 1
        self._max_seen_id = exp_id
        return exp_id

    def _ref(self, exp_id: int) -> str:
        return f"refs/autoresearch/{self.run.tag}/{exp_id:04d}"

    def _record_start(self, exp_id: int, description: str, parent: str, commit: str, is_baseline: bool,
                      caller: str | None) -> None:
        """Write the `experiment_started` audit record; the command runs only once it is durable, so no experiment
        can run without a trace. When it cannot be written, the start is undone (snapshot ref, folder,
        inflight.json) and the error says why."""
        try:
            self.audit.append("server", "experiment_started", session=_session(), status="ok", summary={
                "experiment_id": exp_id, "description": description, "parent": parent, "commit": commit,
                "is_baseline": is_baseline, "caller": caller})
        except (OSError, AuditError) as exc:
            self.inflight_path.unlink(missing_ok=True)
            with contextlib.suppress(GitError):
                self.repo.delete_ref(self._ref(exp_id), commit)
            shutil.rmtree(self.run_dir / "experiments" / f"{exp_id:04d}", ignore_errors=True)
            raise OSError(getattr(exc, "errno", None) or errno.EIO,
                          f"experiment {exp_id} was not started: its start could not be recorded in the audit chain "
                          f"({exc})") from exc

    def _recover_orphans(self) -> str | None:
        """Snapshot refs and folders above the ledger's last id with nothing in flight: a server killed before it
        wrote inflight.json (nothing ran: removed) or one whose inflight.json was lost after the command started
        (it has a run.log: recorded as a crash, so it cannot vanish)."""
        top = self.ledger.max_id()
        notes = []
        candidates: list[tuple[int, str | None]] = []
        exp_id, misses = top, 0
        while misses < 3:  # each failed start uses one id, so leftovers sit just above the last recorded one
            exp_id += 1
            ref = self._ref(exp_id)
            commit = self.repo.resolve(ref) if self.repo.ref_exists(ref) else None
            if commit is None and not (self.run_dir / "experiments" / f"{exp_id:04d}").exists():
                misses += 1
                continue
            misses = 0
            candidates.append((exp_id, commit))
        for exp_id, commit in candidates:
            exp_dir = self.run_dir / "experiments" / f"{exp_id:04d}"
            if commit is not None and (exp_dir / "run.log").exists():
                parent, _ = self.repo.parent_and_tree(commit)
                message = self.repo.message_of(commit)
                label = message.split(": ", 1)[1] if ": " in message else message
                data: dict[str, object] = {
                    "id": exp_id, "parent": parent or commit, "commit": commit, "exp_dir": str(exp_dir),
                    "description": label.strip() or "(description lost)", "is_baseline": label.strip() == "baseline",
                    "repeat_of": _repeat_mark(exp_dir),
                    "diff": (exp_dir / "diff.patch").read_text(encoding="utf-8", errors="replace")
                    if (exp_dir / "diff.patch").exists() else "",
                    "started_at": (exp_dir / "run.log").stat().st_mtime}
                if data["repeat_of"] is not None:
                    data.update(is_baseline=False, description=f"repeat of experiment {data['repeat_of']}")
                failure = "interrupted: its in-flight record was lost when the server stopped (recorded on restart)"
                self._append_experiment(data, status="crash", failure=failure, metric=None, verified=False, metrics={},
                                        finished=time.time(), train_s=None, eval_s=None,
                                        log_tail=read_tail(exp_dir / "run.log", self.config.tail_lines),
                                        fingerprint=None, decision="discard", decision_reason=failure)
                notes.append(f"experiment {exp_id} had started but was never recorded; recorded as crash")
            else:
                if commit is not None:
                    self.repo.delete_ref(self._ref(exp_id), commit)
                shutil.rmtree(exp_dir, ignore_errors=True)
                notes.append(f"removed the never-started experiment {exp_id}")
        for note in notes:
            self.audit.append("server", "recovery", session=_session(), status="ok", summary={"note": note})
        return "; ".join(notes) or None

    # ---- integrity ----

    def _record_violation(self, description: str, path: str, when: str, experiment_id: int | None) -> None:
        record = {"time": _iso(time.time()), "source": "server", "path": path, "when": when,
                  "experiment_id": experiment_id, "detail": description, "restored": True}
        append_record(self.violations_path, record)
        self.audit.append("server", "violation", session=_session(), status="blocked", summary=record)

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

    def _check_repo_state(self, experiments: list[Experiment]) -> None:
        branch = self.repo.current_branch()
        if branch != self.run.branch:
            raise Refusal(
                f"the repository is on {branch or 'a detached HEAD'}, not on the run branch {self.run.branch}. "
                f"A person must run `git checkout {self.run.branch}` before experiments continue."
            )
        expected = self._expected_tip(experiments)
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

    def _refuse_past_limits(self, started: int) -> None:
        """The harness's limits (`limits.json`) bind the server too: no experiment starts past them."""
        try:
            limits = json.loads((self.run_dir / "limits.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        cap = limits.get("max_experiments")
        if isinstance(cap, int) and started >= cap:
            raise Refusal(f"the run's limit of {cap} experiments is reached; the harness is stopping the loop. "
                          "Do not start another experiment.")
        deadline = limits.get("deadline")
        if isinstance(deadline, (int, float)) and time.time() >= deadline:
            raise Refusal("the run's deadline has passed; the harness is stopping the loop. "
                          "Do not start another experiment.")

    def _runs_rel(self) -> str | None:
        try:
            return self.config.runs_dir.relative_to(self.config.workspace).as_posix()
        except ValueError:
            return None

    def _expected_tip(self, experiments: list[Experiment] | None = None) -> str:
        """Where the server left the branch: the last kept experiment's commit, else the run's base (from the
        ledger's index; `experiments` is accepted for callers that hold a list and is not needed)."""
        return self.ledger.last_kept_commit() or self.run.base_commit

    def _history(self) -> list[Experiment]:
        """The experiments the rules look at, without reading the whole ledger: the baseline, the best kept, the
        last kept with its branch commit and the pending one, in id order. `history.baseline`, `best_kept` and
        `pending` and `_expected_tip` give the same answers on it as on the full list."""
        picked = {e.id: e for e in (self.ledger.baseline(), self.ledger.best_kept(), self.ledger.pending()) if e}
        return [picked[i] for i in sorted(picked)]

    # ---- run_experiment ----

    async def run_experiment(self, description: str, hypothesis: str | None = None,
                             caller: str | None = None) -> RunExperimentResult:
        description = _clean(description, "description", min_len=3, max_len=MAX_DESCRIPTION)
        if hypothesis is not None:
            hypothesis = _clean(hypothesis, "hypothesis", min_len=0, max_len=MAX_HYPOTHESIS) or None
        with self._experiment_lock():
            if not self.sealed and not self.config.sandbox.allow_unsealed:
                raise Refusal(f"experiments of run {self.run.tag} must run sealed, but {self.unsealed_reason}. "
                              "A person must fix that, or create the run with `autoresearch init --allow-unsealed` "
                              "(results are then marked unsealed).")
            experiments = self._history()
            self._refuse_past_limits(self.ledger.counts()["total"])
            waiting = history.pending(experiments)
            if waiting is not None:
                raise Refusal(
                    f"experiment {waiting.id} ({waiting.description!r}) is still undecided: call commit_or_revert "
                    "first, then run the next experiment"
                )
            problems = self._enforce_pins("before a run", None)
            if problems:
                raise Refusal("; ".join(problems) + f". Edit only {', '.join(self.config.mutable)}; then call "
                                                    "run_experiment again.")
            self._check_repo_state(experiments)
            parent = self.repo.branch_tip(self.run.branch)
            diff = self.repo.diff_worktree(parent, list(self.config.mutable))
            is_baseline = history.baseline(experiments) is None
            if is_baseline and diff.strip():
                raise Refusal(
                    f"the first experiment of run {self.run.tag} must be the unmodified baseline, but "
                    f"{', '.join(self.config.mutable)} differ from commit {parent[:7]}. Call commit_or_revert with "
                    "prefer='revert' to restore them, then run_experiment."
                )
            base = history.baseline(experiments)
            if base is not None and 1 + len(self._repeats_of(base)) < self.config.noise_runs:
                await self._measure_noise(base, caller)  # a kill cut the baseline's noise runs short: finish them
                self._refuse_past_limits(self.ledger.counts()["total"])
            return await self._run_locked(description, hypothesis, caller, parent, diff, is_baseline, experiments)

    async def _run_locked(self, description: str, hypothesis: str | None, caller: str | None, parent: str,
                          diff: str, is_baseline: bool, experiments: list[Experiment]) -> RunExperimentResult:
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
                                           f"refs/autoresearch/{self.run.tag}/{exp_id:04d}")
        exp = await self._run_snapshot(exp_id, description, hypothesis, caller, parent, commit, diff, is_baseline,
                                       experiments)
        if exp.is_baseline and exp.status == "ok":
            await self._measure_noise(exp, caller)
        return self._run_result(exp, experiments)

    async def _run_snapshot(self, exp_id: int, description: str, hypothesis: str | None, caller: str | None,
                            parent: str, commit: str, diff: str, is_baseline: bool, experiments: list[Experiment],
                            repeat_of: Experiment | None = None) -> Experiment:
        """Run the snapshot in `experiments/<exp_id>/snapshot` (commit `commit`) with a fresh seed and record one
        ledger line. A repeat (`repeat_of`) is never a candidate: it is recorded decided (`discard`), linked to the
        experiment it re-runs, and a repeat of the baseline carries the noise floor measured so far."""
        exp_dir = self.run_dir / "experiments" / f"{exp_id:04d}"
        started = time.time()
        seed = self.next_seed()
        limit = self.config.hard_timeout_s + (self.config.evaluate.timeout_s if self.config.evaluate.mode ==
                                              "checkpoint" else 0.0)
        inflight: dict[str, object] = {
            "id": exp_id, "tag": self.run.tag, "description": description, "hypothesis": hypothesis,
            "parent": parent, "commit": commit, "diff": diff, "is_baseline": is_baseline, "caller": caller,
            "started_at": started, "deadline": started + limit, "exp_dir": str(exp_dir), "pgid": None,
            "marker": None, "seed": seed, "sealed": self.sealed,
            "repeat_of": repeat_of.id if repeat_of is not None else None,
        }
        atomic_write_text(self.inflight_path, json.dumps(inflight))

        def on_started(pgid: int, marker: str) -> None:
            inflight["pgid"] = pgid
            inflight["marker"] = marker
            atomic_write_text(self.inflight_path, json.dumps(inflight))

        def integrity_problems() -> list[str]:
            problems = self._enforce_pins("during a run", exp_id)
            return problems + [str(v.get("detail") or v.get("path")) for v in self._violations_since(started)]

        paths = ExperimentPaths(exp_dir, self.pinned_dir, self.run_dir, self.private_dir)
        frozen = self.run.frozen or {}
        plan = Plan(exp_id=exp_id, seed=seed, sealed=self.sealed, pins=self.run.pins,
                    data_sha256=dict(frozen.get("data_sha256") or {}),  # type: ignore[arg-type]
                    passed_env=dict(frozen.get("env") or {}))  # type: ignore[arg-type]
        self._record_start(exp_id, description, parent, commit, is_baseline, caller)
        try:
            outcome = await execute(self.config, plan, paths, on_started, integrity_problems)
        except asyncio.CancelledError:
            failure = "cancelled: the client cancelled the call (or the server is stopping); the run was killed"
            self._append_experiment(inflight, status="crash", failure=failure, metric=None, verified=False,
                                    metrics={}, finished=time.time(), train_s=None, eval_s=None,
                                    log_tail=read_tail(exp_dir / "run.log", self.config.tail_lines),
                                    fingerprint=None, decision="discard", decision_reason=failure)
            self.inflight_path.unlink(missing_ok=True)
            raise
        for text in outcome.violations:
            self._record_violation(text, text.split(" copy of ", 1)[-1].split(" differs", 1)[0], "during a run",
                                   exp_id)
        status, failure, fingerprint = outcome.status, outcome.failure, outcome.fingerprint
        if status == "ok":
            reference = history.baseline(experiments)
            if reference is not None and reference.fingerprint and fingerprint and fingerprint != reference.fingerprint:
                status, failure = "invalid", (
                    f"evaluated on different data (fingerprint {fingerprint[:12]} != baseline "
                    f"{reference.fingerprint[:12]}); results on different data are never compared"
                )
        noise_floor = None
        if repeat_of is not None:
            decision = "discard"
            reason = f"repeat of experiment {repeat_of.id}" + ("" if status == "ok" else f" ({status}: {failure})")
            if repeat_of.is_baseline:
                values = self._run_values(repeat_of)
                if status == "ok" and outcome.metric is not None:
                    values.append(outcome.metric)
                noise_floor = statistics.stdev(values) if len(values) >= 2 else None
        elif is_baseline:
            decision = "keep" if status == "ok" else "discard"
            reason = "baseline" if status == "ok" else f"baseline {status}: {failure}"
        else:
            decision = None if status == "ok" else "discard"
            reason = None if status == "ok" else f"{status}: {failure}"
        exp = self._append_experiment(inflight, status=status, failure=failure,
                                      metric=outcome.metric if status == "ok" else None, verified=outcome.verified,
                                      metrics=outcome.metrics, finished=time.time(), train_s=outcome.train_s,
                                      eval_s=outcome.eval_s, log_tail=outcome.tail, fingerprint=fingerprint,
                                      decision=decision,
                                      decision_reason=reason, kept_commit=parent if decision == "keep" else None,
                                      sealed=outcome.sealed, noise_floor=noise_floor)
        if outcome.private:
            append_record(self.private_dir / "holdout.jsonl",
                          {"experiment_id": exp_id, "time": _iso(time.time()), **outcome.private})
        self.inflight_path.unlink(missing_ok=True)
        return exp

    def _append_experiment(self, data: dict[str, object], *, status: str, failure: str | None, metric: float | None,
                           verified: bool, metrics: dict[str, float | str], finished: float, train_s: float | None,
                           eval_s: float | None, log_tail: str, fingerprint: str | None, decision: str | None,
                           decision_reason: str | None, kept_commit: str | None = None,
                           sealed: bool | None = None, noise_floor: float | None = None) -> Experiment:
        started = float(data["started_at"])  # type: ignore[arg-type]
        memory = as_float(metrics.get(self.config.memory_metric)) if self.config.memory_metric else None
        clean_metrics = {k: v for k, v in metrics.items() if not (isinstance(v, float) and not math.isfinite(v))}
        exp = Experiment(
            id=int(data["id"]), tag=self.run.tag, parent=str(data["parent"]), commit=str(data["commit"]),  # type: ignore[arg-type]
            description=str(data["description"]), hypothesis=data.get("hypothesis"),  # type: ignore[arg-type]
            diff=str(data.get("diff", "")), status=status, metric_name=self.config.metric,  # type: ignore[arg-type]
            metric=metric, verified=verified, metrics=clean_metrics, started_at=_iso(started),
            finished_at=_iso(finished), duration_s=round(finished - started, 3), train_s=train_s, eval_s=eval_s,
            peak_memory_mb=memory, failure=failure, log_tail=_bounded_tail(log_tail, 4000),
            log_path=str(Path(str(data["exp_dir"])) / "run.log"), fingerprint=fingerprint,
            is_baseline=bool(data.get("is_baseline")), caller=data.get("caller"),  # type: ignore[arg-type]
            decision=decision, decision_reason=decision_reason, kept_commit=kept_commit,  # type: ignore[arg-type]
            seed=data.get("seed"), sealed=bool(data.get("sealed", self.sealed) if sealed is None else sealed),  # type: ignore[arg-type]
            repeat_of=data.get("repeat_of"), noise_floor=noise_floor,  # type: ignore[arg-type]
        )
        self.ledger.append_experiment(exp)
        return exp

    def _run_result(self, exp: Experiment, before: list[Experiment]) -> RunExperimentResult:
        best = history.best_kept(before)
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
            step = f"Too slow for the hard limit. Make it cheaper or call commit_or_revert with prefer='revert'."
        else:
            step = f"The result is void. Edit only {mutable}; call commit_or_revert with prefer='revert' if unsure."
        return RunExperimentResult(
            id=exp.id, status=exp.status, metric_name=exp.metric_name, metric=exp.metric, verified=exp.verified,
            best=best_metric, delta=delta, would_keep=would_keep, decision=exp.decision or "pending",
            duration_s=exp.duration_s, train_s=exp.train_s, peak_memory_mb=exp.peak_memory_mb, failure=exp.failure,
            log_tail=_bounded_tail(exp.log_tail) if exp.status != "ok" else None, next_step=step,
        )

    # ---- honest acceptance: repeats, the noise floor, confirmation ----

    def _repeats_of(self, exp: Experiment) -> list[Experiment]:
        """The repeat runs of `exp`, in order. They directly follow it in id order (nothing else can run while the
        baseline measures its noise or while a candidate is pending), so this reads a few lines, not the ledger."""
        out: list[Experiment] = []
        for exp_id in range(exp.id + 1, self.ledger.max_id() + 1):
            other = self.ledger.get(exp_id)
            if other is None:
                continue  # an id a failed start used
            if other.repeat_of != exp.id:
                break
            out.append(other)
        return out

    def _run_values(self, exp: Experiment) -> list[float]:
        """The metrics of `exp`'s successful runs: its own and its repeats'."""
        runs = [exp] + self._repeats_of(exp)
        return [r.metric for r in runs if r.status == "ok" and r.metric is not None]

    def noise_floor(self) -> float | None:
        """The sample standard deviation of the baseline's runs (None before two of them succeeded)."""
        base = self.ledger.baseline()
        values = self._run_values(base) if base is not None else []
        return statistics.stdev(values) if len(values) >= 2 else None

    async def _repeat(self, source: Experiment, purpose: str, caller: str | None) -> Experiment:
        """Run `source`'s snapshot again with a fresh seed, as a ledger line of its own linked by `repeat_of`."""
        exp_id = self._next_id()
        exp_dir = self.run_dir / "experiments" / f"{exp_id:04d}"
        shutil.copytree(self.run_dir / "experiments" / f"{source.id:04d}" / "snapshot", exp_dir / "snapshot")
        (exp_dir / "diff.patch").write_text(source.diff, encoding="utf-8")
        (exp_dir / "repeat_of").write_text(str(source.id), encoding="utf-8")  # for `_recover_orphans`
        self.repo.point_ref(self._ref(exp_id), source.commit, f"experiment {exp_id}: {purpose} of {source.id}")
        label = "baseline" if source.is_baseline else source.description
        description = f"{purpose} of experiment {source.id}: {label}"[:MAX_DESCRIPTION]
        return await self._run_snapshot(exp_id, description, source.hypothesis, caller, source.parent, source.commit,
                                        source.diff, False, self._history(), repeat_of=source)

    async def _measure_noise(self, base: Experiment, caller: str | None) -> None:
        """Run the baseline until it has `noise_runs` runs (its own included). Called after the baseline and again
        by the next run_experiment when a kill cut the measurement short; stops quietly at the run's limits."""
        for _ in range(self.config.noise_runs):  # bounded, whatever the ledger says
            if 1 + len(self._repeats_of(base)) >= self.config.noise_runs:
                return
            try:
                self._refuse_past_limits(self.ledger.counts()["total"])
            except Refusal:
                return
            await self._repeat(base, "noise run", caller)

    async def _confirm(self, target: Experiment, caller: str | None) -> tuple[list[float], str | None]:
        """Bring `target` to `1 + confirm_runs` successful runs; returns their metrics, and why confirmation could
        not finish (None when it did). Repeats written before a kill count; only the missing ones run."""
        for _ in range(self.config.confirm_runs + 1):  # bounded: each pass adds a run or returns
            values = self._run_values(target)
            if len(values) >= 1 + self.config.confirm_runs:
                return values, None
            try:
                self._refuse_past_limits(self.ledger.counts()["total"])
            except Refusal as exc:
                return values, f"confirmation could not run: {str(exc).split(';')[0]}"
            number = len(values)
            repeat = await self._repeat(target, f"confirmation {number}/{self.config.confirm_runs}", caller)
            if repeat.status != "ok":
                return values, f"confirmation run {repeat.id} ended {repeat.status} ({repeat.failure})"
        values = self._run_values(target)
        if len(values) >= 1 + self.config.confirm_runs:
            return values, None
        return values, "its confirmation runs are not all linked to it in the ledger (run `autoresearch audit verify`)"

    async def _accept(self, target: Experiment, best: Experiment | None,
                      caller: str | None) -> tuple[bool, str, dict[str, object]]:
        """The acceptance rule: (keep?, reason, facts for the decision line). A single result that does not beat the
        best's mean by the margin is refused at once; one that does is confirmed by re-runs before it is kept."""
        assert target.metric is not None
        if best is None or best.metric is None:
            return False, "there is no best to compare with (the baseline failed)", {}
        floor = self.noise_floor()
        margin = self.config.margin(floor)
        best_values = self._run_values(best)
        best_mean = statistics.fmean(best_values)
        facts: dict[str, object] = {"noise_floor": floor, "margin": margin, "best_mean": best_mean,
                                    "best_runs": len(best_values)}
        rule = (f"max(min_improvement {self.config.min_improvement:g}, {self.config.noise_k:g} x noise floor "
                f"{floor:.6f})" if floor is not None else f"min_improvement {self.config.min_improvement:g}")
        against = (f"the best's mean {best_mean:.6f} over {len(best_values)} runs" if len(best_values) > 1
                   else f"the best {best_mean:.6f}")
        if not self.config.beats(target.metric, best_mean, margin):
            return False, f"{target.metric:.6f} does not beat {against} by more than {margin:.6f} ({rule})", facts
        if self.config.confirm_runs == 0:
            delta = target.metric - best_mean
            return True, f"beats {against} by {abs(delta):.6f} > {margin:.6f} ({rule})", facts
        values, stopped = await self._confirm(target, caller)
        mean = statistics.fmean(values)
        facts.update(mean=mean, runs=len(values))
        if stopped is not None:
            return False, f"not confirmed: {stopped}; mean {mean:.6f} over {len(values)} runs", facts
        if not self.config.beats(mean, best_mean, margin):
            return False, (f"not confirmed: mean {mean:.6f} over {len(values)} runs does not beat {against} by more "
                           f"than {margin:.6f} ({rule})"), facts
        return True, (f"confirmed: mean {mean:.6f} over {len(values)} runs beats {against} by "
                      f"{abs(mean - best_mean):.6f} > {margin:.6f} ({rule})"), facts

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
        """Keep or revert the pending experiment by the acceptance rule (`_accept`).

        Confirmation re-runs happen here, inside commit_or_revert, not inside run_experiment: run_experiment stays
        one experiment per call, so its duration and the agent's per-call timeout (1500 s in .mcp.json) keep their
        meaning, and only a result the agent asks to keep that already beats the best pays for re-runs. One
        commit_or_revert call then lasts up to `confirm_runs` experiments; the stall detector sees a tool call in
        flight all that time, and a cancelled call kills the re-run and records it as a crash like any run. The
        decision intent is written only after the confirmations: a kill -9 during one leaves the candidate pending
        with the repeats already recorded (an interrupted one as a crash), and the next commit_or_revert runs only
        the missing ones and decides."""
        if prefer not in ("keep_if_better", "revert"):
            raise InvalidArgument(f"prefer must be 'keep_if_better' or 'revert', got {prefer!r}")
        with self._experiment_lock():
            finished = self._finished_intent
            if finished is not None and experiment_id in (None, finished.id):
                return self._decision_result(finished, "completed the decision an interrupted call had started")
            target = self.ledger.pending()
            if experiment_id is not None:
                exp = self.ledger.get(experiment_id)
                if exp is None:
                    top = self.ledger.max_id()
                    known = f"1..{top}" if top else "none yet"
                    raise InvalidArgument(f"no experiment {experiment_id} (ids: {known}); call read_results")
                if exp.decision is not None:
                    raise Refusal(
                        f"experiment {experiment_id} was already decided ({exp.decision}); "
                        + (f"experiment {target.id} is the one pending" if target else "nothing is pending")
                        + (". Call commit_or_revert without experiment_id to decide it." if target else
                           ". Call commit_or_revert with prefer='revert' (and no experiment_id) to restore the best "
                           "code."))
                target = exp
            tip = self.repo.branch_tip(self.run.branch)
            best = self.ledger.best_kept()
            if target is None:
                if prefer != "revert":
                    raise Refusal("no experiment is waiting for a decision. To discard your edits and return to the "
                                  "best code, call commit_or_revert with prefer='revert'.")
                self.repo.restore_paths(tip, list(self.config.mutable))
                return DecisionResult(experiment_id=None, decision="restored",
                                      reason=f"restored {', '.join(self.config.mutable)} to the best commit",
                                      commit=tip[:12], best=best.metric if best else None,
                                      best_id=best.id if best else None,
                                      next_step="Edit with one idea, then call run_experiment.")
            assert target.metric is not None
            best_metric = best.metric if best else None
            improves, why, facts = (await self._accept(target, best, caller) if prefer == "keep_if_better"
                                    else (False, "revert requested", {}))
            tip = self.repo.branch_tip(self.run.branch)  # unchanged by the re-runs (they touch no branch)
            intent: dict[str, object] = {"experiment_id": target.id, "from_tip": tip, "time": _iso(time.time()),
                                         "facts": facts}
            observe_only = self.config.autonomy == "observe" and prefer == "keep_if_better" and improves
            if prefer == "keep_if_better" and improves and not observe_only:
                delta = target.metric - best_metric  # type: ignore[operator]
                intent.update(decision="keep", reason=why,
                              message=f"{self.config.metric} {target.metric:.6f} ({delta:+.6f}) experiment "
                                      f"{target.id}: {target.description}")
            else:
                intent.update(decision="discard", reason=(
                    f"{OBSERVE_PREFIX} {target.metric:.6f} beats the best {best_metric:.6f}; autonomy is 'observe', "
                    f"so nothing is kept (`autoresearch review` proposes it); {why}" if observe_only else why))
            atomic_write_text(self.intent_path, json.dumps(intent))  # before anything moves: recovery finishes it
            decided = self._apply_intent(intent)
            assert decided is not None
            if decided.decision == "keep" and self.config.autonomy == "auto-promote":
                auto_promote(self.config, self.run, self.audit)  # within the written limits, else left for review
            return self._decision_result(decided, None, best_before=best)

    def _decision_result(self, exp: Experiment, note: str | None,
                         best_before: Experiment | None = None) -> DecisionResult:
        if exp.decision == "keep":
            before = self.ledger.best_before(exp.id)
            reason = exp.decision_reason or (f"{exp.metric:.6f} beats the best {before:.6f}"
                                             if before is not None and exp.metric is not None else "kept")
            return DecisionResult(experiment_id=exp.id, decision="keep", reason=(note + ": " if note else "") + reason,
                                  commit=(exp.kept_commit or exp.commit)[:12], best=exp.metric, best_id=exp.id,
                                  next_step="Kept. Edit with the next idea, then call run_experiment.")
        best = best_before or self.ledger.best_kept()
        tip = self.repo.branch_tip(self.run.branch)
        return DecisionResult(experiment_id=exp.id, decision="discard",
                              reason=(note + ": " if note else "") + (exp.decision_reason or "discarded"),
                              commit=tip[:12], best=best.metric if best else None, best_id=best.id if best else None,
                              next_step="Reverted to the best code. Try a different idea.")

    # ---- read_results ----

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
        waiting = ledger.pending()
        current = self.in_flight()
        return ReadResultsResult(
            tag=self.run.tag, metric_name=self.config.metric, direction=self.config.direction,
            baseline=Reference(id=base.id, metric=base.metric, commit=base.commit[:12]) if base and base.metric is not None
            else None,
            best=Reference(id=best.id, metric=best.metric, commit=(best.kept_commit or best.commit)[:12])
            if best and best.metric is not None else None,
            counts=ledger.counts(), pending_id=waiting.id if waiting else None,
            in_flight_id=current.id if current else None, violations=self.violations_count(),
            noise_floor=self.noise_floor(),
            experiments=[ExperimentRow(id=a.experiment.id, status=a.experiment.status, metric=a.experiment.metric,
                                       delta=a.delta, decision=a.decision, description=a.experiment.description,  # type: ignore[arg-type]
                                       verified=a.experiment.verified, repeat_of=a.experiment.repeat_of)
                         for a in rows],
            detail=detail,
        )
