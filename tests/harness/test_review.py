"""The review gate on a real run of the fake target: review, promote, reject, and the autonomy levels."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import anyio
import pytest
from mcp import Client

from harness.cli import main
from harness.loop_state import read_loop_state
from harness.review import build_review, render_review
from server.app import build_server
from server.audit import AuditLog
from server.config import ConfigError, load_config
from server.engine import Engine
from server.private import private_folder
from server.runstate import init_run, load_run

from helpers import git, set_constant


@pytest.fixture(autouse=True)
def _reviewer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_USER", "reviewer-ann")


def configure(workspace: Path, extra: str) -> None:
    """Put top-level keys at the start of the fake target's autoresearch.toml and commit, as a user would."""
    path = workspace / "autoresearch.toml"
    path.write_text(extra + "\n" + path.read_text(encoding="utf-8"), encoding="utf-8")
    git(workspace, "commit", "-qam", "configure autonomy")


def open_run(workspace: Path, tag: str = "t1") -> Engine:
    config = load_config(workspace)
    init_run(config, tag)
    return Engine(config, load_run(config, tag))


def experiment(engine: Engine, workspace: Path, description: str, **constants: str) -> str:
    """Edit train.py as an agent would, run it, let the server decide; returns the decision."""
    for name, value in constants.items():
        set_constant(workspace / "train.py", name, value)
    result = asyncio.run(engine.run_experiment(description, None, caller="test"))
    if result.decision != "pending":
        return result.decision
    return engine.commit_or_revert().decision


async def through_the_tools(engine: Engine, workspace: Path,
                            steps: list[tuple[str, dict[str, str]]]) -> list[str]:
    """The same edits through the MCP tools (in-process client), so every call is in the audit chain."""
    decisions = []
    async with Client(build_server(engine)) as client:
        for description, constants in steps:
            for name, value in constants.items():
                set_constant(workspace / "train.py", name, value)
            result = (await client.call_tool("run_experiment", {"description": description})).structured_content
            if result["decision"] == "pending":
                result = (await client.call_tool("commit_or_revert", {})).structured_content
            decisions.append(result["decision"])
    return decisions


def reviewed_run(workspace: Path) -> Engine:
    """baseline; LR 0.2 kept; LR 0.5 discarded; WIDTH 16 kept: through the tools."""
    engine = open_run(workspace)
    steps = [("baseline", {}), ("raise LR to 0.2", {"LR": "0.2"}), ("raise LR to 0.5", {"LR": "0.5"}),
             ("widen to 16", {"WIDTH": "16"})]
    assert anyio.run(through_the_tools, engine, workspace, steps) == ["keep", "keep", "discard", "keep"]
    return engine


def cli(workspace: Path, *args: str) -> int:
    return main([args[0], "--workspace", str(workspace), *args[1:]])


def test_promote_of_a_reviewed_run_lands_exactly_the_kept_changes_on_the_base_branch_and_is_audited(
        workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = reviewed_run(workspace)
    base = git(workspace, "rev-parse", "main")

    assert cli(workspace, "promote", "--tag", "t1") == 0

    messages = git(workspace, "log", "--format=%B%x00", f"{base}..main").split("\x00")
    messages = [m.strip() for m in messages if m.strip()]
    assert len(messages) == 2
    assert messages[1].startswith("score 1.074000 (-0.030000) experiment 2: raise LR to 0.2")
    assert messages[0].startswith("score 1.010000 (-0.064000) experiment 4: widen to 16")
    assert "promoted by reviewer-ann" in messages[0] and "Autoresearch-Experiment: 4" in messages[0]
    assert git(workspace, "diff", "main", engine.run.branch) == ""  # exactly the kept changes, nothing else
    assert git(workspace, "rev-parse", "main~2") == base
    promoted = [r for r in engine.audit.records() if r.event == "promote"]
    assert len(promoted) == 1 and promoted[0].actor == "cli" and promoted[0].status == "ok"
    assert promoted[0].summary["experiments"] == [2, 4] and promoted[0].summary["user"] == "reviewer-ann"
    assert promoted[0].summary["to"] == git(workspace, "rev-parse", "main")
    assert engine.audit.verify().ok
    assert "experiment 4 ->" in capsys.readouterr().out


def test_promote_refuses_after_the_audit_chain_was_tampered_with(workspace: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    engine = reviewed_run(workspace)
    base = git(workspace, "rev-parse", "main")
    lines = engine.audit.path.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[2])
    record["status"] = "ok" if record["status"] != "ok" else "refused"  # someone rewrote what happened
    lines[2] = json.dumps(record)
    engine.audit.path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    assert cli(workspace, "promote", "--tag", "t1") == 2

    err = capsys.readouterr().err
    assert "does not verify" in err and "line 3" in err and "autoresearch audit verify" in err
    assert git(workspace, "rev-parse", "main") == base
    assert cli(workspace, "review", "--tag", "t1") == 1
    assert "audit: BROKEN" in capsys.readouterr().out


def test_promote_refuses_a_ledger_edited_to_name_a_commit_that_changes_a_locked_file(
        workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = reviewed_run(workspace)
    base = git(workspace, "rev-parse", "main")
    kept = engine.ledger.get(4).kept_commit
    git(workspace, "checkout", "-q", "--detach", kept)
    (workspace / "prepare.py").write_text("def score(params):\n    return 0.0\n", encoding="utf-8")
    git(workspace, "commit", "-qam", "forged")
    forged = git(workspace, "rev-parse", "HEAD")
    git(workspace, "checkout", "-q", engine.run.branch)
    engine.ledger.path.write_text(engine.ledger.path.read_text(encoding="utf-8").replace(kept, forged),
                                  encoding="utf-8")

    assert cli(workspace, "promote", "--tag", "t1") == 2

    assert "changes prepare.py, which the run may not change" in capsys.readouterr().err
    assert git(workspace, "rev-parse", "main") == base


def test_promote_only_lands_the_chosen_changes_and_refuses_one_that_needs_an_earlier_change(
        workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = reviewed_run(workspace)
    base = git(workspace, "rev-parse", "main")

    # WIDTH's line sits next to LR's, so change 2's diff carries LR = 0.2 as context: it needs change 1.
    assert cli(workspace, "promote", "--tag", "t1", "--only", "2") == 2
    assert "builds on an earlier change" in capsys.readouterr().err
    assert git(workspace, "rev-parse", "main") == base

    assert cli(workspace, "promote", "--tag", "t1", "--only", "1") == 0
    assert git(workspace, "show", "main:train.py").count("LR = 0.2") == 1
    assert "WIDTH = 8" in git(workspace, "show", "main:train.py")
    assert cli(workspace, "promote", "--tag", "t1", "--only", "7") == 2
    assert "changes 1..2" in capsys.readouterr().err
    records = [r for r in engine.audit.records() if r.event == "promote"]
    assert [r.status for r in records] == ["refused", "ok", "refused"]


def test_promote_refuses_when_the_base_branch_moved_in_a_conflicting_way_and_says_what_to_do(
        workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = reviewed_run(workspace)
    git(workspace, "checkout", "-q", "main")
    set_constant(workspace / "train.py", "LR", "0.25")
    git(workspace, "commit", "-qam", "a person tuned LR on main meanwhile")
    moved = git(workspace, "rev-parse", "main")

    assert cli(workspace, "promote", "--tag", "t1") == 2

    err = capsys.readouterr().err
    assert "moved since run t1 started" in err and "git cherry-pick" in err and "start a new run" in err
    assert git(workspace, "rev-parse", "main") == moved
    assert engine.audit.records()[-1].status == "refused"


def test_promote_onto_a_base_branch_that_moved_elsewhere_keeps_its_work_and_fast_forwards_the_checkout(
        workspace: Path) -> None:
    engine = reviewed_run(workspace)
    git(workspace, "checkout", "-q", "main")
    (workspace / "NOTES.md").write_text("unrelated work\n", encoding="utf-8")
    git(workspace, "add", "NOTES.md")
    git(workspace, "commit", "-qm", "unrelated work on main")

    assert cli(workspace, "promote", "--tag", "t1") == 0

    assert (workspace / "NOTES.md").exists()
    assert (workspace / "train.py").read_text(encoding="utf-8") == git(workspace, "show", f"{engine.run.branch}:train.py") + "\n"
    assert git(workspace, "status", "--porcelain") == ""
    assert cli(workspace, "promote", "--tag", "t1") == 2  # a second promote lands nothing twice


def test_review_shows_the_diff_the_gains_the_audit_violations_cost_and_the_ledgers_noise_floor_and_holdout(
        workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = reviewed_run(workspace)
    (engine.run_dir / "supervisor.json").write_text(json.dumps({"cost_usd": 1.25}), encoding="utf-8")

    assert cli(workspace, "review", "--tag", "t1") == 0
    out = capsys.readouterr().out
    assert "baseline 1.104000  best 1.010000 (experiment 4)" in out
    assert "[1] experiment 2: score 1.074000 gain -0.030000 confidence n/a" in out
    assert "[2] experiment 4: score 1.010000 gain -0.064000 confidence n/a" in out
    assert "holdout score (never shown to the agent): n/a" in out
    assert "audit: VERIFIED" in out and "violations (locked files changed and restored): 0" in out
    assert "cost: $1.25" in out
    assert "-LR = 0.1" in out and "+WIDTH = 16" in out and "LR = 0.5" not in out  # base..best, discards left out

    # A ledger that carries a noise floor, and holdout scores in the private folder (person-only), show both.
    ledger = engine.ledger.path
    lines = [json.loads(line) for line in ledger.read_text(encoding="utf-8").splitlines()]
    for line in lines:
        if line.get("type") == "experiment":
            line["noise_floor"] = 0.01
    ledger.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    (private_folder(engine.run_dir) / "holdout.jsonl").write_text(
        "".join(json.dumps({"experiment_id": i, "holdout_score": v}) + "\n" for i, v in ((1, 1.2), (4, 1.1))))
    text = render_review(build_review(engine.config, engine.run))
    assert "gain -0.064000 confidence 6.4x noise floor" in text
    assert "holdout score (never shown to the agent): 1.100000 (baseline 1.200000)" in text


def test_review_step_walks_the_kept_changes_one_by_one(workspace: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    reviewed_run(workspace)
    assert cli(workspace, "review", "--tag", "t1", "--step") == 0
    out = capsys.readouterr().out
    first, second = out.split("---- change 2 of 2 ----")
    assert "---- change 1 of 2 ----" in first and "+LR = 0.2" in first and "WIDTH = 16" not in first
    assert "+WIDTH = 16" in second and "+LR" not in second


def test_a_rejection_is_audited_and_the_next_sessions_handoff_reads_it(workspace: Path) -> None:
    engine = reviewed_run(workspace)
    assert cli(workspace, "reject", "--tag", "t1", "--reason", "WIDTH 16 doubles memory; stay under 12") == 0

    record = engine.audit.records()[-1]
    assert (record.actor, record.event, record.summary["user"]) == ("cli", "reject", "reviewer-ann")
    handoff = read_loop_state(engine.config, engine.run).handoff()
    assert "rejected it" in handoff and "WIDTH 16 doubles memory; stay under 12" in handoff
    assert cli(workspace, "reject", "--tag", "t1", "--reason", " ") == 2


def test_an_observe_run_keeps_nothing_and_review_proposes_what_it_would_have_kept(
        workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure(workspace, 'autonomy = "observe"')
    engine = open_run(workspace)
    assert experiment(engine, workspace, "baseline") == "keep"
    tip = git(workspace, "rev-parse", engine.run.branch)

    assert experiment(engine, workspace, "raise LR to 0.2", LR="0.2") == "discard"  # better, yet not kept
    assert experiment(engine, workspace, "widen to 16", WIDTH="16") == "discard"

    assert git(workspace, "rev-parse", engine.run.branch) == tip
    assert "LR = 0.1" in (workspace / "train.py").read_text(encoding="utf-8")
    assert engine.ledger.get(2).decision_reason.startswith("observe: 1.074000 beats the best 1.104000")
    assert cli(workspace, "review", "--tag", "t1") == 0
    out = capsys.readouterr().out
    assert "would have kept" in out and "[1] experiment 2" in out and "proposed" in out
    assert cli(workspace, "promote", "--tag", "t1", "--only", "2") == 0  # each proposal stands alone
    assert "WIDTH = 16" in git(workspace, "show", "main:train.py")


def test_auto_promote_lands_a_change_within_the_limits_and_leaves_one_outside_them_for_a_person(
        workspace: Path) -> None:
    configure(workspace, 'autonomy = "auto-promote"\nauto_promote = { max_lines = 2, min_noise_floors = 0 }')
    engine = open_run(workspace)
    base = git(workspace, "rev-parse", "main")
    experiment(engine, workspace, "baseline")

    assert experiment(engine, workspace, "raise LR to 0.2", LR="0.2") == "keep"
    assert "LR = 0.2" in git(workspace, "show", "main:train.py")
    assert git(workspace, "rev-parse", "main~1") == base
    auto = [r for r in engine.audit.records() if r.event == "promote"][-1]
    assert (auto.actor, auto.summary["auto"], auto.summary["experiments"]) == ("server", True, [2])

    path = workspace / "train.py"
    path.write_text(path.read_text(encoding="utf-8") + "\n# a comment\n# and another\n", encoding="utf-8")
    assert experiment(engine, workspace, "widen to 16 and comment", WIDTH="16") == "keep"  # kept on the run branch
    assert "WIDTH = 8" in git(workspace, "show", "main:train.py")
    skipped = engine.audit.records()[-1]
    assert skipped.event == "auto_promote" and skipped.status == "skipped"
    assert "more than auto_promote.max_lines = 2" in skipped.summary["reason"]


def test_auto_promote_without_a_noise_floor_in_the_ledger_waits_for_a_person(workspace: Path) -> None:
    configure(workspace, 'autonomy = "auto-promote"')  # default limits: 2 noise floors, which need a measured floor
    engine = open_run(workspace)
    base = git(workspace, "rev-parse", "main")
    experiment(engine, workspace, "baseline")
    assert experiment(engine, workspace, "raise LR to 0.2", LR="0.2") == "keep"
    assert git(workspace, "rev-parse", "main") == base
    assert "needs one" in engine.audit.records()[-1].summary["reason"]


def test_an_autonomy_level_that_does_not_exist_is_a_config_error_naming_the_levels(workspace: Path) -> None:
    configure(workspace, 'autonomy = "yolo"')
    with pytest.raises(ConfigError, match="autonomy = 'yolo' is not allowed; expected one of 'observe', 'propose', "
                                          "'auto-promote'"):
        load_config(workspace)


def test_auto_promote_limits_are_validated_by_name(workspace: Path) -> None:
    configure(workspace, "auto_promote = { max_lines = 0 }")
    with pytest.raises(ConfigError, match="auto_promote.max_lines = 0"):
        load_config(workspace)


def test_a_run_records_the_branch_it_started_from(workspace: Path) -> None:
    engine = open_run(workspace)
    assert engine.run.base_branch == "main"
    assert json.loads((engine.run_dir / "run.json").read_text(encoding="utf-8"))["base_branch"] == "main"
    assert AuditLog(engine.run_dir / "audit.jsonl").verify().ok
