"""`autoresearch compare TAG1 TAG2 ...`: several runs of the same target side by side, and whether that is fair.

For each run, from its ledger and run.json: the best-so-far curve (the best kept metric after each experiment) against
the number of experiments and against compute time (the experiments' wall time, evaluation included), drawn in two
panels of one PNG; and a table of the best metric with its confidence (the run's recorded noise floor, when it has
one), experiments, kept changes, and the experiments, time and cost it took to reach the mark: the baseline improved
by `mark` (relative: 0.01 is 1 % better than the baseline).

Runs compare only when they measured the same thing: the same data (the evaluation's corpus fingerprint), the same
training budget per experiment (and clock), the same device class, and the same starting code (the commit each run
branched from). The budget is read from the configuration frozen into each run at init. When any of them differs, `compare_runs` raises
`NotComparable` naming the field and each run's value; `force=True` draws and prints anyway and returns the
differences as warnings.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from server.config import Config, load_config
from server.ledger import Experiment, Ledger
from server.runstate import RunError, RunInfo, frozen_config, load_run

OFFLINE_AGENTS = ("random", "tpe")


class NotComparable(RuntimeError):
    """The runs measured different things; the message names the field and the values."""


@dataclass(frozen=True)
class Point:
    experiment: int  # 1-based position in the run
    minutes: float  # compute time so far
    best: float


@dataclass(frozen=True)
class RunFacts:
    tag: str
    agent: str
    metric: str
    direction: str
    baseline: float | None
    best: float | None
    noise_floor: float | None
    experiments: int
    kept: int
    curve: tuple[Point, ...]
    fingerprint: str | None
    budget_s: float | None
    device: str | None
    agent_cost_usd: float | None
    base_commit: str | None = None  # the code the run started from
    clock: str | None = None  # what the budget counts: wall time, or CPU time
    mark: float | None = None
    mark_experiments: int | None = None  # experiments it took to reach the mark (None: not reached)
    mark_minutes: float | None = None


@dataclass(frozen=True)
class Comparison:
    runs: tuple[RunFacts, ...]
    warnings: tuple[str, ...] = field(default=())


def _agent(experiments: list[Experiment]) -> str:
    for exp in experiments:
        if exp.is_baseline and len(experiments) > 1:
            continue
        session = (exp.caller or "").split(":")[0]
        name = session.rsplit("-", 1)[0] if "-" in session else session
        return name if name in OFFLINE_AGENTS else (session[:8] or "unknown")
    return "unknown"


def _noise_floor(run_dir: Path, experiments: list[Experiment]) -> float | None:
    """The run's noise floor: the sample standard deviation of its baseline's successful runs (the baseline and its
    noise runs, as the keep rule computes it), else a `noise_floor` written in run.json or noise.json."""
    base = next((e for e in experiments if e.is_baseline and e.status == "ok" and e.metric is not None), None)
    if base is not None:
        values = [base.metric] + [e.metric for e in experiments
                                  if e.repeat_of == base.id and e.status == "ok" and e.metric is not None]
        if len(values) >= 2:
            return statistics.stdev(values)
    for name in ("run.json", "noise.json"):
        try:
            value = json.loads((run_dir / name).read_text(encoding="utf-8")).get("noise_floor")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None


def _supervised(run_dir: Path) -> tuple[str | None, float | None]:
    """The agent the supervisor ran (its `run_start` records) and the dollars it spent (its `run_end` records)."""
    agent, total, seen = None, 0.0, False
    try:
        lines = (run_dir / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        if '"run_end"' not in line and '"run_start"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        summary = record.get("summary") or {}
        if record.get("event") == "run_start" and isinstance(summary.get("agent"), str):
            agent = summary["agent"]
        cost = summary.get("cost_usd")
        if record.get("event") == "run_end" and isinstance(cost, (int, float)):
            total, seen = total + float(cost), True
    return agent, (total if seen else None)


def _budget(config: Config, run: RunInfo) -> tuple[float | None, str | None]:
    """The training budget per experiment and the clock it is counted on, from the configuration frozen into the run
    at init; a run older than that freezing is read with the configuration of its profile as it is now."""
    frozen = frozen_config(config, run)
    if frozen is not config:
        return frozen.time_budget_s, frozen.sandbox.clock
    try:
        current = config if run.profile == config.profile else load_config(config.workspace, config.source,
                                                                          run.profile or None)
    except Exception:  # noqa: BLE001 - a profile no longer defined: the budget is unknown, and says so
        return None, None
    return current.time_budget_s, current.sandbox.clock


def read_run(config: Config, tag: str) -> RunFacts:
    run = load_run(config, tag)
    experiments = sorted(Ledger(run.run_dir, config.metric).experiments(), key=lambda e: e.id)
    if not experiments:
        raise RunError(f"run {tag!r} has no experiments yet ({run.run_dir / 'experiments.jsonl'}); run an agent on "
                       "it first")
    better = (lambda a, b: a < b) if config.direction == "minimize" else (lambda a, b: a > b)
    best: float | None = None
    minutes = 0.0
    curve: list[Point] = []
    for i, exp in enumerate(experiments, start=1):
        minutes += exp.duration_s / 60
        if exp.decision == "keep" and exp.metric is not None and (best is None or better(exp.metric, best)):
            best = exp.metric
        if best is not None:
            curve.append(Point(i, minutes, best))
    fingerprints = [e.fingerprint for e in experiments if e.fingerprint]
    devices = [str(e.metrics["device"]) for e in experiments if e.status == "ok" and "device" in e.metrics]
    supervised_agent, cost = _supervised(run.run_dir)
    budget_s, clock = _budget(config, run)
    agent = supervised_agent or _agent(experiments)
    if cost is None and agent in OFFLINE_AGENTS:
        cost = 0.0  # the offline agents call no paid API
    return RunFacts(
        tag=tag, agent=agent, metric=config.metric, direction=config.direction,
        baseline=next((e.metric for e in experiments if e.is_baseline and e.metric is not None), None), best=best,
        noise_floor=_noise_floor(run.run_dir, experiments), experiments=len(experiments),
        kept=sum(1 for e in experiments if e.decision == "keep" and not e.is_baseline), curve=tuple(curve),
        fingerprint=Counter(fingerprints).most_common(1)[0][0] if fingerprints else None,
        budget_s=budget_s, clock=clock,
        device=Counter(devices).most_common(1)[0][0] if devices else (run.profile or None),
        agent_cost_usd=cost, base_commit=run.base_commit[:12])


def common_mark(runs: list[RunFacts], mark: float) -> float | None:
    """The mean of the runs' baselines (the same code, measured once per run), improved by `mark` (relative)."""
    baselines = [r.baseline for r in runs if r.baseline is not None]
    if not baselines:
        return None
    base = sum(baselines) / len(baselines)
    gain = abs(base) * mark
    return base - gain if runs[0].direction == "minimize" else base + gain


def with_mark(run: RunFacts, target: float | None) -> RunFacts:
    """The run with the experiments and the compute time it took to reach `target` (None: never)."""
    minimize = run.direction == "minimize"
    for point in run.curve:
        if target is not None and (point.best <= target if minimize else point.best >= target):
            return replace(run, mark=target, mark_experiments=point.experiment, mark_minutes=point.minutes)
    return replace(run, mark=target)


def differences(runs: list[RunFacts]) -> list[str]:
    """One sentence per field on which the runs differ, naming each run's value."""
    found = []
    for name, label in (("fingerprint", "data fingerprint"), ("budget_s", "budget (s per experiment)"),
                        ("clock", "budget clock"), ("device", "device class"),
                        ("base_commit", "starting code (base commit)")):
        values = {getattr(r, name) for r in runs}
        if len(values) > 1:
            shown = ", ".join(f"{r.tag}={getattr(r, name)}" for r in runs)
            found.append(f"{label} differs: {shown}")
    return found


def compare_runs(config: Config, tags: list[str], mark: float = 0.01, force: bool = False) -> Comparison:
    if len(tags) < 2:
        raise ValueError(f"compare needs at least two run tags, got {len(tags)}: {' '.join(tags) or '(none)'}")
    if len(set(tags)) != len(tags):
        raise ValueError(f"a tag is named twice in {' '.join(tags)}; name each run once")
    if not 0 < mark < 1:
        raise ValueError(f"--mark is a relative improvement between 0 and 1 (0.01 = 1 %), got {mark}")
    runs = [read_run(config, tag) for tag in tags]
    target = common_mark(runs, mark)
    runs = [with_mark(run, target) for run in runs]
    problems = differences(runs)
    if problems and not force:
        raise NotComparable("the runs are not comparable: " + "; ".join(problems) +
                            ". Compare runs of the same target, data, budget, device and starting code, or pass "
                            "--force to draw them anyway")
    return Comparison(tuple(runs), tuple(problems))


def _duration(minutes: float | None) -> str:
    if minutes is None:
        return "not reached"
    if minutes < 2:
        return f"{minutes * 60:.0f} s"
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def table(comparison: Comparison, usd_per_hour: float | None) -> str:
    runs = comparison.runs
    metric = runs[0].metric
    lines = [f"| run | agent | best {metric} | confidence | experiments | kept | experiments to mark | time to mark "
             "| cost to mark |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        best = "-" if r.best is None else f"{r.best:.6f}"
        confidence = "n/a (no noise floor recorded)" if r.noise_floor is None else f"± {r.noise_floor:.6f}"
        if r.mark_minutes is None:
            cost = "-"
        elif usd_per_hour is None and not r.agent_cost_usd:
            cost = "n/a (no --usd-per-hour)" if r.agent_cost_usd is not None else "n/a"
        else:
            compute = (usd_per_hour or 0.0) * r.mark_minutes / 60
            agent = "" if r.agent_cost_usd is None else f" + agent ${r.agent_cost_usd:.2f} (whole run)"
            cost = f"${compute:.2f} compute{agent}"
        lines.append(f"| {r.tag} | {r.agent} | {best} | {confidence} | {r.experiments} | {r.kept} | "
                     f"{r.mark_experiments or 'not reached'} | {_duration(r.mark_minutes)} | {cost} |")
    first = runs[0]
    mark = "-" if first.mark is None else f"{first.mark:.6f}"
    lines.append("")
    lines.append(f"mark: {metric} {mark} (the mean of the runs' baselines improved by the relative --mark)")
    if comparison.warnings:
        lines.append("comparable: NO: " + "; ".join(comparison.warnings))
    else:
        clock = f" ({first.clock} clock)" if first.clock else ""
        budget = "" if first.budget_s is None else f", budget {first.budget_s:g} s per experiment{clock}"
        lines.append(f"comparable: yes: data fingerprint {str(first.fingerprint)[:16]}{budget}, "
                     f"device {first.device or 'unknown'}")
    return "\n".join(lines)


def plot(comparison: Comparison, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_count, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    agents = list(dict.fromkeys(r.agent for r in comparison.runs))
    seen: dict[str, int] = {}
    for r in comparison.runs:  # one colour per agent, one line style per run of that agent
        if not r.curve:
            continue
        style = {"color": f"C{agents.index(r.agent) % 10}", "label": f"{r.tag} ({r.agent})", "where": "post",
                 "linestyle": ("-", "--", ":", "-.")[seen.get(r.agent, 0) % 4]}
        seen[r.agent] = seen.get(r.agent, 0) + 1
        by_count.step([p.experiment for p in r.curve], [p.best for p in r.curve], **style)
        by_time.step([p.minutes for p in r.curve], [p.best for p in r.curve], **style)
    first = comparison.runs[0]
    for ax, xlabel in ((by_count, "experiments"), (by_time, "compute time (minutes)")):
        if first.mark is not None:
            ax.axhline(first.mark, color="grey", linestyle="--", linewidth=1, label=f"mark {first.mark:.4f}")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    by_count.set_ylabel(f"best {first.metric} so far ({'lower' if first.direction == 'minimize' else 'higher'} "
                        "is better)")
    by_count.legend(fontsize=8)
    title = "best so far" + ("  [NOT COMPARABLE: " + "; ".join(comparison.warnings) + "]" if comparison.warnings
                             else "")
    fig.suptitle(title, fontsize=10, color="red" if comparison.warnings else "black")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
