"""The experiment ledger: `runs/<tag>/experiments.jsonl`, the source of truth, and `results.tsv` derived from it.

Experiments are written once, when their run ends; keep/discard decisions arrive later as separate lines, so the
ledger is append-only and a crash never rewrites history. `results.tsv` is regenerated from the folded ledger after
every append, in the original loop's five-column format, so tools and people that read it keep working.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args

from server import jsonl

log = logging.getLogger(__name__)

Status = Literal["ok", "crash", "timeout", "invalid"]
Decision = Literal["keep", "discard"]
STATUSES: tuple[str, ...] = get_args(Status)
DECISIONS: tuple[str, ...] = get_args(Decision)

LEDGER_FILE = "experiments.jsonl"
RESULTS_FILE = "results.tsv"


@dataclass(frozen=True)
class Experiment:
    id: int
    tag: str
    parent: str  # commit the experiment started from
    commit: str  # commit object holding the code that ran
    description: str
    hypothesis: str | None
    diff: str
    status: Status
    metric_name: str
    metric: float | None
    verified: bool  # metric came from the pinned evaluation, not the target's own output
    metrics: dict[str, float | str]  # every key of the summary block
    started_at: str
    finished_at: str
    duration_s: float  # wall time of the whole experiment, evaluation included
    train_s: float | None
    eval_s: float | None
    peak_memory_mb: float | None
    failure: str | None  # short reason when status is not ok
    log_tail: str
    log_path: str
    fingerprint: str | None
    is_baseline: bool
    caller: str | None
    decision: Decision | None
    decision_reason: str | None
    kept_commit: str | None  # the branch commit when kept
    seed: int | None = None  # AUTORESEARCH_SEED the harness gave this run
    sealed: bool = True  # ran in the sandbox (False: the run allowed unsealed experiments; train.py could forge)

    def __post_init__(self) -> None:
        if not isinstance(self.id, int) or isinstance(self.id, bool) or self.id < 1:
            raise ValueError(f"experiment id {self.id!r} is invalid; ids are integers from 1 (see Ledger.next_id)")
        if self.status not in STATUSES:
            raise ValueError(f"experiment {self.id}: status {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.decision is not None and self.decision not in DECISIONS:
            raise ValueError(f"experiment {self.id}: decision {self.decision!r} is not one of {', '.join(DECISIONS)}")

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (the ledger line adds `"type": "experiment"`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Experiment:
        """Build from a ledger line or `to_json()` output; ValueError naming any missing field."""
        fields = dataclasses.fields(cls)
        names = [f.name for f in fields if f.name in data or f.default is dataclasses.MISSING]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"experiment record lacks field(s) {', '.join(missing)}: {dict(data)!r:.200}")
        values = {n: data[n] for n in names}
        values["metrics"] = dict(values["metrics"] or {})
        return cls(**values)


def utc_now_iso() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class Ledger:
    """The ledger of one run directory. Every method is safe to call from several processes at once."""

    def __init__(self, run_dir: os.PathLike[str] | str, metric_name: str = "val_bpb") -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LEDGER_FILE
        self.results_path = self.run_dir / RESULTS_FILE
        self.metric_name = metric_name

    # ---- writing ----

    def append_experiment(self, exp: Experiment) -> None:
        """Record a finished experiment (once per id) and regenerate results.tsv."""
        with jsonl.locked(self.path):
            folded = self._fold_unlocked()
            if exp.id in folded:
                raise ValueError(f"experiment {exp.id} is already in {self.path}; each experiment is recorded once. "
                                 f"Use id {max(folded) + 1} (Ledger.next_id()) for a new one.")
            jsonl.append_unlocked(self.path, {"type": "experiment", **exp.to_json()})
            folded[exp.id] = exp
            self._write_results_unlocked(folded)

    def append_decision(self, experiment_id: int, decision: Decision, reason: str | None,
                        commit: str | None) -> Experiment:
        """Record keep/discard for a recorded, undecided experiment; returns the experiment as now folded.
        `commit` is the branch commit the experiment was kept as (or the commit the branch was reset to)."""
        if decision not in DECISIONS:
            raise ValueError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
        with jsonl.locked(self.path):
            folded = self._fold_unlocked()
            exp = folded.get(experiment_id)
            if exp is None:
                known = f"ids {min(folded)}..{max(folded)}" if folded else "none yet"
                raise ValueError(f"no experiment {experiment_id!r} in {self.path} (recorded: {known}); "
                                 "decide an experiment after it has been recorded")
            if exp.decision is not None:
                raise ValueError(f"experiment {experiment_id} was already decided: {exp.decision} "
                                 f"({exp.decision_reason or 'no reason given'}); decisions are final")
            line = {"type": "decision", "experiment_id": experiment_id, "decision": decision, "reason": reason,
                    "commit": commit, "time": utc_now_iso()}
            jsonl.append_unlocked(self.path, line)
            folded[experiment_id] = _apply_decision(exp, line)
            self._write_results_unlocked(folded)
            return folded[experiment_id]

    def write_results_tsv(self) -> None:
        """Regenerate results.tsv from the ledger (appends already do this; use after a crash or by hand)."""
        with jsonl.locked(self.path):
            self._write_results_unlocked(self._fold_unlocked())

    # ---- reading ----

    def experiments(self) -> list[Experiment]:
        """Every experiment with its decision folded in, ordered by id."""
        return [exp for _, exp in sorted(self._fold_unlocked().items())]

    def get(self, experiment_id: int) -> Experiment | None:
        return self._fold_unlocked().get(experiment_id)

    def next_id(self) -> int:
        """The id for the next experiment: one past the highest recorded, 1 for an empty ledger."""
        folded = self._fold_unlocked()
        return max(folded) + 1 if folded else 1

    def _fold_unlocked(self) -> dict[int, Experiment]:
        """Read without the lock: appends are whole lines, so a reader sees a consistent prefix."""
        folded: dict[int, Experiment] = {}
        for line_no, rec in enumerate(jsonl.read_records(self.path), start=1):
            kind = rec.get("type")
            try:
                if kind == "experiment":
                    exp = Experiment.from_json({k: v for k, v in rec.items() if k != "type"})
                    if exp.id in folded:
                        raise ValueError(f"experiment {exp.id} recorded twice")
                    folded[exp.id] = exp
                elif kind == "decision":
                    target = folded.get(rec.get("experiment_id"))  # type: ignore[arg-type]
                    if target is None:
                        raise ValueError(f"decision for unrecorded experiment {rec.get('experiment_id')!r}")
                    if target.decision is not None:
                        raise ValueError(f"second decision for experiment {target.id}")
                    folded[target.id] = _apply_decision(target, rec)
                else:
                    raise ValueError(f"unknown line type {kind!r} (expected 'experiment' or 'decision')")
            except (ValueError, TypeError) as exc:
                raise jsonl.CorruptFileError(self.path, line_no, str(exc)) from exc
        return folded

    # ---- results.tsv ----

    def _write_results_unlocked(self, folded: Mapping[int, Experiment]) -> None:
        jsonl.atomic_write_text(self.results_path, render_results_tsv(
            (exp for _, exp in sorted(folded.items())), self.metric_name))


def _apply_decision(exp: Experiment, line: Mapping[str, Any]) -> Experiment:
    decision = line["decision"]
    kept = line.get("commit") if decision == "keep" else exp.kept_commit
    return dataclasses.replace(exp, decision=decision, decision_reason=line.get("reason"), kept_commit=kept)


def render_results_tsv(experiments: Iterable[Experiment], metric_name: str = "val_bpb") -> str:
    """The original five-column results.tsv: one row per decided experiment, in the order given."""
    rows = [f"commit\t{metric_name}\tmemory_gb\tstatus\tdescription"]
    for exp in experiments:
        if exp.decision is None:
            continue  # pending: the original writes a row only once the outcome is known
        commit = exp.kept_commit if exp.decision == "keep" and exp.kept_commit else exp.commit
        metric = exp.metric if exp.metric is not None else 0.0
        memory_gb = exp.peak_memory_mb / 1024 if exp.peak_memory_mb is not None else 0.0
        status = exp.decision if exp.status == "ok" else "crash"
        prefix = f"[{exp.status}] " if exp.status in ("timeout", "invalid") else ""
        if exp.metric is not None and not exp.verified:
            prefix += "[unverified] "
        description = (prefix + exp.description).replace("\t", " ").replace("\r", " ").replace("\n", " ")
        rows.append(f"{commit[:7]}\t{metric:.6f}\t{memory_gb:.1f}\t{status}\t{description}")
    return "\n".join(rows) + "\n"
