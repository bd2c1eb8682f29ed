"""The loop state read from a run's files, and the text it gives the model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness.loop_state import BRIEF_LIMIT, read_loop_state
from server.config import Config, load_config
from server.jsonl import append_record
from server.ledger import Experiment, Ledger
from server.runstate import RunInfo, init_run


@pytest.fixture
def run(workspace: Path) -> tuple[Config, RunInfo]:
    config = load_config(workspace)
    return config, init_run(config, "t1")


def record(run_dir: Path, exp_id: int, *, status: str = "ok", metric: float | None = 1.0, description: str = "idea",
           decision: str | None = "discard", diff: str = "", failure: str | None = None,
           baseline: bool = False) -> None:
    ledger = Ledger(run_dir, metric_name="score")
    ledger.append_experiment(Experiment(
        id=exp_id, tag="t1", parent="a" * 40, commit=f"{exp_id:040x}", description=description, hypothesis=None,
        diff=diff, status=status, metric_name="score", metric=metric if status == "ok" else None, verified=True,  # type: ignore[arg-type]
        metrics={}, started_at="2026-01-01T00:00:00.000Z", finished_at="2026-01-01T00:01:00.000Z", duration_s=60.0,
        train_s=None, eval_s=None, peak_memory_mb=None, failure=failure, log_tail="", log_path="", fingerprint=None,
        is_baseline=baseline, caller=None, decision=None, decision_reason=None, kept_commit=None))
    if decision is not None:
        ledger.append_decision(exp_id, decision, "test", f"{exp_id:040x}" if decision == "keep" else None)  # type: ignore[arg-type]


def test_a_fresh_run_asks_for_the_baseline_and_has_no_stop_reason(run: tuple[Config, RunInfo]) -> None:
    config, info = run
    state = read_loop_state(config, info)
    assert state.stop_reason() is None
    brief = state.brief()
    assert "autoresearch run t1" in brief and "score (minimize" in brief
    assert "record the baseline" in brief
    assert "time left: no deadline" in brief


def test_the_brief_shows_best_baseline_the_last_five_and_what_to_do_next_within_its_limit(
        run: tuple[Config, RunInfo]) -> None:
    config, info = run
    record(info.run_dir, 1, metric=2.0, description="baseline", decision="keep", baseline=True)
    for i in range(2, 9):
        record(info.run_dir, i, metric=2.5, description=f"idea number {i} " + "with a long explanation " * 20)
    record(info.run_dir, 9, metric=1.5, description="wider model", decision="keep")
    record(info.run_dir, 10, metric=1.4, description="deeper model", decision=None)
    append_record(info.run_dir / "violations.jsonl", {"time": "2026-01-01T00:00:00.000Z", "source": "guard",
                                                      "path": "prepare.py", "detail": "changed"})
    brief = read_loop_state(config, info).brief()
    assert len(brief) < BRIEF_LIMIT
    assert "baseline 2.000000 (#1)" in brief and "best 1.500000 (#9)" in brief
    assert "#10 ok 1.400000 pending: deeper model" in brief
    assert "#5 " not in brief and "#6 " in brief  # only the last five
    assert "pending decision: #10" in brief
    assert "violations (locked files changed and restored): 1" in brief
    assert "commit_or_revert to decide experiment 10" in brief


def test_an_experiment_in_flight_is_shown_with_its_remaining_limit(run: tuple[Config, RunInfo]) -> None:
    config, info = run
    record(info.run_dir, 1, metric=2.0, description="baseline", decision="keep", baseline=True)
    now = time.time()
    (info.run_dir / "inflight.json").write_text(json.dumps(
        {"id": 2, "description": "try adamw", "started_at": now - 10, "deadline": now + 290}), encoding="utf-8")
    state = read_loop_state(config, info, now=now)
    assert state.experiments_started == 2
    assert "in flight: #2 try adamw (hard limit in 4m50s)" in state.brief()
    assert "wait for run_experiment" in state.next_action()


def test_each_limit_and_the_stop_file_give_a_stop_reason(run: tuple[Config, RunInfo]) -> None:
    config, info = run
    now = time.time()
    record(info.run_dir, 1, metric=2.0, description="baseline", decision="keep", baseline=True)
    record(info.run_dir, 2)
    limits = info.run_dir / "limits.json"

    limits.write_text(json.dumps({"deadline": now + 3600, "max_experiments": 3, "max_cost_usd": 5.0}))
    assert read_loop_state(config, info, now=now).stop_reason() is None
    assert "time left: 1h00m" in read_loop_state(config, info, now=now).brief()

    limits.write_text(json.dumps({"deadline": now - 1, "max_experiments": None, "max_cost_usd": None}))
    assert "time limit" in (read_loop_state(config, info, now=now).stop_reason() or "")

    limits.write_text(json.dumps({"deadline": None, "max_experiments": 2, "max_cost_usd": None}))
    assert "2 experiments done, the limit is 2" == read_loop_state(config, info).stop_reason()

    limits.write_text(json.dumps({"deadline": None, "max_experiments": None, "max_cost_usd": 5.0}))
    (info.run_dir / "supervisor.json").write_text(json.dumps({"cost_usd": 5.25}))
    assert "$5.25" in (read_loop_state(config, info).stop_reason() or "")

    limits.unlink()
    (info.run_dir / "stop").touch()
    state = read_loop_state(config, info)
    assert "stop was requested" in (state.stop_reason() or "")
    assert state.next_action().startswith("Stop:")


def test_damaged_optional_files_read_as_absent(run: tuple[Config, RunInfo]) -> None:
    config, info = run
    (info.run_dir / "limits.json").write_text("{not json")
    (info.run_dir / "supervisor.json").write_text("[1, 2]")
    (info.run_dir / "inflight.json").write_text(json.dumps({"id": "x"}))
    state = read_loop_state(config, info)
    assert state.stop_reason() is None and state.in_flight is None and state.cost_usd is None


def test_the_handoff_carries_the_best_diff_bounded_what_failed_the_crashes_and_how_to_continue(
        run: tuple[Config, RunInfo]) -> None:
    config, info = run
    record(info.run_dir, 1, metric=2.0, description="baseline", decision="keep", baseline=True)
    record(info.run_dir, 2, metric=2.2, description="smaller batch")
    record(info.run_dir, 3, status="crash", description="fused attention", failure="exit code 1; CUDA OOM")
    big_diff = "--- a/train.py\n+++ b/train.py\n" + "+LR = 0.04\n" * 2000
    record(info.run_dir, 4, metric=1.8, description="higher lr", decision="keep", diff=big_diff)
    text = read_loop_state(config, info).handoff()
    assert "Best so far: experiment 4, score 1.800000: higher lr" in text
    assert "+LR = 0.04" in text and "diff cut" in text
    assert text.count("+LR = 0.04") < 500  # bounded, not the 2000-line diff
    assert "#2 ok 2.200000 discard: smaller batch" in text
    assert "#3 crash: exit code 1; CUDA OOM" in text
    assert "Continue the loop with the tools: call read_results" in text


def test_the_supervisor_view_reads_the_files_afresh_on_every_call(run: tuple[Config, RunInfo]) -> None:
    from harness.loop_state import RunLoopView
    from harness.supervisor import LoopView

    config, info = run
    view: LoopView = RunLoopView(config, info)
    assert view.inflight_deadline() is None and view.experiments_started() == 0 and not view.stop_requested()
    assert "program.md" in view.start_prompt() and "record the baseline" in view.start_prompt()
    record(info.run_dir, 1, metric=2.0, description="baseline", decision="keep", baseline=True)
    (info.run_dir / "inflight.json").write_text(json.dumps({"id": 2, "description": "x", "started_at": 1.0,
                                                           "deadline": 99.0}))
    (info.run_dir / "stop").touch()
    assert view.inflight_deadline() == 99.0 and view.experiments_started() == 2 and view.stop_requested()
    assert "Continue the loop" in view.handoff_prompt() and view.violations() == 0
