"""`autoresearch compare`: runs side by side, and a refusal when they did not measure the same thing."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.compare import Point, RunFacts, common_mark, differences, with_mark
from helpers import git


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def facts(tag: str, curve: list[tuple[int, float, float]], **changes: object) -> RunFacts:
    base = dict(tag=tag, agent="random", metric="val_bpb", direction="minimize", baseline=curve[0][2],
                best=min(p[2] for p in curve), noise_floor=None, experiments=len(curve), kept=0,
                curve=tuple(Point(*p) for p in curve), fingerprint="abc", budget_s=60.0, device="cpu",
                agent_cost_usd=0.0)
    base.update(changes)
    return RunFacts(**base)  # type: ignore[arg-type]


# ---- the rules, on facts ----

def test_the_mark_is_the_mean_baseline_improved_and_reached_by_the_first_experiment_at_or_below_it() -> None:
    a = facts("a", [(1, 1.0, 2.0), (2, 2.0, 1.99), (3, 3.0, 1.97), (4, 4.0, 1.90)])
    b = facts("b", [(1, 1.0, 2.02), (2, 2.5, 2.02)])
    target = common_mark([a, b], 0.01)
    assert target == pytest.approx(2.01 * 0.99)
    reached = with_mark(a, target)
    assert (reached.mark_experiments, reached.mark_minutes) == (3, 3.0)
    assert with_mark(b, target).mark_experiments is None
    up = facts("up", [(1, 1.0, 0.5)], direction="maximize")
    assert common_mark([up], 0.1) == pytest.approx(0.55)


def test_differences_name_the_field_and_every_runs_value() -> None:
    a, b = facts("a", [(1, 1.0, 2.0)]), facts("b", [(1, 1.0, 2.0)], budget_s=300.0, device="cuda")
    found = differences([a, b])
    assert found == ["budget (s per experiment) differs: a=60.0, b=300.0", "device class differs: a=cpu, b=cuda"]
    assert differences([a, facts("c", [(1, 1.0, 1.0)])]) == []


def test_compare_needs_two_distinct_runs_and_a_sensible_mark(workspace: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    ws = str(workspace)
    code, _, err = cli(capsys, "compare", "only", "--workspace", ws)
    assert code == 2 and "at least two run tags" in err
    code, _, err = cli(capsys, "compare", "a", "a", "--workspace", ws)
    assert code == 2 and "named twice" in err
    code, _, err = cli(capsys, "compare", "a", "b", "--mark", "1.5", "--workspace", ws)
    assert code == 2 and "--mark" in err and "1.5" in err
    code, _, err = cli(capsys, "compare", "nope", "other", "--workspace", ws)
    assert code == 2 and "no run with tag 'nope'" in err


# ---- real runs ----

def _with_ranges(workspace: Path) -> None:
    train = workspace / "train.py"
    text = train.read_text(encoding="utf-8").replace(
        'LR = 0.1          # the "hyperparameters" the score depends on',
        'LR = 0.1          # the "hyperparameters" the score depends on; range: 0.01..1.0 log').replace(
        "WIDTH = 8\n", "WIDTH = 8         # range: 2..64\n")
    train.write_text(text, encoding="utf-8")
    git(workspace, "commit", "-qam", "declare the ranges")


@pytest.mark.slow
def test_runs_on_different_data_are_refused_unless_forced_and_then_flagged(workspace: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    ws = str(workspace)
    assert cli(capsys, "run", "--agent", "random", "--workspace", ws, "--tag", "d1", "--max-experiments", "3")[0] == 0
    git(workspace, "checkout", "-q", "main")
    prepare = workspace / "prepare.py"
    prepare.write_text(prepare.read_text().replace('FINGERPRINT = "fake0123456789abcdef"',
                                                   'FINGERPRINT = "other0123456789abcde"'))
    git(workspace, "commit", "-qam", "other data")
    assert cli(capsys, "run", "--agent", "random", "--workspace", ws, "--tag", "d2", "--max-experiments", "3")[0] == 0

    code, out, err = cli(capsys, "compare", "d1", "d2", "--workspace", ws)
    assert code == 2 and out == ""
    assert "not comparable" in err and "data fingerprint differs" in err
    assert "d1=fake0123456789abcdef" in err and "d2=other0123456789abcde" in err and "--force" in err
    assert "starting code (base commit) differs" in err  # the second run began from the commit that changed the data
    assert not list((workspace / "runs").glob("compare-*.png"))

    chart = workspace.parent / "forced.png"
    code, out, err = cli(capsys, "compare", "d1", "d2", "--workspace", ws, "--force", "--out", str(chart))
    assert code == 0 and "WARNING: NOT COMPARABLE" in err and "data fingerprint differs" in err
    assert "comparable: NO" in out and chart.stat().st_size > 10_000


@pytest.mark.slow
def test_two_comparable_runs_give_a_chart_and_a_table(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _with_ranges(workspace)
    toml = workspace / "autoresearch.toml"  # two baseline runs: the noise floor comes from them
    toml.write_text(toml.read_text(encoding="utf-8").replace("[evaluate]", "noise_runs = 2\n\n[evaluate]"),
                    encoding="utf-8")
    git(workspace, "commit", "-qam", "two baseline runs")
    ws = str(workspace)
    for agent, tag in (("random", "r"), ("tpe", "t")):
        git(workspace, "checkout", "-q", "main")
        assert cli(capsys, "run", "--agent", agent, "--workspace", ws, "--tag", tag, "--max-experiments", "6")[0] == 0
    code, out, err = cli(capsys, "compare", "r", "t", "--workspace", ws, "--mark", "0.01")
    assert code == 0 and err == ""
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in out.splitlines() if line.startswith("| ") and not line.startswith(("| run", "| ---"))}
    assert set(rows) == {"r", "t"}
    assert rows["r"][1] == "random" and rows["t"][1] == "tpe"
    assert rows["r"][4] == rows["t"][4] == "6"  # experiments
    assert rows["r"][3] == rows["t"][3] == "± 0.000000"  # the fake target scores the same code the same
    assert "comparable: yes: data fingerprint fake0123456789ab, budget 5 s per experiment" in out
    chart = workspace / "runs" / "compare-r-t.png"
    assert f"chart: {chart}" in out and chart.stat().st_size > 10_000


def test_the_agent_and_its_cost_come_from_the_supervisors_records(tmp_path: Path) -> None:
    from harness.compare import _supervised
    from server.audit import AuditLog

    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.append("supervisor", "run_start", status="ok", summary={"agent": "claude", "tag": "n1"})
    audit.append("supervisor", "run_end", status="ok", summary={"state": "stopped", "cost_usd": 1.25})
    audit.append("supervisor", "run_end", status="ok", summary={"state": "stopped", "cost_usd": 0.5})
    assert _supervised(tmp_path) == ("claude", 1.75)
    assert _supervised(tmp_path / "nowhere") == (None, None)
