"""`audit verify` for a whole run: the keyed audit chain, the ledger against the chain, the refs against both.

What is checked, at one consistent point (taken under the ledger's and the audit's locks, so a live run that keeps
appending is never reported as broken):
- the audit chain itself (`AuditLog.verify`: keyed hashes, contiguous seqs, the head file);
- every ledger line against the `ledger_append` record the server sealed it with (offset and sha256): an edited,
  removed, reordered or added ledger line is named;
- every `refs/autoresearch/<tag>/NNNN` ref against the experiment recorded under that id (or, for an experiment not
  yet recorded, its `experiment_started` record), and the run branch against the last kept experiment.

A line written by a server that was killed before it could seal it is not an alarm when the run's `inflight.json` or
`decision.json` names it: the next server to open the run seals it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from server import jsonl
from server.audit import AuditLog, AuditRecord
from server.gitrepo import GitError, GitRepo
from server.ledger import LEDGER_FILE
from server.runstate import RunInfo


@dataclass
class RunVerdict:
    ok: bool
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        return "\n".join(self.notes + self.problems)


@dataclass(frozen=True)
class _Point:
    ledger_size: int
    audit: tuple[int, bytes | None]
    refs: dict[str, str]
    tip: str | None
    inflight_id: int | None
    intent: dict[str, object] | None


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _take_point(run: RunInfo, repo: GitRepo, audit: AuditLog) -> _Point:
    ledger_path = run.run_dir / LEDGER_FILE
    with jsonl.locked(ledger_path):
        try:
            size = ledger_path.stat().st_size
        except FileNotFoundError:
            size = 0
        point = audit.snapshot()
        refs = repo.refs_under(f"refs/autoresearch/{run.tag}/")
        try:
            tip: str | None = repo.branch_tip(run.branch)
        except GitError:
            tip = None
        inflight = _read_json(run.run_dir / "inflight.json")
        intent = _read_json(run.run_dir / "decision.json")
    inflight_id = inflight.get("id") if inflight else None
    return _Point(size, point, refs, tip, inflight_id if isinstance(inflight_id, int) else None, intent)


def verify_run(run: RunInfo, repo: GitRepo, audit: AuditLog | None = None) -> RunVerdict:
    """Check the chain, the ledger and the refs of `run`; the verdict lists every problem found."""
    audit = audit or AuditLog(run.run_dir / "audit.jsonl")
    point = _take_point(run, repo, audit)
    seals: dict[int, dict[str, object]] = {}
    started: dict[int, str] = {}

    def collect(record: AuditRecord) -> None:
        summary = record.summary or {}
        if record.actor != "server":
            return
        if record.event == "ledger_append" and isinstance(summary.get("offset"), int):
            seals.setdefault(summary["offset"], summary)  # type: ignore[index]
        elif record.event == "experiment_started" and isinstance(summary.get("experiment_id"), int):
            started[summary["experiment_id"]] = str(summary.get("commit"))  # type: ignore[index]

    chain = audit.verify(on_record=collect, point=point.audit)
    verdict = RunVerdict(ok=chain.ok, notes=[chain.message] if chain.ok else [], problems=[] if chain.ok else
                         [f"audit chain: {chain.message}"])
    if not chain.ok:
        return verdict
    commits, last_kept = _check_ledger(run.run_dir / LEDGER_FILE, point, seals, verdict)
    _check_refs(run, point, commits, started, verdict)
    _check_branch(run, repo, point, last_kept, verdict)
    verdict.ok = not verdict.problems
    if verdict.ok:
        verdict.notes.append(f"ledger intact: {len(commits)} experiments, every line sealed in the chain; "
                             f"{len(point.refs)} experiment refs and branch {run.branch} match")
    return verdict


def _check_ledger(path: Path, point: _Point, seals: dict[int, dict[str, object]],
                  verdict: RunVerdict) -> tuple[dict[int, str], str | None]:
    """Each ledger line against its seal; returns experiment id -> commit and the last kept branch commit."""
    try:
        with path.open("rb") as fh:
            data = fh.read(point.ledger_size)
    except FileNotFoundError:
        data = b""
    commits: dict[int, str] = {}
    kept: dict[int, str] = {}
    offset = 0
    line_no = 0
    lines = data.split(b"\n")[:-1]
    for raw in lines:
        line_no += 1
        seal = seals.pop(offset, None)
        try:
            rec = json.loads(raw)
            kind, exp_id = rec.get("type"), rec.get("id", rec.get("experiment_id"))
        except (ValueError, AttributeError):
            kind, exp_id, rec = None, None, {}
        if seal is None:
            excused = line_no == len(lines) and (
                (kind == "experiment" and exp_id == point.inflight_id) or
                (kind == "decision" and point.intent is not None and exp_id == point.intent.get("experiment_id")))
            if excused:
                verdict.notes.append(f"ledger line {line_no} (experiment {exp_id}) was written by a server stopped "
                                     "before it sealed it; the next server to open the run seals it")
            else:
                verdict.problems.append(f"ledger line {line_no} ({kind} {exp_id}) is not in the audit chain: it was "
                                        "written or changed by something other than the server")
        elif seal.get("sha256") != hashlib.sha256(raw).hexdigest() or seal.get("length") != len(raw):
            verdict.problems.append(f"ledger line {line_no} ({kind} {exp_id}) differs from what the server wrote "
                                    f"there (sealed sha256 {str(seal.get('sha256'))[:12]}...): the ledger was edited")
        if kind == "experiment" and isinstance(exp_id, int):
            commits[exp_id] = str(rec.get("commit"))
            if rec.get("decision") == "keep" and rec.get("kept_commit"):
                kept[exp_id] = str(rec["kept_commit"])
        elif kind == "decision" and isinstance(exp_id, int) and rec.get("decision") == "keep" and rec.get("commit"):
            kept[exp_id] = str(rec["commit"])
        offset += len(raw) + 1
    for off, seal in sorted(seals.items()):  # seals are written after their line under the ledger lock
        verdict.problems.append(f"the audit chain sealed a ledger line at byte {off} ({seal.get('type')} "
                                f"{seal.get('experiment_id')}) that the ledger no longer has: lines were removed "
                                "or rewritten")
    return commits, kept[max(kept)] if kept else None


def _check_refs(run: RunInfo, point: _Point, commits: dict[int, str], started: dict[int, str],
                verdict: RunVerdict) -> None:
    prefix = f"refs/autoresearch/{run.tag}/"
    top = max(commits) if commits else 0
    refs = {int(name[len(prefix):]): sha for name, sha in point.refs.items() if name[len(prefix):].isdigit()}
    for exp_id, commit in sorted(commits.items()):
        if refs.get(exp_id) != commit:
            verdict.problems.append(f"ref {prefix}{exp_id:04d} is {str(refs.get(exp_id) or 'missing')[:12]} but "
                                    f"experiment {exp_id} ran commit {commit[:12]}: the ref was moved or deleted")
    for exp_id, sha in sorted(refs.items()):
        if exp_id in commits:
            continue
        if exp_id in started and started[exp_id] != sha:
            verdict.problems.append(f"ref {prefix}{exp_id:04d} is {sha[:12]} but experiment {exp_id} started on "
                                    f"{started[exp_id][:12]}: the ref was moved")
        elif exp_id < top and exp_id not in started:
            verdict.problems.append(f"ref {prefix}{exp_id:04d} ({sha[:12]}) belongs to no recorded experiment")
        else:
            verdict.notes.append(f"experiment {exp_id} is running or being prepared (not recorded yet)")


def _check_branch(run: RunInfo, repo: GitRepo, point: _Point, last_kept: str | None, verdict: RunVerdict) -> None:
    expected = last_kept or run.base_commit
    if point.tip is None or point.tip == expected:
        return
    intent = point.intent
    if intent is not None and intent.get("from_tip") == expected and repo.parent_and_tree(point.tip)[0] == expected:
        verdict.notes.append(f"a decision on experiment {intent.get('experiment_id')} is being applied")
        return
    verdict.problems.append(f"branch {run.branch} is at {point.tip[:12]} but the ledger's last kept commit is "
                            f"{expected[:12]}: the branch was moved outside commit_or_revert")
