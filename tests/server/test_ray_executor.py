"""Experiments as Ray tasks, on a real local Ray cluster with four logical GPUs (the scheduler is exercised on a
machine without any): same score as a local run, logs on the head, four at once, a dead worker retried once, a
second death recorded as a crash, cancellation that kills the remote task."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import FAKE_TARGET, make_workspace
from ray_cluster import local_ray_cluster
from server.config import Config, load_config
from server.experiment import ExperimentPaths, Plan, execute
from server.ray_executor import RayExecutor, RemoteCheckpoint, failure_reason
from server.runner import marked_alive, pid_alive
from server.runstate import frozen_config, init_run, private_dir

pytest.importorskip("ray", reason='Ray is an optional extra: pip install -e ".[ray]" (scripts/test.sh installs it)')

# The fake training says when it started (a file the test sees through the node's staging folder), waits for the
# test's `release` file when WAIT is set, then writes its model; its log records when it started and ended.
TRAIN = '''"""Fake training for the Ray tests."""
import os
import time

import prepare

LR = 0.1
WIDTH = 8
WAIT = True

if __name__ == "__main__":
    print(f"started_at: {time.time():.6f}", flush=True)
    open("started", "w").close()
    while WAIT and not os.path.exists("release"):
        time.sleep(0.02)
    prepare.save_checkpoint({"LR": LR, "WIDTH": WIDTH}, os.environ["AUTORESEARCH_CHECKPOINT"])
    print(f"ended_at: {time.time():.6f}")
    print("---")
    print("training_seconds: 0.1")
'''
SCORE = 1.0 + (0.1 - 0.3) ** 2 + (8 - 16) ** 2 / 1000.0
WAIT_S = 120.0


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A head node with 4 CPUs and 4 logical GPUs, small enough for a 2-core machine (about 10 s to start there)."""
    with local_ray_cluster(cpus=4, gpus=4) as address:
        yield address


@dataclass
class Setup:
    config: Config
    run_dir: Path
    workspace: Path
    pins: tuple
    private: Path
    nodes: Path  # the executor's checkpoint_root: what the (only) node keeps

    def stage(self, exp_id: int) -> ExperimentPaths:
        exp_dir = self.run_dir / "experiments" / f"{exp_id:04d}"
        (exp_dir / "snapshot").mkdir(parents=True)
        shutil.copy2(self.workspace / "train.py", exp_dir / "snapshot" / "train.py")
        return ExperimentPaths(exp_dir, self.run_dir / "pinned", self.run_dir, self.private)

    def plan(self, exp_id: int) -> Plan:
        return Plan(exp_id=exp_id, seed=exp_id, sealed=True, pins=self.pins)

    def executor(self, address: str, **options: float) -> RayExecutor:
        return RayExecutor(address, checkpoint_root=str(self.nodes), **options)

    def started(self) -> list[Path]:
        """Staging folders of attempts whose training has started, oldest first."""
        found = glob.glob(str(self.nodes / "staging" / "*" / "*" / "work" / "started"))
        return sorted((Path(p).parents[2] for p in found), key=lambda p: p.stat().st_mtime)


def _make_setup(tmp_path: Path, wait: bool) -> Setup:
    source = tmp_path / "target"
    shutil.copytree(FAKE_TARGET, source)
    (source / "train.py").write_text(TRAIN.replace("WAIT = True", f"WAIT = {wait}"), encoding="utf-8")
    toml = (source / "autoresearch.toml").read_text(encoding="utf-8")
    toml = toml.replace("time_budget_s = 5", "time_budget_s = 90")
    toml = toml.replace("hard_timeout_s = 20", "hard_timeout_s = 120")
    (source / "autoresearch.toml").write_text(toml.replace("timeout_s = 20", "timeout_s = 60"), encoding="utf-8")
    workspace = make_workspace(tmp_path / "ws", source)
    config = load_config(workspace)
    run = init_run(config, "t1")
    return Setup(frozen_config(config, run), run.run_dir, workspace, run.pins, private_dir(run), tmp_path / "nodes")


@pytest.fixture
def quick(tmp_path: Path, isolated_home: Path) -> Setup:
    return _make_setup(tmp_path, wait=False)


@pytest.fixture
def waiting(tmp_path: Path, isolated_home: Path) -> Setup:
    return _make_setup(tmp_path, wait=True)


async def _until(what: Callable[[], object], timeout_s: float = WAIT_S) -> object:
    """Poll `what` until it is truthy, failing after `timeout_s` (what is watched is another machine's state)."""
    deadline = time.monotonic() + timeout_s
    while not (value := what()):
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)
    return value


def _release(attempt: Path) -> None:
    for work in attempt.glob("*/work"):
        (work / "release").touch()


def _worker(attempt: Path) -> dict:
    return json.loads((attempt / "worker.json").read_text(encoding="utf-8"))


def _no_op(pgid: int, marker: str) -> None:
    raise AssertionError("a Ray run has no local process group to report")


@pytest.mark.slow
def test_an_experiment_on_ray_scores_as_the_local_run_and_leaves_its_logs_on_the_head(
        ray_address: str, quick: Setup, capfd: pytest.CaptureFixture[str]) -> None:
    local = asyncio.run(execute(quick.config, quick.plan(1), quick.stage(1), lambda pgid, marker: None, lambda: []))
    submitted: list[str] = []
    executor = quick.executor(ray_address)
    paths = quick.stage(2)
    remote = asyncio.run(executor(quick.config, quick.plan(2), paths, _no_op, lambda: [], submitted.append))
    assert (remote.status, remote.metric, remote.verified) == ("ok", local.metric, True) and local.metric == SCORE
    assert remote.device is not None and re.match(r"ray:\S+ cuda:\d ", remote.device)
    assert submitted == [executor.last_task_id] and len(submitted[0]) > 8
    assert executor.capacity() == 4  # 4 logical GPUs, one per experiment: what a number of slots should be
    assert "started_at:" in (paths.experiment_dir / "run.log").read_text()
    assert "score:" in paths.eval_log.read_text() and "score:" in (paths.experiment_dir / "eval.log").read_text()
    assert capfd.readouterr().out == ""  # the MCP server speaks on stdout: Ray must not print there
    where = RemoteCheckpoint.read(paths.experiment_dir)
    assert where is not None and Path(where.path).is_file()
    assert not (paths.experiment_dir / "model" / "checkpoint").exists()
    assert not list((quick.nodes / "staging").iterdir())  # only the model stays on the node
    asyncio.run(executor.fetch_checkpoint(where, quick.run_dir / "fetched"))
    assert json.loads((quick.run_dir / "fetched").read_text()) == {"LR": 0.1, "WIDTH": 8}
    asyncio.run(executor.remove_checkpoint(where))
    assert not Path(where.path).exists()
    elsewhere = RemoteCheckpoint(where.node_id, where.node_ip, str(quick.workspace / "train.py"), 1)
    with pytest.raises(ValueError, match="not a checkpoint kept by the Ray executor"):
        asyncio.run(executor.remove_checkpoint(elsewhere))  # a location is read from a file: only ours are removed
    assert (quick.workspace / "train.py").is_file()


@pytest.mark.slow
def test_a_locked_file_changed_on_the_head_makes_the_ray_run_invalid(ray_address: str, quick: Setup) -> None:
    outcome = asyncio.run(quick.executor(ray_address).run(quick.config, quick.plan(1), quick.stage(1), _no_op,
                                                          lambda: ["prepare.py differs from its pin"]))
    assert outcome.status == "invalid" and outcome.metric is None
    assert outcome.failure == "a locked file was changed during the run: prepare.py differs from its pin"


@pytest.mark.slow
def test_an_experiment_that_asks_for_no_gpu_runs_on_the_cpu_with_every_gpu_hidden(ray_address: str,
                                                                                    quick: Setup) -> None:
    outcome = asyncio.run(quick.executor(ray_address, gpus_per_experiment=0).run(
        quick.config, quick.plan(1), quick.stage(1), _no_op, lambda: []))
    assert outcome.status == "ok" and outcome.device is not None and outcome.device.endswith(" cpu")


@pytest.mark.slow
def test_more_gpus_than_the_cluster_has_is_a_crash_that_says_so_without_waiting(ray_address: str,
                                                                                 quick: Setup) -> None:
    paths = quick.stage(1)
    outcome = asyncio.run(quick.executor(ray_address, gpus_per_experiment=8).run(
        quick.config, quick.plan(1), paths, _no_op, lambda: []))
    assert outcome.status == "crash" and "has 4 GPUs in all, fewer than the 8" in str(outcome.failure)
    assert outcome.failure in (paths.experiment_dir / "run.log").read_text()


@pytest.mark.slow
def test_another_cluster_than_the_one_this_process_joined_is_a_crash_naming_both(ray_address: str,
                                                                                   quick: Setup) -> None:
    quick.executor(ray_address).connect()
    outcome = asyncio.run(RayExecutor("127.0.0.1:1").run(quick.config, quick.plan(1), quick.stage(1), _no_op,
                                                         lambda: []))
    assert outcome.status == "crash"
    assert outcome.failure == (f"cannot reach the Ray cluster at 127.0.0.1:1: this process is connected to the Ray "
                               f"cluster at {ray_address}, not 127.0.0.1:1: one server process talks to one cluster")


@pytest.mark.slow
def test_four_experiments_run_at_once_on_four_logical_gpus(ray_address: str, waiting: Setup) -> None:
    executor = waiting.executor(ray_address)
    all_paths = [waiting.stage(i) for i in range(1, 5)]

    async def main() -> list:
        runs = [asyncio.create_task(executor.run(waiting.config, waiting.plan(i), p, _no_op, lambda: []))
                for i, p in enumerate(all_paths, 1)]
        attempts = await _until(lambda: len(waiting.started()) == 4 and waiting.started())
        for attempt in attempts:  # every one is started before any may finish: they run at once, or never end
            _release(attempt)
        return await asyncio.gather(*runs)

    outcomes = asyncio.run(main())
    assert [o.status for o in outcomes] == ["ok"] * 4 and {o.metric for o in outcomes} == {SCORE}
    assert len({o.device for o in outcomes}) == 4  # each on a GPU of its own
    logs = [(p.experiment_dir / "run.log").read_text() for p in all_paths]
    starts = [float(re.search(r"started_at: (\S+)", log)[1]) for log in logs]
    ends = [float(re.search(r"ended_at: (\S+)", log)[1]) for log in logs]
    assert max(starts) < min(ends)  # all four were training at one moment


@pytest.mark.slow
def test_a_worker_killed_mid_experiment_is_retried_once_and_the_retry_is_recorded(ray_address: str,
                                                                                   waiting: Setup) -> None:
    paths = waiting.stage(1)

    async def main():
        run = asyncio.create_task(waiting.executor(ray_address).run(waiting.config, waiting.plan(1), paths, _no_op,
                                                                    lambda: []))
        first = (await _until(waiting.started))[0]
        os.kill(_worker(first)["pid"], signal.SIGKILL)
        second = await _until(lambda: [a for a in waiting.started() if a != first])
        _release(second[0])
        return await run

    outcome = asyncio.run(main())
    assert outcome.status == "ok" and outcome.metric == SCORE
    assert (paths.experiment_dir / "run.log").read_text().count("started_at:") == 1  # only the attempt that finished


@pytest.mark.slow
def test_a_worker_killed_twice_is_a_crash_naming_rays_reason_and_the_retry(
        ray_address: str, waiting: Setup, capfd: pytest.CaptureFixture[str]) -> None:
    paths = waiting.stage(1)

    async def main():
        run = asyncio.create_task(waiting.executor(ray_address).run(waiting.config, waiting.plan(1), paths, _no_op,
                                                                    lambda: []))
        killed: list[Path] = []
        for _ in range(2):
            attempt = (await _until(lambda: [a for a in waiting.started() if a not in killed]))[0]
            os.kill(_worker(attempt)["pid"], signal.SIGKILL)
            killed.append(attempt)
        return await run

    outcome = asyncio.run(main())
    assert outcome.status == "crash" and outcome.metric is None
    assert "retried it once" in str(outcome.failure) and "WorkerCrashedError" in str(outcome.failure)
    assert (paths.experiment_dir / "run.log").read_text().strip() == outcome.failure
    assert not paths.eval_log.exists()
    assert capfd.readouterr().out == ""  # Ray reports dead workers to the driver: never on the MCP server's stdout


@pytest.mark.slow
def test_cancelling_the_run_kills_the_remote_task_and_its_training(ray_address: str, waiting: Setup) -> None:
    paths = waiting.stage(1)

    async def main() -> dict:
        run = asyncio.create_task(waiting.executor(ray_address).run(waiting.config, waiting.plan(1), paths, _no_op,
                                                                    lambda: []))
        attempt = (await _until(waiting.started))[0]
        worker = await _until(lambda: "marker" in _worker(attempt) and _worker(attempt))
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        await _until(lambda: not pid_alive(worker["pid"]) and not marked_alive(worker["marker"]), 60)
        return worker

    worker = asyncio.run(main())
    assert marked_alive(worker["marker"]) == []
    assert not (paths.experiment_dir / "run.log").exists()  # nothing recorded here: the caller records the crash


@pytest.mark.slow
def test_the_ray_benchmark_prints_local_ray_and_overhead_figures(ray_address: str, tmp_path: Path,
                                                                  isolated_home: Path) -> None:
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_ray.py"
    proc = subprocess.run([sys.executable, str(script), "--n", "1", "--address", ray_address], cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in ("local execute ", "Ray executor ", "overhead (Ray - local) ", "four submitted at once",
                 "overhead_median_s: "):
        assert line in proc.stdout
    assert "ray_start_s" not in proc.stdout  # an existing cluster: nothing started, nothing to report


def test_without_ray_installed_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RuntimeError, match=re.escape('pip install -e ".[ray]"')):
        RayExecutor("127.0.0.1:1").connect()


def test_a_node_that_died_twice_is_named_as_lost_after_one_retry_and_memory_exhaustion_as_such() -> None:
    import ray.exceptions as errors

    node = failure_reason(errors.NodeDiedError("node 10.0.0.7 died"))
    assert node == ("the Ray worker running the experiment was lost twice (Ray retried it once): NodeDiedError: "
                    "node 10.0.0.7 died; check the node (memory, disk, its raylet log) and run the experiment again")
    assert "ran out of memory" in failure_reason(errors.OutOfMemoryError("node memory at 97%"))
    assert failure_reason(errors.TaskCancelledError()).startswith("the Ray task was cancelled outside the harness")
