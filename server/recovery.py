"""What keeps a run whole across kills: audit seals of ledger lines, decision intents, and recovery (part of `Engine`).

A kill -9 or a full disk at any moment leaves a state that recovery completes: every queued or running experiment has
an entry in `inflight.json` (written before its command starts, removed after its ledger line is durable) naming the
server process that owns it, and an `experiment_started` audit record precedes it; a decision is written as an intent
(`decision.json`) before the branch moves and removed after its ledger line is durable. Recovery runs whenever the
state lock is taken (cheap: two `stat`s when nothing is left) and fully when an engine opens (`recover()`): an entry
whose owner is gone becomes a `crash` record (its processes are killed first), a leftover intent is carried out
(exactly once: the branch is moved only if it has not moved yet), ledger lines are sealed into the audit chain, `.tmp`
litter is removed and results.tsv is rewritten if it is behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from server import jsonl
from server.audit import AuditError
from server.experiment import read_tail
from server.gitrepo import GitError
from server.ledger import Experiment, LedgerLine
from server.runner import is_our_group, kill_group, kill_marked

if TYPE_CHECKING:
    from server.engine import Engine

log = logging.getLogger(__name__)

ORPHAN_LOOKBACK = 64


def _repeat_mark(exp_dir: Path) -> int | None:
    """The experiment a repeat's folder re-runs (written before it starts), None for an ordinary experiment."""
    try:
        return int((exp_dir / "repeat_of").read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


class RecoveryMixin:
    """The parts of `Engine` that seal, finish interrupted decisions and record what a dead server left."""

    # ---- sealing ledger lines into the audit chain ----

    def _seal(self: Engine, line: LedgerLine) -> None:
        """Called under the ledger lock for every line this engine writes: an audit record with the line's sha256,
        so `audit verify` can tell a ledger line the server wrote from one written or edited by anything else. A
        failed seal (a full disk) does not fail the call whose line is already durable; it is retried."""
        try:
            self._append_seal(line)
        except (OSError, AuditError) as exc:
            log.error("could not seal ledger line at byte %d into the audit chain (%s); retrying later", line.offset,
                      exc)
            self._unsealed.append(line)

    def _append_seal(self: Engine, line: LedgerLine, status: str = "ok") -> None:
        self.audit.append("server", "ledger_append", session=self.session(), status=status, summary={
            "offset": line.offset, "length": len(line.data), "sha256": hashlib.sha256(line.data).hexdigest(),
            "type": line.kind, "experiment_id": line.experiment_id})

    def _retry_seals(self: Engine) -> None:
        """Seal the lines whose seal failed; raises while it still cannot (the caller then keeps the inflight entry
        or the intent that lets the next server reseal them, so no line the server wrote stays unsealed)."""
        while self._unsealed:
            self._append_seal(self._unsealed[0])
            self._unsealed.pop(0)

    def _reseal(self: Engine, exp_id: int, kind: str) -> None:
        """Seal the ledger line a dead server wrote for this experiment (it may have died before sealing it). A
        second seal of the same line is harmless; only the line recorded by an inflight entry or an intent is sealed
        this way, never any other unsealed line."""
        line = self.ledger.line_of(exp_id, kind)
        if line is None:
            return
        sealed = any(r.event == "ledger_append" and r.summary and r.summary.get("offset") == line.offset
                     for r in self.audit.tail_records())
        if not sealed:
            self._append_seal(line, status="recovered")

    # ---- recovery under the state lock ----

    def recover(self: Engine) -> str | None:
        """Complete what a dead server left (run when an engine opens); None when nothing was left."""
        with self._state():
            notes = [n for n in (self._last_recovery_note, self._recover_orphans()) if n]
            with jsonl.locked(self.ledger.path):
                litter = jsonl.remove_temp_files(self.run_dir, ["results.tsv", "experiments.idx"])
            with jsonl.locked(self.audit.path):
                litter += jsonl.remove_temp_files(self.run_dir, ["audit.head"])
            litter += jsonl.remove_temp_files(self.run_dir, ["inflight.json", "decision.json"])
            if litter:
                log.info("removed %d temporary file(s) left by an interrupted write", len(litter))
            if self.ledger.sync_results_tsv():
                notes.append("results.tsv was behind the ledger; rewrote it")
            self._finished_intent = None  # reported here, to whoever opened the engine
            return "; ".join(notes) or None

    def _recover_locked(self: Engine) -> None:
        """With the state lock held: finish a decision intent, record experiments their dead owners left, retry
        audit seals that failed. Two `stat`s when nothing was left."""
        self._last_recovery_note = None
        if self._unsealed:
            self._retry_seals()
        if self.intent_path.exists():
            finished = self._finish_intent()
            if finished is not None:
                self._finished_intent = finished
                self._last_recovery_note = f"the decision on experiment {finished.id} ({finished.decision}) was completed"
        if self.inflight_path.exists():
            notes = self._recover_entries()
            if notes:
                self._last_recovery_note = "; ".join(notes)

    def _recover_entries(self: Engine) -> list[str]:
        entries = self._entries()
        dead = [e for e in entries if not self.entry_alive(e)]
        if not dead:
            return []
        notes = []
        for data in dead:
            exp_id = int(data["id"])
            marker = data.get("marker")
            killed = 0
            if marker:
                pgid = data.get("pgid")
                if pgid and is_our_group(int(pgid), marker):
                    kill_group(int(pgid), marker, grace_s=1.0)
                killed = kill_marked(marker)
            if self.ledger.get(exp_id) is None:
                exp_dir = Path(str(data.get("exp_dir") or self.run_dir / "experiments" / f"{exp_id:04d}"))
                queued = data.get("started_at") is None
                failure = ("interrupted: the server stopped while it was queued for a slot (recorded when it "
                           "restarted)" if queued else
                           "interrupted: the server stopped during this run (recorded when it restarted)")
                try:
                    self._append_experiment({**data, "exp_dir": str(exp_dir),
                                             "started_at": data.get("started_at") or data.get("queued_at")
                                             or time.time()},
                                            status="crash", failure=failure, metric=None, verified=False, metrics={},
                                            finished=time.time(), train_s=None, eval_s=None,
                                            log_tail=read_tail(exp_dir / "run.log", self.config.tail_lines),
                                            fingerprint=None, decision="discard", decision_reason=failure)
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning("inflight entry %s cannot be recorded (%s); its folder is recorded by the orphan "
                                "check", exp_id, exc)
                    continue
                notes.append(f"experiment {exp_id} was interrupted by a server stop; recorded as crash")
                self.audit.append("server", "recovery", session=self.session(), status="ok",
                                  summary={"experiment_id": exp_id, "killed_processes": killed})
            else:
                self._reseal(exp_id, "experiment")  # killed between the ledger line and its seal
        gone = {int(e["id"]) for e in dead}
        self._write_entries([e for e in self._entries() if int(e["id"]) not in gone])
        return notes

    def _recover_orphans(self: Engine) -> str | None:
        """Snapshot refs and folders above the ledger's last id that no live entry owns: a server killed before it
        wrote its inflight entry (nothing ran: removed) or one whose entry was lost after the command started (it has
        a run.log: recorded as a crash, so it cannot vanish)."""
        live = {int(e["id"]) for e in self._entries()}
        top = self.ledger.max_id()
        notes = []
        candidates: list[tuple[int, str | None]] = []
        # Leftovers sit just above the last recorded id (each failed start uses one id), or, with several slots,
        # among the last ids (experiments finish out of order): look back ORPHAN_LOOKBACK ids and 3 past the top.
        exp_id, misses = max(0, top - ORPHAN_LOOKBACK), 0
        while exp_id < top or misses < 3:
            exp_id += 1
            if exp_id in live or self.ledger.get(exp_id) is not None:
                continue
            ref = self._ref(exp_id)
            commit = self.repo.resolve(ref) if self.repo.ref_exists(ref) else None
            if commit is None and not (self.run_dir / "experiments" / f"{exp_id:04d}").exists():
                misses += exp_id > top
                continue
            misses = 0
            candidates.append((exp_id, commit))
        for exp_id, commit in candidates:
            exp_dir = self.run_dir / "experiments" / f"{exp_id:04d}"
            if commit is not None and (exp_dir / "run.log").exists():
                parent, _ = self.repo.parent_and_tree(commit)
                message = self.repo.message_of(commit)
                label = message.split(": ", 1)[1] if ": " in message else message
                data: dict[str, object] = {
                    "id": exp_id, "parent": parent or commit, "commit": commit, "exp_dir": str(exp_dir),
                    "description": label.strip() or "(description lost)", "is_baseline": label.strip() == "baseline",
                    "repeat_of": _repeat_mark(exp_dir),
                    "diff": (exp_dir / "diff.patch").read_text(encoding="utf-8", errors="replace")
                    if (exp_dir / "diff.patch").exists() else "",
                    "started_at": (exp_dir / "run.log").stat().st_mtime}
                if data["repeat_of"] is not None:
                    data.update(is_baseline=False, description=f"repeat of experiment {data['repeat_of']}")
                failure = "interrupted: its in-flight record was lost when the server stopped (recorded on restart)"
                self._append_experiment(data, status="crash", failure=failure, metric=None, verified=False, metrics={},
                                        finished=time.time(), train_s=None, eval_s=None,
                                        log_tail=read_tail(exp_dir / "run.log", self.config.tail_lines),
                                        fingerprint=None, decision="discard", decision_reason=failure)
                notes.append(f"experiment {exp_id} had started but was never recorded; recorded as crash")
            else:
                if commit is not None:
                    try:
                        self.repo.delete_ref(self._ref(exp_id), commit)
                    except GitError as exc:
                        log.warning("could not delete %s: %s", self._ref(exp_id), exc)
                shutil.rmtree(exp_dir, ignore_errors=True)
                notes.append(f"removed the never-started experiment {exp_id}")
        for note in notes:
            self.audit.append("server", "recovery", session=self.session(), status="ok", summary={"note": note})
        return "; ".join(notes) or None

    # ---- decisions: intent first, then the branch, then the ledger ----

    def _finish_intent(self: Engine) -> Experiment | None:
        try:
            intent = json.loads(self.intent_path.read_text(encoding="utf-8"))
            int(intent["experiment_id"])
        except (OSError, ValueError, KeyError, TypeError):
            self.intent_path.unlink(missing_ok=True)
            log.warning("removed an unreadable %s", self.intent_path)
            return None
        exp = self._apply_intent(intent)
        self.audit.append("server", "recovery", session=self.session(), status="ok",
                          summary={"experiment_id": intent["experiment_id"], "decision": intent["decision"],
                                   "completed": exp is not None})
        return exp
