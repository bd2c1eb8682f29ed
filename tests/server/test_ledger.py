"""The experiment ledger: append-only lines folded into experiments, and results.tsv derived from them."""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from server import jsonl
from server.ledger import Experiment, Ledger

REPO = Path(__file__).resolve().parents[2]


def _exp(id: int, **overrides: Any) -> Experiment:
    fields: dict[str, Any] = dict(
        id=id, tag="mar1", parent="p" * 40, commit=f"{id:x}c0ffee".ljust(40, "0"), description=f"experiment {id}",
        hypothesis=None, diff="--- a/train.py\n+++ b/train.py\n", status="ok", metric_name="val_bpb",
        metric=1.0 - id / 1000, verified=True, metrics={"val_bpb": 1.0 - id / 1000, "device": "cpu"},
        started_at="2025-03-01T12:00:00.000Z", finished_at="2025-03-01T12:05:00.000Z", duration_s=300.5,
        train_s=240.0, eval_s=30.0, peak_memory_mb=2048.0, failure=None, log_tail="step 100\n",
        log_path=f"experiments/{id}/run.log", fingerprint="fp", is_baseline=False, caller="agent",
        decision=None, decision_reason=None, kept_commit=None)
    fields.update(overrides)
    return Experiment(**fields)


def test_an_experiment_round_trips_through_json_and_through_the_ledger_file(tmp_path: Path) -> None:
    exp = _exp(1, hypothesis="wider MLP helps", metrics={"val_bpb": 0.99, "note": "ok ☃"})
    assert Experiment.from_json(json.loads(json.dumps(exp.to_json()))) == exp

    ledger = Ledger(tmp_path)
    ledger.append_experiment(exp)
    assert ledger.experiments() == [exp] and ledger.get(1) == exp and ledger.get(2) is None
    line = json.loads((tmp_path / "experiments.jsonl").read_text())
    assert line["type"] == "experiment" and line["id"] == 1


def test_decisions_fold_into_their_experiments_and_next_id_follows_the_highest(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    assert ledger.next_id() == 1 and ledger.experiments() == []
    ledger.append_experiment(_exp(2))
    ledger.append_experiment(_exp(1))
    ledger.append_experiment(_exp(3))

    kept = ledger.append_decision(1, "keep", "lower val_bpb", "b" * 40)
    ledger.append_decision(3, "discard", "worse", "a" * 40)

    assert kept.decision == "keep" and kept.kept_commit == "b" * 40 and kept.decision_reason == "lower val_bpb"
    folded = Ledger(tmp_path).experiments()
    assert [e.id for e in folded] == [1, 2, 3]
    assert [e.decision for e in folded] == ["keep", None, "discard"]
    assert folded[2].kept_commit is None and folded[2].decision_reason == "worse"
    assert ledger.next_id() == 4
    decision_line = json.loads((tmp_path / "experiments.jsonl").read_text().splitlines()[3])
    assert decision_line["type"] == "decision" and decision_line["experiment_id"] == 1
    assert decision_line["commit"] == "b" * 40 and decision_line["time"].endswith("Z")


def test_a_duplicate_id_an_unknown_id_and_a_second_decision_are_refused(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.append_experiment(_exp(1))
    with pytest.raises(ValueError, match="experiment 1 is already in .*Use id 2"):
        ledger.append_experiment(_exp(1, description="again"))
    with pytest.raises(ValueError, match="no experiment 7 .*recorded: ids 1..1"):
        ledger.append_decision(7, "keep", "r", "c" * 40)
    ledger.append_decision(1, "discard", "worse", None)
    with pytest.raises(ValueError, match="experiment 1 was already decided: discard"):
        ledger.append_decision(1, "keep", "changed my mind", "c" * 40)
    with pytest.raises(ValueError, match="decision 'maybe'"):
        ledger.append_decision(1, "maybe", None, None)  # type: ignore[arg-type]
    assert len((tmp_path / "experiments.jsonl").read_text().splitlines()) == 2


def test_an_invalid_status_is_refused_when_the_experiment_is_built() -> None:
    with pytest.raises(ValueError, match="status 'oom' is not one of ok, crash, timeout, invalid"):
        _exp(1, status="oom")


def test_a_decision_line_for_an_unrecorded_experiment_is_named_as_corruption(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.append_experiment(_exp(1))
    jsonl.append_record(ledger.path, {"type": "decision", "experiment_id": 9, "decision": "keep", "reason": None,
                                      "commit": None, "time": "t"})
    jsonl.append_record(ledger.path, {"type": "experiment", **_exp(2).to_json()})
    with pytest.raises(jsonl.CorruptFileError, match="line 2 .*unrecorded experiment 9"):
        ledger.experiments()


def test_results_tsv_matches_the_original_format_byte_for_byte(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.append_experiment(_exp(1, description="baseline", is_baseline=True, metric=0.9979, peak_memory_mb=44000.0,
                                  decision="keep", decision_reason="baseline", kept_commit="a1b2c3d4e5f6"))
    ledger.append_experiment(_exp(2, description="increase LR to 0.04", metric=1.005123456, peak_memory_mb=44200.0))
    ledger.append_experiment(_exp(3, description="double width", status="crash", metric=None, peak_memory_mb=None,
                                  failure="CUDA OOM", decision="discard", decision_reason="crash"))
    ledger.append_experiment(_exp(4, description="huge\tmodel\nsecond line", status="timeout", metric=None,
                                  failure="over budget", decision="discard", decision_reason="timeout"))
    ledger.append_experiment(_exp(5, description="tokenizer hack", status="invalid", metric=None,
                                  failure="prepare.py changed", decision="discard", decision_reason="invalid"))
    ledger.append_experiment(_exp(6, description="gelu to relu^2", metric=0.9871, verified=False,
                                  peak_memory_mb=1536.0))
    ledger.append_experiment(_exp(7, description="still pending"))
    ledger.append_decision(2, "discard", "worse", None)
    ledger.append_decision(6, "keep", "better", "f00dfeed1234")

    expected = (
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
        "a1b2c3d\t0.997900\t43.0\tkeep\tbaseline\n"
        "3c0ffee\t0.000000\t0.0\tcrash\tdouble width\n"
        "4c0ffee\t0.000000\t2.0\tcrash\t[timeout] huge model second line\n"
        "5c0ffee\t0.000000\t2.0\tcrash\t[invalid] tokenizer hack\n"
        "2c0ffee\t1.005123\t43.2\tdiscard\tincrease LR to 0.04\n"
        "f00dfee\t0.987100\t1.5\tkeep\t[unverified] gelu to relu^2\n"
    )  # rows in the order the outcomes were decided, as the original loop appends them
    assert (tmp_path / "results.tsv").read_bytes() == expected.encode()
    (tmp_path / "results.tsv").unlink()
    ledger.write_results_tsv()
    assert (tmp_path / "results.tsv").read_bytes() == expected.encode()

    (tmp_path / "results.tsv").unlink()
    Ledger(tmp_path, metric_name="val_loss").write_results_tsv()
    assert (tmp_path / "results.tsv").read_text().startswith("commit\tval_loss\tmemory_gb\tstatus\tdescription\n")


def test_results_tsv_is_regenerated_after_every_append(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.append_experiment(_exp(1))
    assert (tmp_path / "results.tsv").read_text() == "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
    ledger.append_decision(1, "keep", "baseline", "k" * 40)
    assert (tmp_path / "results.tsv").read_text().splitlines()[1] == "kkkkkkk\t0.999000\t2.0\tkeep\texperiment 1"


def test_a_process_killed_while_appending_experiments_leaves_a_readable_ledger(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[2])
        from test_ledger import _exp
        from server.ledger import Ledger
        ledger = Ledger(sys.argv[1])
        i = 1
        while True:
            ledger.append_experiment(_exp(i, log_tail="x" * 20000))
            if i % 3 == 0:
                ledger.append_decision(i, "discard", "worse", None)
            print(i, flush=True)
            i += 1
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(Path(__file__).parent)], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 60
        seen = 0
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while seen < 15:
                assert time.monotonic() < deadline and proc.poll() is None, "child stopped appending"
                if sel.select(deadline - time.monotonic()) and proc.stdout.readline():
                    seen += 1
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    ledger = Ledger(tmp_path)
    experiments = ledger.experiments()
    assert len(experiments) >= 15 and [e.id for e in experiments] == list(range(1, len(experiments) + 1))
    next_id = ledger.next_id()
    ledger.append_experiment(dataclasses.replace(experiments[0], id=next_id))
    assert ledger.get(next_id) is not None
    assert all(json.loads(line) for line in (tmp_path / "experiments.jsonl").read_text().splitlines())


def _view(ledger: Ledger) -> tuple[object, ...]:
    return (ledger.experiments(), ledger.counts(), ledger.pending(), ledger.baseline(), ledger.best_kept(),
            ledger.last_kept_commit(), [ledger.best_before(i) for i in range(1, 12)], ledger.last(3, "ok"))


def _filled(tmp_path: Path) -> Ledger:
    ledger = Ledger(tmp_path)
    ledger.append_experiment(_exp(1, is_baseline=True, decision="keep", decision_reason="baseline",
                                  kept_commit="b" * 40))
    for i in range(2, 10):
        ledger.append_experiment(_exp(i, status="crash" if i % 4 == 0 else "ok",
                                      metric=None if i % 4 == 0 else 1.0 - i / 100))
        ledger.append_decision(i, "keep" if i % 3 == 0 else "discard", "r", f"{i}" * 40 if i % 3 == 0 else None)
    ledger.append_experiment(_exp(10))
    return ledger


def test_a_ledger_opened_from_its_index_shows_what_a_full_read_shows(tmp_path: Path) -> None:
    expected = _view(_filled(tmp_path))
    assert (tmp_path / "experiments.idx").exists()
    assert _view(Ledger(tmp_path)) == expected
    (tmp_path / "experiments.idx").unlink()
    assert _view(Ledger(tmp_path)) == expected


@pytest.mark.parametrize("damage", ["garbage", "stale", "shifted", "torn"])
def test_a_damaged_or_stale_index_is_ignored_and_rebuilt_from_the_ledger(tmp_path: Path, damage: str) -> None:
    ledger = _filled(tmp_path)
    expected = _view(ledger)
    index = tmp_path / "experiments.idx"
    lines = index.read_bytes().splitlines(keepends=True)
    if damage == "garbage":
        index.write_bytes(b"not json\n" + b"".join(lines))
    elif damage == "stale":
        index.write_bytes(b"".join(lines[:-3]))
    elif damage == "shifted":
        row = json.loads(lines[4])
        row[0] += 1
        lines[4] = (json.dumps(row) + "\n").encode()
        index.write_bytes(b"".join(lines))
    else:
        index.write_bytes(b"".join(lines)[:-7])
    reopened = Ledger(tmp_path)
    assert _view(reopened) == expected
    reopened.append_decision(10, "discard", "r", None)
    assert json.loads(index.read_bytes().splitlines()[-1])[2:4] == ["d", 10]
    assert _view(Ledger(tmp_path)) == _view(reopened)


def test_a_reader_sees_lines_another_process_appended_without_reading_the_file_again(tmp_path: Path) -> None:
    reader = _filled(tmp_path)
    reader.experiments()
    writer = Ledger(tmp_path)
    writer.append_decision(10, "keep", "better", "c" * 40)
    writer.append_experiment(_exp(11))
    assert reader.pending().id == 11 and reader.last_kept_commit() == "c" * 40
    assert reader.counts()["total"] == 11
