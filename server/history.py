"""Views of the ledger: the running best, deltas, counts. Pure functions over `Experiment` records."""

from __future__ import annotations

from dataclasses import dataclass

from server.ledger import Experiment


@dataclass(frozen=True)
class Annotated:
    """An experiment with the best kept metric that stood when it ran."""

    experiment: Experiment
    best_before: float | None

    @property
    def delta(self) -> float | None:
        exp = self.experiment
        if exp.metric is None or self.best_before is None:
            return None
        return exp.metric - self.best_before

    @property
    def decision(self) -> str:
        return self.experiment.decision or "pending"


def annotate(experiments: list[Experiment]) -> list[Annotated]:
    """Walk the ledger in order, tracking the best kept metric (kept changes always improve, so the last kept is best)."""
    best: float | None = None
    out: list[Annotated] = []
    for exp in sorted(experiments, key=lambda e: e.id):
        out.append(Annotated(exp, best))
        if exp.decision == "keep" and exp.metric is not None:
            best = exp.metric
    return out


def best_kept(experiments: list[Experiment]) -> Experiment | None:
    """The most recently kept experiment with a metric (see `Ledger.best_kept`): by decision time, then id."""
    kept = [e for e in experiments if e.decision == "keep" and e.metric is not None]
    return max(kept, key=lambda e: (e.decided_at or e.finished_at, e.id)) if kept else None


def baseline(experiments: list[Experiment]) -> Experiment | None:
    for exp in sorted(experiments, key=lambda e: e.id):
        if exp.is_baseline and exp.status == "ok":
            return exp
    return None


def pending(experiments: list[Experiment]) -> Experiment | None:
    for exp in experiments:
        if exp.decision is None:
            return exp
    return None


def counts(experiments: list[Experiment]) -> dict[str, int]:
    out = {"total": len(experiments), "ok": 0, "crash": 0, "timeout": 0, "invalid": 0, "kept": 0, "discarded": 0,
           "pending": 0}
    for exp in experiments:
        out[exp.status] += 1
        if exp.decision == "keep":
            out["kept"] += 1
        elif exp.decision == "discard":
            out["discarded"] += 1
        else:
            out["pending"] += 1
    return out
