"""The hash-chained audit trail: tampering is named precisely, concurrent writers keep the chain whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from server import audit, jsonl
from server.audit import AuditLog, AuditRecord, filter_records, format_record

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


class StepClock:
    """A clock that advances one minute per reading, so records get distinct, known times."""

    def __init__(self) -> None:
        self.now = T0 - timedelta(minutes=1)

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


def _log_with(tmp_path: Path, count: int) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl", clock=StepClock())
    for i in range(1, count + 1):
        log.append("server", "tool_call", session=f"sess{i % 2}-abcdef", tool="run_experiment",
                   args={"description": f"try {i}"}, summary={"metric": 1.0 - i / 100}, duration_ms=12.5)
    return log


def _lines(log: AuditLog) -> list[bytes]:
    return log.path.read_bytes().split(b"\n")[:-1]


def _write_lines(log: AuditLog, lines: list[bytes]) -> None:
    log.path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_a_chain_of_records_verifies_with_contiguous_seqs_and_a_matching_head(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 20)
    records = log.records()

    verdict = log.verify()
    assert verdict.ok and verdict.records == 20 and verdict.first_bad_line is None
    assert verdict.message == f"audit chain intact: 20 records, last hash {records[-1].hash[:8]}..."
    assert [r.seq for r in records] == list(range(1, 21))
    assert records[0].prev == "0" * 64 and all(b.prev == a.hash for a, b in zip(records, records[1:]))
    assert json.loads(log.head_path.read_text()) == {"seq": 20, "hash": records[-1].hash}
    assert records[0].time == "2025-03-01T12:00:00.000Z"


def test_record_hash_is_an_hmac_of_the_canonical_json_under_the_runs_key_kept_outside_the_run(tmp_path: Path) -> None:
    import hashlib
    import hmac

    log = _log_with(tmp_path, 1)
    rec = log.records()[0]
    body = rec.to_json()
    del body["hash"]
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    key = bytes.fromhex(log.key_path.read_text().strip())
    assert rec.hash == hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()
    assert rec.hash != hashlib.sha256(canonical.encode()).hexdigest()
    assert not log.key_path.is_relative_to(tmp_path) and log.key_path.stat().st_mode & 0o777 == 0o600
    assert AuditRecord.from_json(rec.to_json()) == rec


def test_an_empty_or_missing_log_verifies(tmp_path: Path) -> None:
    verdict = AuditLog(tmp_path / "audit.jsonl").verify()
    assert verdict.ok and verdict.records == 0


def test_one_byte_changed_in_a_middle_line_is_named_as_altered_content(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 20)
    lines = _lines(log)
    lines[16] = lines[16].replace(b"try 17", b"try 71")
    _write_lines(log, lines)

    verdict = log.verify()
    assert not verdict.ok and verdict.first_bad_line == 17 and verdict.records == 16
    assert verdict.message.startswith("line 17 (seq 17): content altered: hash mismatch")


def test_a_removed_line_is_named_as_a_gap_in_the_seqs(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 20)
    lines = _lines(log)
    del lines[11]
    _write_lines(log, lines)

    verdict = log.verify()
    assert not verdict.ok and verdict.first_bad_line == 12
    assert verdict.message == ("line 12: expected seq 12 after seq 11 but found seq 13: "
                               "a record was removed or the lines were reordered")


def test_two_swapped_lines_are_named(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 10)
    lines = _lines(log)
    lines[4], lines[5] = lines[5], lines[4]
    _write_lines(log, lines)

    verdict = log.verify()
    assert not verdict.ok and verdict.first_bad_line == 5
    assert verdict.message.startswith("line 5: expected seq 5 after seq 4 but found seq 6")


def test_a_record_replaced_by_a_freshly_hashed_forgery_is_caught_by_the_next_records_prev(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 6)
    lines = _lines(log)
    original = AuditRecord.from_json(json.loads(lines[2]))
    forged = json.loads(lines[2]) | {"status": "error"}
    forged["hash"] = AuditRecord.from_json(forged).computed_hash(bytes.fromhex(log.key_path.read_text().strip()))
    assert forged["hash"] != original.hash
    lines[2] = json.dumps(forged).encode()
    _write_lines(log, lines)

    verdict = log.verify()
    assert not verdict.ok and verdict.first_bad_line == 4
    assert "line 4 (seq 4): prev" in verdict.message and "previous record was replaced" in verdict.message


def test_a_line_that_does_not_parse_is_named(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 5)
    lines = _lines(log)
    lines[1] = lines[1][:-5]
    _write_lines(log, lines)

    verdict = log.verify()
    assert not verdict.ok and verdict.first_bad_line == 2
    assert verdict.message.startswith("line 2: does not parse")


def test_removing_the_last_line_is_caught_through_the_head_file(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 8)
    _write_lines(log, _lines(log)[:-2])

    verdict = log.verify()
    assert not verdict.ok and verdict.records == 6
    assert "says the last record is seq 8" in verdict.message and "2 record(s) were removed from the end" in \
        verdict.message


def test_a_deleted_head_file_is_reported(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 3)
    log.head_path.unlink()
    verdict = log.verify()
    assert not verdict.ok and "audit.head is missing" in verdict.message


def test_a_head_one_record_behind_after_an_interrupted_append_still_verifies(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 4)
    third = log.records()[2]
    log.head_path.write_text(json.dumps({"seq": 3, "hash": third.hash}))

    assert log.verify().ok
    log.append("cli", "resume")
    assert json.loads(log.head_path.read_text())["seq"] == 5 and log.verify().ok


def test_concurrent_appends_from_several_processes_keep_the_chain_intact_and_seqs_contiguous(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    code = textwrap.dedent("""
        import sys
        from server.audit import AuditLog
        log = AuditLog(sys.argv[1])
        for i in range(int(sys.argv[3])):
            log.append(sys.argv[2], "tick", args={"i": i})
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    actors = ["server", "hook", "supervisor", "guard"]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), actor, "25"], env=env) for actor in actors]
    for p in procs:
        assert p.wait(timeout=120) == 0

    log = AuditLog(path)
    verdict = log.verify()
    assert verdict.ok, verdict.message
    records = log.records()
    assert [r.seq for r in records] == list(range(1, 101))
    for actor in actors:
        assert [r.args["i"] for r in records if r.actor == actor] == list(range(25))  # type: ignore[index]


def test_a_torn_tail_is_repaired_and_the_chain_continues_from_the_last_whole_record(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 3)
    with open(log.path, "ab") as f:
        f.write(b'{"seq":4,"time":"2025-')

    assert log.verify().ok
    rec = log.append("hook", "pre_tool_use", tool="Bash")
    assert rec.seq == 4 and rec.prev == log.records()[2].hash
    assert log.verify().ok and len(_lines(log)) == 4


def test_append_reads_only_the_end_of_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _log_with(tmp_path, 3)

    def refuse(*_: object) -> None:
        raise AssertionError("append read the whole file")

    monkeypatch.setattr(jsonl, "read_lines", refuse)
    monkeypatch.setattr(jsonl, "read_records", refuse)
    assert log.append("server", "tool_call").seq == 4


def test_long_strings_are_cut_with_a_marker_and_non_finite_numbers_kept_readable(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    rec = log.append("server", "tool_call", args={"diff": "d" * 5000, "many": list(range(1000))},
                     summary={"metric": float("nan"), "deep": {"log": "x" * 2001}})

    assert rec.args is not None and rec.summary is not None
    assert rec.args["diff"] == "d" * 2000 + "...[3000 chars dropped]"
    assert rec.args["many"][-1] == "...[800 items dropped]" and len(rec.args["many"]) == 201
    assert rec.summary["metric"] == "nan" and rec.summary["deep"]["log"].endswith("[1 chars dropped]")
    assert log.verify().ok and len(log.path.read_bytes()) < 10_000


@pytest.mark.parametrize("field,value", [("actor", ""), ("event", "a\nb"), ("status", "x" * 81), ("actor", None)])
def test_an_empty_long_or_multiline_label_is_refused_with_the_field_named(
        tmp_path: Path, field: str, value: object) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    labels: dict[str, object] = {"actor": "server", "event": "tool_call", "status": "ok"} | {field: value}
    with pytest.raises(ValueError, match=f"audit {field}"):
        log.append(labels["actor"], labels["event"], status=labels["status"])  # type: ignore[arg-type]
    assert not log.path.exists()


def test_a_damaged_last_record_stops_appends_with_a_pointer_to_verify(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 2)
    with open(log.path, "ab") as f:
        f.write(b"garbage\n")
    with pytest.raises(audit.AuditError, match="audit verify"):
        log.append("server", "tool_call")


def test_filters_select_by_tool_glob_status_actor_event_session_prefix_and_time(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", clock=StepClock())
    log.append("server", "tool_call", session="aaaa1111", tool="run_experiment")  # 12:00
    log.append("server", "tool_call", session="bbbb2222", tool="read_log", status="error")  # 12:01
    log.append("hook", "pre_tool_use", session="aaaa1111", tool="Bash")  # 12:02
    log.append("guard", "violation", status="restored")  # 12:03
    records = log.records()

    def seqs(**kw: object) -> list[int]:
        return [r.seq for r in filter_records(records, **kw)]  # type: ignore[arg-type]

    assert seqs(tool="r*") == [1, 2]
    assert seqs(tool="Bash") == [3]
    assert seqs(status="error") == [2]
    assert seqs(actor="server") == [1, 2]
    assert seqs(event="violation") == [4]
    assert seqs(session="aaaa") == [1, 3]
    assert seqs(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3)) == [2, 3]
    assert seqs(since=datetime(2025, 3, 1, 12, 2)) == [3, 4]  # naive means UTC
    assert seqs(actor="server", status="ok") == [1]


def test_format_record_gives_one_readable_line(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", clock=StepClock())
    rec = log.append("server", "tool_call", session="0123456789abcdef", tool="run_experiment",
                     args={"description": "z" * 500}, summary={"metric": 0.99}, duration_ms=1534.2)

    line = format_record(rec)
    assert "\n" not in line and len(line) < 300
    for part in ("2025-03-01T12:00:00.000Z", "server", "01234567", "tool_call", "run_experiment", "ok",
                 "1534ms", 'summary={"metric":0.99}', "args={\"description\":\"zzz"):
        assert part in line
    assert "89abcdef" not in line
