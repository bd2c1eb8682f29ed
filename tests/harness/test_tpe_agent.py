"""The TPE agent: proposals inside the declared ranges, one change at a time, through the real server; the optimum of a
target with a known score is found; a kill -9 loses nothing of the study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.agents.random_agent import AgentOptions
from harness.agents.tpe_agent import PARAMS_MARK, TpeProposer, decode_params, encode_params, run_tpe_agent_sync
from harness.hyperparams import find_tunables, read_values
from helpers import REPO_ROOT, git

# The fake target scores 1 + (LR - 0.3)**2 + (WIDTH - 16)**2 / 1000: the optimum is LR 0.3, WIDTH 16, score 1.0.
RANGES = {'LR = 0.1          # the "hyperparameters" the score depends on':
          'LR = 0.1          # the "hyperparameters" the score depends on; range: 0.01..1.0 log',
          "WIDTH = 8\n": "WIDTH = 8         # range: 2..64\n"}
OPTIMUM_REGION = 1.01  # |LR - 0.3| < 0.1 and |WIDTH - 16| <= 3 score below this


def with_ranges(workspace: Path) -> Path:
    train = workspace / "train.py"
    text = train.read_text(encoding="utf-8")
    for old, new in RANGES.items():
        assert old in text
        text = text.replace(old, new)
    train.write_text(text, encoding="utf-8")
    git(workspace, "commit", "-qam", "declare the ranges")
    return workspace


def ledger(workspace: Path, tag: str) -> list[dict]:
    path = workspace / "runs" / tag / "experiments.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["type"] == "experiment"]


def init(workspace: Path, tag: str) -> None:
    from harness.cli import main

    assert main(["init", "--workspace", str(workspace), "--tag", tag]) == 0


# ---- without a server ----

def test_a_configuration_survives_the_trip_through_a_hypothesis() -> None:
    config = {"LR": 0.2758, "WIDTH": 16, "ACT": "gelu", "BIAS": True}
    text = f"TPE (3 trials) suggests LR = 0.2758. {encode_params(config)}"
    assert decode_params(text) == config
    assert decode_params("a person's hypothesis") is None
    assert decode_params(PARAMS_MARK + "{not json") is None


def test_each_proposal_changes_one_constant_inside_its_declared_range() -> None:
    source = ("LR = 0.1  # range: 0.01..1.0 log\nWIDTH = 8  # range: 2..64\nACT = 'relu'  # choices: relu, gelu\n"
              "SEED = 1\n")
    proposer = TpeProposer(seed=3)
    proposer.read_space(source)
    proposer.rebuild("minimize", [])
    changed: set[str] = set()
    for i in range(12):
        proposal = proposer.propose(source)
        before, after = read_values(source), read_values(proposal.source)
        diff = {k for k in before if before[k] != after[k]}
        assert len(diff) == 1 and "SEED" not in diff
        name = diff.pop()
        changed.add(name)
        tunable = next(t for t in find_tunables(source) if t.name == name)
        assert tunable.contains(after[name]), (name, after[name])
        assert decode_params(proposal.hypothesis) == {k: v for k, v in after.items() if k != "SEED"}
        proposer.observe(proposal, {"status": "ok", "metric": 1.0 + i / 100})
    assert changed == {"LR", "WIDTH", "ACT"}  # the constants take turns


def test_a_failed_experiment_counts_as_the_worst_result_seen() -> None:
    proposer = TpeProposer()
    proposer.read_space("LR = 0.1  # range: 0.01..1.0 log\n")
    proposer.rebuild("minimize", [(1, {"LR": 0.1}, 1.5), (2, {"LR": 0.9}, None), (3, {"LR": 0.2}, 1.2)])
    values = [t.value for t in proposer.study.trials]  # type: ignore[union-attr]
    assert values == [1.5, 1.5, 1.2]


def test_a_value_outside_the_range_is_left_out_of_the_trial_not_fatal() -> None:
    proposer = TpeProposer()
    proposer.read_space("LR = 0.1  # range: 0.01..1.0 log\nWIDTH = 8  # range: 2..64\n")
    proposer.rebuild("minimize", [(1, {"LR": 7.0, "WIDTH": 8}, 1.0)])
    assert proposer.study.trials[0].params == {"WIDTH": 8}  # type: ignore[union-attr]


# ---- through the real server ----

@pytest.mark.slow
def test_tpe_finds_the_optimum_of_a_known_score_within_thirty_experiments(workspace: Path) -> None:
    ws = with_ranges(workspace)
    init(ws, "opt")
    steps = run_tpe_agent_sync(AgentOptions(workspace=ws, tag="opt", max_experiments=30, seed=0))
    assert len(steps) == 30 and steps[0].description == "baseline"
    records = ledger(ws, "opt")
    assert len(records) == 30
    kept = [r["metric"] for r in records if r["status"] == "ok"]
    assert min(kept) < OPTIMUM_REGION
    for record in records[1:]:  # every experiment: one line changed, its configuration on record, inside the ranges
        changed = [line for line in record["diff"].splitlines() if line.startswith("+") and not line.startswith("+++")]
        assert len(changed) == 1, record["diff"]
        config = decode_params(record["hypothesis"])
        assert config is not None and 0.01 <= float(config["LR"]) <= 1.0 and 2 <= int(config["WIDTH"]) <= 64
        assert f"{config['LR']}" in record["diff"] or f"{config['WIDTH']}" in record["diff"]
    best = git(ws, "show", "autoresearch/opt:train.py")
    values = read_values(best)
    assert abs(float(values["LR"]) - 0.3) < 0.1 and abs(int(values["WIDTH"]) - 16) <= 3


def _server_pids(workspace: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in cmdline and str(workspace).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def _wait_for(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_after_a_kill_9_the_restarted_agent_continues_the_same_study(workspace: Path) -> None:
    ws = with_ranges(workspace)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    agent = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--agent", "tpe", "--workspace", str(ws),
                              "--tag", "k", "--max-experiments", "50"], cwd=ws, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: len(ledger(ws, "k")) >= 6, 120, "six experiments in the ledger")
    finally:
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(10)
    _wait_for(lambda: not _server_pids(ws), 60, "the dead agent's server to exit")
    before = ledger(ws, "k")
    assert 6 <= len(before) < 50

    proposer = TpeProposer(seed=0)
    steps = run_tpe_agent_sync(AgentOptions(workspace=ws, tag="k", max_experiments=3, seed=0), proposer=proposer)
    assert len(steps) == 3
    after = ledger(ws, "k")
    earlier = after[:len(after) - 3]  # the killed run's experiments, the one it was killed in included if recorded
    assert len(earlier) >= len(before)
    expected = [decode_params(r["hypothesis"]) for r in earlier if decode_params(r["hypothesis"]) is not None]
    assert proposer.rebuilt == len(expected) >= 6
    rebuilt = proposer.study.trials  # type: ignore[union-attr]
    complete = [t for t in rebuilt if t.state.name == "COMPLETE"]
    assert [t.params for t in complete[:len(expected)]] == expected
    assert [r["description"] for r in after[-3:]] == [s.description for s in steps]
    assert all(f"TPE ({n} trials)" in r["hypothesis"] for n, r in enumerate(after[-3:], start=len(expected)))
