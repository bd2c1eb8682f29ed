"""The progress chart as data, shared by the page and `progress.png`: the running best, what each point is, and the
y-range worth looking at.

The y-range is focused on the band that matters: from the best result to a robust upper quantile of the ok results
(or the baseline, when that is higher), so a few wild results cannot squash the curve of improvements to a line.
Points outside the band are drawn at its edge as "off the chart" markers; crashes, timeouts and invalid runs have no
metric at all and go on a strip of their own, below the metric scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from server.ledger import Experiment

STATUS_CODES = {"ok": "o", "crash": "c", "timeout": "t", "invalid": "i", "confirming": "f"}
DECISION_CODES = {"keep": "k", "discard": "d", "pending": "p"}
UPPER_QUANTILE = 0.9  # of ok results, on the worse side: the edge of the band the chart shows
LOWER_QUANTILE = 0.02  # on the better side, so one absurdly good (suspect) value does not stretch the band either
PAD = 0.06  # of the band's height, above and below
LABEL_CHARS = 48


def holdout_of(exp: Experiment, holdout: Mapping[int, float] | None = None) -> float | None:
    """The person-only holdout score of an experiment, from the run's private scores (server/private.py)."""
    return None if holdout is None else holdout.get(exp.id)


def experiment_flags(exp: Experiment) -> list[str]:
    """Words that qualify a result: unverified (the script printed its own metric), unsealed, confirmation."""
    flags = []
    if exp.metric is not None and not exp.verified:
        flags.append("unverified")
    if getattr(exp, "sealed", None) is False:
        flags.append("unsealed")
    if getattr(exp, "confirms", None) is not None:
        flags.append("confirmation")
    return flags


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile of a non-empty list."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def focus_range(values: list[float], baseline: float | None, best: float | None,
                direction: str) -> tuple[float, float] | None:
    """(low, high) of the y-axis: the best result to a robust quantile of the worse side (at least the baseline)."""
    if not values:
        return None
    minimize = direction != "maximize"
    if minimize:
        good = min(v for v in [best, quantile(values, LOWER_QUANTILE)] if v is not None)
        bad = min(max(values), max(v for v in [baseline, quantile(values, UPPER_QUANTILE)] if v is not None))
        lo, hi = good, bad
    else:
        good = max(v for v in [best, quantile(values, 1 - LOWER_QUANTILE)] if v is not None)
        bad = max(min(values), min(v for v in [baseline, quantile(values, 1 - UPPER_QUANTILE)] if v is not None))
        lo, hi = bad, good
    if hi - lo <= 0:
        spread = abs(hi) * 0.01 or 1.0
        lo, hi = lo - spread, hi + spread
    pad = (hi - lo) * PAD
    return lo - pad, hi + pad


@dataclass(frozen=True)
class Chart:
    """Columns, one entry per experiment in id order; `to_json` is what the page receives."""

    ids: list[int]
    metric: list[float | None]
    status: str  # one letter per experiment, see STATUS_CODES
    decision: str  # one letter per experiment, see DECISION_CODES
    flags: list[int]  # bit 1 unverified, 2 unsealed, 4 confirmation run
    running_best: list[float | None]  # the running best after each experiment
    holdout: list[float | None] | None
    labels: dict[int, str]  # kept changes (not the baseline): the text the chart writes beside them
    y_range: tuple[float, float] | None
    baseline: float | None
    best_value: float | None
    best_id: int | None
    noise_floor: float | None
    best_before: dict[int, float | None] = field(default_factory=dict)  # for deltas; not sent

    def to_json(self) -> dict[str, Any]:
        return {"ids": self.ids, "metric": [_round(v) for v in self.metric], "status": self.status,
                "decision": self.decision, "flags": self.flags if any(self.flags) else None,
                "best_steps": self.best_steps(), "holdout": self.holdout,
                "labels": {str(k): v for k, v in self.labels.items()},
                "range": list(self.y_range) if self.y_range else None, "baseline": self.baseline,
                "best_value": self.best_value, "best_id": self.best_id, "noise_floor": self.noise_floor}


    def best_steps(self) -> list[list[float]]:
        """The running best as [id, value] where it changes (a step line needs only its corners)."""
        steps: list[list[float]] = []
        for exp_id, value in zip(self.ids, self.running_best):
            if value is not None and (not steps or steps[-1][1] != value):
                steps.append([exp_id, _round(value)])  # type: ignore[list-item]
        return steps


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.7g}")


def build_chart(experiments: list[Experiment], direction: str, noise_floor: float | None = None,
                holdout: Mapping[int, float] | None = None) -> Chart:
    ordered = sorted(experiments, key=lambda e: e.id)
    best: float | None = None
    best_id: int | None = None
    baseline: float | None = None
    running: list[float | None] = []
    best_before: dict[int, float | None] = {}
    labels: dict[int, str] = {}
    flag_bits: list[int] = []
    for exp in ordered:
        best_before[exp.id] = best
        if exp.decision == "keep" and exp.metric is not None:
            best, best_id = exp.metric, exp.id
            if not exp.is_baseline:
                text = exp.description.strip().replace("\n", " ")
                labels[exp.id] = text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"
        if exp.is_baseline and exp.status == "ok" and baseline is None:
            baseline = exp.metric
        running.append(best)
        names = experiment_flags(exp)
        flag_bits.append((1 if "unverified" in names else 0) | (2 if "unsealed" in names else 0)
                         | (4 if "confirmation" in names else 0))
    values = [e.metric for e in ordered if e.status == "ok" and e.metric is not None]
    holdouts = [holdout_of(e, holdout) for e in ordered]
    return Chart(
        ids=[e.id for e in ordered], metric=[e.metric for e in ordered],
        status="".join(STATUS_CODES.get(e.status, "?") for e in ordered),
        decision="".join(DECISION_CODES[e.decision or "pending"] for e in ordered),
        flags=flag_bits, running_best=running, holdout=holdouts if any(v is not None for v in holdouts) else None,
        labels=labels, y_range=focus_range(values, baseline, best, direction), baseline=baseline, best_value=best,
        best_id=best_id, noise_floor=noise_floor, best_before=best_before)
