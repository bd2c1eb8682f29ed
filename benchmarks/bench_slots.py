"""Experiments per hour with 1, 2 and 4 slots, on the local pool and (optionally) on a Ray cluster.

Usage: python benchmarks/bench_slots.py [--experiments 24] [--sleep 2] [--slots 1,2,4] [--queue-ahead]
                                        [--executor local|ray] [--ray-address ADDR]

A trivial target (train.py sleeps `--sleep` seconds and writes a checkpoint; the locked evaluation prints the score it
holds) gets a fresh git workspace and run per setting, with `[slots] count = N` and the sandbox on, as real runs have
it. The engine is driven directly, the way an agent drives it through the tools: the baseline first (not timed), then
`--experiments` variants kept N at a time: each is an edit of train.py submitted with `run_experiment(wait=False)`;
`wait_for_next` blocks until one finishes, which is decided at once with `decide(experiment_id=...)` (about half are
kept, half discarded, so both git paths are paid for), and the next variant is submitted into the freed place: the
loop program.md teaches. With `--queue-ahead` the driver keeps as many submitted as the engine accepts (2 x N), so a
slot that frees takes a queued variant at once instead of waiting for the decision and the next submission.

Printed per setting: the wall time from the first submission to the last decision, experiments per hour, the ratio
to N times the one-slot rate of the same executor (the goal: at least 0.95), and the overhead per experiment: the
slot-seconds each experiment took (wall x N / experiments) minus the sleep. Next to it, the mean time an experiment
held its slot (the ledger's started..finished, sandboxes and evaluation included) minus the sleep, which is what the
overhead is made of besides the engine's own bookkeeping and polling.

With `--executor ray` the same settings also run on a Ray cluster (`[slots] executor = "ray"`, CPU tasks:
`gpus_per_experiment = 0`), and the Ray executor's added cost per experiment is printed beside the local pool's. The
cluster is the one at `--ray-address ADDR`, or else a local head started for the run with as many CPUs as the largest
slot count (tests/ray_cluster.py; stopped afterwards, its start-up not timed). When Ray cannot be used (no
`--executor ray`, or `ray` not importable) the script prints `ray: skipped (...)`. The figures end with a `---` block
of `key: value` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(1, str(REPO_ROOT / "tests"))  # ray_cluster: a local Ray head when no address is given

from server.config import load_config  # noqa: E402
from server.engine import Engine  # noqa: E402
from server.runstate import init_run, load_run  # noqa: E402

GOAL = 0.95  # N slots should give at least this fraction of N times the one-slot rate

TRIVIAL_TRAIN = '''\
"""Trivial target: sleep, write the checkpoint, print the summary block."""
import json
import os
import time

SCORE = 1.0      # what the evaluation reports; the benchmark edits it for every variant
SLEEP_S = {sleep!r}

time.sleep(SLEEP_S)
with open(os.environ["AUTORESEARCH_CHECKPOINT"], "w", encoding="utf-8") as fh:
    json.dump({{"score": SCORE}}, fh)
print("---")
print(f"training_seconds: {{SLEEP_S:.1f}}")
'''

TRIVIAL_PREPARE = '''\
"""Trivial locked evaluation: read the checkpoint's score and print it as the metric."""
import json
import sys

with open(sys.argv[2], encoding="utf-8") as fh:
    score = json.load(fh)["score"]
print("---")
print(f"score:            {score:.6f}")
'''

TRIVIAL_CONFIG = '''\
mutable = ["train.py"]
locked = ["prepare.py"]
command = ["{{python}}", "train.py"]
metric = "score"
direction = "minimize"
min_improvement = 0.0
time_budget_s = 60
hard_timeout_s = 120

[evaluate]
mode = "checkpoint"
command = ["{{python}}", "{{pinned}}/prepare.py", "evaluate", "{{checkpoint}}"]
timeout_s = 60

[slots]
count = {count}
{executor}'''

RAY_SLOTS = '''executor = "ray"
ray_address = "{address}"
gpus_per_experiment = 0
cpus_per_experiment = 1
'''


# ---- The trivial target ----

def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)


def make_workspace(root: Path, sleep_s: float, count: int, ray_address: str | None) -> Path:
    """A git repository on main holding the trivial target with `count` slots (on Ray when an address is given)."""
    root.mkdir(parents=True)
    (root / "train.py").write_text(TRIVIAL_TRAIN.format(sleep=sleep_s), encoding="utf-8")
    (root / "prepare.py").write_text(TRIVIAL_PREPARE, encoding="utf-8")
    executor = RAY_SLOTS.format(address=ray_address) if ray_address else ""
    (root / "autoresearch.toml").write_text(TRIVIAL_CONFIG.format(count=count, executor=executor), encoding="utf-8")
    (root / ".gitignore").write_text("__pycache__/\nruns/\n", encoding="utf-8")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "config", "user.email", "bench@localhost")
    _git(root, "config", "user.name", "bench")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "trivial target")
    return root


def set_score(workspace: Path, score: float) -> None:
    """The agent's edit before each submission: change SCORE in train.py."""
    path = workspace / "train.py"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines = [f"SCORE = {score!r}\n" if line.startswith("SCORE =") else line for line in lines]
    path.write_text("".join(lines), encoding="utf-8")


# ---- One setting ----

@dataclass(frozen=True)
class Figures:
    executor: str
    slots: int
    experiments: int
    wall_s: float
    in_slot_s: float  # mean seconds an experiment held its slot (ledger started..finished)
    kept: int
    sleep_s: float
    submit_s: float  # mean seconds spent inside run_experiment(wait=False), per experiment
    decide_s: float  # mean seconds spent inside decide, per experiment

    @property
    def per_hour(self) -> float:
        return self.experiments / self.wall_s * 3600.0

    @property
    def overhead_s(self) -> float:
        """Slot-seconds per experiment beyond the training sleep."""
        return self.wall_s * self.slots / self.experiments - self.sleep_s

    @property
    def in_slot_overhead_s(self) -> float:
        return self.in_slot_s - self.sleep_s


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def drive(engine: Engine, workspace: Path, depth: int,
                experiments: int) -> tuple[float, list[int], int, dict[str, float]]:
    """Baseline, then `experiments` variants kept `depth` at a time; returns (wall seconds, their ids, kept, seconds
    spent in the submitting and deciding calls). Those calls run on the event loop the experiments' tasks share, so
    their time is also time the other slots wait to have a finished experiment noticed."""
    base = await engine.run_experiment("baseline", caller="bench")
    if base.status != "ok":
        raise RuntimeError(f"the baseline failed ({base.status}: {base.failure}); read {engine.run_dir}")
    submitted: list[int] = []
    outstanding: set[int] = set()
    kept = 0
    calls_s = {"submit": 0.0, "decide": 0.0}
    started = time.perf_counter()
    while len(submitted) < experiments or outstanding:
        while len(submitted) < experiments and len(outstanding) < depth:
            n = len(submitted)
            set_score(workspace, 0.9 - 0.001 * n if n % 2 == 0 else 2.0 + n)  # even: better than the best, odd: worse
            call = time.perf_counter()
            result = await engine.run_experiment(f"variant {n + 1}", caller="bench", wait=False)
            calls_s["submit"] += time.perf_counter() - call
            submitted.append(result.id)
            outstanding.add(result.id)
        await engine.wait_for_next(600)
        for exp_id in sorted(outstanding):
            exp = engine.ledger.get(exp_id)
            if exp is None:
                continue
            outstanding.discard(exp_id)
            if exp.status != "ok":
                raise RuntimeError(f"experiment {exp_id} ended {exp.status}: {exp.failure}; read {exp.log_path}")
            call = time.perf_counter()
            decided = await engine.decide(experiment_id=exp_id, prefer="keep_if_better", caller="bench")
            calls_s["decide"] += time.perf_counter() - call
            kept += decided.decision == "keep"
    return time.perf_counter() - started, submitted, kept, calls_s


def measure(scratch: Path, executor: str, slots: int, experiments: int, sleep_s: float,
            ray_address: str | None, queue_ahead: bool) -> Figures:
    workspace = make_workspace(scratch / f"{executor}-{slots}", sleep_s, slots, ray_address)
    config = load_config(workspace)
    init_run(config, "bench")
    engine = Engine(config, load_run(config, "bench"))
    if not engine.sealed:
        raise RuntimeError(f"experiments cannot run sealed here: {engine.unsealed_reason}")
    depth = engine.max_outstanding if queue_ahead else slots
    wall, ids, kept, calls_s = asyncio.run(drive(engine, workspace, depth, experiments))
    held = [engine.ledger.get(i) for i in ids]
    in_slot = statistics.mean(_seconds(e.finished_at) - _seconds(e.started_at) for e in held if e is not None)
    return Figures(executor, slots, experiments, wall, in_slot, kept, sleep_s, calls_s["submit"] / experiments,
                   calls_s["decide"] / experiments)


# ---- Output ----

def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        cpu = platform.processor() or cpu
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"machine: {cpu} | {os.cpu_count()} cores | {platform.machine()} | Python {platform.python_version()} | "
            f"load average {load}")


HEADER = (f"{'executor':<9}{'slots':>6}{'exps':>6}{'wall s':>9}{'exp/hour':>10}{'vs N x 1':>10}"
          f"{'overhead s/exp':>16}{'in slot s/exp':>15}{'submit s':>10}{'decide s':>10}")


def print_rows(rows: list[Figures]) -> None:
    one = next((r for r in rows if r.slots == 1), None)
    for r in rows:
        ratio = r.per_hour / (r.slots * one.per_hour) if one else float("nan")
        print(f"{r.executor:<9}{r.slots:>6}{r.experiments:>6}{r.wall_s:>9.1f}{r.per_hour:>10.0f}{ratio:>10.2f}"
              f"{r.overhead_s:>16.3f}{r.in_slot_overhead_s:>15.3f}{r.submit_s:>10.3f}{r.decide_s:>10.3f}")


def ray_unavailable(args: argparse.Namespace) -> str | None:
    """Why the Ray rows cannot be measured, or None when they can."""
    if args.executor != "ray":
        return "pass --executor ray --ray-address ADDR to measure a Ray cluster"
    if importlib.util.find_spec("ray") is None:
        return "`import ray` fails: install the ray extra"
    if importlib.util.find_spec("server.ray_executor") is None:
        return "this checkout has no server/ray_executor.py"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--experiments", type=int, default=24, help="timed experiments per setting (default 24)")
    parser.add_argument("--sleep", type=float, default=2.0, help="seconds train.py sleeps (default 2)")
    parser.add_argument("--slots", default="1,2,4", help="slot counts to measure (default 1,2,4)")
    parser.add_argument("--queue-ahead", action="store_true",
                        help="keep 2 x N submitted (the engine's limit) instead of N, so freed slots never wait")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="ray: also measure the Ray executor")
    parser.add_argument("--ray-address", default=None,
                        help="the Ray cluster's address, e.g. 127.0.0.1:6379 (default: start a local head)")
    args = parser.parse_args()
    counts = [int(x) for x in args.slots.split(",")]
    if args.experiments < 1 or args.sleep < 0 or not counts or min(counts) < 1:
        parser.error("--experiments must be >= 1, --sleep >= 0 and --slots a list of counts >= 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    print(machine_line())
    print(f"trivial target: train.py sleeps {args.sleep:g} s and writes a checkpoint; sealed evaluation prints the "
          f"score; {args.experiments} timed experiments per setting after an untimed baseline; "
          + ("2 x N submitted at a time (--queue-ahead)" if args.queue_ahead else "N submitted at a time"))
    local: list[Figures] = []
    remote: list[Figures] = []
    skipped = ray_unavailable(args)
    with tempfile.TemporaryDirectory(prefix="bench-slots-") as tmp:
        for count in counts:
            local.append(measure(Path(tmp), "local", count, args.experiments, args.sleep, None, args.queue_ahead))
        if skipped is None:
            with contextlib.ExitStack() as stack:
                address = args.ray_address
                if address is None:
                    from ray_cluster import local_ray_cluster

                    address = stack.enter_context(local_ray_cluster(cpus=max(counts), gpus=0))
                    print(f"ray: a local head at {address} ({max(counts)} CPUs)")
                for count in counts:
                    remote.append(measure(Path(tmp), "ray", count, args.experiments, args.sleep, address,
                                          args.queue_ahead))
    print()
    print(HEADER)
    print_rows(local)
    print_rows(remote)
    if skipped is None:
        print("\nRay's added cost per experiment (overhead s/exp, ray minus local):")
        for loc, ray in zip(local, remote):
            print(f"  {loc.slots} slot(s): local {loc.overhead_s:.3f}  ray {ray.overhead_s:.3f}  "
                  f"added {ray.overhead_s - loc.overhead_s:+.3f}")

    print("---")
    for rows in (local, remote):
        one = next((r for r in rows if r.slots == 1), None)
        for r in rows:
            key = f"{r.executor}_{r.slots}"
            print(f"{key}_experiments_per_hour: {r.per_hour:.1f}")
            if one is not None:
                print(f"{key}_ratio_to_n_x_one: {r.per_hour / (r.slots * one.per_hour):.3f}")
            print(f"{key}_overhead_s: {r.overhead_s:.3f}")
            print(f"{key}_in_slot_overhead_s: {r.in_slot_overhead_s:.3f}")
            print(f"{key}_submit_s: {r.submit_s:.3f}")
            print(f"{key}_decide_s: {r.decide_s:.3f}")
            print(f"{key}_kept: {r.kept}")
    for loc, ray in zip(local, remote):
        print(f"ray_added_overhead_s_{loc.slots}: {ray.overhead_s - loc.overhead_s:.3f}")
    if one_local := next((r for r in local if r.slots == 1), None):
        worst = min((r.per_hour / (r.slots * one_local.per_hour) for r in local), default=1.0)
        print(f"local_goal_met: {'yes' if worst >= GOAL else 'no'} (worst ratio {worst:.3f}, goal {GOAL})")
    if skipped is not None:
        print(f"ray: skipped ({skipped})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
