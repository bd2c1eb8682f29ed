"""The morning report: `progress.png` (every experiment and the running best) and `report.md` (what worked)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from server import history
from server.ledger import Experiment


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    plot: Path | None


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def render_markdown(tag: str, metric: str, direction: str, experiments: list[Experiment]) -> str:
    lines = [f"# Run {tag}", ""]
    if not experiments:
        return "\n".join(lines + ["No experiments yet.", ""])
    counts = history.counts(experiments)
    base = history.baseline(experiments)
    best = history.best_kept(experiments)
    span = (_parse(experiments[-1].finished_at) - _parse(experiments[0].started_at)).total_seconds()
    busy = sum(e.duration_s for e in experiments)
    better = "lower" if direction == "minimize" else "higher"
    lines.append(f"Metric: `{metric}` ({better} is better).")
    lines.append("")
    if base and best and base.metric is not None and best.metric is not None:
        change = best.metric - base.metric
        pct = 100 * change / base.metric if base.metric else 0.0
        lines.append(f"**Baseline {base.metric:.6f} -> best {best.metric:.6f}** ({change:+.6f}, {pct:+.2f}%), "
                     f"best from experiment {best.id}.")
    elif base is None:
        lines.append("No successful baseline yet.")
    lines += [
        "",
        f"- Experiments: {counts['total']} ({counts['ok']} ok, {counts['crash']} crashed, {counts['timeout']} timed "
        f"out, {counts['invalid']} invalid)",
        f"- Kept: {_count(counts['kept'] - (1 if base else 0), 'change')} (plus the baseline); discarded: "
        f"{counts['discarded']}",
        f"- Time: {_hours(span)} wall clock, {_hours(busy)} inside experiments",
    ]
    unverified = sum(1 for e in experiments if e.status == "ok" and not e.verified)
    if unverified:
        lines.append(f"- {_count(unverified, 'result')} {'is' if unverified == 1 else 'are'} UNVERIFIED "
                     "(compatibility mode: the metric was printed by the script)")
    kept = [a for a in history.annotate(experiments)
            if a.experiment.decision == "keep" and not a.experiment.is_baseline and a.delta is not None]
    sign = 1 if direction == "minimize" else -1
    kept.sort(key=lambda a: sign * a.delta)  # type: ignore[operator]
    lines += ["", "## Kept changes, by gain", ""]
    if kept:
        lines += ["| experiment | gain | metric | change |", "| ---: | ---: | ---: | --- |"]
        for a in kept:
            e = a.experiment
            lines.append(f"| {e.id} | {-sign * a.delta:+.6f} | {e.metric:.6f} | {e.description.replace('|', '/')} |")
    else:
        lines.append("None yet.")
    failures = [e for e in experiments if e.status != "ok"]
    if failures:
        lines += ["", "## Failures", "", "| experiment | status | reason | change |", "| ---: | --- | --- | --- |"]
        for e in failures[-20:]:
            reason = (e.failure or "").replace("|", "/").replace("\n", " ")[:120]
            lines.append(f"| {e.id} | {e.status} | {reason} | {e.description.replace('|', '/')} |")
    lines.append("")
    return "\n".join(lines)


def render_plot(path: Path, tag: str, metric: str, direction: str, experiments: list[Experiment]) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    annotated = history.annotate(experiments)
    ok = [a.experiment for a in annotated if a.experiment.metric is not None]
    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    kept = [e for e in ok if e.decision == "keep"]
    discarded = [e for e in ok if e.decision != "keep"]
    ax.scatter([e.id for e in discarded], [e.metric for e in discarded], c="#9e9e9e", s=22, label="discarded",
               zorder=2)
    ax.scatter([e.id for e in kept], [e.metric for e in kept], c="#2e7d32", s=40, label="kept", zorder=3)
    xs, ys, best = [], [], None
    for e in sorted(experiments, key=lambda e: e.id):
        if e.decision == "keep" and e.metric is not None:
            best = e.metric
        if best is not None:
            xs.append(e.id)
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", c="#1565c0", lw=1.6, label="running best", zorder=1)
    failed = [e for e in experiments if e.status != "ok"]
    if failed:
        values = [e.metric for e in ok] or [0.0]
        top = max(values) if direction == "minimize" else min(values)
        ax.scatter([e.id for e in failed], [top] * len(failed), marker="x", c="#c62828", s=40,
                   label="crash / timeout / invalid", zorder=3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("experiment")
    ax.set_ylabel(f"{metric} ({'lower' if direction == 'minimize' else 'higher'} is better)")
    ax.set_title(f"autoresearch run {tag}: {len(experiments)} experiments, {len(kept)} kept")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(run_dir: Path, tag: str, metric: str, direction: str, experiments: list[Experiment],
                 out_dir: Path | None = None) -> ReportFiles:
    out = out_dir or run_dir
    out.mkdir(parents=True, exist_ok=True)
    markdown = out / "report.md"
    plot = render_plot(out / "progress.png", tag, metric, direction, experiments) if experiments else None
    text = render_markdown(tag, metric, direction, experiments)
    if plot is not None:
        text += "\n![progress](progress.png)\n"
    markdown.write_text(text, encoding="utf-8")
    return ReportFiles(markdown, plot)


def _count(n: int, noun: str) -> str:
    """`1 change`, `2 changes`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
