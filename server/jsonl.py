"""Durable JSON-lines files that several processes append to at once.

The ledger and the audit trail are append-only JSON-lines files written by the server, hooks, the supervisor and
the file guard, any of which can be killed mid-write or hit a full disk. So every append takes an exclusive
`flock` on a sidecar `<file>.lock`, repairs a torn final line left by an earlier crash, writes the whole line with
one `os.write` on an `O_APPEND` descriptor and `fsync`s before releasing the lock. Readers tolerate a torn final
line (it is a write that never finished) but refuse corruption in the middle, which no crash can produce.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_TAIL_BLOCK = 8192  # bytes read per step when scanning a file backwards


class CorruptFileError(ValueError):
    """A line before the last one of a JSON-lines file does not parse: not a crash artefact, so never skipped."""

    def __init__(self, path: os.PathLike[str] | str, line_no: int, reason: str) -> None:
        self.path = Path(path)
        self.line_no = line_no
        self.reason = reason
        super().__init__(
            f"{self.path} line {line_no} is corrupt: {reason}. Only a crash can tear a line and only the last one; "
            f"this one was edited or damaged. Inspect line {line_no}, keep a copy of the file, then repair or "
            "remove that line by hand."
        )


def lock_path(path: os.PathLike[str] | str) -> Path:
    """The sidecar file whose `flock` guards `path` (never deleted: deleting it would split the lock)."""
    p = Path(path)
    return p.with_name(p.name + ".lock")


@contextlib.contextmanager
def locked(path: os.PathLike[str] | str) -> Iterator[None]:
    """Hold an exclusive lock on `path` across processes and threads.

    Each call opens its own file description, so two threads of one process exclude each other too (flock locks
    belong to the open file description). The lock is not re-entrant: code already holding it must call the
    `*_unlocked` helpers instead of taking it again.
    """
    lp = lock_path(path)
    lp.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One compact UTF-8 JSON line ending in a newline; ValueError naming the key of any NaN or infinity."""
    _check_finite(record, "")
    try:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except TypeError as exc:
        raise ValueError(f"record is not JSON-serialisable: {exc}. Convert the value to str, int, float, "
                         "bool, None, list or dict before appending.") from exc
    return (text + "\n").encode("utf-8")


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"value of {where or 'the record'!r} is {value!r}, which JSON cannot hold; "
                         "store None or a string such as 'nan' instead.")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")


def repair_torn_tail_unlocked(path: os.PathLike[str] | str) -> int:
    """Cut an unterminated final line (a write that never finished); returns the bytes removed. Hold the lock."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return 0
        keep = _end_of_last_whole_line(fd, size)
        os.ftruncate(fd, keep)
        os.fsync(fd)
    finally:
        os.close(fd)
    dropped = size - keep
    log.warning("%s ended with a torn line (%d bytes without a newline, left by an interrupted write); "
                "removed it before appending", p, dropped)
    return dropped


def _end_of_last_whole_line(fd: int, size: int) -> int:
    """Offset just past the last newline in the first `size` bytes of `fd` (0 when there is none)."""
    pos = size
    while pos > 0:
        step = min(_TAIL_BLOCK, pos)
        pos -= step
        idx = os.pread(fd, step, pos).rfind(b"\n")
        if idx != -1:
            return pos + idx + 1
    return 0


def append_unlocked(path: os.PathLike[str] | str, record: Mapping[str, Any]) -> int:
    """`append_record` for a caller that already holds `locked(path)` (lets it read, decide and write atomically).
    Returns the byte offset the line was written at."""
    return append_bytes_unlocked(path, encode_record(record))


def append_bytes_unlocked(path: os.PathLike[str] | str, data: bytes) -> int:
    """Durably append `data` (whole lines) under a lock the caller holds; returns the offset it starts at. A failed
    or short write is truncated back, so the file never keeps half of it."""
    p = Path(path)
    repair_torn_tail_unlocked(p)
    created = not p.exists()
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        before = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):  # a short write on a regular file means the disk filled up
                raise OSError(errno.ENOSPC, f"short write: {written} of {len(data)} bytes")
            os.fsync(fd)
        except OSError as exc:
            _truncate_back(fd, p, before)
            raise OSError(
                exc.errno,
                f"could not append {len(data)} bytes to {p}: {exc.strerror or exc}; the file was truncated back to "
                f"its previous {before} bytes. Free disk space on the filesystem holding {p.parent} (old "
                "runs/*/experiments/*/checkpoint.pt files are the usual culprits) and retry.",
            ) from exc
    finally:
        os.close(fd)
    if created:
        _fsync_dir(p.parent)
    return before


def _truncate_back(fd: int, path: Path, size: int) -> None:
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError as exc:  # keep the original error; a torn tail left here is repaired by the next append
        log.error("could not truncate %s back to %d bytes after a failed write: %s", path, size, exc)


def append_record(path: os.PathLike[str] | str, record: Mapping[str, Any]) -> None:
    """Append one record as one durable line, safe against concurrent writers, crashes and a full disk."""
    with locked(path):
        append_unlocked(path, record)


def read_lines(path: os.PathLike[str] | str) -> list[bytes]:
    """The whole (newline-terminated) lines of `path` as raw bytes without their newline; a torn final fragment is
    left out. Bytes, so that a damaged line fails to parse instead of being silently repaired by decoding."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return data.split(b"\n")[:-1]


def read_last_line(path: os.PathLike[str] | str) -> bytes | None:
    """The last whole line of `path` read backwards from the end (cost independent of file size); None if none."""
    try:
        fd = os.open(Path(path), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        end = _end_of_last_whole_line(fd, os.fstat(fd).st_size)
        if end == 0:
            return None
        start = _end_of_last_whole_line(fd, end - 1)
        return os.pread(fd, end - 1 - start, start)
    finally:
        os.close(fd)


def read_records(path: os.PathLike[str] | str) -> list[dict[str, Any]]:
    """Every record of `path`, in order; line N of the file is element N-1.

    A final line that is torn or does not parse is ignored (an interrupted write); any earlier line that does not
    parse to a JSON object raises `CorruptFileError`.
    """
    lines = read_lines(path)
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"expected a JSON object, found {type(obj).__name__}")
        except ValueError as exc:
            if i == len(lines):
                log.warning("%s: ignoring unparseable last line %d (%s)", path, i, exc)
                break
            raise CorruptFileError(path, i, f"{exc} (line starts {line[:60]!r})") from exc
        records.append(obj)
    return records


def atomic_write_text(path: os.PathLike[str] | str, text: str) -> None:
    """Replace `path` with `text` so readers see the old or the new content, never a mix, even after a crash."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(p.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename or a file creation in `directory` survive a power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_whole_lines_from(path: os.PathLike[str] | str,
                          offset: int) -> tuple[list[tuple[int, bytes]], int, tuple[int, int] | None]:
    """The whole lines appended since byte `offset`, each with the offset it starts at, the offset just past the
    last whole line (-1 when the file is now shorter than `offset`), and the file's identity (device, inode), None
    when it does not exist. A torn final fragment is
    left for the next read. The cost is the size of what was appended, not of the file."""
    try:
        fd = os.open(Path(path), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return [], 0, None
    try:
        st = os.fstat(fd)
        identity = (st.st_dev, st.st_ino)
        if st.st_size < offset:
            return [], -1, identity  # truncated below `offset`: the caller must read it again from the start
        if st.st_size == offset:
            return [], offset, identity
        chunks = []
        pos = offset
        while pos < st.st_size:
            chunk = os.pread(fd, min(st.st_size - pos, 1 << 24), pos)
            if not chunk:
                break
            chunks.append(chunk)
            pos += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    end = data.rfind(b"\n") + 1
    lines: list[tuple[int, bytes]] = []
    start = 0
    while start < end:
        stop = data.index(b"\n", start)
        lines.append((offset + start, data[start:stop]))
        start = stop + 1
    return lines, offset + end, identity


def read_at(path: os.PathLike[str] | str, offset: int, length: int) -> bytes:
    """`length` bytes of `path` from `offset` (one known line, without reading the rest of the file)."""
    fd = os.open(Path(path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def remove_temp_files(directory: os.PathLike[str] | str, names: list[str]) -> list[Path]:
    """Delete the temporary files `atomic_write_text` leaves when killed mid-write (`.<name>.*.tmp`) for the given
    file names. Call only while holding the locks under which those files are written."""
    removed = []
    d = Path(directory)
    for name in names:
        for tmp in d.glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed
