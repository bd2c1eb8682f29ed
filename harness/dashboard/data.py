"""What the dashboard and the report show, read from a run's files and cached until those files change.

Every view is rebuilt only when the file it comes from changes size or modification time, so a page polled every
second costs a few `stat` calls while nothing happens. The ledger is read through `server.ledger.Ledger`; the audit
log's chain through `AuditLog.verify()`; the audit records themselves, and the `noise` lines a ledger may hold, are
followed from the last byte read, so a long night is parsed once, not once per second.

Fields a run may not have yet (per experiment `seed`, `confirms`, `sealed`, `device`, a holdout score; the run's
`noise_floor`; several in-flight slots) are shown when present and ignored when absent.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from server.audit import AuditLog, AuditVerdict
from server.jsonl import read_records
from server.ledger import LEDGER_FILE, Experiment, Ledger
from server.private import HOLDOUT_FILE, private_folder, read_holdout

from harness.dashboard.series import Chart, build_chart, experiment_flags, holdout_of

log = logging.getLogger(__name__)

WATCHED = ("ledger", "audit", "supervisor", "inflight", "violations", "limits", "run", "holdout")
FILES = {"ledger": LEDGER_FILE, "audit": "audit.jsonl", "supervisor": "supervisor.json", "inflight": "inflight.json",
         "violations": "violations.jsonl", "limits": "limits.json", "run": "run.json"}
SUPERVISOR_EVENTS_KEPT = 12  # the latest supervisor events shown on the page and in the report
PAGE_MAX = 500
VERIFY_GAP_S = 10.0  # the least time between two checks of a changing audit chain
VERIFY_COST_FACTOR = 5  # ... and at least this many times what the last check took
T = TypeVar("T")

Stamp = tuple[int, int, int]  # inode, size, mtime in ns; (0, 0, 0) when the file is absent


def stamp(path: Path) -> Stamp:
    try:
        st = path.stat()
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class JsonlFollower:
    """Reads the whole lines appended to a JSON-lines file since the last call (starts over when it was replaced or
    shrank). `keep` picks the raw lines worth parsing, so a reader interested in one line type skips the rest."""

    def __init__(self, path: Path, keep: Callable[[bytes], bool] = lambda _: True) -> None:
        self.path = path
        self.keep = keep
        self._inode = 0
        self._offset = 0

    def new_records(self) -> tuple[bool, list[dict[str, Any]]]:
        """(restarted, records): restarted is True when earlier results must be thrown away."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            restarted = self._offset != 0
            self._inode, self._offset = 0, 0
            return restarted, []
        try:
            st = os.fstat(fd)
            restarted = (self._inode != 0 and st.st_ino != self._inode) or st.st_size < self._offset
            if restarted or self._inode == 0:
                self._inode, self._offset = st.st_ino, 0
            data = os.pread(fd, st.st_size - self._offset, self._offset) if st.st_size > self._offset else b""
        finally:
            os.close(fd)
        end = data.rfind(b"\n") + 1  # a torn final line is read again once it is whole
        self._offset += end
        records = []
        for line in data[:end].split(b"\n")[:-1]:
            if not self.keep(line):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue  # damage is the audit verdict's to report, not a reason to blank the page
            if isinstance(obj, dict):
                records.append(obj)
        return restarted, records


@dataclass(frozen=True)
class RunMeta:
    tag: str
    metric: str
    direction: str  # minimize | maximize
    run_dir: Path


@dataclass
class AuditSummary:
    ok: bool | None  # None: no audit log yet
    records: int
    first_bad_line: int | None
    message: str
    tool_calls: dict[str, dict[str, int]] = field(default_factory=dict)  # tool -> status -> count
    refusals: int = 0
    checked_at: float | None = None  # when the verdict was made (seconds since the epoch)


@dataclass
class SupervisorSummary:
    present: bool
    status: dict[str, Any]  # supervisor.json as written (state, restarts, stalls, backoffs, cost_usd, ...)
    events: dict[str, int]  # audit events of actor supervisor, by event name
    recent: list[dict[str, Any]]  # the latest supervisor events: time, event, status, message
    runs: int  # harness invocations (run_start records)
    stale_s: float | None  # seconds since supervisor.json was last written


@dataclass
class Slot:
    id: int
    description: str
    started_at: float
    deadline: float
    device: str | None = None


class RunData:
    """The views of one run directory, each cached on the stamp of the file it reads. Thread-safe."""

    def __init__(self, meta: RunMeta, clock: Callable[[], float] = time.time, *, show_holdout: bool = True) -> None:
        self.meta = meta
        self.show_holdout = show_holdout  # off where the page shares its token with the agent's tools
        self.run_dir = meta.run_dir
        self.ledger = Ledger(meta.run_dir, metric_name=meta.metric)
        self.audit = AuditLog(meta.run_dir / FILES["audit"])
        self._clock = clock
        self._lock = threading.RLock()
        self._audit_lock = threading.Lock()  # apart, so a long chain check never holds up the table
        self._verdict: AuditVerdict | None = None
        self._verdict_version: Any = None
        self._verdict_at = 0.0
        self._verdict_wall: float | None = None
        self._verify_cost = 0.0
        self._cache: dict[str, tuple[Any, Any]] = {}
        self._audit_tail = JsonlFollower(self.audit.path)
        self._noise_tail = JsonlFollower(self.ledger.path, keep=lambda line: b'"noise' in line)
        self._noise: float | None = None
        self._tool_calls: Counter[tuple[str, str]] = Counter()
        self._sup_events: Counter[str] = Counter()
        self._sup_recent: list[dict[str, Any]] = []
        self._runs = 0
        self._refusals = 0

    def path(self, name: str) -> Path:
        if name == "holdout":  # the person-only scores live outside the run folder (server/private.py)
            return private_folder(self.run_dir, create=False) / HOLDOUT_FILE
        return self.run_dir / FILES[name]

    def stamps(self) -> dict[str, Stamp]:
        return {name: stamp(self.path(name)) for name in WATCHED}

    def _cached(self, key: str, version: Any, build: Callable[[], T]) -> T:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == version:
                return hit[1]  # type: ignore[no-any-return]
            value = build()
            self._cache[key] = (version, value)
            return value

    # ---- the ledger ----

    def experiments(self) -> list[Experiment]:
        return self._cached("experiments", stamp(self.path("ledger")), self.ledger.experiments)

    def _by_id(self) -> dict[int, Experiment]:
        return self._cached("by_id", stamp(self.path("ledger")), lambda: {e.id: e for e in self.experiments()})

    def holdout(self) -> dict[int, float]:
        """{experiment id: holdout score}, for the person: never part of anything the agent reads."""
        if not self.show_holdout:
            return {}
        return self._cached("holdout", stamp(self.path("holdout")),
                            lambda: read_holdout(self.run_dir, self.meta.metric))

    def chart(self) -> Chart:
        version = (stamp(self.path("ledger")), stamp(self.path("run")), stamp(self.path("holdout")))
        return self._cached("chart", version, lambda: build_chart(self.experiments(), self.meta.direction,
                                                                  self.noise_floor(), self.holdout()))

    def noise_floor(self) -> float | None:
        """From run.json `noise_floor`, else the last ledger line that carries one: a line of type `noise` (its
        `noise_floor` or `value`), a repeat run of the baseline or a decision (their `noise_floor`)."""
        run = _read_json(self.path("run"))
        if isinstance(run, dict) and _number(run.get("noise_floor")) is not None:
            return _number(run.get("noise_floor"))
        with self._lock:
            restarted, records = self._noise_tail.new_records()
            if restarted:
                self._noise = None
            for rec in records:
                if rec.get("type") == "noise" or rec.get("noise_floor") is not None:
                    value = _number(rec.get("noise_floor", rec.get("value")))
                    if value is not None:
                        self._noise = value
            return self._noise

    def rows(self, *, offset: int = 0, limit: int = 100, status: str | None = None, decision: str | None = None,
             query: str | None = None, newest_first: bool = True) -> dict[str, Any]:
        """One page of the experiments table, filtered; `total` counts the matches."""
        limit = max(1, min(limit, PAGE_MAX))
        offset = max(0, offset)
        chart = self.chart()
        experiments = self.experiments()
        needle = (query or "").strip().lower()
        matches = [e for e in (reversed(experiments) if newest_first else experiments)
                   if (not status or e.status == status)
                   and (not decision or (e.decision or "pending") == decision)
                   and (not needle or needle in e.description.lower() or needle == str(e.id))]
        page = matches[offset:offset + limit]
        holdout = self.holdout()
        return {"total": len(matches), "all": len(experiments), "offset": offset, "limit": limit,
                "rows": [row(e, chart.best_before.get(e.id), holdout) for e in page]}

    def detail(self, experiment_id: int) -> dict[str, Any] | None:
        exp = self._by_id().get(experiment_id)
        if exp is None:
            return None
        chart = self.chart()
        holdout = self.holdout()
        out = row(exp, chart.best_before.get(exp.id), holdout)
        out.update({
            "hypothesis": exp.hypothesis, "diff": exp.diff, "log_tail": exp.log_tail, "metrics": exp.metrics,
            "failure": exp.failure, "decision_reason": exp.decision_reason, "commit": exp.commit,
            "parent": exp.parent, "kept_commit": exp.kept_commit, "started_at": exp.started_at,
            "finished_at": exp.finished_at, "duration_s": exp.duration_s, "train_s": exp.train_s,
            "eval_s": exp.eval_s, "peak_memory_mb": exp.peak_memory_mb, "log_path": exp.log_path,
            "fingerprint": exp.fingerprint, "caller": exp.caller,
            "confirmations": [row(e, chart.best_before.get(e.id), holdout) for e in self.experiments()
                              if getattr(e, "confirms", None) == exp.id],
        })
        return out

    # ---- the supervisor and the audit chain ----

    def _follow_audit(self) -> None:
        restarted, records = self._audit_tail.new_records()
        if restarted:
            self._tool_calls.clear()
            self._sup_events.clear()
            self._sup_recent = []
            self._runs = 0
            self._refusals = 0
        for rec in records:
            status = str(rec.get("status") or "?")
            if rec.get("tool") and rec.get("event") == "tool_call":
                self._tool_calls[(str(rec["tool"]), status)] += 1
            if status in ("refused", "blocked", "denied"):
                self._refusals += 1
            if rec.get("actor") == "supervisor":
                event = str(rec.get("event") or "?")
                self._sup_events[event] += 1
                if event == "run_start":
                    self._runs += 1
                summary = rec.get("summary") if isinstance(rec.get("summary"), dict) else {}
                self._sup_recent.append({"time": rec.get("time"), "event": event, "status": status,
                                         "session": rec.get("session"),
                                         "message": str(summary.get("message") or summary.get("reason") or "")[:200]})
                del self._sup_recent[:-SUPERVISOR_EVENTS_KEPT]

    def audit_summary(self) -> AuditSummary:
        """The chain's verdict and the tool calls by tool and status. The counts follow the log line by line; the
        verdict re-reads the whole chain (7.6 s for 20,000 records on a busy 2-core machine), so on a busy log it is
        redone at most every `VERIFY_GAP_S`, or `VERIFY_COST_FACTOR` times what the last check took, and
        `checked_at` says when it was made."""
        with self._audit_lock:
            if not self.audit.path.exists():
                return AuditSummary(None, 0, None, "no audit log yet")
            self._follow_audit()
            if self.verdict_due(locked=True):
                version = (stamp(self.audit.path), stamp(self.audit.head_path))
                started = time.monotonic()
                self._verdict = self.audit.verify()
                self._verify_cost = time.monotonic() - started
                self._verdict_at, self._verdict_version = started, version
                self._verdict_wall = self._clock()
            verdict = self._verdict
            assert verdict is not None
            calls: dict[str, dict[str, int]] = {}
            for (tool, status), n in sorted(self._tool_calls.items()):
                calls.setdefault(tool, {})[status] = n
            return AuditSummary(verdict.ok, verdict.records, verdict.first_bad_line, verdict.message, calls,
                                self._refusals, self._verdict_wall)

    def verdict_due(self, locked: bool = False) -> bool:
        """True when the audit log changed since its verdict and the last check is old enough to redo."""
        if not locked:
            with self._audit_lock:
                return self.verdict_due(locked=True)
        if self._verdict is None:
            return self.audit.path.exists()
        if (stamp(self.audit.path), stamp(self.audit.head_path)) == self._verdict_version:
            return False
        return time.monotonic() - self._verdict_at >= max(VERIFY_GAP_S, VERIFY_COST_FACTOR * self._verify_cost)

    def supervisor(self) -> SupervisorSummary:
        path = self.path("supervisor")

        def build() -> SupervisorSummary:
            status = _read_json(path)
            with self._audit_lock:
                self._follow_audit()
                events, recent, runs = dict(self._sup_events), list(self._sup_recent), self._runs
            present = isinstance(status, dict) or bool(events)
            return SupervisorSummary(present, status if isinstance(status, dict) else {}, events, recent, runs, None)

        summary = self._cached("supervisor", (stamp(path), stamp(self.audit.path)), build)
        updated = _number(summary.status.get("updated_at"))
        summary.stale_s = None if updated is None else round(max(0.0, self._clock() - updated), 1)
        return summary

    def slots(self) -> list[Slot]:
        """The experiments running now: `inflight.json` as one object, a list, or `{"slots": [...]}`."""
        data = _read_json(self.path("inflight"))
        items = data.get("slots") if isinstance(data, dict) and "slots" in data else data
        if isinstance(items, dict):
            items = [items]
        out = []
        for item in items if isinstance(items, list) else []:
            try:
                out.append(Slot(int(item["id"]), str(item.get("description", "")), float(item["started_at"]),
                                float(item["deadline"]), item.get("device")))
            except (KeyError, TypeError, ValueError):
                continue
        return out

    def violations(self) -> dict[str, Any]:
        def build() -> dict[str, Any]:
            try:
                records = read_records(self.path("violations"))
            except ValueError as exc:
                return {"count": None, "recent": [], "error": str(exc)}
            recent = [{"time": r.get("time"), "source": r.get("source"), "path": r.get("path"),
                       "experiment_id": r.get("experiment_id"), "detail": str(r.get("detail") or "")[:200]}
                      for r in records[-5:]]
            return {"count": len(records), "recent": recent}

        return self._cached("violations", stamp(self.path("violations")), build)

    # ---- the small document the page starts from and receives on every change ----

    def _ledger_summary(self) -> dict[str, Any]:
        def build() -> dict[str, Any]:
            experiments = self.experiments()
            chart = self.chart()
            return {"experiments": len(experiments),
                    "status_counts": dict(Counter(e.status for e in experiments)),
                    "decision_counts": dict(Counter(e.decision or "pending" for e in experiments)),
                    "baseline": chart.baseline, "best": chart.best_value, "best_id": chart.best_id,
                    "flags": dict(Counter(f for e in experiments for f in experiment_flags(e))),
                    "holdout": best_holdout(experiments, self.holdout(), chart.best_id),
                    "noise_floor": chart.noise_floor}

        version = (stamp(self.path("ledger")), stamp(self.path("run")), stamp(self.path("holdout")))
        return self._cached("ledger_summary", version, build)

    def summary(self) -> dict[str, Any]:
        limits = _read_json(self.path("limits"))
        now = self._clock()
        return {
            "tag": self.meta.tag, "metric": self.meta.metric, "direction": self.meta.direction, "now": now,
            **self._ledger_summary(),
            "slots": [{**asdict(s), "remaining_s": round(s.deadline - now, 1)} for s in self.slots()],
            "limits": limits if isinstance(limits, dict) else None,
            "supervisor": asdict(self.supervisor()), "audit": asdict(self.audit_summary()),
            "violations": self.violations(),
            "version": {name: list(s) for name, s in self.stamps().items()},
        }


def row(exp: Experiment, best_before: float | None, holdout: Mapping[int, float] | None = None) -> dict[str, Any]:
    """One table row: small, because a page of them is sent on every change."""
    delta = exp.metric - best_before if exp.metric is not None and best_before is not None else None
    return {"id": exp.id, "status": exp.status, "metric": exp.metric, "delta": delta,
            "decision": exp.decision or "pending", "description": exp.description, "flags": experiment_flags(exp),
            "baseline": exp.is_baseline, "seed": getattr(exp, "seed", None),
            "confirms": getattr(exp, "confirms", None), "device": getattr(exp, "device", None),
            "holdout": holdout_of(exp, holdout), "finished_at": exp.finished_at, "duration_s": exp.duration_s}


def best_holdout(experiments: list[Experiment], holdout: Mapping[int, float] | None,
                 best_id: int | None) -> dict[str, Any] | None:
    """The holdout of the best kept result (what the person would promote), else the latest one recorded."""
    best = next((e for e in experiments if e.id == best_id), None)
    value = holdout_of(best, holdout) if best is not None else None
    return {"id": best_id, "value": value} if value is not None else last_holdout(experiments, holdout)


def last_holdout(experiments: list[Experiment], holdout: Mapping[int, float] | None = None) -> dict[str, Any] | None:
    for exp in reversed(experiments):
        value = holdout_of(exp, holdout)
        if value is not None:
            return {"id": exp.id, "value": value}
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
