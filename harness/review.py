"""The review gate: what a person reads before a run's result leaves its branch, and the approve/reject records.

`build_review` gathers everything from the run's files and git (never from the agent): the cumulative diff from the
base commit to the best, each kept change with its gain and its confidence in noise-floor units, the holdout score
(a ledger key only a person sees), the audit chain's verdict, violations and cost. `promote_run` lands the approved
changes on the base branch (see `server.promotion`); `reject_run` records a rejection in the audit chain and in
`rejections.jsonl`, which the next agent session's handoff reads.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from server import history
from server.audit import AuditLog, AuditRecord, AuditVerdict
from server.config import Config
from server.jsonl import append_record, read_records
from server.ledger import Experiment, Ledger, utc_now_iso
from server.promotion import Change, PromotionError, PromotionResult, promote, promoted_ids, run_changes
from server.private import read_holdout
from server.runstate import RunInfo

REJECTIONS_FILE = "rejections.jsonl"
DIFF_LIMIT = 20_000


def reviewer() -> str:
    """Who is approving: $AUTORESEARCH_USER, else the login name."""
    name = os.environ.get("AUTORESEARCH_USER", "").strip()
    if name:
        return name
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


@dataclass(frozen=True)
class Review:
    tag: str
    metric: str
    direction: str
    autonomy: str
    base_commit: str
    base_branch: str | None
    baseline: Experiment | None
    best: Experiment | None
    changes: tuple[Change, ...]
    cumulative_diff: str
    holdout: float | None
    holdout_baseline: float | None
    verdict: AuditVerdict
    violations: int
    cost_usd: float | None
    counts: dict[str, int]
    promoted: dict[int, int]  # experiment id -> audit seq of its promotion
    rejections: tuple[dict[str, object], ...]


def build_review(config: Config, run: RunInfo) -> Review:
    experiments = Ledger(run.run_dir, metric_name=config.metric).experiments()
    audit = AuditLog(run.run_dir / "audit.jsonl")
    verdict = audit.verify()
    changes = tuple(run_changes(config.workspace, run, experiments))
    best = history.best_kept(experiments)
    baseline = history.baseline(experiments)
    holdout = read_holdout(run.run_dir, config.metric)
    end = changes[-1].commit if changes and not changes[-1].proposed else (
        best.kept_commit if best and best.kept_commit else run.base_commit)
    diff = _git_diff(config.workspace, run.base_commit, str(end)) if not (changes and changes[0].proposed) else ""
    try:
        records = audit.records()
    except ValueError:  # a damaged line: the verdict says which; review still shows the rest
        records = []
    return Review(
        tag=run.tag, metric=config.metric, direction=config.direction, autonomy=config.autonomy,
        base_commit=run.base_commit, base_branch=run.base_branch, baseline=baseline, best=best, changes=changes,
        cumulative_diff=diff,
        holdout=holdout.get(best.id) if best else None,
        holdout_baseline=holdout.get(baseline.id) if baseline else None,
        verdict=verdict, violations=len(read_records(run.run_dir / "violations.jsonl")),
        cost_usd=_cost(run.run_dir, records), counts=history.counts(experiments),
        promoted=promoted_ids(records, run.tag),
        rejections=tuple(read_records(run.run_dir / REJECTIONS_FILE)),
    )


def _git_diff(workspace: Path, a: str, b: str) -> str:
    proc = subprocess.run(["git", "diff", "--no-color", "--no-ext-diff", a, b], cwd=workspace, capture_output=True,
                          text=True, check=False)
    return proc.stdout if proc.returncode == 0 else f"(git diff failed: {proc.stderr.strip()})"


def _cost(run_dir: Path, records: list[AuditRecord]) -> float | None:
    """The agent's cost: the live supervisor file, else the last supervisor audit record that carries one."""
    try:
        value = json.loads((run_dir / "supervisor.json").read_text(encoding="utf-8")).get("cost_usd")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    except (OSError, ValueError, AttributeError):
        pass
    for rec in reversed(records):
        value = (rec.summary or {}).get("cost_usd") if rec.actor == "supervisor" else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


# ---- text ----

def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def change_line(change: Change, metric: str, promoted: dict[int, int]) -> str:
    exp = change.experiment
    gain = "n/a" if change.gain is None else f"{change.gain:+.6f}"
    confidence = "n/a" if change.confidence is None else f"{change.confidence:.1f}x noise floor"
    state = f"promoted (audit seq {promoted[exp.id]})" if exp.id in promoted else (
        "proposed" if change.proposed else "kept")
    return (f"  [{change.number}] experiment {exp.id}: {metric} {_num(exp.metric)} gain {gain} confidence "
            f"{confidence}; {change.lines} lines; {state}: {exp.description}")


def render_review(review: Review) -> str:
    better = "lower" if review.direction == "minimize" else "higher"
    lines = [f"review of run {review.tag} ({review.metric}, {better} is better; autonomy {review.autonomy})",
             f"base: {review.base_branch or '(no branch recorded)'} at {review.base_commit[:12]}"]
    base, best = review.baseline, review.best
    lines.append(f"baseline {_num(base.metric if base else None)}  best {_num(best.metric if best else None)}"
                 + (f" (experiment {best.id})" if best and not best.is_baseline else ""))
    holdout = "n/a" if review.holdout is None else f"{review.holdout:.6f}"
    if review.holdout is not None and review.holdout_baseline is not None:
        holdout += f" (baseline {review.holdout_baseline:.6f})"
    lines.append(f"holdout score (never shown to the agent): {holdout}")
    c = review.counts
    lines.append(f"experiments {c['total']}: ok {c['ok']}, crash {c['crash']}, timeout {c['timeout']}, invalid "
                 f"{c['invalid']}; kept {c['kept']}, discarded {c['discarded']}, pending {c['pending']}")
    lines.append(f"audit: {'VERIFIED' if review.verdict.ok else 'BROKEN'}: {review.verdict.message}")
    lines.append(f"violations (locked files changed and restored): {review.violations}")
    lines.append("cost: " + ("n/a" if review.cost_usd is None else f"${review.cost_usd:.2f}"))
    for rej in review.rejections:
        lines.append(f"rejected {rej.get('time')} by {rej.get('user')}: {rej.get('reason')}")
    if not review.changes:
        lines.append("changes: none kept; nothing to promote")
    else:
        title = ("changes this observe run would have kept (each against the baseline), to promote one by one"
                 if review.changes[0].proposed else "kept changes, in order")
        lines.append(title + ":")
        lines += [change_line(ch, review.metric, review.promoted) for ch in review.changes]
    if review.cumulative_diff:
        diff = review.cumulative_diff
        if len(diff) > DIFF_LIMIT:
            diff = diff[:DIFF_LIMIT] + f"\n... (diff cut; `git diff {review.base_commit[:12]} <best>` for all)"
        lines.append(f"cumulative diff, base {review.base_commit[:12]} .. best:")
        lines.append(diff.rstrip("\n"))
    numbers = ",".join(str(ch.number) for ch in review.changes if ch.experiment.id not in review.promoted)
    if numbers and review.verdict.ok:
        lines.append(f"next: `autoresearch promote --tag {review.tag}` (or --only {numbers}) to land them on "
                     f"{review.base_branch or '--onto BRANCH'}; `autoresearch reject --tag {review.tag} --reason ...` "
                     "to turn them down")
    elif numbers:
        lines.append("next: the audit chain does not verify, so promote will refuse; see `autoresearch audit verify`")
    return "\n".join(lines)


def render_step(change: Change, metric: str, promoted: dict[int, int]) -> str:
    exp = change.experiment
    head = [change_line(change, metric, promoted).strip()]
    if exp.hypothesis:
        head.append(f"hypothesis: {exp.hypothesis}")
    head.append(f"commit {change.commit[:12]} (parent {change.parent[:12]}); decided: {exp.decision_reason or '-'}")
    return "\n".join(head) + "\n" + change.diff.rstrip("\n")


# ---- decisions ----

def select(changes: list[Change] | tuple[Change, ...], only: str | None) -> list[Change]:
    """The changes named by ``--only N,M`` (numbers as `review` prints them), or all."""
    if not only:
        return list(changes)
    wanted: list[int] = []
    for part in only.split(","):
        part = part.strip()
        if not part.isdigit():
            raise PromotionError(f"--only {only!r}: {part!r} is not a change number; use numbers from "
                                 "`autoresearch review`, e.g. --only 1,3")
        wanted.append(int(part))
    known = {ch.number: ch for ch in changes}
    missing = [n for n in wanted if n not in known]
    if missing:
        raise PromotionError(f"--only names change(s) {', '.join(map(str, missing))}, but the run has "
                             + (f"changes 1..{len(changes)}" if changes else "none") + "; see `autoresearch review`")
    return [known[n] for n in sorted(set(wanted))]


def promote_run(config: Config, run: RunInfo, only: str | None = None, onto: str | None = None) -> PromotionResult:
    experiments = Ledger(run.run_dir, metric_name=config.metric).experiments()
    audit = AuditLog(run.run_dir / "audit.jsonl")
    branch = onto or run.base_branch
    try:
        changes = select(run_changes(config.workspace, run, experiments), only)
        if branch is None:
            raise PromotionError(f"run {run.tag} recorded no base branch (it started on a detached HEAD or before "
                                 "branches were recorded); pass the branch with --onto BRANCH")
    except PromotionError as exc:  # refusals are audited, whatever their cause
        audit.append("cli", "promote", status="refused",
                     summary={"tag": run.tag, "branch": branch, "only": only, "user": reviewer(), "reason": str(exc)})
        raise
    return promote(config, run, changes, branch=branch, actor="cli", user=reviewer(), audit=audit)


def reject_run(run: RunInfo, reason: str, only: str | None = None) -> dict[str, object]:
    reason = " ".join(reason.split())
    if len(reason) < 3:
        raise PromotionError("--reason is empty or too short: say in a sentence why the result is turned down, so "
                             "the next session can act on it")
    record: dict[str, object] = {"time": utc_now_iso(), "user": reviewer(), "reason": reason[:2000],
                                 "changes": only or "all"}
    append_record(run.run_dir / REJECTIONS_FILE, record)
    AuditLog(run.run_dir / "audit.jsonl").append("cli", "reject", status="ok", summary={"tag": run.tag, **record})
    return record
