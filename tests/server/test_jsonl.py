"""Durable JSON-lines files: concurrent writers, torn tails, full disks and kill -9."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from server import jsonl

REPO = Path(__file__).resolve().parents[2]


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            stdout=subprocess.PIPE, text=True)


def _wait_for_output_lines(proc: subprocess.Popen[str], count: int, timeout: float = 60.0) -> None:
    """Block until the child has printed `count` lines, failing after `timeout` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = 0
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while seen < count:
            left = deadline - time.monotonic()
            assert left > 0, f"child printed only {seen} of {count} lines in {timeout}s"
            if sel.select(left) and proc.stdout.readline():
                seen += 1
            assert proc.poll() is None or seen >= count, f"child exited early with {proc.returncode}"


def test_appended_records_read_back_in_order_with_unicode_kept_as_is(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    jsonl.append_record(path, {"n": 1, "text": "naïve ☃"})
    jsonl.append_record(path, {"n": 2, "nested": {"a": [1, 2.5, None]}})

    assert jsonl.read_records(path) == [{"n": 1, "text": "naïve ☃"}, {"n": 2, "nested": {"a": [1, 2.5, None]}}]
    raw = path.read_bytes()
    assert "naïve ☃".encode() in raw and raw.count(b"\n") == 2 and b", " not in raw


def test_a_missing_file_reads_as_no_records(tmp_path: Path) -> None:
    assert jsonl.read_records(tmp_path / "absent.jsonl") == []
    assert jsonl.read_last_line(tmp_path / "absent.jsonl") is None


def test_a_nan_value_is_refused_with_its_key_named_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with pytest.raises(ValueError, match=r"metrics\.val_bpb"):
        jsonl.append_record(path, {"metrics": {"val_bpb": float("nan")}})
    assert not path.exists() or path.read_bytes() == b""


def test_a_torn_final_line_is_ignored_by_readers_and_cut_by_the_next_append(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "log.jsonl"
    jsonl.append_record(path, {"n": 1})
    with open(path, "ab") as f:
        f.write(b'{"n": 2, "tor')  # a write interrupted by a crash

    assert jsonl.read_records(path) == [{"n": 1}]
    assert jsonl.read_last_line(path) == b'{"n":1}'
    with caplog.at_level(logging.WARNING, logger="server.jsonl"):
        jsonl.append_record(path, {"n": 3})

    assert path.read_bytes() == b'{"n":1}\n{"n":3}\n'
    assert any("13 bytes" in r.getMessage() for r in caplog.records)


def test_a_final_line_that_does_not_parse_is_ignored_but_a_middle_one_is_named(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"n":1}\n{"n":2}\nnot json\n')
    assert jsonl.read_records(path) == [{"n": 1}, {"n": 2}]

    path.write_bytes(b'{"n":1}\n{"n": oops}\n{"n":3}\n')
    with pytest.raises(jsonl.CorruptFileError, match=r"log\.jsonl line 2 is corrupt") as info:
        jsonl.read_records(path)
    assert info.value.line_no == 2 and info.value.path == path


def test_a_write_failing_with_enospc_half_way_leaves_the_file_as_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.jsonl"
    jsonl.append_record(path, {"n": 1})
    before = path.read_bytes()
    real_write = os.write

    def half_then_disk_full(fd: int, data: bytes) -> int:
        if b"doomed" in data:
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(jsonl.os, "write", half_then_disk_full)
    with pytest.raises(OSError, match=r"log\.jsonl.*Free disk space") as info:
        jsonl.append_record(path, {"n": 2, "payload": "doomed" * 100})

    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    jsonl.append_record(path, {"n": 3})
    assert jsonl.read_records(path) == [{"n": 1}, {"n": 3}]


def test_several_processes_appending_at_once_lose_no_line_and_tear_none(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    writers, per_writer = 4, 100
    code = """
        import sys
        from server import jsonl
        path, writer = sys.argv[1], int(sys.argv[2])
        for i in range(int(sys.argv[3])):
            jsonl.append_record(path, {"writer": writer, "i": i, "pad": str(writer) * 3000})
    """
    procs = [_spawn(code, str(path), str(w), str(per_writer)) for w in range(writers)]
    for p in procs:
        assert p.wait(timeout=120) == 0

    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]  # every line whole: each one parses
    assert len(records) == writers * per_writer
    assert all(r["pad"] == str(r["writer"]) * 3000 for r in records)
    for w in range(writers):
        assert [r["i"] for r in records if r["writer"] == w] == list(range(per_writer))


def test_threads_of_one_process_exclude_each_other_through_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "counter.json"
    path.write_text("0")

    def bump() -> None:
        for _ in range(200):
            with jsonl.locked(path):
                path.write_text(str(int(path.read_text()) + 1))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert path.read_text() == "800"

    with jsonl.locked(path), open(jsonl.lock_path(path), "rb") as other:
        with pytest.raises(BlockingIOError):
            fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_child_killed_while_appending_leaves_only_whole_lines_after_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "killed.jsonl"
    code = """
        import sys
        from server import jsonl
        i = 0
        while True:
            jsonl.append_record(sys.argv[1], {"i": i, "pad": "x" * 50000})
            print(i, flush=True)
            i += 1
    """
    proc = _spawn(code, str(path))
    try:
        _wait_for_output_lines(proc, 20)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    survivors = jsonl.read_records(path)
    assert [r["i"] for r in survivors] == list(range(len(survivors))) and len(survivors) >= 20
    jsonl.append_record(path, {"after": True})
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    parsed = [json.loads(line) for line in lines[:-1]]
    assert parsed[:-1] == survivors and parsed[-1] == {"after": True}


def test_read_last_line_scans_back_past_a_long_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    jsonl.append_record(path, {"n": 1})
    jsonl.append_record(path, {"n": 2, "pad": "y" * 30000})
    with open(path, "ab") as f:
        f.write(b'{"torn": ')

    last = jsonl.read_last_line(path)
    assert last is not None and json.loads(last) == {"n": 2, "pad": "y" * 30000}


def test_atomic_write_text_replaces_the_content_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "head.json"
    jsonl.atomic_write_text(target, "first\n")
    jsonl.atomic_write_text(target, "second ☃\n")

    assert target.read_text(encoding="utf-8") == "second ☃\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["head.json"]
