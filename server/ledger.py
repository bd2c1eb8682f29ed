"""The experiment ledger: `runs/<tag>/experiments.jsonl`, the source of truth, and `results.tsv` derived from it.

Experiments are written once, when their run ends; keep/discard decisions arrive later as separate lines, so the
ledger is append-only and a crash never rewrites history. `results.tsv` gets one row appended per decided experiment,
in the original loop's five-column format, so tools and people that read it keep working; it is rewritten only when
it is found behind the ledger (a kill or a full disk between the two appends).

Constant cost per experiment. A `Ledger` keeps an index in memory: per experiment its status, metric, decision and
where its lines are in the file (a few hundred bytes, never the diff or the log). Every call first reads what was
appended since the byte offset it last looked at, so a long-lived server pays for new lines only, whichever process
wrote them; the full lines of the experiments a caller shows are read back by offset. Writers hold the file's `flock`,
catch up from their offset under it, then append, so several servers or slots can append to one run at once.

Why JSON lines with an in-memory index and not SQLite: the ledger must stay a file a person can read with `less`,
`jq` and `tail -f` and that the audit chain can hash line by line (`audit verify` compares each line's sha256 with
the chain); appends of whole lines under `flock` are already crash-safe (a torn last line is the only possible damage
and it is cut); and the index is derived from the file, so it can always be rebuilt from it. SQLite would add a
second copy (the JSONL export) to keep consistent and a binary file the chain could not hash by line.

The index is also kept on disk, `experiments.idx`: one short JSON array per ledger line (where the line is, its id,
status, metric, decision), appended under the same lock. Opening a run reads that file (about 1/40 of the ledger)
instead of parsing every ledger line, checks that its entries tile the ledger and that its last entry matches the
ledger line at that offset, then reads the ledger lines it does not cover yet. A missing, torn, stale or damaged
index is rebuilt from the ledger; it is a cache and never decides anything the ledger does not say.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
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
INDEX_FILE = "experiments.idx"  # a cache of the index, so opening a long run does not parse every line


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
    repeat_of: int | None = None  # a re-run of that experiment's snapshot with a fresh seed (noise or confirmation)
    noise_floor: float | None = None  # on a baseline repeat: the spread of the baseline's runs so far
    device: str | None = None  # where it ran: "cpu", "cuda:0 NVIDIA H200", "ray:<node> ..." (server/slots.py)
    slot: int | None = None  # the run's slot it ran in
    decided_at: str | None = None  # when it was decided (kept changes are ordered by it, not by id: see best_kept)

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


@dataclass(frozen=True)
class LedgerLine:
    """One line as written: where it is, its bytes (without the newline), and what it records."""

    offset: int
    data: bytes
    kind: str  # experiment | decision
    experiment_id: int


@dataclass(slots=True)
class _Entry:
    """What the index keeps per experiment: enough for every summary, and where to read the rest."""

    id: int
    offset: int
    length: int
    status: str
    metric: float | None
    is_baseline: bool
    decision: str | None = None
    kept_commit: str | None = None
    decision_offset: int | None = None
    decision_length: int = 0
    repeat_of: int | None = None


class Ledger:
    """The ledger of one run directory. Every method is safe to call from several processes and threads at once.

    `on_append` is called with each line this object writes, while the ledger lock is still held (the engine seals
    it into the audit chain there, so the chain and the ledger are always in the same order)."""

    def __init__(self, run_dir: os.PathLike[str] | str, metric_name: str = "val_bpb",
                 on_append: Callable[[LedgerLine], None] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LEDGER_FILE
        self.results_path = self.run_dir / RESULTS_FILE
        self.index_path = self.run_dir / INDEX_FILE
        self.metric_name = metric_name
        self.on_append = on_append
        self._mutex = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self._entries: dict[int, _Entry] = {}
        self._ids: list[int] = []  # sorted
        self._by_status: dict[str, list[int]] = {s: [] for s in STATUSES}
        self._kept: list[int] = []  # sorted ids of kept experiments with a metric
        self._kept_order: list[int] = []  # the same ids in the order they were kept (the last one is the best)
        self._repeats: dict[int, list[int]] = {}  # experiment id -> ids of its repeat runs
        self._last_kept_commit: tuple[int, str] | None = None
        self._pending: set[int] = set()
        self._baseline: int | None = None
        self._decided = 0
        self._n_keep = 0
        self._offset = 0
        self._lines = 0
        self._identity: tuple[int, int] | None = None

    # ---- catching up ----

    def refresh(self) -> None:
        """Fold in what was appended since the last look (a replaced or truncated file is read again from the start)."""
        with self._mutex:
            if self._identity is None and self._offset == 0:
                self._load_index()
            lines, end, identity = jsonl.read_whole_lines_from(self.path, self._offset)
            if self._identity is not None and (identity != self._identity or end < 0):
                log.warning("%s was replaced or truncated since it was last read; reading it again", self.path)
                self._reset()
                lines, end, identity = jsonl.read_whole_lines_from(self.path, 0)
            self._identity = identity
            for offset, raw in lines:
                self._fold(offset, raw)
            self._offset = max(self._offset, end)

    def _fold(self, offset: int, raw: bytes) -> LedgerLine:
        self._lines += 1
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict):
                raise ValueError(f"expected a JSON object, found {type(rec).__name__}")
            kind = rec.get("type")
            if kind == "experiment":
                exp_id = _check_experiment_line(rec)  # the checks of Experiment without building one
                if exp_id in self._entries:
                    raise ValueError(f"experiment {exp_id} recorded twice")
                self._add(_Entry(exp_id, offset, len(raw), rec["status"], rec["metric"], bool(rec["is_baseline"]),
                                 repeat_of=rec.get("repeat_of")))
                if rec["decision"] is not None:
                    self._decide(exp_id, rec["decision"], rec["kept_commit"], None, 0)
                return LedgerLine(offset, raw, "experiment", exp_id)
            if kind == "decision":
                target = self._entries.get(rec.get("experiment_id"))  # type: ignore[arg-type]
                if target is None:
                    raise ValueError(f"decision for unrecorded experiment {rec.get('experiment_id')!r}")
                if target.decision is not None:
                    raise ValueError(f"second decision for experiment {target.id}")
                if rec.get("decision") not in DECISIONS:
                    raise ValueError(f"decision {rec.get('decision')!r} is not one of {', '.join(DECISIONS)}")
                kept = rec.get("commit") if rec["decision"] == "keep" else None
                self._decide(target.id, rec["decision"], kept, offset, len(raw))
                return LedgerLine(offset, raw, "decision", target.id)
            raise ValueError(f"unknown line type {kind!r} (expected 'experiment' or 'decision')")
        except (ValueError, TypeError, KeyError) as exc:
            raise jsonl.CorruptFileError(self.path, self._lines, str(exc)) from exc

    # ---- the index cache ----

    def _load_index(self) -> None:
        """Start from `experiments.idx` when it checks out against the ledger; otherwise leave the state empty (the
        ledger is then read in full and the index rewritten at the next append)."""
        try:
            identity = _identity(self.path)
            data = self.index_path.read_bytes()
        except FileNotFoundError:
            return
        if identity is None or not data:
            return
        lines = data.split(b"\n")[:-1]
        try:
            rows = json.loads(b"[" + b",".join(lines) + b"]")
            end = 0
            for row in rows:
                if len(row) != 10:
                    raise ValueError("an entry of an older format (without repeat links)")
                offset, length, kind, exp_id, status, metric, baseline, decision, kept, repeat_of = row
                if offset != end:
                    raise ValueError(f"entry at byte {offset} does not follow the one ending at {end}")
                self._lines += 1
                if kind == "e":
                    if exp_id in self._entries:
                        raise ValueError(f"experiment {exp_id} indexed twice")
                    self._add(_Entry(exp_id, offset, length, status, metric, bool(baseline), repeat_of=repeat_of))
                    if decision is not None:
                        self._decide(exp_id, decision, kept, None, 0)
                elif kind == "d" and exp_id in self._entries and self._entries[exp_id].decision is None:
                    self._decide(exp_id, decision, kept, offset, length)
                else:
                    raise ValueError(f"entry {row!r} does not fit the entries before it")
                end = offset + length + 1
            if rows:
                last = rows[-1]
                rec = json.loads(jsonl.read_at(self.path, last[0], last[1] + 1))
                if rec.get("type")[0] != last[2] or rec.get("id", rec.get("experiment_id")) != last[3]:
                    raise ValueError("its last entry does not match the ledger line at that offset")
        except (ValueError, TypeError, KeyError, IndexError, OSError) as exc:
            log.warning("%s does not match %s (%s); reading the ledger in full and rebuilding it",
                        self.index_path, self.path, exc)
            self._reset()
            return
        self._offset = end
        self._identity = identity

    def _index_row(self, offset: int, length: int, record: Mapping[str, Any]) -> list[Any]:
        if record["type"] == "experiment":
            return [offset, length, "e", record["id"], record["status"], record["metric"], record["is_baseline"],
                    record["decision"], record["kept_commit"], record.get("repeat_of")]
        kept = record["commit"] if record["decision"] == "keep" else None
        return [offset, length, "d", record["experiment_id"], None, None, None, record["decision"], kept, None]

    def _append_index_locked(self, offset: int, length: int, record: Mapping[str, Any]) -> None:
        """Append the new line's entry when the index covers everything before it, else rewrite the index from
        memory (after a failed write, or a ledger written by an older version). A failure only costs speed."""
        try:
            last = jsonl.read_last_line(self.index_path)
            covered = 0
            if last is not None:
                row = json.loads(last)
                covered = row[0] + row[1] + 1
            if covered == offset:
                jsonl.append_bytes_unlocked(self.index_path, _encode_row(self._index_row(offset, length, record)))
                return
            rows = []
            for e in self._entries.values():
                inline = e.decision if e.decision_offset is None else None
                rows.append([e.offset, e.length, "e", e.id, e.status, e.metric, e.is_baseline, inline,
                             e.kept_commit if inline == "keep" else None, e.repeat_of])
                if e.decision_offset is not None:
                    rows.append([e.decision_offset, e.decision_length, "d", e.id, None, None, None, e.decision,
                                 e.kept_commit if e.decision == "keep" else None, None])
            rows.sort(key=lambda r: r[0])
            jsonl.atomic_write_text(self.index_path, b"".join(_encode_row(r) for r in rows).decode("utf-8"))
        except (OSError, ValueError, TypeError, IndexError) as exc:
            log.warning("could not update %s (%s); it is rebuilt from the ledger later", self.index_path, exc)

    def _add(self, entry: _Entry) -> None:
        self._entries[entry.id] = entry
        if not self._ids or entry.id > self._ids[-1]:
            self._ids.append(entry.id)
        else:
            bisect.insort(self._ids, entry.id)
        bisect.insort(self._by_status[entry.status], entry.id)
        self._pending.add(entry.id)
        if entry.repeat_of is not None:
            self._repeats.setdefault(entry.repeat_of, []).append(entry.id)
        if entry.is_baseline and entry.status == "ok" and (self._baseline is None or entry.id < self._baseline):
            self._baseline = entry.id

    def _decide(self, exp_id: int, decision: str, kept_commit: str | None, offset: int | None, length: int) -> None:
        entry = self._entries[exp_id]
        entry.decision = decision
        entry.decision_offset, entry.decision_length = offset, length
        if decision == "keep":
            self._n_keep += 1
            entry.kept_commit = kept_commit or entry.kept_commit
            if entry.metric is not None:
                bisect.insort(self._kept, exp_id)
                self._kept_order.append(exp_id)
            if entry.kept_commit:  # lines are folded in file order, which is the order decisions were made
                self._last_kept_commit = (exp_id, entry.kept_commit)
        self._pending.discard(exp_id)
        self._decided += 1

    # ---- writing ----

    def append_experiment(self, exp: Experiment) -> None:
        """Record a finished experiment (once per id) and append its results.tsv row when it is decided."""
        with self._mutex, jsonl.locked(self.path):
            self.refresh()
            if exp.id in self._entries:
                raise ValueError(f"experiment {exp.id} is already in {self.path}; each experiment is recorded once. "
                                 f"Use id {self._ids[-1] + 1} (Ledger.next_id()) for a new one.")
            self._write_locked({"type": "experiment", **exp.to_json()}, exp if exp.decision else None)

    def append_decision(self, experiment_id: int, decision: Decision, reason: str | None,
                        commit: str | None, extra: Mapping[str, Any] | None = None) -> Experiment:
        """Record keep/discard for a recorded, undecided experiment; returns the experiment as now folded.
        `commit` is the branch commit the experiment was kept as (or the commit the branch was reset to); `extra`
        adds facts of the decision to its line (the noise floor, the runs' mean), read by reports."""
        if decision not in DECISIONS:
            raise ValueError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
        with self._mutex, jsonl.locked(self.path):
            self.refresh()
            entry = self._entries.get(experiment_id)
            if entry is None:
                known = f"ids {self._ids[0]}..{self._ids[-1]}" if self._ids else "none yet"
                raise ValueError(f"no experiment {experiment_id!r} in {self.path} (recorded: {known}); "
                                 "decide an experiment after it has been recorded")
            exp = self._read(entry)
            if exp.decision is not None:
                raise ValueError(f"experiment {experiment_id} was already decided: {exp.decision} "
                                 f"({exp.decision_reason or 'no reason given'}); decisions are final")
            line = {"type": "decision", "experiment_id": experiment_id, "decision": decision, "reason": reason,
                    "commit": commit, "time": utc_now_iso(), **{k: v for k, v in (extra or {}).items()
                                                                 if k not in ("type", "experiment_id", "decision")}}
            decided = _apply_decision(exp, line)
            self._write_locked(line, decided)
            return decided

    def _write_locked(self, record: Mapping[str, Any], decided: Experiment | None) -> None:
        """Append one line (lock held, index current), fold it, hand it to `on_append`, then add the tsv row."""
        data = jsonl.encode_record(record)
        offset = jsonl.append_bytes_unlocked(self.path, data)
        if self._identity is None:
            self._identity = _identity(self.path)
        self._offset = offset  # the torn tail a crash may have left was cut by the append
        line = self._fold(offset, data[:-1])
        self._offset = offset + len(data)
        self._append_index_locked(offset, len(data) - 1, record)
        if self.on_append is not None:
            self.on_append(line)
        self._append_row_locked(decided)

    # ---- results.tsv ----

    def _append_row_locked(self, exp: Experiment | None) -> None:
        """Append the row of a decided experiment (the header alone for a pending one); a failure leaves results.tsv
        behind, which `sync_results_tsv` repairs later (the ledger
        line is written, so the call that recorded it must not fail over a derived file)."""
        try:
            if not self.results_path.exists():
                jsonl.atomic_write_text(self.results_path, _results_header(self.metric_name))
            if exp is not None:
                jsonl.append_bytes_unlocked(self.results_path, (_results_row(exp) + "\n").encode("utf-8"))
        except OSError as exc:
            log.error("could not update %s (%s); it is rewritten from the ledger when the server next opens the run",
                      self.results_path, exc)

    def sync_results_tsv(self) -> bool:
        """Rewrite results.tsv when it is behind the ledger or torn; returns whether it was rewritten. Cost: counting
        its lines, and a full rewrite only when it is behind."""
        with self._mutex, jsonl.locked(self.path):
            self.refresh()
            try:
                data = self.results_path.read_bytes()
                current = data.endswith(b"\n") and data.count(b"\n") - 1 == self._decided
            except FileNotFoundError:
                current = not self._ids
            if current:
                return False
            self._write_results_unlocked()
            return True

    def write_results_tsv(self) -> None:
        """Regenerate results.tsv from the ledger (appends keep it current; use after a crash or by hand)."""
        with self._mutex, jsonl.locked(self.path):
            self.refresh()
            self._write_results_unlocked()

    def _write_results_unlocked(self) -> None:
        """Rows in the order the decisions were written, as the appends made them (id order in a serial loop)."""
        decided = sorted((e for e in self._entries.values() if e.decision is not None),
                         key=lambda e: e.decision_offset if e.decision_offset is not None else e.offset)
        jsonl.atomic_write_text(self.results_path,
                                render_results_tsv((self._read(e) for e in decided), self.metric_name))

    # ---- reading (each call first catches up with what other processes appended) ----

    def experiments(self) -> list[Experiment]:
        """Every experiment with its decision folded in, ordered by id (reads every line: use the views below for
        summaries)."""
        with self._mutex:
            self.refresh()
            return [self._read(self._entries[i]) for i in self._ids]

    def get(self, experiment_id: int) -> Experiment | None:
        with self._mutex:
            self.refresh()
            entry = self._entries.get(experiment_id)
            return self._read(entry) if entry is not None else None

    def next_id(self) -> int:
        """One past the highest recorded id, 1 for an empty ledger (the engine also skips ids used by refs and
        experiment folders, see `Engine._next_id`)."""
        return self.max_id() + 1

    def max_id(self) -> int:
        with self._mutex:
            self.refresh()
            return self._ids[-1] if self._ids else 0

    def last(self, n: int, status: str | None = None) -> list[Experiment]:
        """The last `n` experiments by id, optionally only those with `status`."""
        with self._mutex:
            self.refresh()
            ids = self._ids if status is None else self._by_status.get(status, [])
            return [self._read(self._entries[i]) for i in ids[-n:]] if n > 0 else []

    def pending(self) -> Experiment | None:
        """The lowest-id experiment still waiting for a decision."""
        with self._mutex:
            self.refresh()
            return self._read(self._entries[min(self._pending)]) if self._pending else None

    def baseline(self) -> Experiment | None:
        """The first successful baseline."""
        with self._mutex:
            self.refresh()
            return self._read(self._entries[self._baseline]) if self._baseline is not None else None

    def best_kept(self) -> Experiment | None:
        """The most recently kept experiment with a metric: a change is kept only when it beats the best at that
        moment, so the last one kept is the best. With several slots, decisions can come out of id order (experiment
        5 kept after 6), so this is the last by decision, not by id."""
        with self._mutex:
            self.refresh()
            return self._read(self._entries[self._kept_order[-1]]) if self._kept_order else None

    def repeats_of(self, experiment_id: int) -> list[Experiment]:
        """The repeat runs of an experiment (its noise or confirmation runs), in id order."""
        with self._mutex:
            self.refresh()
            return [self._read(self._entries[i]) for i in sorted(self._repeats.get(experiment_id, []))]

    def pending_ids(self) -> list[int]:
        """Ids of every experiment recorded and not yet decided, lowest first."""
        with self._mutex:
            self.refresh()
            return sorted(self._pending)

    def best_before(self, experiment_id: int) -> float | None:
        """The best kept metric among experiments with a lower id (what `history.annotate` computes)."""
        with self._mutex:
            self.refresh()
            i = bisect.bisect_left(self._kept, experiment_id)
            return self._entries[self._kept[i - 1]].metric if i else None

    def last_kept_commit(self) -> str | None:
        """The branch commit of the most recently kept experiment (the branch's tip), None before any."""
        with self._mutex:
            self.refresh()
            return self._last_kept_commit[1] if self._last_kept_commit else None

    def counts(self) -> dict[str, int]:
        """What `history.counts` computes, from the index."""
        with self._mutex:
            self.refresh()
            return {"total": len(self._ids), **{s: len(ids) for s, ids in self._by_status.items()},
                    "kept": self._n_keep, "discarded": self._decided - self._n_keep, "pending": len(self._pending)}

    def line_of(self, experiment_id: int, kind: str) -> LedgerLine | None:
        """The experiment's own line (`kind` "experiment") or the line that decided it ("decision": its own line when
        the decision came with it), as written; None when there is none."""
        with self._mutex:
            self.refresh()
            entry = self._entries.get(experiment_id)
            if entry is None or (kind == "decision" and entry.decision is None):
                return None
            if kind == "decision" and entry.decision_offset is not None:
                offset, length, line_kind = entry.decision_offset, entry.decision_length, "decision"
            else:
                offset, length, line_kind = entry.offset, entry.length, "experiment"
            return LedgerLine(offset, jsonl.read_at(self.path, offset, length), line_kind, experiment_id)

    def _read(self, entry: _Entry) -> Experiment:
        """The full experiment, read from its line (and its decision's line) by offset."""
        try:
            rec = json.loads(jsonl.read_at(self.path, entry.offset, entry.length))
            if rec.get("type") != "experiment" or rec.get("id") != entry.id:
                raise ValueError(f"the line at byte {entry.offset} is not experiment {entry.id}")
            exp = Experiment.from_json({k: v for k, v in rec.items() if k != "type"})
            if entry.decision_offset is not None:
                line = json.loads(jsonl.read_at(self.path, entry.decision_offset, entry.decision_length))
                if line.get("type") != "decision" or line.get("experiment_id") != entry.id:
                    raise ValueError(f"the line at byte {entry.decision_offset} is not the decision on {entry.id}")
                exp = _apply_decision(exp, line)
        except (ValueError, TypeError, AttributeError) as exc:
            raise jsonl.CorruptFileError(self.path, 0, f"experiment {entry.id}: {exc}; the ledger changed under "
                                         "its index (run `autoresearch audit verify`)") from exc
        return exp


def _encode_row(row: list[Any]) -> bytes:
    return (json.dumps(row, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")


# fields every experiment line has; those with a default were added later and may be absent from older lines
_FIELDS = frozenset(f.name for f in dataclasses.fields(Experiment)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def _check_experiment_line(rec: Mapping[str, Any]) -> int:
    """What `Experiment.from_json` and its `__post_init__` refuse, checked on the parsed line; returns the id."""
    missing = _FIELDS - rec.keys()
    if missing:
        raise ValueError(f"experiment record lacks field(s) {', '.join(sorted(missing))}: {dict(rec)!r:.200}")
    exp_id = rec["id"]
    if not isinstance(exp_id, int) or isinstance(exp_id, bool) or exp_id < 1:
        raise ValueError(f"experiment id {exp_id!r} is invalid; ids are integers from 1 (see Ledger.next_id)")
    if rec["status"] not in STATUSES:
        raise ValueError(f"experiment {exp_id}: status {rec['status']!r} is not one of {', '.join(STATUSES)}")
    if rec["decision"] is not None and rec["decision"] not in DECISIONS:
        raise ValueError(f"experiment {exp_id}: decision {rec['decision']!r} is not one of {', '.join(DECISIONS)}")
    if rec["metric"] is not None and not isinstance(rec["metric"], (int, float)):
        raise ValueError(f"experiment {exp_id}: metric {rec['metric']!r} is not a number")
    return exp_id


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _apply_decision(exp: Experiment, line: Mapping[str, Any]) -> Experiment:
    decision = line["decision"]
    kept = line.get("commit") if decision == "keep" else exp.kept_commit
    return dataclasses.replace(exp, decision=decision, decision_reason=line.get("reason"), kept_commit=kept,
                               decided_at=line.get("time") or exp.decided_at)


def _results_header(metric_name: str) -> str:
    return f"commit\t{metric_name}\tmemory_gb\tstatus\tdescription\n"


def _results_row(exp: Experiment) -> str:
    commit = exp.kept_commit if exp.decision == "keep" and exp.kept_commit else exp.commit
    metric = exp.metric if exp.metric is not None else 0.0
    memory_gb = exp.peak_memory_mb / 1024 if exp.peak_memory_mb is not None else 0.0
    status = exp.decision if exp.status == "ok" else "crash"
    prefix = f"[{exp.status}] " if exp.status in ("timeout", "invalid") else ""
    if exp.metric is not None and not exp.verified:
        prefix += "[unverified] "
    description = (prefix + exp.description).replace("\t", " ").replace("\r", " ").replace("\n", " ")
    return f"{commit[:7]}\t{metric:.6f}\t{memory_gb:.1f}\t{status}\t{description}"


def render_results_tsv(experiments: Iterable[Experiment], metric_name: str = "val_bpb") -> str:
    """The original five-column results.tsv: one row per decided experiment, in the order given."""
    rows = [_results_row(exp) for exp in experiments if exp.decision is not None]  # pending: no row until decided
    return _results_header(metric_name) + "".join(row + "\n" for row in rows)
