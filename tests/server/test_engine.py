"""The engine's rules, without MCP: baseline first, keep only improvements, failures recorded, locked files enforced."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import git, set_constant
from helpers import make_engine as open_engine
from server.config import load_config
from server.inflight import read_entries
from server.engine import Engine, InvalidArgument, Refusal
from server.runner import marked_alive
from server.runstate import init_run, load_run



def run(engine: Engine, description: str = "an experiment", hypothesis: str | None = None):
    return asyncio.run(engine.run_experiment(description, hypothesis, caller="test"))


def test_the_first_experiment_must_be_the_unmodified_baseline(workspace: Path) -> None:
    engine = open_engine(workspace)
    set_constant(workspace / "train.py", "LR", "0.3")
    with pytest.raises(Refusal, match="unmodified baseline"):
        run(engine, "try a better LR first")
    engine.commit_or_revert(prefer="revert")
    result = run(engine, "baseline")
    assert result.status == "ok" and result.decision == "keep"
    assert result.metric == pytest.approx(1.0 + 0.04 + 64 / 1000)


def test_an_improvement_is_kept_and_committed_with_its_metric(workspace: Path) -> None:
    engine = open_engine(workspace)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "LR", "0.3")
    result = run(engine, "raise LR to 0.3")
    assert result.would_keep and result.decision == "pending" and result.delta < 0
    decision = engine.commit_or_revert()
    assert decision.decision == "keep"
    message = git(workspace, "log", "-1", "--format=%s", "autoresearch/t1")
    assert message == "score 1.064000 (-0.040000) experiment 2: raise LR to 0.3"
    assert git(workspace, "status", "--porcelain") == ""
    assert "LR = 0.3" in git(workspace, "show", "autoresearch/t1:train.py")


def test_a_result_that_does_not_improve_is_reverted_and_can_never_be_kept(workspace: Path) -> None:
    engine = open_engine(workspace)
    run(engine, "baseline")
    before = (workspace / "train.py").read_text()
    tip = git(workspace, "rev-parse", "HEAD")
    set_constant(workspace / "train.py", "LR", "0.9")
    result = run(engine, "LR 0.9 is worse")
    assert not result.would_keep
    decision = engine.commit_or_revert(prefer="keep_if_better")
    assert decision.decision == "discard"
    assert (workspace / "train.py").read_text() == before
    assert git(workspace, "rev-parse", "HEAD") == tip


def test_an_equal_metric_is_not_an_improvement(workspace: Path) -> None:
    engine = open_engine(workspace)
    run(engine, "baseline")
    (workspace / "train.py").write_text((workspace / "train.py").read_text() + "\n# same numbers\n")
    result = run(engine, "a comment only")
    assert result.delta == 0 and not result.would_keep
    assert engine.commit_or_revert().decision == "discard"


def test_the_agent_may_always_revert_an_improvement(workspace: Path) -> None:
    engine = open_engine(workspace)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "LR", "0.3")
    run(engine, "better")
    assert engine.commit_or_revert(prefer="revert").decision == "discard"
    assert "LR = 0.1" in (workspace / "train.py").read_text()


def test_a_second_run_is_refused_while_a_result_is_undecided(workspace: Path) -> None:
    engine = open_engine(workspace)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "LR", "0.2")
    run(engine, "LR 0.2")
    with pytest.raises(Refusal, match="still undecided"):
        run(engine, "another one")


def test_every_experiments_code_stays_reachable_in_git(workspace: Path) -> None:
    engine = open_engine(workspace)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "LR", "0.9")
    run(engine, "worse idea")
    engine.commit_or_revert()
    refs = git(workspace, "for-each-ref", "--format=%(refname)", "refs/autoresearch/t1/")
    assert refs.splitlines() == ["refs/autoresearch/t1/0001", "refs/autoresearch/t1/0002"]
    assert "LR = 0.9" in git(workspace, "show", "refs/autoresearch/t1/0002:train.py")


def test_a_crash_is_recorded_with_the_log_tail_and_train_py_left_to_fix(workspace: Path) -> None:
    engine = open_engine(workspace)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "BEHAVIOUR", '"crash"')
    result = run(engine, "this will crash")
    assert result.status == "crash" and result.decision == "discard"
    assert "boom: a deliberate crash" in (result.log_tail or "")
    assert 'BEHAVIOUR = "crash"' in (workspace / "train.py").read_text()


def test_a_syntax_error_is_a_crash(workspace: Path) -> None:
    engine = open_engine(workspace)
    run(engine, "baseline")
    (workspace / "train.py").write_text((workspace / "train.py").read_text() + "\ndef broken(:\n")
    result = run(engine, "syntax error")
    assert result.status == "crash" and "SyntaxError" in (result.log_tail or "")


def test_a_nan_run_is_a_crash_with_the_failure_line(workspace: Path) -> None:
    engine = open_engine(workspace)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "BEHAVIOUR", '"nan"')
    result = run(engine, "diverges")
    assert result.status == "crash" and "FAIL: loss is nan" in (result.failure or "")


@pytest.mark.slow
def test_a_hang_past_the_hard_limit_is_killed_with_all_its_descendants(workspace: Path) -> None:
    config_path = workspace / "autoresearch.toml"
    config_path.write_text(config_path.read_text().replace("hard_timeout_s = 20", "hard_timeout_s = 6"))
    git(workspace, "commit", "-qam", "shorter limit")
    engine = open_engine(workspace)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "BEHAVIOUR", '"fork_hang"')
    result = run(engine, "hangs with children")
    assert result.status == "timeout"
    log_text = (engine.run_dir / "experiments" / "0002" / "run.log").read_text()
    assert "children" in log_text, "the children must have started before the limit"
    # The sandbox's pids are its own namespace's: find the children on the host by what they run.
    survivors = [pid for pid in _pids_running("while True: time.sleep(1)") if _alive(pid)]
    assert survivors == [], f"descendants {survivors} outlived the experiment"
    assert not (engine.run_dir / "inflight.json").exists()


def _pids_running(fragment: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if fragment.encode() in (entry / "cmdline").read_bytes():
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_an_output_flood_is_capped_on_disk(workspace: Path) -> None:
    config_path = workspace / "autoresearch.toml"
    config_path.write_text("log_max_bytes = 100000\n" + config_path.read_text())
    git(workspace, "commit", "-qam", "small log cap")
    engine = open_engine(workspace)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "BEHAVIOUR", '"flood"')
    result = run(engine, "prints 20 MB")
    assert result.status == "ok"
    size = (engine.run_dir / "experiments" / "0002" / "run.log").stat().st_size
    assert size < 200_000


def test_a_printed_metric_does_not_replace_the_verified_evaluation(workspace: Path) -> None:
    engine = open_engine(workspace)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "BEHAVIOUR", '"lie"')
    result = run(engine, "prints a fake score")
    assert result.metric == pytest.approx(1.104) and result.verified
    assert not result.would_keep


def test_a_run_that_rewrites_the_locked_file_is_invalid_and_the_file_restored(workspace: Path) -> None:
    engine = open_engine(workspace)
    original = (workspace / "prepare.py").read_bytes()
    run(engine, "baseline")
    set_constant(workspace / "train.py", "BEHAVIOUR", '"tamper"')
    result = run(engine, "rewrites prepare.py")
    assert result.status == "invalid" and "prepare.py" in (result.failure or "")
    assert (workspace / "prepare.py").read_bytes() == original
    assert engine.violations_count() == 1
    events = [r for r in engine.audit.records() if r.event == "violation"]
    assert events and events[0].status == "blocked"


def test_a_locked_file_changed_between_runs_is_restored_and_the_run_refused(workspace: Path) -> None:
    engine = open_engine(workspace)
    run(engine, "baseline")
    original = (workspace / "prepare.py").read_bytes()
    (workspace / "prepare.py").write_text("def score(p):\n    return 0.0\n")
    with pytest.raises(Refusal, match="prepare.py changed since it was locked.*restored"):
        run(engine, "after tampering")
    assert (workspace / "prepare.py").read_bytes() == original


def test_the_evaluation_reads_the_pinned_locked_file_not_the_working_copy(workspace: Path) -> None:
    engine = open_engine(workspace)
    pinned = (engine.run_dir / "pinned" / "prepare.py").read_text()
    assert "def score" in pinned
    assert os.stat(engine.run_dir / "pinned" / "prepare.py").st_mode & 0o222 == 0


def test_a_commit_made_behind_the_servers_back_is_refused(workspace: Path) -> None:
    engine = open_engine(workspace)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "LR", "0.3")
    git(workspace, "commit", "-qam", "sneaky commit")
    with pytest.raises(Refusal, match="left it at"):
        run(engine, "after a manual commit")


def test_unknown_ids_and_bad_arguments_get_actionable_errors(workspace: Path) -> None:
    engine = open_engine(workspace)
    run(engine, "baseline")
    with pytest.raises(InvalidArgument, match="no experiment 99"):
        engine.read_results(experiment_id=99)
    with pytest.raises(InvalidArgument, match="last_n"):
        engine.read_results(last_n=0)
    with pytest.raises(InvalidArgument, match="too short"):
        run(engine, "  ")
    with pytest.raises(Refusal, match="already decided"):
        engine.commit_or_revert(experiment_id=1)
    with pytest.raises(Refusal, match="no experiment is waiting"):
        engine.commit_or_revert()


def test_read_results_shows_failed_ideas_with_their_diff(workspace: Path) -> None:
    engine = open_engine(workspace)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "LR", "0.9")
    run(engine, "worse LR")
    engine.commit_or_revert()
    view = engine.read_results(experiment_id=2)
    assert view.best is not None and view.best.id == 1
    assert [row.decision for row in view.experiments] == ["keep", "discard"]
    assert view.detail is not None and "+LR = 0.9" in view.detail.diff


def test_results_tsv_follows_the_original_format(workspace: Path) -> None:
    engine = open_engine(workspace)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "LR", "0.3")
    run(engine, "better LR")
    engine.commit_or_revert()
    set_constant(workspace / "train.py", "BEHAVIOUR", '"crash"')
    run(engine, "crashes")
    lines = (engine.run_dir / "results.tsv").read_text().splitlines()
    assert lines[0] == "commit\tscore\tmemory_gb\tstatus\tdescription"
    assert [line.split("\t")[3] for line in lines[1:]] == ["keep", "keep", "crash"]
    assert lines[2].split("\t")[1] == "1.064000"
    assert lines[3].split("\t")[1] == "0.000000"


@pytest.mark.slow
def test_a_cancelled_run_is_killed_and_recorded(workspace: Path) -> None:
    engine = open_engine(workspace)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "BEHAVIOUR", '"hang"')

    async def cancel_when_started() -> None:
        task = asyncio.create_task(engine.run_experiment("hangs until cancelled", None, "test"))
        deadline = time.monotonic() + 15
        while engine.in_flight() is None or engine.in_flight().pgid is None:
            assert time.monotonic() < deadline, "the run never started"
            await asyncio.sleep(0.02)
        markers.append(read_entries(engine.run_dir)[0]["marker"])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    markers: list[str] = []
    asyncio.run(cancel_when_started())
    exp = engine.ledger.get(2)
    assert exp is not None and exp.status == "crash" and "cancelled" in (exp.failure or "")
    assert not (engine.run_dir / "inflight.json").exists()
    assert marked_alive(markers[0]) == []


@pytest.mark.slow
def test_a_server_killed_mid_run_is_recovered_on_restart_without_loss_or_duplicates(workspace: Path) -> None:
    config = load_config(workspace)
    init_run(config, "t1")
    repo_root = Path(__file__).resolve().parents[2]
    script = (
        "import asyncio, sys, pathlib\n"
        "from server.config import load_config\nfrom server.engine import Engine\nfrom server.runstate import load_run\n"
        "ws = pathlib.Path(sys.argv[1])\n"
        "c = load_config(ws)\n"
        "e = Engine(c, load_run(c, 't1'))\n"
        "asyncio.run(e.run_experiment('baseline', None, 'child'))\n"
        "t = ws / 'train.py'\n"
        "t.write_text(t.read_text().replace('BEHAVIOUR = \"normal\"', 'BEHAVIOUR = \"hang\"'))\n"
        "asyncio.run(e.run_experiment('hangs', None, 'child'))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(workspace)], cwd=repo_root,
                            env={**os.environ, "PYTHONPATH": str(repo_root)})
    engine = Engine(config, load_run(config, "t1"))
    deadline = time.monotonic() + 60
    while True:
        current = engine.in_flight()
        if current is not None and current.id == 2 and current.pgid is not None:
            break
        assert time.monotonic() < deadline and proc.poll() is None, "the second experiment never started"
        time.sleep(0.05)
    marker = read_entries(engine.run_dir)[0]["marker"]
    proc.kill()  # SIGKILL: no cleanup runs in the server
    proc.wait(timeout=10)

    note = engine.recover()

    assert note is not None and "interrupted" in note
    after = engine.ledger.experiments()
    assert [e.id for e in after] == [1, 2]
    assert after[1].status == "crash" and "interrupted" in (after[1].failure or "")
    assert marked_alive(marker) == []
    assert not (engine.run_dir / "inflight.json").exists()
    assert engine.audit.verify().ok
    assert len((engine.run_dir / "results.tsv").read_text().splitlines()) == 3
    assert git(workspace, "rev-parse", "autoresearch/t1") == engine.run.base_commit
    assert engine.recover() is None, "recovery must be idempotent"
    engine.commit_or_revert(prefer="revert")
    assert run(engine, "after recovery").id == 3


def test_compatibility_mode_uses_the_printed_metric_and_marks_it_unverified(workspace: Path) -> None:
    config_path = workspace / "autoresearch.toml"
    text = config_path.read_text()
    head, _evaluate = text.split("[evaluate]")
    config_path.write_text(head + '[evaluate]\nmode = "stdout"\n')
    set_constant(workspace / "train.py", "BEHAVIOUR", '"lie"')
    git(workspace, "commit", "-qam", "an original-style script that prints its own metric")
    engine = open_engine(workspace)
    result = run(engine, "baseline")
    assert result.status == "ok" and result.metric == pytest.approx(0.000001) and result.verified is False
    tsv = (engine.run_dir / "results.tsv").read_text().splitlines()
    assert tsv[1].endswith("[unverified] baseline")


def test_no_experiment_starts_past_the_harness_limits(workspace: Path) -> None:
    engine = open_engine(workspace)
    (engine.run_dir / "limits.json").write_text(json.dumps({"max_experiments": 1, "deadline": None}))
    run(engine, "baseline")
    with pytest.raises(Refusal, match="limit of 1 experiments is reached"):
        run(engine, "one more")
    (engine.run_dir / "limits.json").write_text(json.dumps({"max_experiments": None, "deadline": time.time() - 1}))
    with pytest.raises(Refusal, match="deadline has passed"):
        run(engine, "one more")
