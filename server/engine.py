"""The experiment engine: the three operations the tools expose, with every rule enforced here, not in a prompt.

- `run_experiment` refuses while a result is undecided, while a locked file differs from its pin, or while the
  repository is not as the engine left it; runs the configured command under the configured hard limit in its own
  process group; evaluates with the pinned evaluation; records one ledger line.
- `commit_or_revert` applies the keep/revert rule itself: a change is kept only when its metric beats the best by more
  than `min_improvement`.
- `read_results` is a compact view of the ledger.

A kill -9 at any moment leaves a consistent state: `inflight.json` is written before the command starts and removed
after the ledger line is durable; `recover()` (run when an engine opens) turns a leftover into a `crash` record.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from server import history
from server.audit import AuditLog
from server.config import Config
from server.gitrepo import GitRepo
from server.integrity import check_pins, restore_pin
from server.jsonl import append_record, atomic_write_text, read_records
from server.ledger import Experiment, Ledger
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


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clean(value: object, name: str, *, min_len: int, max_len: int) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string, got {type(value).__name__}")
    text = " ".join(value.split())
    if len(text) < min_len:
        raise InvalidArgument(f"{name} is too short ({len(text)} chars): say in {min_len}+ characters what changed")
    if len(text) > max_len:
        raise InvalidArgument(f"{name} is {len(text)} characters; keep it under {max_len}")
    return text


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
        self.ledger = Ledger(self.run_dir, metric_name=config.metric)
        self.audit = AuditLog(self.run_dir / "audit.jsonl")
        self.inflight_path = self.run_dir / "inflight.json"
        self.violations_path = self.run_dir / "violations.jsonl"
        self.lock_path = self.run_dir / "experiment.lock"
        self.pinned_dir = self.run_dir / "pinned"

    # ---- locking and recovery ----

    @contextmanager
    def _experiment_lock(self) -> Iterator[None]:
        """One experiment at a time per run, across threads and processes (a second caller is refused, not queued)."""
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
            yield
        finally:
            os.close(fd)

    def recover(self) -> str | None:
        """Turn an experiment left in flight by a dead server into a `crash` record and kill what it left running."""
        if self.ledger.experiments():
            self.ledger.write_results_tsv()  # a kill between a ledger append and the tsv rewrite leaves it behind
        if not self.inflight_path.exists():
            return None
        try:
            with self._experiment_lock():
                try:
                    data = json.loads(self.inflight_path.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError):
                    self.inflight_path.unlink(missing_ok=True)
                    return "removed an unreadable inflight.json"
                marker = data.get("marker")
                killed = 0
                if marker:
                    pgid = data.get("pgid")
                    if pgid and is_our_group(int(pgid), marker):
                        kill_group(int(pgid), marker, grace_s=1.0)
                    killed = kill_marked(marker)
                exp_id = int(data["id"])
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
                    self.audit.append("server", "recovery", status="ok",
                                      summary={"experiment_id": exp_id, "killed_processes": killed})
                self.inflight_path.unlink(missing_ok=True)
                return note
        except Refusal:
            return None  # another live server holds the lock: the experiment is genuinely running

    def in_flight(self) -> InFlight | None:
        try:
            data = json.loads(self.inflight_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return InFlight(id=int(data["id"]), description=str(data["description"]),
                        started_at=float(data["started_at"]), deadline=float(data["deadline"]),
                        pgid=data.get("pgid"))

    # ---- integrity ----

    def _record_violation(self, description: str, path: str, when: str, experiment_id: int | None) -> None:
        record = {"time": _iso(time.time()), "source": "server", "path": path, "when": when,
                  "experiment_id": experiment_id, "detail": description, "restored": True}
        append_record(self.violations_path, record)
        self.audit.append("server", "violation", status="blocked", summary=record)

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
        stray = [p for p in self.repo.dirty_paths()
                 if p not in mutable and not (runs_rel and (p == runs_rel or p.startswith(runs_rel + "/")))]
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

    def _expected_tip(self, experiments: list[Experiment]) -> str:
        kept = [e for e in experiments if e.decision == "keep" and e.kept_commit]
        return max(kept, key=lambda e: e.id).kept_commit if kept else self.run.base_commit  # type: ignore[return-value]

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
            experiments = self.ledger.experiments()
            self._refuse_past_limits(len(experiments))
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
            return await self._run_locked(description, hypothesis, caller, parent, diff, is_baseline, experiments)

    async def _run_locked(self, description: str, hypothesis: str | None, caller: str | None, parent: str,
                          diff: str, is_baseline: bool, experiments: list[Experiment]) -> RunExperimentResult:
        exp_id = self.ledger.next_id()
        exp_dir = self.run_dir / "experiments" / f"{exp_id:04d}"
        if exp_dir.exists():
            shutil.rmtree(exp_dir)  # left by a server killed before it wrote inflight.json
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
        started = time.time()
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        limit = self.config.hard_timeout_s + (self.config.evaluate.timeout_s if self.config.evaluate.mode ==
                                              "checkpoint" else 0.0)
        inflight: dict[str, object] = {
            "id": exp_id, "tag": self.run.tag, "description": description, "hypothesis": hypothesis,
            "parent": parent, "commit": commit, "diff": diff, "is_baseline": is_baseline, "caller": caller,
            "started_at": started, "deadline": started + limit, "exp_dir": str(exp_dir), "pgid": None,
            "marker": None, "seed": seed, "sealed": self.sealed,
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
        if is_baseline:
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
                                      sealed=outcome.sealed)
        if outcome.private:
            append_record(self.private_dir / "holdout.jsonl",
                          {"experiment_id": exp_id, "time": _iso(time.time()), **outcome.private})
        self.inflight_path.unlink(missing_ok=True)
        return self._run_result(exp, experiments)

    def _append_experiment(self, data: dict[str, object], *, status: str, failure: str | None, metric: float | None,
                           verified: bool, metrics: dict[str, float | str], finished: float, train_s: float | None,
                           eval_s: float | None, log_tail: str, fingerprint: str | None, decision: str | None,
                           decision_reason: str | None, kept_commit: str | None = None,
                           sealed: bool | None = None) -> Experiment:
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
        )
        self.ledger.append_experiment(exp)
        return exp

    def _run_result(self, exp: Experiment, before: list[Experiment]) -> RunExperimentResult:
        best = history.best_kept(before)
        best_metric = best.metric if best else None
        delta = exp.metric - best_metric if exp.metric is not None and best_metric is not None else None
        would_keep = bool(exp.status == "ok" and (exp.is_baseline or (
            exp.metric is not None and best_metric is not None and self.config.improves(exp.metric, best_metric))))
        mutable = ", ".join(self.config.mutable)
        if exp.status == "ok" and exp.is_baseline:
            step = f"Baseline recorded. Edit {mutable} with one idea, then call run_experiment."
        elif exp.status == "ok":
            step = ("Call commit_or_revert: it will KEEP this change." if would_keep else
                    "Call commit_or_revert: it will REVERT this change (not better than the best by more than "
                    f"{self.config.min_improvement:g}).")
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

    # ---- commit_or_revert ----

    def commit_or_revert(self, experiment_id: int | None = None, prefer: str = "keep_if_better",
                         caller: str | None = None) -> DecisionResult:
        if prefer not in ("keep_if_better", "revert"):
            raise InvalidArgument(f"prefer must be 'keep_if_better' or 'revert', got {prefer!r}")
        with self._experiment_lock():
            experiments = self.ledger.experiments()
            target = history.pending(experiments)
            if experiment_id is not None:
                exp = next((e for e in experiments if e.id == experiment_id), None)
                if exp is None:
                    known = f"1..{max(e.id for e in experiments)}" if experiments else "none yet"
                    raise InvalidArgument(f"no experiment {experiment_id} (ids: {known}); call read_results")
                if exp.decision is not None:
                    raise Refusal(
                        f"experiment {experiment_id} was already decided ({exp.decision}); "
                        + (f"experiment {target.id} is the one pending" if target else "nothing is pending")
                        + ". Call commit_or_revert without experiment_id to restore the best code.")
                target = exp
            tip = self.repo.branch_tip(self.run.branch)
            best = history.best_kept(experiments)
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
            improves = best_metric is not None and self.config.improves(target.metric, best_metric)
            if prefer == "keep_if_better" and improves:
                delta = target.metric - best_metric  # type: ignore[operator]
                message = (f"{self.config.metric} {target.metric:.6f} ({delta:+.6f}) experiment {target.id}: "
                           f"{target.description}")
                kept = self.repo.advance_branch(self.run.branch, target.commit, message)
                self.repo.restore_paths(kept, list(self.config.mutable))
                self.ledger.append_decision(target.id, "keep", f"beats {best_metric:.6f} by {abs(delta):.6f}", kept)
                return DecisionResult(experiment_id=target.id, decision="keep",
                                      reason=f"{target.metric:.6f} beats the best {best_metric:.6f}",
                                      commit=kept[:12], best=target.metric, best_id=target.id,
                                      next_step="Kept. Edit with the next idea, then call run_experiment.")
            reason = ("revert requested" if prefer == "revert" else
                      f"{target.metric:.6f} does not beat the best {best_metric:.6f} by more than "
                      f"{self.config.min_improvement:g}")
            self.repo.restore_paths(tip, list(self.config.mutable))
            self.ledger.append_decision(target.id, "discard", reason, None)
            (self.run_dir / "experiments" / f"{target.id:04d}" / "checkpoint.pt").unlink(missing_ok=True)
            return DecisionResult(experiment_id=target.id, decision="discard", reason=reason, commit=tip[:12],
                                  best=best_metric, best_id=best.id if best else None,
                                  next_step="Reverted to the best code. Try a different idea.")

    # ---- read_results ----

    def read_results(self, last_n: int = 10, status: str | None = None,
                     experiment_id: int | None = None) -> ReadResultsResult:
        if not isinstance(last_n, int) or not 1 <= last_n <= 200:
            raise InvalidArgument(f"last_n must be an integer from 1 to 200, got {last_n!r}")
        if status is not None and status not in ("ok", "crash", "timeout", "invalid"):
            raise InvalidArgument(f"status must be one of ok, crash, timeout, invalid; got {status!r}")
        experiments = self.ledger.experiments()
        annotated = history.annotate(experiments)
        rows = [a for a in annotated if status is None or a.experiment.status == status][-last_n:]
        detail = None
        if experiment_id is not None:
            match = next((a for a in annotated if a.experiment.id == experiment_id), None)
            if match is None:
                known = f"1..{experiments[-1].id}" if experiments else "none yet"
                raise InvalidArgument(f"no experiment {experiment_id} (ids: {known})")
            e = match.experiment
            diff = e.diff if len(e.diff) <= MAX_DIFF_CHARS else e.diff[:MAX_DIFF_CHARS] + "\n... (diff cut)"
            detail = ExperimentDetail(id=e.id, description=e.description, hypothesis=e.hypothesis, status=e.status,
                                      failure=e.failure, metrics=e.metrics, decision=match.decision,  # type: ignore[arg-type]
                                      decision_reason=e.decision_reason, commit=e.commit[:12], parent=e.parent[:12],
                                      diff=diff, log_tail=_bounded_tail(e.log_tail))
        base = history.baseline(experiments)
        best = history.best_kept(experiments)
        waiting = history.pending(experiments)
        current = self.in_flight()
        return ReadResultsResult(
            tag=self.run.tag, metric_name=self.config.metric, direction=self.config.direction,
            baseline=Reference(id=base.id, metric=base.metric, commit=base.commit[:12]) if base and base.metric is not None
            else None,
            best=Reference(id=best.id, metric=best.metric, commit=(best.kept_commit or best.commit)[:12])
            if best and best.metric is not None else None,
            counts=history.counts(experiments), pending_id=waiting.id if waiting else None,
            in_flight_id=current.id if current else None, violations=self.violations_count(),
            experiments=[ExperimentRow(id=a.experiment.id, status=a.experiment.status, metric=a.experiment.metric,
                                       delta=a.delta, decision=a.decision, description=a.experiment.description,  # type: ignore[arg-type]
                                       verified=a.experiment.verified) for a in rows],
            detail=detail,
        )
