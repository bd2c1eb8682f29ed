"""The holdout score reaches the person and only the person: `results --holdout`, `review`, the report's private copy
and the dashboard show it; the tools, the ledger and every file in the workspace (the report there included) do not.

The fake target's evaluation prints a holdout score whose optimum lies elsewhere than validation's, so a change that
helps validation hurts the holdout: the overfitting the report must flag.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mcp import Client

from harness.cli import main
from harness.dashboard.data import RunData, RunMeta
from harness.review import build_review
from helpers import git, make_engine, set_constant
from server.app import build_server
from server.config import load_config
from server.private import private_base, private_folder, read_holdout
from server.runstate import load_run

BASELINE_HOLDOUT = "1.360000"  # LR 0.1: 1 + (0.1 + 0.5) ** 2
KEPT_HOLDOUT = "1.640000"  # LR 0.3: validation's optimum, the holdout's worse


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def holdout_workspace(workspace: Path) -> Path:
    """The fake target with an evaluation that also prints `holdout_score`, committed before the run pins it."""
    prepare = workspace / "prepare.py"
    prepare.write_text(prepare.read_text().replace(
        '    print(f"corpus_fingerprint: {FINGERPRINT}")',
        '    print(f"holdout_score:    {1.0 + (params[\'LR\'] + 0.5) ** 2:.6f}")\n'
        '    print(f"corpus_fingerprint: {FINGERPRINT}")'))
    git(workspace, "commit", "-qam", "the evaluation scores a holdout")
    return workspace


async def night_that_overfits(workspace: Path) -> tuple[str, str]:
    """A baseline and one kept change through the real tools; the text of every tool result, and of the ledger."""
    engine = make_engine(workspace)
    seen = []
    async with Client(build_server(engine)) as client:
        seen.append(await client.call_tool("run_experiment", {"description": "baseline"}))
        set_constant(workspace / "train.py", "LR", "0.3")
        seen.append(await client.call_tool("run_experiment", {"description": "LR 0.3"}))
        seen.append(await client.call_tool("commit_or_revert", {}))
        seen.append(await client.call_tool("read_results", {"last_n": 10}))
    assert seen[2].structured_content["decision"] == "keep", seen[2].content[0].text
    tool_text = "".join(str(r.structured_content) + "".join(c.text for c in r.content) for r in seen)
    return tool_text, (engine.run_dir / "experiments.jsonl").read_text()


def workspace_bytes(workspace: Path) -> dict[Path, bytes]:
    """Every file the agent could read in the workspace: the run folder, its logs and reports included."""
    return {p: p.read_bytes() for p in workspace.rglob("*") if p.is_file() and ".git" not in p.parts}


@pytest.mark.anyio
async def test_the_person_sees_the_holdout_in_results_review_the_dashboard_and_a_private_report_the_agent_never_does(
        holdout_workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = holdout_workspace
    tool_text, ledger = await night_that_overfits(ws)
    config = load_config(ws)
    run = load_run(config, "t1")
    assert read_holdout(run.run_dir, config.metric) == {1: 1.36, 2: 1.64}
    assert private_folder(run.run_dir).is_relative_to(private_base()) and not private_base().is_relative_to(ws)

    assert main(["results", "--workspace", str(ws), "--holdout"]) == 0
    listed = capsys.readouterr().out
    assert "holdout" in listed.splitlines()[0]
    assert BASELINE_HOLDOUT in listed and KEPT_HOLDOUT in listed
    assert main(["results", "--workspace", str(ws)]) == 0
    assert "holdout" not in capsys.readouterr().out, "without --holdout the listing is the plain one"

    review = build_review(config, run)
    assert (review.holdout_baseline, review.holdout) == (1.36, 1.64)
    summary = RunData(RunMeta("t1", config.metric, config.direction, run.run_dir)).summary()
    assert summary["holdout"] == {"id": 2, "value": 1.64}
    # `serve --http --dashboard` shares the page's token with the agent's tools: that page shows no holdout
    shared = RunData(RunMeta("t1", config.metric, config.direction, run.run_dir), show_holdout=False)
    assert shared.summary()["holdout"] is None and shared.chart().holdout is None
    assert [r["holdout"] for r in shared.rows()["rows"]] == [None, None]

    assert main(["report", "--workspace", str(ws)]) == 0
    printed = capsys.readouterr().out
    personal = private_folder(run.run_dir) / "report.md"
    assert str(personal) in printed
    text = personal.read_text()
    assert f"baseline {BASELINE_HOLDOUT} -> best {KEPT_HOLDOUT}" in text
    assert "WARNING: validation improved by 0.040000 but the holdout did not" in text
    public = (run.run_dir / "report.md").read_text()
    assert str(personal) in public and "WARNING" not in public

    for value in (BASELINE_HOLDOUT, KEPT_HOLDOUT, "1.36", "1.64"):
        # as a number of its own: "1.64" inside a timestamp such as 07:31:01.643Z is not the score
        number = re.compile(rb"(?<![\d.])" + re.escape(value.encode()) + rb"(?!\d)")
        assert not number.search(tool_text.encode()) and not number.search(ledger.encode())
        leaked = [p for p, data in workspace_bytes(ws).items() if number.search(data)]
        assert leaked == [], f"holdout value {value} is readable in the workspace: {leaked}"


@pytest.mark.anyio
async def test_a_run_whose_holdout_improves_with_validation_is_not_flagged(
        holdout_workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prepare = holdout_workspace / "prepare.py"
    prepare.write_text(prepare.read_text().replace("(params['LR'] + 0.5)", "(params['LR'] - 0.5)"))
    git(holdout_workspace, "commit", "-qam", "a holdout that agrees with validation")
    await night_that_overfits(holdout_workspace)
    assert main(["report", "--workspace", str(holdout_workspace)]) == 0
    config = load_config(holdout_workspace)
    text = (private_folder(load_run(config, "t1").run_dir) / "report.md").read_text()
    assert "baseline 1.160000 -> best 1.040000 (-0.120000" in text and "WARNING" not in text


def test_a_run_without_holdout_scores_says_so_and_writes_no_private_report(
        workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = make_engine(workspace)
    import anyio

    anyio.run(engine.run_experiment, "baseline")
    assert main(["results", "--workspace", str(workspace), "--holdout"]) == 0
    assert "no holdout scores recorded" in capsys.readouterr().err
    assert main(["report", "--workspace", str(workspace)]) == 0
    assert "your copy" not in capsys.readouterr().out
    assert not (private_folder(engine.run_dir) / "report.md").exists()
