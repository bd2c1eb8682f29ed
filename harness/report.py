"""The morning report: `progress.png`, `report.md` and a self-contained `report.html` a person can mail on.

All three say the same things a person wants after a night away: did it make progress, which changes worked, what
failed, what the supervisor went through (sessions, stalls, restarts, backoffs, cost) and whether the audit chain is
intact. The chart and the page share one view of the data (`harness.dashboard.series`), so they never disagree.

Two copies. The one in the run folder (or `--out`) is where the agent can read it, so it never carries a holdout
score: it says where the person's copy is. The person's copy, in the run's private folder (server/private.py), adds
the holdout score of the baseline and of the best, draws the holdout on the chart, and flags a run whose validation
improved while its holdout did not (the kept changes may fit the validation split rather than the task).
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from server import history
from server.ledger import Experiment
from server.private import private_folder

from harness.dashboard.data import AuditSummary, RunData, RunMeta, SupervisorSummary, last_holdout
from harness.dashboard.series import Chart, build_chart, experiment_flags

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.transforms import Bbox

COLORS = {"best": "#1565c0", "kept": "#2e7d32", "disc": "#9aa1ad", "pend": "#f9a825", "crash": "#c62828",
          "timeout": "#ef6c00", "invalid": "#6a1b9a", "hold": "#8e24aa", "flag": "#e65100"}
MAX_LABELS = 30  # kept changes labelled on the PNG, the largest gains first
FAILURE_ROWS = 20


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    plot: Path | None
    html: Path | None = None
    private: Path | None = None  # the person's copy (report.md with the holdout), outside the agent's reach


@dataclass(frozen=True)
class Night:
    """What the run's other files say: the supervisor's night, the audit verdict, violations."""

    supervisor: SupervisorSummary | None
    audit: AuditSummary | None
    violations: int | None
    noise_floor: float | None
    holdout: Mapping[int, float] = field(default_factory=dict)  # person-only scores; empty in the agent-readable copy
    private_copy: Path | None = None  # where the person's copy of the report is, named in the agent-readable one


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def read_night(run_dir: Path, tag: str, metric: str, direction: str) -> Night:
    data = RunData(RunMeta(tag, metric, direction, run_dir))
    supervisor = data.supervisor()
    audit = data.audit_summary()
    return Night(supervisor if supervisor.present else None, audit if audit.ok is not None else None,
                 data.violations().get("count"), data.noise_floor(), data.holdout())


# ---- the text, shared by report.md and report.html ----

def headline(metric: str, direction: str, experiments: list[Experiment]) -> list[str]:
    base = history.baseline(experiments)
    best = history.best_kept(experiments)
    better = "lower" if direction == "minimize" else "higher"
    lines = [f"Metric: `{metric}` ({better} is better)."]
    if base and best and base.metric is not None and best.metric is not None:
        change = best.metric - base.metric
        pct = 100 * change / abs(base.metric) if base.metric else 0.0
        lines.append(f"**Baseline {base.metric:.6f} -> best {best.metric:.6f}** ({change:+.6f}, {pct:+.2f}%), "
                     f"best from experiment {best.id}.")
    elif base is None:
        lines.append("No successful baseline yet.")
    return lines


def fact_lines(experiments: list[Experiment], night: Night, direction: str = "minimize") -> list[str]:
    counts = history.counts(experiments)
    base = history.baseline(experiments)
    span = (_parse(experiments[-1].finished_at) - _parse(experiments[0].started_at)).total_seconds()
    busy = sum(e.duration_s for e in experiments)
    failed = [f"{counts['crash']} crashed", f"{counts['timeout']} timed out", f"{counts['invalid']} invalid"]
    kept = counts["kept"] - (1 if base and base.decision == "keep" else 0)
    lines = [
        f"Experiments: {counts['total']} ({counts['ok']} ok, {', '.join(failed)})",
        f"Kept: {plural(kept, 'change')}" + (" (plus the baseline)" if base else "")
        + f"; discarded: {counts['discarded']}" + (f"; pending: {counts['pending']}" if counts["pending"] else ""),
        f"Time: {_hours(span)} wall clock, {_hours(busy)} inside experiments",
    ]
    unverified = sum(1 for e in experiments if "unverified" in experiment_flags(e))
    if unverified:
        lines.append(f"{plural(unverified, 'result')} {'is' if unverified == 1 else 'are'} UNVERIFIED (compatibility "
                     "mode: the metric was printed by the script itself)")
    unsealed = sum(1 for e in experiments if "unsealed" in experiment_flags(e))
    if unsealed:
        lines.append(f"{plural(unsealed, 'result')} {'was' if unsealed == 1 else 'were'} measured UNSEALED")
    lines += holdout_lines(experiments, night, direction)
    if night.noise_floor is not None:
        lines.append(f"Noise floor: ±{night.noise_floor:.6f} (differences smaller than this are not evidence)")
    repeats = [e for e in experiments if e.repeat_of is not None]
    if repeats:
        noise = sum(1 for e in repeats if base is not None and e.repeat_of == base.id)
        lines.append(f"Re-runs with fresh seeds: {noise} of the baseline (the noise floor), "
                     f"{len(repeats) - noise} confirming candidates (counted in the experiments above)")
    if night.violations:
        lines.append(f"Violations: {night.violations} (a locked file was changed and restored)")
    return lines


def holdout_lines(experiments: list[Experiment], night: Night, direction: str) -> list[str]:
    """The holdout of the baseline and of the best, and the warning when validation improved and the holdout did
    not; in the agent-readable copy only where the person's copy is."""
    if not night.holdout:
        if night.private_copy is not None:
            return [f"Holdout scores (never shown to the agent) are in your copy of this report: {night.private_copy}"]
        return []
    base, best = history.baseline(experiments), history.best_kept(experiments)
    h_base = night.holdout.get(base.id) if base else None
    h_best = night.holdout.get(best.id) if best else None
    latest = last_holdout(experiments, night.holdout)
    if h_base is None or h_best is None or best is None or base is None or best.id == base.id:
        return [f"Holdout (for you, never shown to the agent): {latest['value']:.6f} at experiment {latest['id']}"
                if latest else "Holdout: none recorded"]
    lines = [f"Holdout (for you, never shown to the agent): baseline {h_base:.6f} -> best {h_best:.6f} "
             f"({h_best - h_base:+.6f}, experiment {best.id})"]
    sign = 1 if direction == "minimize" else -1
    val_gain = sign * ((base.metric or 0.0) - (best.metric or 0.0))
    hold_gain = sign * (h_base - h_best)
    if val_gain > 0 and hold_gain <= 0:
        lines.append(f"**WARNING: validation improved by {val_gain:.6f} but the holdout did not ({h_base:.6f} -> "
                     f"{h_best:.6f})**: the kept changes may fit the validation split rather than the task; check "
                     "them before promoting")
    return lines


def night_lines(night: Night) -> list[str]:
    sup = night.supervisor
    if sup is None:
        return ["No supervisor ran on this run (an interactive session, or `autoresearch run` was not used)."]
    st = sup.status
    ev = sup.events
    sessions = len(st.get("sessions") or []) or ev.get("start", 0)
    parts = [f"State: {st.get('state', 'unknown')}" + (f" ({st['stop_reason']})" if st.get("stop_reason") else "")
             + (f" — FATAL: {st['fatal_message']}" if st.get("fatal_message") else ""),
             f"{plural(sessions, 'session')}, {plural(int(st.get('restarts', ev.get('restart', 0))), 'restart')}, "
             f"{plural(int(st.get('resumes', ev.get('resume', 0))), 'resume')}, "
             f"{plural(int(st.get('stalls', ev.get('stall', 0))), 'stall')}, "
             f"{plural(int(st.get('backoffs', ev.get('backoff', 0))), 'backoff')}"
             + (f", {plural(int(st['quick_deaths']), 'quick death')}" if st.get("quick_deaths") else ""),
             f"Cost: ${float(st.get('cost_usd') or 0):.2f}"]
    tokens = {k: v for k, v in st.items() if "tokens" in k and isinstance(v, (int, float))}
    if tokens:
        parts.append("Tokens: " + ", ".join(f"{k.replace('_', ' ')} {int(v):,}" for k, v in tokens.items()))
    if sup.runs > 1:
        parts.append(f"Harness started {sup.runs} times on this run")
    return parts


def audit_line(audit: AuditSummary | None) -> str:
    if audit is None:
        return "No audit log."
    if audit.ok:
        calls = sum(n for by_status in audit.tool_calls.values() for n in by_status.values())
        return (f"Chain intact: {plural(audit.records, 'record')}, {plural(calls, 'tool call')}"
                + (f", {audit.refusals} refused or blocked" if audit.refusals else "") + ".")
    return f"CHAIN BROKEN: {audit.message}"


def kept_changes(direction: str, experiments: list[Experiment]) -> list[tuple[Experiment, float]]:
    """(experiment, gain) for every kept change, largest gain first; gain > 0 means better."""
    sign = 1 if direction == "minimize" else -1
    rows = [(a.experiment, -sign * a.delta) for a in history.annotate(experiments)
            if a.experiment.decision == "keep" and not a.experiment.is_baseline and a.delta is not None]
    return sorted(rows, key=lambda r: -r[1])


def render_markdown(tag: str, metric: str, direction: str, experiments: list[Experiment],
                    night: Night | None = None) -> str:
    night = night or Night(None, None, None, None)
    lines = [f"# Run {tag}", ""]
    if not experiments:
        return "\n".join(lines + ["No experiments yet.", ""])
    lines += headline(metric, direction, experiments) + [""]
    lines += [f"- {line}" for line in fact_lines(experiments, night, direction)]
    lines += ["", "## The night", ""] + [f"- {line}" for line in night_lines(night)]
    lines += ["", "## Audit", "", audit_line(night.audit)]
    lines += ["", "## Kept changes, by gain", ""]
    kept = kept_changes(direction, experiments)
    if kept:
        floor = night.noise_floor
        lines += ["| experiment | gain | noise floors | metric | change |", "| ---: | ---: | ---: | ---: | --- |"]
        for e, gain in kept:
            sure = f"{gain / floor:.1f}x" if floor else "n/a"
            lines.append(f"| {e.id} | {gain:+.6f} | {sure} | {e.metric:.6f} | {_cell(e.description)} |")
    else:
        lines.append("None yet.")
    failures = [e for e in experiments if e.status not in ("ok", "confirming")]
    if failures:
        lines += ["", "## Failures" + (f" (the last {FAILURE_ROWS})" if len(failures) > FAILURE_ROWS else ""), "",
                  "| experiment | status | reason | change |", "| ---: | --- | --- | --- |"]
        for e in failures[-FAILURE_ROWS:]:
            lines.append(f"| {e.id} | {e.status} | {_cell(e.failure or '')[:120]} | {_cell(e.description)} |")
    lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ").replace("\r", " ")


# ---- the chart ----

def render_plot(path: Path | io.BytesIO, tag: str, metric: str, direction: str, experiments: list[Experiment],
                noise_floor: float | None = None, holdout: Mapping[int, float] | None = None
                ) -> Path | io.BytesIO | None:
    """progress.png: the running best as a step line, kept points labelled, discarded points, the y-range focused on
    the band that matters (points outside it as triangles at the edge), failures on a strip below the metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    chart = build_chart(experiments, direction, noise_floor, holdout)
    if not chart.ids:
        return None
    fig, (ax, strip) = plt.subplots(2, 1, figsize=(11, 5.6), dpi=120, sharex=True,
                                    gridspec_kw={"height_ratios": [1, 0.09], "hspace": 0.04})
    lo, hi = chart.y_range or (0.0, 1.0)
    _draw_points(ax, chart, lo, hi)
    xs = [i for i, b in zip(chart.ids, chart.running_best) if b is not None]
    ys = [b for b in chart.running_best if b is not None]
    if xs:
        ax.step(xs + [xs[-1] + 0.5], ys + [ys[-1]], where="post", c=COLORS["best"], lw=1.8, label="running best",
                zorder=2)
        if chart.noise_floor:
            ax.fill_between(xs + [xs[-1] + 0.5], [y - chart.noise_floor for y in ys + [ys[-1]]],
                            [y + chart.noise_floor for y in ys + [ys[-1]]], step="post", color=COLORS["best"],
                            alpha=0.12, lw=0, label=f"noise floor (±{chart.noise_floor:.4g})", zorder=1)
    top = ax
    if chart.holdout:  # another split, another level: its own scale on the right, so neither squashes the other
        pts = [(i, v) for i, v in zip(chart.ids, chart.holdout) if v is not None]
        top = ax.twinx()
        top.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", marker=".", c=COLORS["hold"], lw=1.2,
                 label="holdout (right scale)", zorder=2)
        values = [p[1] for p in pts]
        spread = (max(values) - min(values)) or abs(values[0]) * 0.01 or 0.01
        top.set_ylim(min(values) - spread * 0.4, max(values) + spread * 0.4)
        top.set_ylabel("holdout", color=COLORS["hold"])
        top.tick_params(axis="y", colors=COLORS["hold"], labelsize=8)
    ax.set_ylim(lo, hi)
    ax.set_xlim(chart.ids[0] - 0.5, chart.ids[-1] + 0.5)
    fig.subplots_adjust(left=0.09, right=0.92 if top is not ax else 0.98, top=0.93, bottom=0.1)
    _label_kept(ax, chart, lo, hi)
    ax.set_ylabel(f"{metric} ({'lower' if direction == 'minimize' else 'higher'} is better)")
    kept = sum(1 for k, e in zip(chart.decision, chart.ids) if k == "k")
    ax.set_title(f"autoresearch run {tag}: {plural(len(chart.ids), 'experiment')}, {kept} kept", loc="left")
    ax.grid(alpha=0.3)
    _draw_failures(strip, chart)
    strip.set_yticks([])
    strip.set_ylim(0, 1)
    strip.set_ylabel("no\nmetric", rotation=0, ha="right", va="center", fontsize=8, color="#8a6d6d")
    strip.set_facecolor("#f6f0f0")
    strip.set_xlabel("experiment")
    strip.xaxis.set_major_locator(MaxNLocator(integer=True))
    strip.set_xlim(chart.ids[0] - 0.5, chart.ids[-1] + 0.5)
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = strip.get_legend_handles_labels()
    h3, l3 = top.get_legend_handles_labels() if top is not ax else ([], [])
    top.legend(handles + h2 + h3, labels + l2 + l3, loc="lower left" if direction == "minimize" else "upper left",
               fontsize=8, ncol=2, framealpha=0.9)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _draw_points(ax: Axes, chart: Chart, lo: float, hi: float) -> None:
    groups: dict[str, tuple[list[int], list[float]]] = {"k": ([], []), "d": ([], []), "p": ([], [])}
    off_x, off_y, off_c = [], [], []
    flagged: tuple[list[int], list[float]] = ([], [])
    for i, exp_id in enumerate(chart.ids):
        m = chart.metric[i]
        if m is None:
            continue
        if m < lo or m > hi:
            off_x.append(exp_id)
            off_y.append(hi if m > hi else lo)
            off_c.append(COLORS["kept"] if chart.decision[i] == "k" else COLORS["disc"])
            continue
        groups[chart.decision[i]][0].append(exp_id)
        groups[chart.decision[i]][1].append(m)
        if chart.flags[i] & 3:
            flagged[0].append(exp_id)
            flagged[1].append(m)
    style = {"d": dict(c="#cfd3da", edgecolors=COLORS["disc"], s=20, label="discarded", zorder=3),
             "p": dict(c="white", edgecolors=COLORS["pend"], s=36, linewidths=1.6, label="pending", zorder=4),
             "k": dict(c=COLORS["kept"], edgecolors="white", s=46, label="kept", zorder=5)}
    for code in ("d", "p", "k"):
        xs, ys = groups[code]
        if xs:
            ax.scatter(xs, ys, **style[code])
    if flagged[0]:
        ax.scatter(*flagged, facecolors="none", edgecolors=COLORS["flag"], s=120, linewidths=1.5,
                   label="unverified / unsealed", zorder=6)
    if off_x:
        pad = (hi - lo) * 0.015
        ys = [y - pad if y == hi else y + pad for y in off_y]
        markers = ["^" if y == hi else "v" for y in off_y]
        for x, y, c, mk in zip(off_x, ys, off_c, markers):
            ax.scatter([x], [y], marker=mk, c=c, s=26, zorder=4, clip_on=False)
        ax.scatter([], [], marker="^", c=COLORS["disc"], s=26, label=f"off the chart ({len(off_x)})")


def _label_kept(ax: Axes, chart: Chart, lo: float, hi: float) -> None:
    """Label kept changes, the largest gains first, skipping a label that would overlap one already placed."""
    ranked = sorted(chart.labels.items(), key=lambda kv: -abs(_gain(chart, kv[0])))[:MAX_LABELS]
    index = {exp_id: i for i, exp_id in enumerate(chart.ids)}
    renderer = ax.figure.canvas.get_renderer()  # type: ignore[attr-defined]
    axes_box = ax.get_window_extent(renderer)
    placed: list[Bbox] = []
    for exp_id, text in ranked:
        m = chart.metric[index[exp_id]]
        if m is None or not lo <= m <= hi:
            continue
        for dx, dy, ha in ((7, 7, "left"), (7, -13, "left"), (-7, 7, "right"), (-7, -13, "right")):
            label = ax.annotate(text, (exp_id, m), xytext=(dx, dy), textcoords="offset points", ha=ha,
                                fontsize=7.5, color="#1b4d1e", zorder=7,
                                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
            box = label.get_window_extent(renderer)
            inside = box.x0 >= axes_box.x0 and box.x1 <= axes_box.x1 and box.y0 >= axes_box.y0 and \
                box.y1 <= axes_box.y1
            if inside and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            label.remove()


def _gain(chart: Chart, exp_id: int) -> float:
    i = chart.ids.index(exp_id)
    before = chart.running_best[i - 1] if i > 0 else None
    m = chart.metric[i]
    return 0.0 if before is None or m is None else m - before


def _draw_failures(strip: Axes, chart: Chart) -> None:
    style = {"c": dict(marker="x", c=COLORS["crash"], s=36, linewidths=2, label="crash"),
             "t": dict(marker="D", c=COLORS["timeout"], s=24, label="timeout"),
             "i": dict(marker="s", c=COLORS["invalid"], s=22, label="invalid")}
    for code, kw in style.items():
        xs = [exp_id for exp_id, s, m in zip(chart.ids, chart.status, chart.metric) if s == code and m is None]
        if xs:
            strip.scatter(xs, [0.5] * len(xs), zorder=3, **kw)


# ---- report.html ----

CSS = """body{font:15px/1.5 system-ui,sans-serif;color:#1d2330;max-width:1100px;margin:24px auto;padding:0 16px}
h1{font-size:22px}h2{font-size:16px;margin-top:26px;border-bottom:1px solid #e3e6ec;padding-bottom:4px}
table{border-collapse:collapse;width:100%;font-size:14px}td,th{border-bottom:1px solid #e3e6ec;padding:4px 8px;
text-align:left;vertical-align:top}td.n,th.n{text-align:right;font-family:ui-monospace,monospace}.ok{color:#2e7d32}
.bad{color:#c62828}img{max-width:100%;border:1px solid #e3e6ec;border-radius:6px}ul{padding-left:20px}
.muted{color:#6b7385;font-size:13px}"""


def _table(headers: list[str], rows: list[list[tuple[str, str]]]) -> str:
    """An HTML table; a header starting with '>' is right-aligned, cells are (class, already-escaped text)."""
    head = "".join(f"<th class='n'>{h[1:]}</th>" if h.startswith(">") else f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td class='{cls}'>{text}</td>" for cls, text in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(tag: str, metric: str, direction: str, experiments: list[Experiment], night: Night,
                png: bytes | None) -> str:
    esc = html.escape

    def md(text: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", esc(text)).replace("`", "")

    def bullets(lines: list[str]) -> str:
        return "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in lines) + "</ul>"

    out = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>autoresearch run {esc(tag)}</title>",
           f"<style>{CSS}</style></head><body><h1>Run {esc(tag)}</h1>"]
    if not experiments:
        return "".join(out + ["<p>No experiments yet.</p></body></html>"])
    out += [f"<p>{md(line)}</p>" for line in headline(metric, direction, experiments)]
    out.append(bullets(fact_lines(experiments, night, direction)))
    if png:
        out.append(f"<img alt='progress chart' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    out.append("<h2>The night</h2>" + bullets(night_lines(night)))
    if night.supervisor and night.supervisor.recent:
        out.append(_table(["time", "event", "message"], [
            [("", esc(str(e["time"] or ""))), ("", esc(e["event"])), ("", esc(e["message"]))]
            for e in night.supervisor.recent]))
    verdict_class = "ok" if night.audit and night.audit.ok else "bad"
    out.append(f"<h2>Audit</h2><p class='{verdict_class}'>{esc(audit_line(night.audit))}</p>")
    if night.audit and night.audit.tool_calls:
        statuses = sorted({s for by in night.audit.tool_calls.values() for s in by})
        out.append(_table(["tool"] + [">" + esc(s) for s in statuses], [
            [("", esc(tool))] + [("n", str(by.get(s, ""))) for s in statuses]
            for tool, by in night.audit.tool_calls.items()]))
    kept = kept_changes(direction, experiments)
    out.append("<h2>Kept changes, by gain</h2>" + (_table([">#", ">gain", ">metric", "change"], [
        [("n", str(e.id)), ("n ok", f"{gain:+.6f}"), ("n", f"{e.metric:.6f}"), ("", esc(e.description))]
        for e, gain in kept]) if kept else "<p>None yet.</p>"))
    failures = [e for e in experiments if e.status not in ("ok", "confirming")][-FAILURE_ROWS:]
    if failures:
        out.append("<h2>Failures</h2>" + _table([">#", "status", "reason", "change"], [
            [("n", str(e.id)), ("bad", esc(e.status)), ("", esc((e.failure or "")[:160])), ("", esc(e.description))]
            for e in failures]))
    out.append("<p class='muted'>Written by <code>autoresearch report</code>; self-contained, needs no network."
               "</p></body></html>")
    return "\n".join(out)


def write_report(run_dir: Path, tag: str, metric: str, direction: str, experiments: list[Experiment],
                 out_dir: Path | None = None) -> ReportFiles:
    """The report in `out_dir` (default: the run folder), without holdout scores; and, when the run has holdout
    scores, the person's copy with them in the run's private folder (`ReportFiles.private`)."""
    out = out_dir or run_dir
    night = read_night(run_dir, tag, metric, direction)
    private = private_folder(run_dir) if night.holdout else None
    public = _write_copy(out, tag, metric, direction, experiments,
                         replace(night, holdout={}, private_copy=private / "report.md" if private else None))
    if private is None:
        return public
    personal = _write_copy(private, tag, metric, direction, experiments, night)
    return ReportFiles(public.markdown, public.plot, public.html, personal.markdown)


def _write_copy(out: Path, tag: str, metric: str, direction: str, experiments: list[Experiment],
                night: Night) -> ReportFiles:
    out.mkdir(parents=True, exist_ok=True)
    png: bytes | None = None
    plot: Path | None = None
    if experiments:
        buffer = io.BytesIO()
        if render_plot(buffer, tag, metric, direction, experiments, night.noise_floor, night.holdout) is not None:
            png = buffer.getvalue()
            plot = out / "progress.png"
            plot.write_bytes(png)
    text = render_markdown(tag, metric, direction, experiments, night)
    if plot is not None:
        text += "\n![progress](progress.png)\n"
    markdown = out / "report.md"
    markdown.write_text(text, encoding="utf-8")
    page = out / "report.html"
    page.write_text(render_html(tag, metric, direction, experiments, night, png), encoding="utf-8")
    return ReportFiles(markdown, plot, page)
