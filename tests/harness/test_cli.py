"""The `autoresearch` command as a user runs it: init, a random-search loop, status, results, report, audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import git
from harness.cli import main


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_init_creates_the_branch_and_pins_and_refuses_an_existing_tag(workspace: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "init", "--workspace", str(workspace), "--tag", "nov23")
    assert code == 0 and "autoresearch/nov23" in out and "prepare.py" in out
    assert git(workspace, "branch", "--show-current") == "autoresearch/nov23"
    run_json = json.loads((workspace / "runs" / "nov23" / "run.json").read_text())
    assert run_json["pins"][0]["path"] == "prepare.py"
    code, _, err = cli(capsys, "init", "--workspace", str(workspace), "--tag", "nov23")
    assert code == 2 and "already exists" in err


def test_init_refuses_a_dirty_tree_and_a_bad_tag(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "init", "--workspace", str(workspace), "--tag", "bad tag!")
    assert code == 2 and "invalid tag" in err
    (workspace / "train.py").write_text("# edited before init\n")
    code, _, err = cli(capsys, "init", "--workspace", str(workspace), "--tag", "ok")
    assert code == 2 and "uncommitted changes" in err and "train.py" in err


@pytest.mark.slow
def test_the_random_agent_runs_the_loop_and_every_view_agrees(workspace: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    ws = str(workspace)
    code, out, _ = cli(capsys, "run", "--agent", "random", "--workspace", ws, "--tag", "r1", "--max-experiments", "4",
                       "--seed", "1")
    assert code == 0 and out.count("experiment ") == 4
    run_dir = workspace / "runs" / "r1"
    ledger = [json.loads(line) for line in (run_dir / "experiments.jsonl").read_text().splitlines()]
    experiments = [r for r in ledger if r["type"] == "experiment"]
    assert len(experiments) == 4 and experiments[0]["is_baseline"]
    code, out, _ = cli(capsys, "status", "--workspace", ws)
    assert code == 0 and "experiments 4" in out and "in flight: none" in out
    code, out, _ = cli(capsys, "results", "--workspace", ws)
    assert code == 0 and len(out.strip().splitlines()) == 5
    code, out, _ = cli(capsys, "report", "--workspace", ws)
    assert code == 0 and (run_dir / "progress.png").stat().st_size > 10_000
    assert "Baseline" in (run_dir / "report.md").read_text()
    code, out, _ = cli(capsys, "audit", "verify", "--workspace", ws)
    assert code == 0 and "intact" in out
    code, out, _ = cli(capsys, "audit", "show", "--workspace", ws, "--tool", "run_*")
    assert code == 0 and len(out.strip().splitlines()) == 4
    from server.ledger import Ledger

    kept = [e for e in Ledger(run_dir).experiments() if e.decision == "keep"]
    log = git(workspace, "log", "--format=%s", "autoresearch/r1").splitlines()
    assert len(log) == len(kept)  # the kept changes, plus the initial commit which holds the baseline
    code, _, err = cli(capsys, "run", "--agent", "random", "--workspace", ws, "--tag", "r1", "--max-experiments", "1")
    assert code == 2 and "--resume" in err
    code, out, _ = cli(capsys, "run", "--agent", "random", "--workspace", ws, "--tag", "r1", "--resume",
                       "--max-experiments", "1")
    assert code == 0 and "experiment 5" in out


def test_audit_verify_names_a_tampered_record(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = str(workspace)
    cli(capsys, "init", "--workspace", ws, "--tag", "a1")
    for _ in range(3):
        cli(capsys, "status", "--workspace", ws)
    from server.audit import AuditLog

    log = AuditLog(workspace / "runs" / "a1" / "audit.jsonl")
    for i in range(4):
        log.append("cli", "note", summary={"i": i})
    lines = (workspace / "runs" / "a1" / "audit.jsonl").read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"i":1', '"i":7')
    (workspace / "runs" / "a1" / "audit.jsonl").write_text("".join(lines))
    code, out, _ = cli(capsys, "audit", "verify", "--workspace", ws)
    assert code == 1 and "line 2" in out


@pytest.mark.parametrize("args, message", [
    (["run", "--agent", "random", "--max-experiments", "0"], "--max-experiments must be at least 1"),
    (["run", "--agent", "random", "--hours", "-1"], "--hours must be positive"),
    (["serve", "--port", "70000"], "--port must be 0-65535"),
    (["status", "--workspace", "/nonexistent/dir"], "is not a directory"),
    (["status", "--tag", "nope"], "no run with tag 'nope'"),
    (["audit", "show", "--since", "yesterday"], "cannot read time 'yesterday'"),
])
def test_bad_flags_get_a_clear_error(workspace: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                     message: str) -> None:
    cli(capsys, "init", "--workspace", str(workspace), "--tag", "f1")
    cut = 2 if args[0] == "audit" else 1
    full = args[:cut] + (["--workspace", str(workspace)] if "--workspace" not in args else []) + args[cut:]
    code, _, err = cli(capsys, *full)
    assert code == 2 and message in err


def test_init_outside_a_git_repository_says_to_run_git_init(tmp_path: Path, isolated_home: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import FAKE_TARGET
    import shutil

    shutil.copytree(FAKE_TARGET, tmp_path / "plain")
    code, _, err = cli(capsys, "init", "--workspace", str(tmp_path / "plain"), "--tag", "x")
    assert code == 2 and "not a git repository" in err and "git init" in err and "Traceback" not in err
