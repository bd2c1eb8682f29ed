"""Promotion: landing a run's approved changes on the branch the run started from, as ordinary commits.

The run branch is the lab; the branch the run was started from (the base branch) is what people use. Nothing here
moves the base branch unless a person runs `autoresearch promote`, or the configuration says
`autonomy = "auto-promote"` and a kept change fits the written limits. Each change is applied on top of the base
branch's current tip through a temporary index (the working tree, HEAD and the user's index are never touched unless
the base branch is the one checked out, which then fast-forwards), so a base branch that moved is fine as long as the
changes still apply; one that moved in a conflicting way is refused with what to do. A promotion and every refusal is
a record in the run's audit chain, and a chain that does not verify blocks promotion: what was approved must be what
the record says happened.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from server import history
from server.audit import AuditError, AuditLog, AuditRecord
from server.config import Config
from server.gitrepo import GitRepo
from server.jsonl import read_records
from server.ledger import Experiment, Ledger
from server.runstate import RunInfo

log = logging.getLogger(__name__)

OBSERVE_PREFIX = "observe:"  # decision reason of a result an observe run would have kept


class PromotionError(RuntimeError):
    """Nothing was promoted; the message says why and what to do."""


@dataclass(frozen=True)
class Change:
    """One kept change of a run (or, in an observe run, one it would have kept), numbered from 1 in run order."""

    number: int
    experiment: Experiment
    commit: str  # the commit holding the change
    parent: str  # the commit it changes
    gain: float | None  # metric minus the best before it (signed; negative is better when minimising)
    noise_floor: float | None  # from the ledger, when the run measured one
    lines: int  # lines added plus removed
    diff: str
    proposed: bool  # True in an observe run: nothing was kept, this is what would have been

    @property
    def confidence(self) -> float | None:
        """The gain in noise-floor units, when the ledger carries a noise floor."""
        if self.gain is None or not self.noise_floor:
            return None
        return abs(self.gain) / self.noise_floor


@dataclass(frozen=True)
class PromotionResult:
    branch: str
    old_tip: str
    new_tip: str
    commits: tuple[tuple[int, str], ...]  # (experiment id, new commit on the branch)
    skipped: tuple[int, ...]  # experiment ids already promoted earlier


def _git(workspace: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True, input=stdin,
                          env={**os.environ, **(env or {})}, check=False)
    if proc.returncode != 0:
        raise PromotionError(f"`git {' '.join(args[:3])}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def changed_lines(diff: str) -> int:
    return sum(1 for line in diff.splitlines()
               if line[:1] in "+-" and not line.startswith(("+++ ", "--- ")))


def ledger_value(run_dir: Path, experiment_id: int, key: str) -> float | None:
    """A number the ledger holds for one experiment under ``key`` on any of its lines, or in its metrics.

    Read from the raw lines so keys added to the ledger later (a noise floor) show up here without a
    change to the `Experiment` record."""
    found: float | None = None
    for rec in read_records(run_dir / "experiments.jsonl"):
        if rec.get("id") != experiment_id and rec.get("experiment_id") != experiment_id:
            continue
        for source in (rec, rec.get("metrics") or {}):
            value = source.get(key) if isinstance(source, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found = float(value)
    return found


def run_changes(workspace: Path, run: RunInfo, experiments: list[Experiment]) -> list[Change]:
    """The run's kept changes in order; for a run that kept nothing but observed, the ones it would have kept."""
    annotated = {a.experiment.id: a for a in history.annotate(experiments)}
    kept = [e for e in experiments if e.decision == "keep" and not e.is_baseline and e.kept_commit]
    proposed = not kept
    picked = kept or [e for e in experiments if e.decision == "discard" and e.status == "ok"
                      and (e.decision_reason or "").startswith(OBSERVE_PREFIX)]
    out: list[Change] = []
    for number, exp in enumerate(sorted(picked, key=lambda e: e.id), start=1):
        commit = exp.commit if proposed else str(exp.kept_commit)
        parent = exp.parent if proposed else _git(workspace, "rev-parse", f"{commit}^").strip()
        diff = _git(workspace, "diff", "--no-color", "--no-ext-diff", "--binary", parent, commit)
        out.append(Change(number=number, experiment=exp, commit=commit, parent=parent,
                          gain=annotated[exp.id].delta, noise_floor=ledger_value(run.run_dir, exp.id, "noise_floor"),
                          lines=changed_lines(diff), diff=diff, proposed=proposed))
    return out


def promoted_ids(records: list[AuditRecord], tag: str) -> dict[int, int]:
    """Experiment id -> audit seq of the promotion that landed it, for this run."""
    out: dict[int, int] = {}
    for rec in records:
        summary = rec.summary or {}
        if rec.event == "promote" and rec.status == "ok" and summary.get("tag") == tag:
            for exp_id in summary.get("experiments") or []:
                if isinstance(exp_id, int):
                    out.setdefault(exp_id, rec.seq)
    return out


def commit_message(change: Change, metric: str, tag: str, user: str, auto: bool) -> str:
    exp = change.experiment
    value = f"{exp.metric:.6f}" if exp.metric is not None else "-"
    gain = f" ({change.gain:+.6f})" if change.gain is not None else ""
    how = "auto-promoted within the run's limits" if auto else f"promoted by {user}"
    return (f"{metric} {value}{gain} experiment {exp.id}: {exp.description}\n\n"
            f"From autoresearch run {tag}, commit {change.commit[:12]}; {how}.\n\n"
            f"Autoresearch-Run: {tag}\nAutoresearch-Experiment: {exp.id}\n")


def promote(config: Config, run: RunInfo, changes: list[Change], *, branch: str, actor: str, user: str,
            audit: AuditLog, auto: bool = False) -> PromotionResult:
    """Apply ``changes`` in order on ``branch`` as one commit each; all or nothing. Audited either way."""
    ids = [c.experiment.id for c in changes]

    def refuse(message: str) -> PromotionError:
        try:
            audit.append(actor, "promote", status="refused",
                         summary={"tag": run.tag, "branch": branch, "experiments": ids, "user": user, "auto": auto,
                                  "reason": message})
        except AuditError:  # a chain whose last line is damaged takes no more records; the refusal still stands
            log.warning("could not record the refused promotion in %s", audit.path)
        return PromotionError(message)

    verdict = audit.verify()
    if not verdict.ok:
        raise refuse(f"the run's audit chain does not verify ({verdict.message}); what the run did cannot be "
                     f"trusted, so nothing was promoted. Inspect it with `autoresearch audit verify --tag {run.tag}` "
                     "and review the changes by hand before bringing any of them over with git.")
    if not changes:
        raise refuse(f"run {run.tag} has no kept change to promote; `autoresearch review --tag {run.tag}` shows why")
    workspace = config.workspace
    repo = GitRepo(workspace)
    if not repo.branch_exists(branch):
        raise refuse(f"branch {branch!r} does not exist; pass the branch to promote onto with --onto BRANCH")
    if branch == run.branch:
        raise refuse(f"{branch} is the run's own branch; promote onto the branch the run started from (--onto)")
    done = promoted_ids(audit.records(), run.tag)
    skipped = tuple(i for i in ids if i in done)
    todo = [c for c in changes if c.experiment.id not in done]
    if not todo:
        raise refuse("experiment(s) " + ", ".join(f"{i} (audit seq {done[i]})" for i in skipped)
                     + f" were already promoted onto {branch}; nothing left to promote")
    for change in todo:  # the ledger is not hash-chained: never trust it to name a change that only edits mutable files
        touched = _git(workspace, "diff", "--name-only", "--no-renames", change.parent, change.commit).split()
        outside = sorted(set(touched) - set(config.mutable))
        if outside:
            raise refuse(f"experiment {change.experiment.id}'s commit {change.commit[:12]} changes "
                         f"{', '.join(outside)}, which the run may not change (mutable: {', '.join(config.mutable)}); "
                         "the ledger or the run's commits were altered. Nothing was promoted; inspect them with git.")
    repo.ensure_identity()
    old_tip = repo.branch_tip(branch)
    current = old_tip
    landed: list[tuple[int, str]] = []
    with tempfile.TemporaryDirectory(prefix="autoresearch-promote-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        for change in todo:
            _git(workspace, "read-tree", current, env=env)
            try:
                _git(workspace, "apply", "--cached", "--binary", "-", env=env, stdin=change.diff)
            except PromotionError as exc:
                raise refuse(_conflict_message(run, branch, old_tip, change, changes, str(exc))) from None
            tree = _git(workspace, "write-tree", env=env).strip()
            message = commit_message(change, config.metric, run.tag, user, auto)
            current = _git(workspace, "commit-tree", tree, "-p", current, "-m", message).strip()
            landed.append((change.experiment.id, current))
    if repo.current_branch() == branch:
        try:  # the branch is checked out: move the working tree with it, refusing to overwrite local edits
            _git(workspace, "merge", "--ff-only", "--quiet", current)
        except PromotionError as exc:
            raise refuse(f"{branch} is checked out and git would not fast-forward it ({exc}); commit or stash "
                         f"your local changes on {branch}, then run promote again") from None
    else:
        _git(workspace, "update-ref", "-m", f"autoresearch promote {run.tag}", f"refs/heads/{branch}", current,
             old_tip)
    audit.append(actor, "promote", status="ok",
                 summary={"tag": run.tag, "branch": branch, "from": old_tip, "to": current, "user": user,
                          "auto": auto, "experiments": [i for i, _ in landed],
                          "commits": {str(i): sha for i, sha in landed}, "already_promoted": list(skipped)})
    log.info("promoted experiments %s of run %s onto %s (%s -> %s)", [i for i, _ in landed], run.tag, branch,
             old_tip[:7], current[:7])
    return PromotionResult(branch, old_tip, current, tuple(landed), skipped)


def _conflict_message(run: RunInfo, branch: str, tip: str, change: Change, chosen: list[Change],
                      detail: str) -> str:
    exp_id = change.experiment.id
    first = detail.splitlines()[0] if detail else "it does not apply"
    if tip != run.base_commit:
        return (f"{branch} moved since run {run.tag} started ({run.base_commit[:7]} -> {tip[:7]}) in a way that "
                f"conflicts with experiment {exp_id}'s change ({first}). Nothing was promoted. Either bring it over "
                f"by hand (`git checkout {branch} && git cherry-pick {change.commit[:12]}`, resolve the conflict) "
                f"or start a new run from {branch} so the change is measured on the code it would land on.")
    numbers = ", ".join(str(c.number) for c in chosen)
    return (f"experiment {exp_id}'s change does not apply on {branch} ({first}): it builds on an earlier change "
            f"that is not among those chosen (--only {numbers}). Nothing was promoted; include the earlier change.")


def auto_promote(config: Config, run: RunInfo, audit: AuditLog) -> PromotionResult | None:
    """After a keep in an auto-promote run: promote the newest kept change if it fits the written limits.

    A change outside the limits, or one behind an earlier change still waiting for a person, stays on the run branch
    for `autoresearch promote`; the reason is recorded in the audit chain either way."""
    limits = config.auto_promote
    changes = run_changes(config.workspace, run, Ledger(run.run_dir, metric_name=config.metric).experiments())
    if not changes or changes[-1].proposed:
        return None
    latest = changes[-1]
    done = promoted_ids(audit.records(), run.tag)
    waiting = [c.experiment.id for c in changes[:-1] if c.experiment.id not in done]
    gain = abs(latest.gain) if latest.gain is not None else 0.0
    reason = None
    if run.base_branch is None:
        reason = "the run recorded no base branch (started on a detached HEAD)"
    elif waiting:
        reason = f"earlier kept change(s) {', '.join(map(str, waiting))} wait for a person's promote"
    elif latest.lines > limits.max_lines:
        reason = f"{latest.lines} changed lines, more than auto_promote.max_lines = {limits.max_lines}"
    elif gain < limits.min_gain:
        reason = f"gain {gain:.6g} below auto_promote.min_gain = {limits.min_gain:g}"
    elif limits.min_noise_floors > 0 and latest.noise_floor is None:
        reason = ("the ledger has no noise floor for it, and auto_promote.min_noise_floors = "
                  f"{limits.min_noise_floors:g} needs one")
    elif limits.min_noise_floors > 0 and (latest.confidence or 0.0) < limits.min_noise_floors:
        reason = (f"gain is {latest.confidence:.2f} noise floors, below auto_promote.min_noise_floors = "
                  f"{limits.min_noise_floors:g}")
    if reason is not None:
        audit.append("server", "auto_promote", status="skipped",
                     summary={"tag": run.tag, "experiment": latest.experiment.id, "reason": reason})
        return None
    try:
        return promote(config, run, [latest], branch=str(run.base_branch), actor="server",
                       user="autonomy=auto-promote", audit=audit, auto=True)
    except PromotionError as exc:  # recorded by promote(); the keep itself stands
        log.warning("auto-promotion of experiment %s refused: %s", latest.experiment.id, exc)
        return None

