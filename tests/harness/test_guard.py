"""The file guard restores a locked file however it is changed, records each violation, and stops cleanly."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.guard import FileGuard
from server.audit import AuditLog
from server.config import Config, load_config
from server.jsonl import read_records
from server.runstate import RunInfo, init_run

WAIT_S = 10.0


def git(ws: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", *args], cwd=ws, capture_output=True, text=True, check=check)
    return done.stdout.strip()


def wait_for(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    """Poll ``condition`` until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def setup(workspace: Path) -> tuple[Config, RunInfo, bytes]:
    config = load_config(workspace)
    run = init_run(config, "t1")
    return config, run, (workspace / "prepare.py").read_bytes()


@pytest.fixture
def guarded(setup: tuple[Config, RunInfo, bytes]) -> Iterator[tuple[FileGuard, threading.Event, Path, bytes]]:
    config, run, original = setup
    seen = threading.Event()
    # a long interval: these tests must pass on file events alone, not on the periodic safety net
    with FileGuard(config, run, on_violation=lambda record: seen.set(), interval_s=3600) as guard:
        yield guard, seen, config.workspace, original


def flush_events(guard: FileGuard, workspace: Path) -> None:
    """Create a marker in the watched folder and wait until the guard saw it: every earlier event is handled."""
    marker = workspace / f"marker-{time.monotonic_ns()}"
    marker.touch()
    assert wait_for(lambda: guard.last_event_path == str(marker))
    marker.unlink()


def tamper_write(path: Path) -> None:
    path.write_text("SCORE = 0  # cheat\n")


def tamper_truncate(path: Path) -> None:
    os.truncate(path, 0)


def tamper_delete(path: Path) -> None:
    path.unlink()


def tamper_rename(path: Path) -> None:
    path.rename(path.with_name("moved.py"))


def tamper_symlink(path: Path) -> None:
    fake = path.with_name("fake.py")
    fake.write_text("def evaluate(p):\n    print('score: 0')\n")
    link = path.with_name("link.tmp")
    link.symlink_to(fake)
    os.replace(link, path)


def tamper_move_onto(path: Path) -> None:
    other = path.with_name("other.py")
    other.write_text("# replaced\n")
    os.replace(other, path)


@pytest.mark.parametrize("tamper", [tamper_write, tamper_truncate, tamper_delete, tamper_rename, tamper_symlink,
                                    tamper_move_onto])
def test_a_locked_file_changed_in_any_way_is_restored_byte_identical_and_recorded(
        guarded: tuple[FileGuard, threading.Event, Path, bytes], tamper: Callable[[Path], None]) -> None:
    guard, seen, workspace, original = guarded
    target = workspace / "prepare.py"
    tamper(target)
    assert seen.wait(WAIT_S), "the guard did not react"
    assert wait_for(lambda: not target.is_symlink() and target.is_file() and target.read_bytes() == original)
    flush_events(guard, workspace)
    assert target.read_bytes() == original and not target.is_symlink()
    violations = read_records(guard.run.run_dir / "violations.jsonl")
    assert len(violations) == 1  # its own restore did not set off another
    record = violations[0]
    assert (record["source"], record["path"], record["experiment_id"], record["restored"]) == \
        ("guard", "prepare.py", None, True)
    assert "restoring it" in record["detail"], "written before the restore, so no reader sees one without the other"
    audit = AuditLog(guard.run.run_dir / "audit.jsonl")
    last = audit.records()[-1]
    assert (last.actor, last.event, last.status) == ("guard", "violation", "blocked")
    assert "restored it from the pinned copy" in last.summary["detail"]
    assert audit.verify().ok


def test_a_change_during_an_experiment_names_that_experiment(
        guarded: tuple[FileGuard, threading.Event, Path, bytes]) -> None:
    guard, seen, workspace, original = guarded
    (guard.run.run_dir / "inflight.json").write_text(json.dumps({"id": 7, "description": "x", "started_at": 0,
                                                                 "deadline": 1}))
    (workspace / "prepare.py").write_text("tampered\n")
    assert seen.wait(WAIT_S)
    record = read_records(guard.run.run_dir / "violations.jsonl")[0]
    assert record["experiment_id"] == 7 and record["when"] == "during experiment 7"


def test_a_damaged_pinned_copy_falls_back_to_the_git_blob(setup: tuple[Config, RunInfo, bytes]) -> None:
    config, run, original = setup
    pinned = run.run_dir / "pinned" / "prepare.py"
    pinned.chmod(0o644)
    pinned.write_text("damaged\n")
    (config.workspace / "prepare.py").write_text("tampered\n")
    guard = FileGuard(config, run)
    found = guard.check_all("test")  # the periodic safety net, called directly
    assert len(found) == 1 and f"commit {run.pins[0].commit[:7]}" in found[0]["detail"]
    assert (config.workspace / "prepare.py").read_bytes() == original
    assert guard.check_all("test") == []


def test_a_change_made_while_no_guard_ran_is_repaired_when_it_starts(setup: tuple[Config, RunInfo, bytes]) -> None:
    config, run, original = setup
    (config.workspace / "prepare.py").unlink()
    with FileGuard(config, run, interval_s=3600) as guard:
        assert (config.workspace / "prepare.py").read_bytes() == original
        assert len(guard.violations) == 1 and "guard start" in guard.violations[0]["detail"]


def test_the_guard_stops_cleanly_and_leaves_no_threads(setup: tuple[Config, RunInfo, bytes]) -> None:
    config, run, _ = setup
    before = set(threading.enumerate())
    guard = FileGuard(config, run, interval_s=0.05)
    guard.start()
    assert guard.running
    guard.stop()
    assert not guard.running
    assert wait_for(lambda: not [t for t in threading.enumerate() if t not in before and t.is_alive()])
    with pytest.raises(ValueError, match="interval_s"):
        FileGuard(config, run, interval_s=0)


def test_the_guard_command_repairs_until_terminated(setup: tuple[Config, RunInfo, bytes]) -> None:
    import signal
    import subprocess
    import sys

    config, run, original = setup
    repo = Path(__file__).resolve().parents[2]
    script = ("import argparse, sys; from harness.guard import add_guard_parser; p = argparse.ArgumentParser(); "
              "add_guard_parser(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))")
    proc = subprocess.Popen([sys.executable, "-c", script, "guard", "--workspace", str(config.workspace),
                             "--interval", "3600"], cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "guarding prepare.py of run t1" in proc.stdout.readline()
        (config.workspace / "prepare.py").write_text("tampered\n")
        assert wait_for(lambda: (config.workspace / "prepare.py").read_bytes() == original)
        assert wait_for(lambda: len(read_records(run.run_dir / "violations.jsonl")) == 1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT_S)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "1 violation(s) repaired" in out


# ---- permission bits, git's index and the run branch ----

def test_a_chmod_000_of_the_locked_file_is_undone_on_its_event_and_recorded(
        guarded: tuple[FileGuard, threading.Event, Path, bytes]) -> None:
    guard, seen, workspace, original = guarded
    target = workspace / "prepare.py"
    mode = target.stat().st_mode & 0o7777

    os.chmod(target, 0)

    assert seen.wait(WAIT_S) and wait_for(lambda: target.stat().st_mode & 0o7777 == mode)
    assert target.read_bytes() == original
    (record,) = guard.violations
    assert record["path"] == "prepare.py" and record["restored"] is True
    assert f"mode changed from {mode:04o} to 0000; restored mode {mode:04o}" in record["detail"]


def test_a_locked_file_already_unreadable_when_the_guard_starts_gets_gits_mode_back(
        setup: tuple[Config, RunInfo, bytes]) -> None:
    config, run, _ = setup
    target = config.workspace / "prepare.py"
    os.chmod(target, 0)

    with FileGuard(config, run, interval_s=0.05) as guard:
        assert wait_for(lambda: target.stat().st_mode & 0o777 == 0o644)
    assert any("mode changed from 0644 to 0000" in v["detail"] for v in guard.violations)


@pytest.mark.parametrize("flag", ["--skip-worktree", "--assume-unchanged"])
def test_index_flags_that_hide_a_tracked_file_from_git_are_cleared_and_recorded(
        setup: tuple[Config, RunInfo, bytes], flag: str) -> None:
    config, run, _ = setup
    ws = config.workspace
    git(ws, "update-index", flag, "autoresearch.toml")
    assert not git(ws, "ls-files", "-v", "autoresearch.toml").startswith("H ")

    with FileGuard(config, run, interval_s=0.05) as guard:
        assert wait_for(lambda: git(ws, "ls-files", "-v", "autoresearch.toml").startswith("H "))
        assert wait_for(lambda: bool(guard.violations))
    (record,) = guard.violations
    assert "git was told to ignore changes to autoresearch.toml" in record["detail"]
    assert "cleared the flags" in record["detail"]
    assert read_records(run.run_dir / "violations.jsonl")[0]["path"] == "autoresearch.toml"


def test_a_stray_commit_on_the_run_branch_is_undone_and_the_pending_edit_is_kept(
        setup: tuple[Config, RunInfo, bytes]) -> None:
    config, run, original = setup
    ws = config.workspace
    base = git(ws, "rev-parse", "HEAD")
    (ws / "prepare.py").write_bytes(original + b"# forged\n")
    (ws / "train.py").write_text("# the agent's edit\n")
    git(ws, "commit", "-q", "-am", "stray")
    stray = git(ws, "rev-parse", "HEAD")
    (ws / "train.py").write_text("# the agent's next edit, not committed\n")

    with FileGuard(config, run, interval_s=3600) as guard:
        pass  # the check at start repairs it

    assert git(ws, "rev-parse", run.branch) == base and git(ws, "symbolic-ref", "--short", "HEAD") == run.branch
    assert (ws / "prepare.py").read_bytes() == original
    assert (ws / "train.py").read_text() == "# the agent's next edit, not committed\n"
    assert git(ws, "status", "--porcelain", "--untracked-files=no") == "M train.py"
    repaired = [v for v in guard.violations if v["path"] == ".git"]
    assert len(repaired) == 1 and f"stray commits {stray[:7]}" in repaired[0]["detail"]
    assert f"put {run.branch} back at {base[:7]}" in repaired[0]["detail"]
    audit = [r for r in AuditLog(run.run_dir / "audit.jsonl").records() if r.event == "violation"]
    assert any(r.summary and r.summary["path"] == ".git" for r in audit)


def test_a_detached_head_or_another_branch_is_put_back_on_the_run_branch(setup: tuple[Config, RunInfo, bytes]) -> None:
    config, run, _ = setup
    ws = config.workspace
    base = git(ws, "rev-parse", "HEAD")
    git(ws, "checkout", "-q", "--detach")

    with FileGuard(config, run, interval_s=0.05) as guard:
        assert wait_for(lambda: git(ws, "symbolic-ref", "-q", "--short", "HEAD", check=False) == run.branch)
        git(ws, "checkout", "-q", "main")
        assert wait_for(lambda: git(ws, "symbolic-ref", "-q", "--short", "HEAD", check=False) == run.branch)
        assert wait_for(lambda: len([v for v in guard.violations if v["path"] == ".git"]) == 2)
    details = [v["detail"] for v in guard.violations if v["path"] == ".git"]
    assert "a detached HEAD" in details[0] and "branch main, not on the run branch" in details[1]
    assert git(ws, "rev-parse", "HEAD") == base


def test_the_repository_is_left_alone_while_an_experiment_holds_the_lock(setup: tuple[Config, RunInfo, bytes]) -> None:
    config, run, _ = setup
    ws = config.workspace
    git(ws, "checkout", "-q", "--detach")
    fd = os.open(run.run_dir / "experiment.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        guard = FileGuard(config, run, interval_s=3600)
        assert guard.check_repository("test") == []
        assert git(ws, "symbolic-ref", "-q", "HEAD", check=False) == ""
    finally:
        os.close(fd)
    assert [v["path"] for v in guard.check_repository("test")] == [".git"]


def test_a_changed_tracked_file_is_put_back_and_a_new_file_is_quarantined_so_experiments_can_go_on(
        setup: tuple[Config, RunInfo, bytes]) -> None:
    config, run, _ = setup
    ws = config.workspace
    toml = (ws / "autoresearch.toml").read_bytes()
    (ws / "autoresearch.toml").write_bytes(toml + b"\n# hard_timeout_s = 9999\n")
    (ws / "json.py").write_text("import os  # planted\n")
    (ws / "train.py").write_text("# the agent's pending edit\n")

    with FileGuard(config, run, interval_s=3600) as guard:
        pass  # the check at start repairs it

    assert (ws / "autoresearch.toml").read_bytes() == toml
    assert not (ws / "json.py").exists()
    (moved,) = (run.run_dir / "quarantine").glob("*/json.py")
    assert moved.read_text() == "import os  # planted\n"
    assert (ws / "train.py").read_text() == "# the agent's pending edit\n"
    assert git(ws, "status", "--porcelain") == "M train.py"
    (record,) = [v for v in guard.violations if v["path"] == "."]
    assert "differed from commit" in record["detail"] and "autoresearch.toml" in record["detail"]
    assert "json.py" in record["detail"] and "quarantine" in record["detail"]


def test_the_empty_read_only_files_the_shell_sandbox_mounts_over_are_left_alone(
        setup: tuple[Config, RunInfo, bytes]) -> None:
    config, run, _ = setup
    ws = config.workspace
    for name in (".mcp.json", "pyproject.toml", ".bashrc"):  # present only while a sandboxed command runs
        (ws / name).touch()
        os.chmod(ws / name, 0o444)

    guard = FileGuard(config, run, interval_s=3600)

    assert guard.check_repository("test") == []
    assert all((ws / name).exists() for name in (".mcp.json", "pyproject.toml", ".bashrc"))
