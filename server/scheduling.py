"""Queueing and running experiments on the run's slots (a part of `Engine`).

An experiment is submitted under the state lock (an id, a folder holding the snapshot of the mutable files, a snapshot
commit, an `inflight.json` entry and its `experiment_started` audit record, in that order), then runs as an asyncio
task: it waits for a free slot (server/slots.py), is marked running, runs through the executor (the local sandboxes
of server/experiment.py, or a Ray task), and is recorded by one ledger line, after which its entry is removed. A
cancelled task is recorded as a crash; a task that dies any other way leaves its entry to recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.audit import AuditError
from server.experiment import ExperimentPaths, Outcome, Plan, as_float, read_tail
from server.gitrepo import GitError
from server.inflight import owner_token
from server.jsonl import append_record
from server.ledger import Experiment
from server.private import HOLDOUT_FILE
from server.shared import MAX_DESCRIPTION, bounded_tail, iso
from server.slots import Slot, device_class

if TYPE_CHECKING:
    from server.engine import Engine

log = logging.getLogger(__name__)


class SchedulingMixin:
    """The parts of `Engine` that submit, queue, run and record experiments."""

    # ---- experiment ids and records of a start ----

    def _next_id(self: Engine) -> int:
        """One past the highest id the ledger, the snapshot refs and the experiment folders have used, so an id is
        never given twice, even after a ledger write failed or a kill lost an inflight entry."""
        exp_id = max(self.ledger.max_id(), getattr(self, "_max_seen_id", 0),
                     max((e["id"] for e in self._entries()), default=0)) + 1
        while (self.run_dir / "experiments" / f"{exp_id:04d}").exists() or self.repo.ref_exists(self._ref(exp_id)):
            exp_id += 1
        self._max_seen_id = exp_id
        return exp_id

    def _ref(self: Engine, exp_id: int) -> str:
        return f"refs/autoresearch/{self.run.tag}/{exp_id:04d}"

    def _record_start(self: Engine, entry: dict[str, Any]) -> None:
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

    def _submit(self: Engine, description: str, hypothesis: str | None, caller: str | None, parent: str, diff: str,
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

    def _submit_repeat(self: Engine, source: Experiment, purpose: str, caller: str | None) -> dict[str, Any]:
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

    def _enqueue(self: Engine, exp_id: int, description: str, hypothesis: str | None, caller: str | None, parent: str,
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

    def _spawn(self: Engine, entry: dict[str, Any]) -> asyncio.Task[Experiment]:
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

    async def _baseline_then_noise(self: Engine, entry: dict[str, Any]) -> Experiment:
        exp = await self._execute(entry)
        if exp.status == "ok":
            await self._measure_noise(exp, entry.get("caller"))
        return exp

    async def _execute(self: Engine, entry: dict[str, Any]) -> Experiment:
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

    def _record_failure(self: Engine, entry: dict[str, Any], failure: str) -> Experiment:
        exp_dir = Path(str(entry["exp_dir"]))
        exp = self._append_experiment({**entry, "started_at": entry.get("started_at") or entry["queued_at"]},
                                      status="crash", failure=failure, metric=None, verified=False, metrics={},
                                      finished=time.time(), train_s=None, eval_s=None,
                                      log_tail=read_tail(exp_dir / "run.log", self.config.tail_lines),
                                      fingerprint=None, decision="discard", decision_reason=failure)
        self._retry_seals()  # the entry goes only once its line is sealed: else recovery reseals it
        self._drop_entry(int(entry["id"]))
        return exp

    async def _run_in_slot(self: Engine, entry: dict[str, Any], slot: Slot) -> Experiment:
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
            if self.ray is not None:  # a Ray task has no local process group; its task id says where it runs
                def on_submitted(task_id: str) -> None:
                    entry.update(ray_task=task_id)
                    self._put_entry(entry)

                outcome: Outcome = await self.ray(self.config, plan, paths, on_started, integrity_problems,
                                                  on_submitted)
            else:
                outcome = await self.executor(self.config, plan, paths, on_started, integrity_problems)
        except asyncio.CancelledError:
            with self._state():
                self._record_failure(entry, "cancelled: the client cancelled the call (or the server is stopping); "
                                            "the run was killed")
            raise
        with self._state():
            return self._record_outcome(entry, outcome, slot)

    def _record_outcome(self: Engine, entry: dict[str, Any], outcome: Outcome, slot: Slot) -> Experiment:
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
            append_record(self.private_dir / HOLDOUT_FILE,
                          {"experiment_id": exp_id, "time": iso(time.time()), **outcome.private})
        self._retry_seals()  # the entry goes only once its line is sealed: else recovery reseals it
        self._drop_entry(exp_id)
        return exp

    def _append_experiment(self: Engine, data: dict[str, Any], *, status: str, failure: str | None, metric: float | None,
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
            metric=metric, verified=verified, metrics=clean_metrics, started_at=iso(started),
            finished_at=iso(finished), duration_s=round(finished - started, 3), train_s=train_s, eval_s=eval_s,
            peak_memory_mb=memory, failure=failure, log_tail=bounded_tail(log_tail, 4000),
            log_path=str(Path(str(data["exp_dir"])) / "run.log"), fingerprint=fingerprint,
            is_baseline=bool(data.get("is_baseline")), caller=data.get("caller"),
            decision=decision, decision_reason=decision_reason, kept_commit=kept_commit,  # type: ignore[arg-type]
            seed=data.get("seed"), sealed=bool(data.get("sealed", self.sealed) if sealed is None else sealed),
            repeat_of=data.get("repeat_of"), noise_floor=noise_floor,
            device=device or data.get("device"), slot=slot if slot is not None else data.get("slot"),
        )
        self.ledger.append_experiment(exp)
        return exp
