"""What the page and the report are built from: the focused chart, the table's pages, the files followed by offset."""

from __future__ import annotations

import json
from pathlib import Path

from run_builder import BuiltRun, bulk_ledger, experiment

from server.jsonl import append_record

from harness.dashboard.data import JsonlFollower, RunData, RunMeta
from harness.dashboard.series import build_chart, focus_range


def open_data(run: BuiltRun) -> RunData:
    return RunData(RunMeta(run.tag, "val_bpb", "minimize", run.run_dir))


def test_a_few_wild_results_do_not_stretch_the_focused_range() -> None:
    values = [1.10, 1.09, 1.08, 1.085, 1.07, 1.075, 1.06, 9.5, 12.0] + [1.065] * 20
    lo, hi = focus_range(values, baseline=1.10, best=1.06, direction="minimize")
    assert lo < 1.06 < 1.10 < hi < 1.2  # the best and the baseline are in view; 9.5 and 12.0 are not


def test_a_maximized_metric_is_focused_the_other_way_round() -> None:
    values = [0.50, 0.55, 0.60, 0.62, -40.0] + [0.58] * 20
    lo, hi = focus_range(values, baseline=0.50, best=0.62, direction="maximize")
    assert -1 < lo < 0.50 and 0.62 < hi < 0.7


def test_the_chart_has_a_running_best_labels_for_kept_changes_and_codes_for_every_status(run: BuiltRun) -> None:
    chart = build_chart(run.ledger.experiments(), "minimize")
    assert chart.status == "oooctioo" and chart.decision == "kkddddkp"
    assert chart.running_best == [1.102, 1.087, 1.087, 1.087, 1.087, 1.087, 1.079, 1.079]
    assert chart.to_json()["best_steps"] == [[1, 1.102], [2, 1.087], [7, 1.079]]  # the corners of the step line
    assert chart.labels == {2: "raise learning rate to 0.04", 7: "add a warmup of 200 steps"}  # not the baseline
    assert chart.flags[6] == 1  # unverified
    assert chart.best_value == 1.079 and chart.best_id == 7 and chart.baseline == 1.102


def test_the_table_is_paged_newest_first_and_filtered(run: BuiltRun) -> None:
    data = open_data(run)
    page = data.rows(offset=0, limit=3)
    assert [r["id"] for r in page["rows"]] == [8, 7, 6] and page["total"] == 8
    assert [r["id"] for r in data.rows(status="crash")["rows"]] == [4]
    assert [r["id"] for r in data.rows(decision="pending")["rows"]] == [8]
    assert [r["id"] for r in data.rows(query="GELU")["rows"]] == [3]
    row7 = data.rows(query="7")["rows"][0]
    assert row7["flags"] == ["unverified"] and row7["delta"] == -0.008000000000000007


def test_views_are_rebuilt_only_when_the_ledger_changes(run: BuiltRun) -> None:
    data = open_data(run)
    first = data.experiments()
    assert data.experiments() is first  # nothing changed: no re-read
    run.ledger.append_experiment(experiment(9, metric=1.2, description="more heads"))
    assert [e.id for e in data.experiments()][-1] == 9
    assert data.summary()["experiments"] == 9


def test_the_summary_carries_the_night_and_the_audit_verdict(run: BuiltRun) -> None:
    summary = open_data(run).summary()
    assert summary["supervisor"]["status"]["state"] == "RUNNING"
    assert summary["supervisor"]["events"]["stall"] == 1
    assert summary["audit"]["ok"] is True
    assert summary["audit"]["tool_calls"]["run_experiment"] == {"ok": 8, "refused": 1}
    assert summary["violations"]["count"] == 1
    assert len(json.dumps(summary)) < 8000  # sent on every change: it must stay small


def test_a_tampered_audit_record_shows_as_a_broken_chain_with_its_line(run: BuiltRun) -> None:
    lines = run.audit.path.read_text().splitlines()
    record = json.loads(lines[2])
    record["status"] = "error"
    lines[2] = json.dumps(record)
    run.audit.path.write_text("\n".join(lines) + "\n")
    audit = open_data(run).summary()["audit"]
    assert audit["ok"] is False and audit["first_bad_line"] == 3


def test_the_follower_reads_only_new_whole_lines_and_starts_over_when_the_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    follower = JsonlFollower(path)
    assert follower.new_records() == (False, [])
    append_record(path, {"n": 1})
    assert follower.new_records() == (False, [{"n": 1}])
    with path.open("ab") as f:
        f.write(b'{"n": 2}\n{"n": 3')  # the second line is still being written
    assert follower.new_records() == (False, [{"n": 2}])
    with path.open("ab") as f:
        f.write(b"}\n")
    assert follower.new_records() == (False, [{"n": 3}])
    path.write_text('{"n": 9}\n')
    assert follower.new_records() == (True, [{"n": 9}])


def test_a_noise_floor_comes_from_run_json_or_from_a_noise_line_of_the_ledger(tmp_path: Path) -> None:
    ledger = bulk_ledger(tmp_path / "r", 5)
    data = RunData(RunMeta("r", "val_bpb", "minimize", ledger.run_dir))
    assert data.noise_floor() is None
    with (ledger.run_dir / "experiments.jsonl").open("a") as f:  # a line type a later ledger writes
        f.write(json.dumps({"type": "noise", "noise_floor": 0.0031}) + "\n")
    assert data.noise_floor() == 0.0031
    (ledger.run_dir / "run.json").write_text(json.dumps({"tag": "r", "noise_floor": 0.002}))
    assert data.noise_floor() == 0.002


def test_several_slots_in_flight_are_all_shown(run: BuiltRun) -> None:
    (run.run_dir / "inflight.json").write_text(json.dumps({"slots": [
        {"id": 9, "description": "a", "started_at": 100.0, "deadline": 400.0, "device": "cuda:0"},
        {"id": 10, "description": "b", "started_at": 120.0, "deadline": 420.0, "device": "cuda:1"}]}))
    data = RunData(RunMeta(run.tag, "val_bpb", "minimize", run.run_dir), clock=lambda: 300.0)
    slots = data.summary()["slots"]
    assert [(s["id"], s["device"], s["remaining_s"]) for s in slots] == [(9, "cuda:0", 100.0), (10, "cuda:1", 120.0)]


def test_a_busy_audit_log_is_rechecked_at_most_every_few_seconds_while_its_counts_follow_every_line(
        run: BuiltRun, monkeypatch: object) -> None:
    from harness.dashboard import data as data_module

    data = open_data(run)
    first = data.audit_summary()
    run.audit.append("server", "tool_call", tool="read_results", status="ok")
    second = data.audit_summary()
    assert second.tool_calls["read_results"] == {"ok": 1}  # counted at once
    assert second.records == first.records and second.checked_at == first.checked_at  # not re-verified yet
    assert data.verdict_due() is False
    monkeypatch.setattr(data_module, "VERIFY_GAP_S", 0.0)  # type: ignore[attr-defined]
    monkeypatch.setattr(data_module, "VERIFY_COST_FACTOR", 0)  # type: ignore[attr-defined]
    assert data.verdict_due() is True
    assert data.audit_summary().records == first.records + 1
