"""Honest acceptance through the real tools: on a target whose score carries seeded noise, a change that does nothing
cannot be kept even when one run of it looks like a win; a real improvement is confirmed by re-runs and kept; every
re-run is a ledger line of its own that counts in the run's limits; a kill -9 during a confirmation ends, after a
restart, in exactly one correct decision."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from helpers import FAKE_TARGET, REPO_ROOT, make_engine, make_workspace, set_constant
from harness.cli_views import status_lines
from harness.report import read_night, render_markdown
from server.inflight import read_entries
from server.app import build_server
from server.config import ConfigError, load_config

pytestmark = pytest.mark.anyio

# The score is the fake target's plus a noise fixed by the run's seed: (seed % 101 - 50) / 5000, in [-0.01, +0.01],
# so a test that picks the seeds knows every score, and one that does not still has a bounded noise.
NOISY_PREPARE_TAIL = '''

def noisy_score(params):
    return score(params) + (int(params.get("SEED", 50)) % 101 - 50) / 5000.0


def evaluate(path):  # noqa: F811 - the noisy target's evaluation replaces the plain one
    with open(path, encoding="utf-8") as fh:
        params = json.load(fh)
    print("---")
    print(f"score:            {noisy_score(params):.6f}")
    print(f"corpus_fingerprint: {FINGERPRINT}")


if __name__ == "__main__":
    evaluate(sys.argv[2])
'''

ACCEPTANCE_KEYS = "noise_runs = 3\nconfirm_runs = 2\nnoise_k = 1.0\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def noisy(tmp_path: Path, isolated_home: Path) -> Path:
    """A workspace whose evaluation adds the seed's noise, with three baseline runs and two confirmations."""
    source = tmp_path / "noisy_target"
    shutil.copytree(FAKE_TARGET, source, ignore=shutil.ignore_patterns("__pycache__"))
    prepare = (source / "prepare.py").read_text(encoding="utf-8")
    main_block = prepare.index('\nif __name__ == "__main__":')
    (source / "prepare.py").write_text(prepare[:main_block] + NOISY_PREPARE_TAIL, encoding="utf-8")
    train = (source / "train.py").read_text(encoding="utf-8")
    train = train.replace('prepare.save_checkpoint({"LR": LR, "WIDTH": WIDTH}, ckpt)',
                          'time.sleep(PAUSE_S)\n'
                          '        prepare.save_checkpoint({"LR": LR, "WIDTH": WIDTH, '
                          '"SEED": os.environ.get("AUTORESEARCH_SEED", "50")}, ckpt)')
    train = train.replace("WIDTH = 8\n", "WIDTH = 8\nPAUSE_S = 0.0\n")
    assert "PAUSE_S" in train and '"SEED"' in train
    (source / "train.py").write_text(train, encoding="utf-8")
    toml = (source / "autoresearch.toml").read_text(encoding="utf-8")
    (source / "autoresearch.toml").write_text(toml.replace("[evaluate]", ACCEPTANCE_KEYS + "\n[evaluate]"),
                                              encoding="utf-8")
    return make_workspace(tmp_path / "ws", source)


def seeds(*values: int) -> Iterator[int]:
    """Seeds handed to the runs in order; noise of seed s is (s % 101 - 50) / 5000."""
    yield from values
    raise AssertionError("the engine started more runs than the test planned")


@pytest.mark.slow  # runs 4 to 8 experiments
async def test_a_no_op_change_whose_one_run_looks_like_a_win_cannot_be_kept_through_the_tools(noisy: Path) -> None:
    engine = make_engine(noisy)
    # baseline 1.104 with noise 0, -0.002, +0.002 (floor 0.002); the no-op's first run draws -0.01 (1.094, "a win"),
    # its confirmations +0.002 and +0.004: mean 1.102667 is within the floor of the best's mean 1.104.
    engine.next_seed = seeds(50, 40, 60, 0, 60, 70).__next__
    original = (noisy / "train.py").read_text(encoding="utf-8")
    async with Client(build_server(engine)) as client:
        base = await client.call_tool("run_experiment", {"description": "baseline"})
        assert base.structured_content["decision"] == "keep", base
        view = await client.call_tool("read_results", {})
        assert view.structured_content["noise_floor"] == pytest.approx(0.002)
        (noisy / "train.py").write_text(original + "\n# a comment that changes nothing\n", encoding="utf-8")
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert "re-run 2 more time(s) with fresh seeds" in tools["commit_or_revert"].description
        lucky = await client.call_tool("run_experiment", {"description": "a comment only"})
        assert lucky.structured_content["metric"] == pytest.approx(1.094)
        assert lucky.structured_content["would_keep"] is True, "one run alone would have kept it"
        verdict = await client.call_tool("commit_or_revert", {})
        assert verdict.structured_content["decision"] == "discard"
        assert verdict.structured_content["reason"].startswith("not confirmed: mean 1.102667 over 3 runs")
        view = await client.call_tool("read_results", {"last_n": 20})
    rows = view.structured_content["experiments"]
    assert [(r["id"], r["repeat_of"]) for r in rows] == [(1, None), (2, 1), (3, 1), (4, None), (5, 4), (6, 4)]
    assert [r["decision"] for r in rows if r["repeat_of"] is None] == ["keep", "discard"]
    assert engine.ledger.best_kept().id == 1
    assert (noisy / "train.py").read_text(encoding="utf-8") == original


@pytest.mark.slow  # runs 4 to 8 experiments
async def test_a_no_op_change_within_the_floor_is_discarded_at_once_without_re_runs(noisy: Path) -> None:
    engine = make_engine(noisy)
    engine.next_seed = seeds(50, 40, 60, 49).__next__  # the no-op draws -0.0002: inside the floor, no confirmation
    async with Client(build_server(engine)) as client:
        await client.call_tool("run_experiment", {"description": "baseline"})
        set_constant(noisy / "train.py", "LR", "0.10")
        await client.call_tool("run_experiment", {"description": "LR written as 0.10, the same value"})
        verdict = await client.call_tool("commit_or_revert", {})
    assert verdict.structured_content["decision"] == "discard"
    assert "does not beat the best's mean 1.104000 over 3 runs by more than 0.002000" in \
        verdict.structured_content["reason"]
    assert engine.ledger.max_id() == 4, "no confirmation runs for a result inside the floor"


@pytest.mark.slow  # runs 4 to 8 experiments
async def test_a_real_improvement_is_confirmed_by_re_runs_and_kept(noisy: Path) -> None:
    engine = make_engine(noisy)
    async with Client(build_server(engine)) as client:
        await client.call_tool("run_experiment", {"description": "baseline"})
        set_constant(noisy / "train.py", "LR", "0.3")
        set_constant(noisy / "train.py", "WIDTH", "16")
        better = await client.call_tool("run_experiment", {"description": "LR 0.3 WIDTH 16"})
        assert "re-runs this change 2 more time(s)" in better.structured_content["next_step"]
        verdict = await client.call_tool("commit_or_revert", {})
        view = await client.call_tool("read_results", {"last_n": 20})
    assert verdict.structured_content["decision"] == "keep", verdict
    assert verdict.structured_content["reason"].startswith("confirmed: mean ")
    assert " over 3 runs beats the best's mean " in verdict.structured_content["reason"]
    assert view.structured_content["best"]["id"] == 4
    assert view.structured_content["counts"]["total"] == 6
    repeats = [e for e in engine.ledger.experiments() if e.repeat_of == 4]
    assert [e.status for e in repeats] == ["ok", "ok"] and len({e.seed for e in repeats}) == 2
    assert all(e.commit == engine.ledger.get(4).commit for e in repeats), "a confirmation re-runs the candidate's code"
    decision = [json.loads(line) for line in (engine.run_dir / "experiments.jsonl").read_text().splitlines()
                if '"type":"decision"' in line.replace(" ", "")][-1]
    assert decision["runs"] == 3 and decision["noise_floor"] > 0

    night = read_night(engine.run_dir, "t1", "score", "minimize")
    assert night.noise_floor == pytest.approx(engine.noise_floor())
    report = render_markdown("t1", "score", "minimize", engine.ledger.experiments(), night)
    assert f"Noise floor: ±{engine.noise_floor():.6f}" in report
    assert "Re-runs with fresh seeds: 2 of the baseline (the noise floor), 2 confirming candidates" in report
    row = next(line for line in report.splitlines() if line.startswith("| 4 |"))
    gain = engine.ledger.get(1).metric - engine.ledger.get(4).metric  # against the best single run before it
    assert f"| {gain / engine.noise_floor():.1f}x |" in row, row
    status = status_lines(engine.config, engine.run, engine)
    assert any(f"noise floor {engine.noise_floor():.6f}" in line for line in status), status


@pytest.mark.slow  # runs 4 to 8 experiments
async def test_confirmation_runs_count_in_max_experiments_and_a_candidate_that_cannot_be_confirmed_is_not_kept(
        noisy: Path) -> None:
    engine = make_engine(noisy)
    (engine.run_dir / "limits.json").write_text(json.dumps({"max_experiments": 5}), encoding="utf-8")
    async with Client(build_server(engine)) as client:
        await client.call_tool("run_experiment", {"description": "baseline"})  # 1 run + 2 noise runs
        set_constant(noisy / "train.py", "LR", "0.3")
        set_constant(noisy / "train.py", "WIDTH", "16")
        await client.call_tool("run_experiment", {"description": "LR 0.3 WIDTH 16"})  # the 4th
        verdict = await client.call_tool("commit_or_revert", {})  # the 5th is a confirmation; the 6th is refused
        refused = await client.call_tool("run_experiment", {"description": "one more"})
    assert verdict.structured_content["decision"] == "discard"
    assert "confirmation could not run: the run's limit of 5 experiments is reached" in \
        verdict.structured_content["reason"]
    assert refused.is_error and "limit of 5 experiments" in refused.content[0].text
    assert engine.ledger.counts()["total"] == 5


@pytest.mark.slow  # runs 4 to 8 experiments
async def test_noise_runs_cut_short_are_finished_by_the_next_run_experiment_before_the_candidate(noisy: Path) -> None:
    engine = make_engine(noisy)
    limits = engine.run_dir / "limits.json"
    limits.write_text(json.dumps({"max_experiments": 2}), encoding="utf-8")
    async with Client(build_server(engine)) as client:
        base = await client.call_tool("run_experiment", {"description": "baseline"})  # the limit stops the 3rd run
        assert base.structured_content["decision"] == "keep"
        assert engine.ledger.counts()["total"] == 2
        limits.write_text(json.dumps({"max_experiments": 10}), encoding="utf-8")
        set_constant(noisy / "train.py", "LR", "0.3")
        ran = await client.call_tool("run_experiment", {"description": "LR 0.3"})
        view = await client.call_tool("read_results", {"last_n": 10})
    assert ran.structured_content["id"] == 4
    assert [(r["id"], r["repeat_of"]) for r in view.structured_content["experiments"]] == \
        [(1, None), (2, 1), (3, 1), (4, None)]
    assert engine.noise_floor() is not None
    assert view.structured_content["noise_floor"] == pytest.approx(engine.noise_floor())


def crash_on_seed(workspace: Path, seed: int) -> None:
    """Make the workspace's train.py fail whenever the harness hands it `seed`."""
    train = workspace / "train.py"
    text = train.read_text(encoding="utf-8").replace(
        "PAUSE_S = 0.0\n", f"PAUSE_S = 0.0\nif os.environ.get('AUTORESEARCH_SEED') == '{seed}':\n"
                           f"    raise SystemExit('this seed crashes')\n")
    assert "this seed crashes" in text
    train.write_text(text, encoding="utf-8")
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qam", "crash on a seed"],
                   cwd=workspace, check=True)


@pytest.mark.slow  # runs 4 to 8 experiments
async def test_a_failed_noise_run_is_replaced_so_the_floor_rests_on_noise_runs_successful_runs(noisy: Path) -> None:
    crash_on_seed(noisy, 13)
    engine = make_engine(noisy)
    engine.next_seed = seeds(50, 13, 40, 60).__next__  # the first noise run crashes; a fresh seed replaces it
    async with Client(build_server(engine)) as client:
        base = await client.call_tool("run_experiment", {"description": "baseline"})
        view = await client.call_tool("read_results", {"last_n": 10})
    assert base.structured_content["decision"] == "keep"
    rows = view.structured_content["experiments"]
    assert [(r["id"], r["repeat_of"], r["status"]) for r in rows] == \
        [(1, None, "ok"), (2, 1, "crash"), (3, 1, "ok"), (4, 1, "ok")]
    assert view.structured_content["noise_floor"] == pytest.approx(0.002)


@pytest.mark.slow  # runs 4 to 8 experiments
async def test_a_baseline_whose_noise_runs_keep_failing_is_retried_a_bounded_number_of_times_and_says_so(
        noisy: Path) -> None:
    crash_on_seed(noisy, 13)
    engine = make_engine(noisy)
    engine.next_seed = seeds(50, 13, 13, 13, 13, 40, 50, 60).__next__  # two noise runs wanted: 4 attempts crash
    async with Client(build_server(engine)) as client:
        await client.call_tool("run_experiment", {"description": "baseline"})
        assert engine.ledger.max_id() == 5, "two noise runs wanted, each replaced once: four attempts"
        set_constant(noisy / "train.py", "LR", "0.3")
        ran = await client.call_tool("run_experiment", {"description": "LR 0.3"})
        view = await client.call_tool("read_results", {})
        verdict = await client.call_tool("commit_or_revert", {})
    assert ran.structured_content["id"] == 6, "no more noise runs before the candidate"
    assert view.structured_content["noise_floor"] is None
    assert "the noise floor could not be measured: 4 of the baseline's noise runs failed" in \
        verdict.structured_content["reason"]


@pytest.mark.slow  # runs 4 to 8 experiments
def test_a_confirmation_whose_in_flight_record_was_lost_is_recovered_still_linked_to_its_candidate(
        noisy: Path) -> None:
    engine = make_engine(noisy)
    anyio.run(engine.run_experiment, "baseline")
    set_constant(noisy / "train.py", "LR", "0.3")
    set_constant(noisy / "train.py", "WIDTH", "16")
    anyio.run(engine.run_experiment, "LR 0.3 WIDTH 16")
    candidate = engine.ledger.get(4)
    # what a server leaves when it is killed after a confirmation started and its inflight.json is lost
    folder = engine.run_dir / "experiments" / "0005"
    shutil.copytree(engine.run_dir / "experiments" / "0004" / "snapshot", folder / "snapshot")
    (folder / "repeat_of").write_text("4", encoding="utf-8")
    (folder / "run.log").write_text("training\n", encoding="utf-8")
    engine.repo.point_ref("refs/autoresearch/t1/0005", candidate.commit, "confirmation of 4")

    from test_records import reopen
    restarted = reopen(noisy)
    lost = restarted.ledger.get(5)
    assert (lost.repeat_of, lost.status, lost.decision, lost.is_baseline) == (4, "crash", "discard", False)
    verdict = restarted.commit_or_revert()
    assert verdict.decision == "keep" and verdict.reason.startswith("confirmed: mean ")
    assert [e.status for e in restarted.ledger.experiments() if e.repeat_of == 4] == ["crash", "ok", "ok"]


KILL_DRIVER = """
import sys
from pathlib import Path
from server.config import load_config
from server.engine import Engine
from server.runstate import load_run
config = load_config(Path(sys.argv[1]))
engine = Engine(config, load_run(config, "t1"))
engine.recover()
print("deciding", flush=True)
print(engine.commit_or_revert().decision, flush=True)
"""


def wait_for(predicate, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow  # runs 4 to 8 experiments
def test_a_server_killed_mid_confirmation_is_completed_by_the_next_server_with_one_correct_decision(
        noisy: Path) -> None:
    engine = make_engine(noisy)
    anyio.run(engine.run_experiment, "baseline")
    set_constant(noisy / "train.py", "LR", "0.3")
    set_constant(noisy / "train.py", "WIDTH", "16")
    set_constant(noisy / "train.py", "PAUSE_S", "3.0")  # long enough to be killed inside a confirmation
    anyio.run(engine.run_experiment, "LR 0.3 WIDTH 16, slow")
    proc = subprocess.Popen([sys.executable, "-c", KILL_DRIVER, str(noisy)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        inflight = engine.run_dir / "inflight.json"

        def second_confirmation_running() -> bool:
            return any(e["id"] == 6 and e.get("repeat_of") == 4 and e.get("pgid") is not None
                       for e in read_entries(inflight.parent))

        wait_for(second_confirmation_running, "the second confirmation run to start")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert engine.ledger.get(4).decision is None, "killed before deciding: the candidate is still pending"
    assert not (engine.run_dir / "decision.json").exists(), "no intent is written before the confirmations end"

    from test_records import assert_records_consistent, reopen
    restarted = reopen(noisy)
    interrupted = restarted.ledger.get(6)
    assert interrupted.repeat_of == 4 and interrupted.status == "crash" and interrupted.decision == "discard"
    verdict = restarted.commit_or_revert()
    assert verdict.decision == "keep" and verdict.reason.startswith("confirmed: mean ")
    repeats = [e for e in restarted.ledger.experiments() if e.repeat_of == 4]
    assert [e.status for e in repeats] == ["ok", "crash", "ok"], "only the missing confirmation ran again"
    assert [e.decision for e in restarted.ledger.experiments() if e.repeat_of is None] == ["keep", "keep"]
    assert_records_consistent(noisy, restarted)


@pytest.mark.parametrize(("line", "message"), [
    ("noise_runs = 0", "noise_runs = 0 is not allowed; expected an integer in 1..50"),
    ("confirm_runs = -1", "confirm_runs = -1 is not allowed; expected an integer in 0..50"),
    ("noise_k = -0.5", "noise_k = -0.5 is not allowed; expected a number >= 0"),
    ("noise_runs = 2.5", "noise_runs = 2.5 is not allowed; expected an integer in 1..50"),
])
def test_a_bad_acceptance_setting_is_refused_naming_the_key_and_what_is_allowed(
        tmp_path: Path, isolated_home: Path, line: str, message: str) -> None:
    workspace = make_workspace(tmp_path / "ws")
    toml = workspace / "autoresearch.toml"
    toml.write_text(line + "\n" + toml.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(workspace)


def test_without_acceptance_settings_a_run_keeps_one_baseline_run_and_no_confirmation(workspace: Path) -> None:
    config = load_config(workspace)
    assert (config.noise_runs, config.confirm_runs, config.noise_k) == (1, 0, 1.0)
    assert config.margin(None) == 0.0 and config.margin(0.01) == pytest.approx(0.01)


def test_the_shipped_cpu_profile_measures_the_floor_three_times_and_confirms_twice_at_two_floors() -> None:
    cpu = load_config(REPO_ROOT, profile="cpu")
    assert (cpu.noise_runs, cpu.confirm_runs, cpu.noise_k) == (3, 2, 2.0)
    assert (load_config(REPO_ROOT, profile="mps").noise_runs, load_config(REPO_ROOT, profile="mps").confirm_runs) \
        == (2, 1)


@pytest.mark.slow  # runs 4 to 8 experiments
def test_the_random_search_loop_counts_noise_and_confirmation_runs_in_max_experiments(
        noisy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    code = main(["run", "--agent", "random", "--workspace", str(noisy), "--tag", "r1", "--max-experiments", "4",
                 "--seed", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [json.loads(line) for line in (noisy / "runs" / "r1" / "experiments.jsonl").read_text().splitlines()]
    experiments = [r for r in lines if r["type"] == "experiment"]
    assert [r["repeat_of"] for r in experiments[:3]] == [None, 1, 1], "the baseline ran three times"
    assert 4 <= len(experiments) <= 6, "one candidate after the noise runs, plus its confirmations if it won"
    assert out.count("experiment ") == 2, "the loop stopped once the ledger held 4 experiments"
