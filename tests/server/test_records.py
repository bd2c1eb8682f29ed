"""Records at scale and under faults: kills and a full disk end in exactly one decision per experiment, a branch
holding exactly the kept changes and refs that match the ledger; the keyed chain, the sealed ledger and the hashed
work tree catch what an attacker rewrites or hides."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import random
import selectors
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from helpers import REPO_ROOT, git, make_engine, set_constant
from server.app import build_server
from server.config import load_config
from server.engine import Engine, Refusal
from server.gitrepo import GitRepo
from server.runcheck import verify_run
from server.runstate import init_run, load_run

DRIVER = Path(__file__).resolve().parent / "records_driver.py"


def run(engine: Engine, description: str = "an experiment"):
    return asyncio.run(engine.run_experiment(description, None, caller="test"))


def reopen(workspace: Path, tag: str = "t1") -> Engine:
    """A fresh engine on the run, as a restarted server opens it (recovery included)."""
    config = load_config(workspace)
    engine = Engine(config, load_run(config, tag))
    engine.recover()
    return engine


def assert_records_consistent(workspace: Path, engine: Engine) -> None:
    """The invariants every kill or fault must leave: one decision per experiment, the branch holding exactly the
    kept changes in order, refs and chain matching the ledger, no temporary files."""
    experiments = engine.ledger.experiments()  # refuses a second decision or a repeated id (CorruptFileError)
    pending = [e for e in experiments if e.decision is None]
    assert len(pending) <= 1 and (not pending or pending[0].id == experiments[-1].id)
    kept = [e for e in experiments if e.decision == "keep" and not e.is_baseline]
    base = engine.run.base_commit
    chain = git(workspace, "rev-list", "--first-parent", f"{base}..{engine.run.branch}").split()[::-1]
    assert chain == [e.kept_commit for e in kept], "each kept experiment is exactly one commit on the branch"
    for commit, exp in zip(chain, kept):
        tree = git(workspace, "rev-parse", f"{commit}^{{tree}}")
        assert tree == git(workspace, "rev-parse", f"{exp.commit}^{{tree}}")
    verdict = verify_run(engine.run, GitRepo(workspace))
    assert verdict.ok, verdict.message
    assert list(engine.run_dir.glob(".*.tmp")) == [], "temporary files left in the run folder"
    decided = [e for e in experiments if e.decision is not None]
    if experiments:
        assert len((engine.run_dir / "results.tsv").read_text().splitlines()) == 1 + len(decided)


def assert_next_experiment_works(workspace: Path, engine: Engine) -> None:
    if engine.ledger.pending() is not None:
        engine.commit_or_revert(prefer="revert")
    engine.commit_or_revert(prefer="revert")
    if engine.ledger.baseline() is not None:
        set_constant(workspace / "train.py", "LR", "0.2999")
    result = run(engine, "after the fault")
    assert result.status == "ok"
    if result.decision == "pending":
        engine.commit_or_revert()
    assert_records_consistent(workspace, engine)


# ---- kills ----

def _kill_trial(tmp_path: Path, seed: int) -> None:
    from helpers import make_workspace

    workspace = make_workspace(tmp_path / f"ws{seed}")
    init_run(load_config(workspace), "t1")
    rng = random.Random(seed)
    lines_before_kill = rng.randrange(0, 7)
    proc = subprocess.Popen([sys.executable, str(DRIVER), str(workspace), "t1", "12", str(seed)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            seen = -1  # the "ready" line
            while seen < lines_before_kill:
                assert sel.select(timeout=60), "the driver made no progress for 60 s"
                if not proc.stdout.readline():
                    break
                seen += 1
        # a seeded point inside the next call: the run and decide steps take a few hundred ms here
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=rng.uniform(0.0, 0.6))
    finally:
        proc.kill()
        proc.wait(timeout=30)
    engine = reopen(workspace)
    assert_records_consistent(workspace, engine)
    assert_next_experiment_works(workspace, engine)


@pytest.mark.parametrize("seed", range(4))
def test_a_server_killed_at_a_random_point_of_run_or_decide_leaves_one_decision_per_experiment(
        tmp_path: Path, isolated_home: Path, seed: int) -> None:
    _kill_trial(tmp_path, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 140))
def test_forty_seeded_kills_leave_one_decision_per_experiment_and_a_branch_of_kept_changes(
        tmp_path: Path, isolated_home: Path, seed: int) -> None:
    _kill_trial(tmp_path, seed)


def test_a_kill_after_the_branch_moved_but_before_the_decision_was_written_is_completed_once(
        workspace: Path) -> None:
    engine = make_engine(workspace)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "LR", "0.3")
    run(engine, "LR 0.3")
    real_append = engine.ledger.append_decision

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed between the branch update and the ledger line")

    engine.ledger.append_decision = killed  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        engine.commit_or_revert()
    engine.ledger.append_decision = real_append  # type: ignore[method-assign]
    moved = git(workspace, "rev-parse", "autoresearch/t1")
    assert moved != engine.run.base_commit and (engine.run_dir / "decision.json").exists()

    again = reopen(workspace)

    exp = again.ledger.get(2)
    assert exp is not None and exp.decision == "keep" and exp.kept_commit == moved
    assert git(workspace, "rev-parse", "autoresearch/t1") == moved, "the keep must not be applied twice"
    assert_records_consistent(workspace, again)
    assert_next_experiment_works(workspace, again)


def test_an_experiment_whose_inflight_record_was_lost_is_recorded_and_its_id_never_reused(workspace: Path) -> None:
    engine = make_engine(workspace)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "LR", "0.25")
    real_append = engine._append_experiment

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    engine._append_experiment = disk_full  # type: ignore[method-assign]
    with pytest.raises(OSError):
        run(engine, "its ledger line cannot be written")
    engine._append_experiment = real_append  # type: ignore[method-assign]
    (engine.run_dir / "inflight.json").unlink()  # and the in-flight record is gone too

    again = reopen(workspace)

    lost = again.ledger.get(2)
    assert lost is not None and lost.status == "crash" and "lost" in (lost.failure or "")
    assert_next_experiment_works(workspace, again)
    assert again.ledger.max_id() == 3


def test_a_snapshot_made_before_a_kill_and_never_started_is_removed(workspace: Path) -> None:
    engine = make_engine(workspace)
    run(engine, "baseline")
    repo = GitRepo(workspace)
    set_constant(workspace / "train.py", "LR", "0.25")
    commit = repo.snapshot_commit(engine.run.base_commit, ["train.py"], "experiment 2: never ran",
                                  "refs/autoresearch/t1/0002")
    (engine.run_dir / "experiments" / "0002").mkdir()
    (engine.run_dir / ".inflight.json.abc.tmp").write_text("{")

    again = reopen(workspace)

    assert not repo.ref_exists("refs/autoresearch/t1/0002") and commit
    assert not (engine.run_dir / "experiments" / "0002").exists()
    assert_records_consistent(workspace, again)


def test_a_stale_inflight_file_is_not_shown_as_running(workspace: Path) -> None:
    engine = make_engine(workspace)
    run(engine, "baseline")
    (engine.run_dir / "inflight.json").write_text(json.dumps(
        {"id": 1, "description": "baseline", "started_at": 0, "deadline": 1e12, "pgid": None}))
    assert engine.in_flight() is None
    assert engine.read_results().in_flight_id is None


# ---- a full disk ----

@pytest.fixture
def small_disk(workspace: Path) -> Iterator[Path]:
    """`runs/` on a 4 MiB tmpfs of its own; skipped where mounting is not allowed."""
    runs = workspace / "runs"
    runs.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(runs)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the fault-injection test covers "
                    "the same paths")
    try:
        yield runs
    finally:
        subprocess.run(["umount", "-l", str(runs)], check=False)


def _fill(mount: Path, leave: int) -> Path:
    filler = mount / "filler"
    filler.unlink(missing_ok=True)
    st = os.statvfs(mount)
    free = st.f_bavail * st.f_frsize
    with filler.open("wb") as fh:
        with contextlib.suppress(OSError):
            fh.write(b"\0" * max(0, free - leave))
    return filler


def _disk_trials(workspace: Path, make_full: "callable", make_free: "callable", trials: int, seed: int) -> None:
    engine = make_engine(workspace)
    rng = random.Random(seed)
    failures = 0
    for trial in range(trials):
        make_full(rng)
        try:
            if engine.ledger.pending() is not None:
                engine.commit_or_revert(prefer=rng.choice(["keep_if_better", "revert"]))
            else:
                if engine.ledger.baseline() is not None:
                    set_constant(workspace / "train.py", "LR", f"{rng.uniform(0.0, 0.6):.4f}")
                else:
                    engine.commit_or_revert(prefer="revert")
                run(engine, f"trial {trial}")
        except OSError as exc:
            failures += 1
            assert exc.errno in (errno.ENOSPC, errno.EIO), exc
        except Refusal as exc:
            assert "disk" in str(exc) or "undecided" in str(exc) or "running" in str(exc), exc
        make_free()
        engine = reopen(workspace) if rng.random() < 0.5 else engine
        engine.recover()
        assert_records_consistent(workspace, engine)
    assert failures > 0, "no trial hit the full disk"
    assert_next_experiment_works(workspace, engine)


def test_a_full_disk_at_any_point_of_run_or_decide_ends_consistent_and_the_loop_continues(
        workspace: Path, small_disk: Path) -> None:
    filler: list[Path] = []

    def full(rng: random.Random) -> None:
        filler.append(_fill(small_disk, rng.choice([0, 1024, 4096, 8192, 16384, 32768])))

    def free() -> None:
        for f in filler:
            f.unlink(missing_ok=True)

    _disk_trials(workspace, full, free, trials=12, seed=7)


def test_a_failing_file_layer_at_any_write_ends_consistent_and_the_loop_continues(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same as the tmpfs test where no tmpfs can be mounted: every durable write of the records goes through
    `server.jsonl`, which fails with ENOSPC after a seeded number of writes."""
    from server import jsonl

    budget = {"left": 10**9}
    real_append, real_atomic = jsonl.append_bytes_unlocked, jsonl.atomic_write_text

    def spend() -> None:
        budget["left"] -= 1
        if budget["left"] < 0:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")

    def append(path: object, data: bytes) -> int:
        spend()
        return real_append(path, data)  # type: ignore[arg-type]

    def atomic(path: object, text: str) -> None:
        spend()
        real_atomic(path, text)  # type: ignore[arg-type]

    monkeypatch.setattr(jsonl, "append_bytes_unlocked", append)
    monkeypatch.setattr(jsonl, "atomic_write_text", atomic)
    import server.decisions as decisions_module
    import server.inflight as inflight_module

    for module in (decisions_module, inflight_module):  # the modules that imported the function by name
        monkeypatch.setattr(module, "atomic_write_text", atomic)

    def full(rng: random.Random) -> None:
        budget["left"] = rng.randrange(0, 9)

    def free() -> None:
        budget["left"] = 10**9

    _disk_trials(workspace, full, free, trials=14, seed=3)


def test_a_full_disk_reaches_the_agent_as_a_message_naming_the_cause_not_a_bare_tool_error(
        workspace: Path, small_disk: Path) -> None:
    engine = make_engine(workspace)

    async def scenario() -> None:
        async with Client(build_server(engine)) as client:
            base = await client.call_tool("run_experiment", {"description": "baseline"})
            assert not base.is_error
            filler = _fill(small_disk, 0)
            set_constant(workspace / "train.py", "LR", "0.3")
            refused = await client.call_tool("run_experiment", {"description": "LR 0.3 on a full disk"})
            text = refused.content[0].text
            assert refused.is_error and "disk holding the run's records is full" in text and "free disk space" in text
            assert text.strip() != "Error executing tool run_experiment", "the cause must reach the agent"
            filler.unlink()
            view = await client.call_tool("read_results", {})
            assert not view.is_error and view.structured_content["in_flight_id"] is None

    anyio.run(scenario)
    assert_next_experiment_works(workspace, reopen(workspace))


# ---- attacks on the records ----

def test_a_rebuilt_audit_chain_and_head_do_not_verify_without_the_runs_key(workspace: Path) -> None:
    engine = make_engine(workspace)
    run(engine, "baseline")
    assert verify_run(engine.run, GitRepo(workspace)).ok
    records = [json.loads(line) for line in engine.audit.path.read_text().splitlines()]
    prev = "0" * 64
    rebuilt = []
    for rec in records:  # what an attacker without the key can do: a perfect unkeyed chain
        rec["prev"] = prev
        body = {k: v for k, v in rec.items() if k != "hash"}
        rec["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                                ensure_ascii=False).encode()).hexdigest()
        prev = rec["hash"]
        rebuilt.append(json.dumps(rec))
    engine.audit.path.write_text("\n".join(rebuilt) + "\n")
    engine.audit.head_path.write_text(json.dumps({"seq": records[-1]["seq"], "hash": prev}) + "\n")

    verdict = verify_run(engine.run, GitRepo(workspace))

    assert not verdict.ok and "hash mismatch" in verdict.message


def test_a_rewritten_ledger_fails_verify_naming_the_line(workspace: Path) -> None:
    engine = make_engine(workspace)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "LR", "0.9")
    run(engine, "worse")
    engine.commit_or_revert()
    lines = engine.ledger.path.read_text().splitlines()
    forged = json.loads(lines[1]) | {"metric": 0.5}
    lines[1] = json.dumps(forged, separators=(",", ":"))
    engine.ledger.path.write_text("\n".join(lines) + "\n")

    verdict = verify_run(engine.run, GitRepo(workspace))

    assert not verdict.ok and "ledger line 2" in verdict.message and "edited" in verdict.message


def test_a_deleted_audit_key_fails_verify_and_is_not_replaced(workspace: Path) -> None:
    engine = make_engine(workspace)
    run(engine, "baseline")
    engine.audit.key_path.unlink()
    verdict = verify_run(engine.run, GitRepo(workspace))
    assert not verdict.ok and "key" in verdict.message and "missing" in verdict.message
    assert not engine.audit.key_path.exists()


def test_a_reference_transaction_hook_does_nothing_to_the_servers_refs(workspace: Path) -> None:
    engine = make_engine(workspace)
    hook = workspace / ".git" / "hooks" / "reference-transaction"
    witness = workspace / "hook-ran"
    hook.write_text(f"#!/bin/sh\necho ran >> {witness}\n"
                    "git update-ref refs/autoresearch/t1/0001 HEAD~0 2>/dev/null\n")
    hook.chmod(0o755)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "LR", "0.3")
    run(engine, "LR 0.3")
    engine.commit_or_revert()
    assert not witness.exists(), "a hook ran inside the server's git calls"
    assert_records_consistent(workspace, engine)


@pytest.mark.parametrize("hide", ["skip-worktree", "assume-unchanged"])
def test_a_tracked_file_changed_behind_an_index_flag_is_caught_by_the_repository_check(
        workspace: Path, hide: str) -> None:
    engine = make_engine(workspace)
    run(engine, "baseline")
    git(workspace, "update-index", f"--{hide}", "autoresearch.toml")
    with (workspace / "autoresearch.toml").open("a") as fh:
        fh.write("\n# forged budget\n")
    assert git(workspace, "status", "--porcelain") == "", "git itself no longer shows the change"
    set_constant(workspace / "train.py", "LR", "0.3")
    with pytest.raises(Refusal, match="autoresearch.toml"):
        run(engine, "LR 0.3")


def test_a_new_file_hidden_by_info_exclude_is_caught_by_the_repository_check(workspace: Path) -> None:
    engine = make_engine(workspace)
    run(engine, "baseline")
    with (workspace / ".git" / "info" / "exclude").open("a") as fh:
        fh.write("\nsitecustomize.py\n")
    (workspace / "sitecustomize.py").write_text("import prepare\n")
    set_constant(workspace / "train.py", "LR", "0.3")
    with pytest.raises(Refusal, match="sitecustomize.py"):
        run(engine, "LR 0.3")


# ---- a live run ----

def _verify_while_running(workspace: Path, count: int) -> int:
    init_run(load_config(workspace), "t1")
    errors = workspace.parent / "driver.err"
    with errors.open("wb") as err:
        proc = subprocess.Popen([sys.executable, str(DRIVER), str(workspace), "t1", str(count), "5"], cwd=REPO_ROOT,
                                stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    run_info = load_run(load_config(workspace), "t1")
    repo = GitRepo(workspace)
    checks = 0
    try:
        while proc.poll() is None:
            verdict = verify_run(run_info, repo)
            assert verdict.ok, f"false alarm on a live run after {checks} checks: {verdict.message}"
            checks += 1
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == 0, errors.read_text()
    assert verify_run(run_info, repo).ok
    assert load_config(workspace) and Engine(load_config(workspace), run_info).ledger.max_id() >= count
    return checks


def test_audit_verify_in_a_loop_against_a_live_run_raises_no_false_alarm(workspace: Path) -> None:
    assert _verify_while_running(workspace, 12) > 3


@pytest.mark.slow
def test_audit_verify_in_a_loop_against_a_live_run_of_200_experiments_raises_no_false_alarm(workspace: Path) -> None:
    checks = _verify_while_running(workspace, 200)
    print(f"{checks} verifications during the run, none failed")
    assert checks > 20


def test_audit_show_piped_into_head_ends_without_a_traceback(workspace: Path) -> None:
    engine = make_engine(workspace)
    for i in range(3):
        engine.audit.append("test", "filler", summary={"i": i, "pad": "x" * 4000})
    cmd = (f"{sys.executable} -m harness.cli audit show --json --workspace {workspace} | head -1")
    done = subprocess.run(["bash", "-c", cmd], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.stdout.count("\n") == 1 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
