"""What running an experiment as a Ray task costs over running it locally, on the tests' fake target.

Usage: python benchmarks/bench_ray.py [--n 10] [--address HOST:PORT]

Without `--address` it starts a local head node (4 CPUs, 4 logical GPUs, its own session; stopped afterwards) and
reports how long that took. The fake target trains and evaluates in well under a second, so what is measured is the
executor's own cost: packing the snapshot, scheduling, the worker staging a private copy, the results coming back.
Both executors run the same sealed experiment (bubblewrap sandboxes for training and evaluation), interleaved
(local, Ray, local, ...) so machine noise falls on both alike. It prints:

- the first Ray experiment (cold: Ray starts a worker and unpacks the harness's code shipped with `py_modules`);
- mean, median and p95 seconds per experiment for each executor, and the overhead (Ray minus local, same round);
- four Ray experiments submitted at once against one alone (the cluster's 4 logical GPUs run them side by side;
  on a machine with few cores the sandboxes still share the CPUs).

The figures end with a `---` block of `key: value` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from helpers import make_workspace  # noqa: E402
from ray_cluster import local_ray_cluster  # noqa: E402
from server.config import load_config  # noqa: E402
from server.experiment import ExperimentPaths, Plan, execute  # noqa: E402
from server.ray_executor import RayExecutor  # noqa: E402
from server.runstate import frozen_config, init_run, private_dir  # noqa: E402


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10, help="experiments per executor")
    parser.add_argument("--address", help="an existing cluster (default: start a local head for the run)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    os.environ["AUTORESEARCH_PRIVATE_DIR"] = str(scratch / "private")
    os.environ["AUTORESEARCH_KEY_DIR"] = str(scratch / "keys")
    try:
        with contextlib.ExitStack() as stack:
            started = time.perf_counter()
            address = args.address or stack.enter_context(local_ray_cluster(cpus=4, gpus=4))
            start_s = None if args.address else time.perf_counter() - started
            figures = asyncio.run(measure(scratch, address, args.n))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    local, remote = figures.pop("local"), figures.pop("ray")
    overhead = [r - lo for lo, r in zip(local, remote)]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores | python {platform.python_version()}")
    if start_s is not None:
        print(f"ray start (local head, 4 CPUs, 4 logical GPUs): {start_s:.2f} s")
    print(f"first Ray experiment (cold worker): {figures['cold_s']:.2f} s")
    for name, values in (("local execute", local), ("Ray executor", remote), ("overhead (Ray - local)", overhead)):
        print(f"{name:24s} mean {statistics.fmean(values):.3f} s  median {statistics.median(values):.3f} s  "
              f"p95 {p95(values):.3f} s  (n={len(values)})")
    print(f"one Ray experiment alone: {figures['one_s']:.3f} s; four submitted at once: {figures['four_s']:.3f} s")
    print("---")
    summary = {"ray_start_s": start_s, "cold_s": figures["cold_s"], "local_median_s": statistics.median(local),
               "ray_median_s": statistics.median(remote), "overhead_median_s": statistics.median(overhead),
               "overhead_p95_s": p95(overhead), "one_s": figures["one_s"], "four_at_once_s": figures["four_s"]}
    for key, value in summary.items():
        if value is not None:
            print(f"{key}: {value:.3f}")


async def measure(scratch: Path, address: str, n: int) -> dict:
    workspace = make_workspace(scratch / "ws")
    config = load_config(workspace)
    run = init_run(config, "bench")
    cfg, private = frozen_config(config, run), private_dir(run)
    counter = iter(range(1, 10_000))
    executor = RayExecutor(address, checkpoint_root=str(scratch / "node"))

    def stage() -> tuple[Plan, ExperimentPaths]:
        exp_id = next(counter)
        exp_dir = run.run_dir / "experiments" / f"{exp_id:04d}"
        (exp_dir / "snapshot").mkdir(parents=True)
        shutil.copy2(workspace / "train.py", exp_dir / "snapshot" / "train.py")
        return (Plan(exp_id=exp_id, seed=exp_id, sealed=True, pins=run.pins),
                ExperimentPaths(exp_dir, run.run_dir / "pinned", run.run_dir, private))

    async def one(use_ray: bool) -> float:
        plan, paths = stage()
        began = time.perf_counter()
        runner = executor if use_ray else execute
        outcome = await runner(cfg, plan, paths, lambda pgid, marker: None, lambda: [])
        if outcome.status != "ok":
            raise SystemExit(f"experiment {plan.exp_id} ({'ray' if use_ray else 'local'}): {outcome.failure}")
        return time.perf_counter() - began

    cold = await one(True)
    await one(False)  # warm the local path too (imports, sandbox probe)
    local, remote = [], []
    for i in range(n):
        for use_ray in ((False, True) if i % 2 == 0 else (True, False)):
            (remote if use_ray else local).append(await one(use_ray))
    await asyncio.gather(*(one(True) for _ in range(4)))  # four warm workers
    one_s = await one(True)
    began = time.perf_counter()
    await asyncio.gather(*(one(True) for _ in range(4)))
    return {"local": local, "ray": remote, "cold_s": cold, "one_s": one_s, "four_s": time.perf_counter() - began}


if __name__ == "__main__":
    main()
