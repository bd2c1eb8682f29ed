"""Waves: several experiments in flight on several slots, through the real MCP tools, decided in any order.

The rules of the single loop hold for every slot: the server's verdict, the branch holding exactly the kept changes
(a variant kept after another one becomes the tip, with the tip it replaced as first parent and its own snapshot as
second), one ledger line per experiment, and a kill of the server with experiments on several slots leaves each of
them recorded when the run is opened again.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from helpers import REPO_ROOT, git, make_engine, set_constant
from server.app import build_server
from server.audit import AuditLog
from server.config import load_config
from server.engine import Engine
from server.gitrepo import GitRepo
from server.inflight import read_entries
from server.runcheck import verify_run
from server.runner import marked_alive
from server.runstate import load_run


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def with_slots(workspace: Path, count: int, ray_address: str | None = None) -> None:
    with (workspace / "autoresearch.toml").open("a", encoding="utf-8") as fh:
        fh.write(f"\n[slots]\ncount = {count}\n")
        if ray_address:
            fh.write(f'executor = "ray"\nray_address = "{ray_address}"\ngpus_per_experiment = 1\n'
                     "cpus_per_experiment = 0.5\n")
    git(workspace, "commit", "-qam", f"{count} slots")


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A real local Ray cluster with 4 logical GPUs, for the module (started and stopped here)."""
    pytest.importorskip("ray", reason='the Ray tests need the extra: pip install -e ".[ray]"')
    from ray_cluster import local_ray_cluster

    with local_ray_cluster(cpus=4, gpus=4) as address:
        yield address


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.slow)])
def executor(request: pytest.FixtureRequest) -> str | None:
    """None for the local pool, the cluster's address for Ray."""
    return request.getfixturevalue("ray_address") if request.param == "ray" else None


def variant(workspace: Path, lr: str, sleep_s: str = "1.5") -> None:
    set_constant(workspace / "train.py", "LR", lr)
    set_constant(workspace / "train.py", "SLEEP_S", sleep_s)


async def wait_recorded(engine: Engine, ids: list[int], client: Client, limit_s: float = 60) -> None:
    with anyio.fail_after(limit_s):
        while any(engine.ledger.get(i) is None for i in ids):
            view = await client.call_tool("read_results", {"wait_s": 10})
            assert not view.is_error, view.content[0].text


@pytest.mark.anyio
async def test_a_wave_of_four_runs_two_at_a_time_and_its_out_of_order_decisions_leave_exactly_the_kept_changes(
        workspace: Path, executor: str | None) -> None:
    with_slots(workspace, 2, executor)
    engine = make_engine(workspace)
    async with Client(build_server(engine)) as client:
        base = await client.call_tool("run_experiment", {"description": "baseline"})
        assert base.structured_content["decision"] == "keep"
        submitted = []
        for lr in ("0.35", "0.25", "0.9", "0.31"):
            variant(workspace, lr)
            result = await client.call_tool("run_experiment", {"description": f"LR {lr}", "wait": False})
            assert not result.is_error, result.content[0].text
            assert result.structured_content["status"] in ("queued", "running")
            submitted.append(result.structured_content["id"])
        assert submitted == [2, 3, 4, 5]
        view = (await client.call_tool("read_results", {})).structured_content
        assert view["slots"] == 2 and sorted(r["id"] for r in view["in_flight"]) == submitted
        assert sum(r["state"] == "running" for r in view["in_flight"]) == 2, "two slots run two at once"
        full = await client.call_tool("run_experiment", {"description": "a fifth one", "wait": False})
        assert full.is_error and "outstanding" in full.content[0].text

        early = await client.call_tool("commit_or_revert", {"experiment_id": 5})
        assert early.is_error and "not finished" in early.content[0].text
        await wait_recorded(engine, submitted, client)
        ambiguous = await client.call_tool("commit_or_revert", {})
        assert ambiguous.is_error and "name one" in ambiguous.content[0].text

        first = await client.call_tool("commit_or_revert", {"experiment_id": 3})  # LR 0.25: beats the baseline
        assert not first.is_error, first.content[0].text
        assert first.structured_content["decision"] == "keep"
        second = await client.call_tool("commit_or_revert", {"experiment_id": 5})  # LR 0.31: beats 0.25 too
        assert second.structured_content["decision"] == "keep", second.structured_content["reason"]
        for exp_id in (2, 4):  # no longer better than the best at decision time
            late = await client.call_tool("commit_or_revert", {"experiment_id": exp_id})
            assert late.structured_content["decision"] == "discard"

    runs = {e.id: e for e in engine.ledger.experiments()}
    starts = sorted((runs[i].started_at, runs[i].finished_at) for i in submitted)
    assert starts[0][1] > starts[1][0], "the first two experiments overlapped in time"
    assert {runs[i].slot for i in submitted} == {0, 1}
    assert all(runs[i].device.startswith("ray:" if executor else "cpu") for i in submitted), runs[2].device
    chain = git(workspace, "rev-list", "--first-parent", f"{engine.run.base_commit}..{engine.run.branch}").split()
    assert chain[::-1] == [runs[3].kept_commit, runs[5].kept_commit]
    tip_parents = git(workspace, "rev-list", "--parents", "-n", "1", runs[5].kept_commit).split()[1:]
    assert tip_parents == [runs[3].kept_commit, runs[5].commit], "the variant's own snapshot is the second parent"
    assert git(workspace, "rev-parse", f"{runs[5].kept_commit}^{{tree}}") == \
        git(workspace, "rev-parse", f"{runs[5].commit}^{{tree}}"), "the tip holds exactly the code that was measured"
    assert engine.ledger.best_kept().id == 5
    assert "LR = 0.31" in (workspace / "train.py").read_text(), "the wave is over: the workspace holds the best code"
    verdict = verify_run(engine.run, GitRepo(workspace))
    assert verdict.ok, verdict.message
    assert AuditLog(engine.run_dir / "audit.jsonl").verify().ok


@pytest.mark.anyio
async def test_read_results_with_wait_s_returns_when_the_next_experiment_finishes_and_at_once_when_none_runs(
        workspace: Path) -> None:
    with_slots(workspace, 2)
    engine = make_engine(workspace)
    async with Client(build_server(engine)) as client:
        idle = await client.call_tool("read_results", {"wait_s": 600})  # nothing in flight: no wait at all
        assert not idle.is_error and idle.structured_content["in_flight"] == []
        await client.call_tool("run_experiment", {"description": "baseline"})
        variant(workspace, "0.2", sleep_s="1")
        await client.call_tool("run_experiment", {"description": "quick", "wait": False})
        variant(workspace, "0.4", sleep_s="30")
        await client.call_tool("run_experiment", {"description": "slow", "wait": False})
        with anyio.fail_after(25):
            view = (await client.call_tool("read_results", {"wait_s": 60})).structured_content
        assert view["pending_ids"] == [2] and [r["id"] for r in view["in_flight"]] == [3]
        bad = await client.call_tool("read_results", {"wait_s": -1})
        assert bad.is_error and "wait_s" in bad.content[0].text
        decided = await client.call_tool("commit_or_revert", {"experiment_id": 2})
        assert decided.structured_content["decision"] == "keep"
        assert "left as you have it" in decided.structured_content["next_step"]
        assert "SLEEP_S = 30" in (workspace / "train.py").read_text(), "an edit in progress is not overwritten"


@pytest.mark.anyio
async def test_experiments_on_another_kind_of_device_than_the_baseline_are_void(workspace: Path) -> None:
    from server.slots import Slot

    engine = make_engine(workspace)
    config, run = engine.config, engine.run
    on_h200 = Engine(config, run, slots=[Slot(0, "cuda:0 NVIDIA H200")])
    await on_h200.run_experiment("baseline")
    set_constant(workspace / "train.py", "LR", "0.3")
    on_a100 = Engine(config, run, slots=[Slot(0, "cuda:0 NVIDIA A100")])
    result = await on_a100.run_experiment("same change, other hardware")
    assert result.status == "invalid" and "different kind of device" in (result.failure or "")
    assert on_a100.ledger.get(2).device == "cuda:0 NVIDIA A100"
    await on_a100.decide(prefer="revert")
    on_h200_again = Engine(config, run, slots=[Slot(0, "cuda:1 NVIDIA H200")])
    set_constant(workspace / "train.py", "LR", "0.3")
    again = await on_h200_again.run_experiment("same change, same hardware class")
    assert again.status == "ok"


def _stdio(workspace: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "server", "serve", "--workspace", str(workspace), "--tag", "t1"],
        env={"PYTHONPATH": str(REPO_ROOT), "HOME": os.environ["HOME"],
             "AUTORESEARCH_KEY_DIR": os.environ["AUTORESEARCH_KEY_DIR"],
             "AUTORESEARCH_PRIVATE_DIR": os.environ["AUTORESEARCH_PRIVATE_DIR"]},
        cwd=str(REPO_ROOT))


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_server_killed_with_experiments_running_on_two_slots_and_one_queued_leaves_all_three_recorded(
        workspace: Path, executor: str | None) -> None:
    with_slots(workspace, 2, executor)
    started = "ray_task" if executor else "marker"
    engine = make_engine(workspace)
    markers: list[str] = []
    with pytest.raises(BaseException):  # the client loses its server
        async with Client(_stdio(workspace)) as client:
            await client.call_tool("run_experiment", {"description": "baseline"})
            for lr in ("0.2", "0.25", "0.35"):
                variant(workspace, lr, sleep_s="600")
                result = await client.call_tool("run_experiment", {"description": f"LR {lr}", "wait": False})
                assert not result.is_error, result.content[0].text
            with anyio.fail_after(30):
                while len([e for e in read_entries(engine.run_dir) if e.get(started)]) < 2:
                    await anyio.sleep(0.05)
            entries = read_entries(engine.run_dir)
            markers = [e["marker"] for e in entries if e.get("marker")]
            os.kill(entries[0]["owner"]["pid"], signal.SIGKILL)
            await client.call_tool("read_results", {})
    assert len(markers) == (0 if executor else 2)  # a Ray task has no local processes; Ray ends a dead driver's
    reopened = Engine(load_config(workspace), load_run(load_config(workspace), "t1"))
    note = reopened.recover()
    assert note is not None and note.count("recorded as crash") == 3, note
    assert [(e.id, e.status) for e in reopened.ledger.experiments()[1:]] == [(2, "crash"), (3, "crash"), (4, "crash")]
    assert "queued" in reopened.ledger.get(4).failure
    deadline = time.monotonic() + 15
    while any(marked_alive(m) for m in markers):
        assert time.monotonic() < deadline, "an experiment's processes outlived its server"
        time.sleep(0.05)
    assert not (reopened.run_dir / "inflight.json").exists()
    verdict = verify_run(reopened.run, GitRepo(workspace))
    assert verdict.ok, verdict.message
    assert AuditLog(reopened.run_dir / "audit.jsonl").verify().ok
    reopened.commit_or_revert(prefer="revert")
    variant(workspace, "0.3", sleep_s="0")
    after = await reopened.run_experiment("the loop goes on")
    assert after.status == "ok"
    assert json.loads((reopened.run_dir / "run.json").read_text())["tag"] == "t1"
