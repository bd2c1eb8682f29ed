"""A hash-chained audit trail: who called what, when, with what outcome, in a form that shows tampering.

The server, the Claude Code hooks, the supervisor and the file guard all append to one `audit.jsonl`. Each record
carries the hash of the one before it (`prev`) and its own hash over its content, and `audit.head` beside the log
holds the last seq and hash, so `verify()` can tell an edited record, a removed or reordered line, and lines cut
from the end apart and name the first one.

The chain is keyed: each hash is an HMAC-SHA256 under a key made for the run when its first record is written and
kept outside the workspace (`$AUTORESEARCH_KEY_DIR`, else `$XDG_CONFIG_HOME/autoresearch/keys`, else
`~/.config/autoresearch/keys`; one `<run id>.key` file, mode 0600). Rebuilding `audit.jsonl` and `audit.head`
therefore needs the key: whoever cannot read that folder (the sandboxed command, an agent whose shell is sealed)
cannot forge a chain that verifies. Whoever can read it can; the key protects exactly as far as its folder does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import hmac
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from server import jsonl
from server.text import for_terminal

log = logging.getLogger(__name__)

GENESIS = "0" * 64
MAX_STRING = 2000  # longest string kept in args/summary, so one record can never explode the log
MAX_ITEMS = 200  # longest list or dict kept in args/summary
MAX_DEPTH = 8
MAX_LABEL = 80  # actor, event, status
MAX_NAME = 200  # session, tool
KEY_DIR_ENV = "AUTORESEARCH_KEY_DIR"


class AuditError(RuntimeError):
    """The audit log cannot be appended to safely (its last record is damaged)."""


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    time: str
    actor: str
    event: str
    session: str | None
    tool: str | None
    args: dict[str, Any] | None
    status: str
    summary: dict[str, Any] | None
    duration_ms: float | None
    prev: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (one line of `audit.jsonl`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditRecord:
        """Build a record from a parsed line; ValueError naming the missing or mistyped field."""
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(fields - data.keys())
        if missing:
            raise ValueError(f"not an audit record: missing field(s) {', '.join(missing)}")
        extra = sorted(data.keys() - fields)
        if extra:
            raise ValueError(f"not an audit record: unexpected field(s) {', '.join(extra)}")
        rec = cls(**{k: data[k] for k in fields})
        if not isinstance(rec.seq, int) or isinstance(rec.seq, bool):
            raise ValueError(f"not an audit record: seq is {rec.seq!r}, expected an integer")
        for name in ("time", "actor", "event", "status", "prev", "hash"):
            if not isinstance(getattr(rec, name), str):
                raise ValueError(f"not an audit record: {name} is {getattr(rec, name)!r}, expected a string")
        return rec

    def computed_hash(self, key: bytes) -> str:
        """HMAC-SHA256 under the run's key of the canonical JSON of every field except `hash`."""
        body = self.to_json()
        del body["hash"]
        return hmac.new(key, canonical_json(body).encode("utf-8"), hashlib.sha256).hexdigest()

    @property
    def timestamp(self) -> datetime:
        return _parse_time(self.time)


@dataclass(frozen=True)
class AuditVerdict:
    ok: bool
    records: int
    first_bad_line: int | None
    message: str


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def format_time(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`, e.g. 2025-03-01T12:00:00.123Z."""
    utc = moment.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def key_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where run keys live: `$AUTORESEARCH_KEY_DIR`, else `$XDG_CONFIG_HOME/autoresearch/keys`, else
    `~/.config/autoresearch/keys`. Outside every workspace, so nothing the sandbox can see."""
    env = os.environ if environ is None else environ
    explicit = env.get(KEY_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or str(Path.home()), ".config")
    return Path(base) / "autoresearch" / "keys"


def run_id(run_dir: Path) -> str:
    """The name of a run's key: its tag and a digest of what `run.json` says about its creation (so two workspaces
    with the same tag get different keys); for a log outside a run folder, a digest of the log's path."""
    try:
        meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        seed = f"{meta['tag']}|{meta['created_at']}|{meta['base_commit']}"
        label = str(meta["tag"])
    except (OSError, ValueError, KeyError, TypeError):
        seed, label = str(run_dir.resolve()), "log"
    return f"{label}-{hashlib.sha256(seed.encode('utf-8')).hexdigest()[:16]}"


class AuditLog:
    """The audit trail at `path` (usually `runs/<tag>/audit.jsonl`) and its head file `audit.head` beside it."""

    def __init__(self, path: os.PathLike[str] | str, *, clock: Callable[[], datetime] = _utc_now,
                 keys: os.PathLike[str] | str | None = None) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_suffix(".head")
        self._clock = clock
        self._key_dir = Path(keys) if keys is not None else None
        self._key: bytes | None = None

    @property
    def key_path(self) -> Path:
        return (self._key_dir or key_dir()) / f"{run_id(self.path.parent)}.key"

    def _load_key(self, *, create: bool) -> bytes:
        """The run's key; made (0600, in a 0700 folder) only when the chain is empty, so a lost key is never
        silently replaced by a new one under an existing chain."""
        if self._key is not None:
            return self._key
        path = self.key_path
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            if not create:
                raise AuditError(f"the audit key {path} is missing, so the chain in {self.path} cannot be checked or "
                                 f"extended. Restore the key file (or set {KEY_DIR_ENV} to the folder that holds "
                                 "it); without it the run's audit trail can no longer be verified.") from None
            text = _create_key(path)
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) < 32:
            raise AuditError(f"the audit key {path} is damaged (expected 64 hex digits); restore it from a backup")
        self._key = key
        return key

    def append(self, actor: str, event: str, *, session: str | None = None, tool: str | None = None,
               args: Mapping[str, Any] | None = None, status: str = "ok",
               summary: Mapping[str, Any] | None = None, duration_ms: float | None = None) -> AuditRecord:
        """Chain and durably append one record; the read of the last record, the append and the head update
        happen under one lock, so concurrent writers from several processes keep seqs contiguous."""
        for name, value in (("actor", actor), ("event", event), ("status", status)):
            _check_label(name, value)
        if duration_ms is not None:
            if not isinstance(duration_ms, (int, float)) or not math.isfinite(duration_ms):
                raise ValueError(f"duration_ms is {duration_ms!r}; pass a finite number of milliseconds or None")
            duration_ms = round(float(duration_ms), 3)
        bounded_args = _bound(dict(args), 0) if args is not None else None
        bounded_summary = _bound(dict(summary), 0) if summary is not None else None
        with jsonl.locked(self.path):
            seq, prev = self._last_unlocked()
            key = self._load_key(create=seq == 0)
            draft = AuditRecord(seq=seq + 1, time=format_time(self._clock()), actor=actor, event=event,
                                session=_cut(session, MAX_NAME), tool=_cut(tool, MAX_NAME), args=bounded_args,
                                status=status, summary=bounded_summary, duration_ms=duration_ms, prev=prev, hash="")
            record = dataclasses.replace(draft, hash=draft.computed_hash(key))
            jsonl.append_unlocked(self.path, record.to_json())
            jsonl.atomic_write_text(self.head_path, canonical_json({"seq": record.seq, "hash": record.hash}) + "\n")
        return record

    def _last_unlocked(self) -> tuple[int, str]:
        line = jsonl.read_last_line(self.path)
        if line is None:
            return 0, GENESIS
        try:
            last = AuditRecord.from_json(json.loads(line))
        except ValueError as exc:
            raise AuditError(f"the last line of {self.path} is not a valid audit record ({exc}); refusing to chain "
                             "onto it. Run `autoresearch audit verify` to see what changed.") from exc
        return last.seq, last.hash

    def tail_records(self, max_bytes: int = 1 << 18) -> list[AuditRecord]:
        """The whole records in the last `max_bytes` of the log (recovery looks at what happened just before a
        kill without reading the whole chain)."""
        try:
            with self.path.open("rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                start = max(0, size - max_bytes)
                fh.seek(start)
                data = fh.read()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")[:-1]
        if start > 0 and lines:
            lines = lines[1:]  # the first line may begin before the window
        out = []
        for raw in lines:
            with contextlib.suppress(ValueError):
                out.append(AuditRecord.from_json(json.loads(raw)))
        return out

    def records(self) -> list[AuditRecord]:
        """Every whole record (a torn final line is left out); raises on a damaged line, see `verify`."""
        return [AuditRecord.from_json(r) for r in jsonl.read_records(self.path)]

    def snapshot(self) -> tuple[int, bytes | None]:
        """A consistent point of the chain: the log's size and the head file's bytes, read under the writers' lock
        (so no append is half done between the two reads)."""
        with jsonl.locked(self.path):
            try:
                size = os.stat(self.path).st_size
            except FileNotFoundError:
                size = 0
            try:
                head = self.head_path.read_bytes()
            except FileNotFoundError:
                head = None
        return size, head

    def verify(self, on_record: Callable[[AuditRecord], None] | None = None,
               point: tuple[int, bytes | None] | None = None) -> AuditVerdict:
        """Check the chain and the head file at one consistent point (`snapshot()`, taken now unless given), so a
        run that keeps appending is never reported as broken; the verdict names the first problem found.
        `on_record` sees every record that checks out, in order (the run check collects its ledger seals)."""
        size, head = point if point is not None else self.snapshot()
        lines = _read_prefix(self.path, size)
        if not lines and head is None:
            return AuditVerdict(True, 0, None, "audit chain intact: 0 records")
        try:
            key = self._load_key(create=False)
        except AuditError as exc:
            return AuditVerdict(False, 0, 1 if lines else None, str(exc))
        prev_seq, prev_hash = 0, GENESIS
        last: AuditRecord | None = None
        for line_no, raw in enumerate(lines, start=1):
            problem = _check_line(line_no, raw, prev_seq, prev_hash, key)
            if isinstance(problem, str):
                return AuditVerdict(False, line_no - 1, line_no, problem)
            last = problem
            prev_seq, prev_hash = last.seq, last.hash
            if on_record is not None:
                on_record(last)
        head_problem = self._check_head(last, head)
        if head_problem is not None:
            return AuditVerdict(False, len(lines), None, head_problem)
        if last is None:
            return AuditVerdict(True, 0, None, "audit chain intact: 0 records")
        return AuditVerdict(True, len(lines), None,
                            f"audit chain intact: {len(lines)} records, last hash {last.hash[:8]}...")

    def _check_head(self, last: AuditRecord | None, raw: bytes | None) -> str | None:
        try:
            if raw is None:
                raise FileNotFoundError(self.head_path)
            head = json.loads(raw.decode("utf-8"))
            head_seq, head_hash = int(head["seq"]), str(head["hash"])
        except FileNotFoundError:
            if last is None:
                return None
            return (f"{self.head_path.name} is missing but the log holds {last.seq} records: the head was deleted, "
                    "so records removed from the end could not be detected")
        except (ValueError, KeyError, TypeError) as exc:
            return f"{self.head_path.name} is unreadable ({exc}); it should hold the last seq and hash"
        last_seq = last.seq if last else 0
        if head_seq > last_seq:
            return (f"{self.head_path.name} says the last record is seq {head_seq} (hash {head_hash[:8]}...) but the "
                    f"log ends at seq {last_seq}: {head_seq - last_seq} record(s) were removed from the end")
        if last is not None and head_seq == last_seq and head_hash != last.hash:
            return (f"{self.head_path.name} records hash {head_hash[:8]}... for seq {head_seq} but the last record "
                    f"has hash {last.hash[:8]}...: the end of the log was replaced")
        if head_seq < last_seq - 1 or (head_seq == last_seq - 1 and head_hash != last.prev):
            return (f"{self.head_path.name} says seq {head_seq} but the log ends at seq {last_seq}: records were "
                    "appended without updating the head")
        return None  # equal, or one behind: an append interrupted between its line and its head update


def _read_prefix(path: Path, size: int) -> list[bytes]:
    """The whole lines in the first `size` bytes of `path`."""
    try:
        with path.open("rb") as fh:
            data = fh.read(size)
    except FileNotFoundError:
        return []
    return data.split(b"\n")[:-1]


def _create_key(path: Path) -> str:
    """Write a new random key to `path` without ever exposing a partly written file; returns its text. When another
    process made one first, that one wins and is returned."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = os.urandom(32).hex()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (text + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        text = path.read_text(encoding="ascii").strip()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return text


def _check_line(line_no: int, raw: bytes, prev_seq: int, prev_hash: str, key: bytes) -> AuditRecord | str:
    """The record on this line, or a sentence saying what is wrong with it."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, found {type(data).__name__}")
        rec = AuditRecord.from_json(data)
    except ValueError as exc:
        return f"line {line_no}: does not parse as an audit record: {exc}"
    if not hmac.compare_digest(rec.computed_hash(key), rec.hash):
        return (f"line {line_no} (seq {rec.seq}): content altered: hash mismatch "
                "(edited, or written without the run's key)")
    if rec.seq != prev_seq + 1:
        return (f"line {line_no}: expected seq {prev_seq + 1} after seq {prev_seq} but found seq {rec.seq}: "
                "a record was removed or the lines were reordered")
    if rec.prev != prev_hash:
        return (f"line {line_no} (seq {rec.seq}): prev {rec.prev[:8]}... is not the hash of the record before it "
                f"({prev_hash[:8]}...): the previous record was replaced")
    return rec


def _check_label(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_LABEL or not value.isprintable():
        raise ValueError(f"audit {name} {value!r} is invalid; pass a short printable non-empty string "
                         f"(at most {MAX_LABEL} characters), e.g. 'server', 'tool_call', 'ok'")


def _cut(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"...[{len(text) - limit} chars dropped]"


def _bound(value: Any, depth: int) -> Any:
    """A JSON-safe copy with long strings, long containers and deep nesting cut, each cut marked."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # JSON cannot hold nan/inf; keep them readable
    if isinstance(value, str):
        return _cut(value, MAX_STRING)
    if depth >= MAX_DEPTH and isinstance(value, (Mapping, list, tuple)):
        return _cut(_compact_json(value), MAX_STRING)
    if isinstance(value, Mapping):
        items = list(value.items())
        out = {str(k): _bound(v, depth + 1) for k, v in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            out["..."] = f"[{len(items) - MAX_ITEMS} keys dropped]"
        return out
    if isinstance(value, (list, tuple)):
        kept = [_bound(v, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            kept.append(f"...[{len(value) - MAX_ITEMS} items dropped]")
        return kept
    return _cut(str(value), MAX_STRING)


def _compact_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def filter_records(records: Iterable[AuditRecord], *, tool: str | None = None, status: str | None = None,
                   actor: str | None = None, event: str | None = None, session: str | None = None,
                   since: datetime | None = None, until: datetime | None = None) -> list[AuditRecord]:
    """Records matching every given criterion. `tool` is a shell glob (`run_*`), `session` matches a prefix (the
    short id `audit show` prints), `since` is inclusive and `until` exclusive; naive datetimes are taken as UTC."""
    lo = _as_utc(since)
    hi = _as_utc(until)
    out = []
    for r in records:
        if tool is not None and (r.tool is None or not fnmatch.fnmatchcase(r.tool, tool)):
            continue
        if status is not None and r.status != status:
            continue
        if actor is not None and r.actor != actor:
            continue
        if event is not None and r.event != event:
            continue
        if session is not None and (r.session is None or not r.session.startswith(session)):
            continue
        if lo is not None and r.timestamp < lo:
            continue
        if hi is not None and r.timestamp >= hi:
            continue
        out.append(r)
    return out


def _as_utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


def format_record(record: AuditRecord, width: int = 80) -> str:
    """One readable line for `audit show`: time, actor, short session, event, tool, status, args, summary."""
    parts = [record.time, f"{record.actor:<10}", (record.session or "-")[:8].ljust(8), record.event,
             record.tool or "-", record.status]
    if record.duration_ms is not None:
        parts.append(f"{record.duration_ms:.0f}ms")
    for label, payload in (("args", record.args), ("summary", record.summary)):
        if payload:
            text = for_terminal(_compact_json(payload))  # refused calls keep raw agent text; show it escaped
            parts.append(f"{label}={text if len(text) <= width else text[:width - 3] + '...'}")
    return "  ".join(parts)
