"""Random search against TPE on the default target, the same number of experiments each, then `autoresearch compare`.

Usage: python benchmarks/bench_agents.py [--experiments 20] [--seeds 0] [--budget 60] [--eval-tokens N] [--chunk 5]
                                        [--out DIR]

It clones the committed repository into a temporary folder (the workspace: train.py with its range comments,
prepare.py, pyproject.toml), sets the CPU profile's `time_budget_s` to `--budget` there (a commit of the clone, so the runs
start from a clean tree) and prepares the data; `--eval-tokens` sets `AUTORESEARCH_EVAL_TOKENS` for the preparation and
the runs, with a cache of their own. The agents are this checkout's code; the clone only holds the
target. For each seed, runs `random-s<seed>` and `tpe-s<seed>` advance in turns of `--chunk` experiments
(`autoresearch run ... --resume`), so a change in the machine's load falls on both agents alike and every turn but the
first also exercises each agent's resume. At the end it writes the comparison chart and table with
`autoresearch compare` and prints a `---` block.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def make_workspace(where: Path, budget: float, eval_tokens: int | None) -> tuple[Path, str]:
    ws = where / "target"
    sh(["git", "clone", "-q", str(ROOT), str(ws)], cwd=where)
    pyproject = ws / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    cpu = text.index("[tool.autoresearch.profiles.cpu]")
    head, tail = text[:cpu], text[cpu:]
    tail = re.sub(r"time_budget_s = [0-9.]+", f"time_budget_s = {budget:g}", tail, count=1)
    pyproject.write_text(head + tail, encoding="utf-8")
    sh(["git", "-c", "user.email=bench@example.com", "-c", "user.name=bench", "commit", "-qam",
        f"benchmark: CPU budget {budget:g} s, eval tokens {eval_tokens or 'default'}"], cwd=ws)
    sh([sys.executable, "prepare.py"], cwd=ws, env=data_env(where, eval_tokens))
    return ws, sh(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=ws).strip()


def data_env(where: Path, eval_tokens: int | None) -> dict[str, str]:
    """With --eval-tokens, a smaller validation set (the same data and metric, scored on fewer tokens) in a cache of
    its own, prepared for those settings; the runs inherit these variables."""
    env = dict(os.environ)
    if eval_tokens:
        env.update(AUTORESEARCH_EVAL_TOKENS=str(eval_tokens), AUTORESEARCH_CACHE=str(where / "cache"))
    return env


def make_fake_workspace(where: Path) -> tuple[Path, str]:
    """The tests' toy target, whose score is known: 1 + (LR - 0.3)**2 + (WIDTH - 16)**2 / 1000, best 1.0."""
    ws = where / "target"
    shutil.copytree(ROOT / "tests" / "fixtures" / "fake_target", ws, ignore=shutil.ignore_patterns("__pycache__"))
    train = ws / "train.py"
    train.write_text(train.read_text(encoding="utf-8").replace(
        'LR = 0.1          # the "hyperparameters" the score depends on',
        'LR = 0.1          # the "hyperparameters" the score depends on; range: 0.01..1.0 log').replace(
        "WIDTH = 8\n", "WIDTH = 8         # range: 2..64\n"), encoding="utf-8")
    (ws / ".gitignore").write_text("__pycache__/\nruns/\n", encoding="utf-8")
    sh(["git", "init", "-q", "-b", "main"], cwd=ws)
    sh(["git", "add", "-A"], cwd=ws)
    sh(["git", "-c", "user.email=bench@example.com", "-c", "user.name=bench", "commit", "-qm", "toy target"], cwd=ws)
    return ws, "main"


def summary(ws: Path, tags: list[str], mark: float) -> list[str]:
    """Per agent: the best metric over its seeds, and how many experiments each seed needed to reach the mark."""
    sys.path.insert(0, str(ROOT))
    from harness.compare import compare_runs
    from server.config import load_config

    runs = compare_runs(load_config(ws), tags, mark=mark, force=True).runs
    lines = []
    for agent in sorted({r.agent for r in runs}):
        mine = [r for r in runs if r.agent == agent]
        reached = sorted(r.mark_experiments for r in mine if r.mark_experiments is not None)
        bests = [r.best for r in mine if r.best is not None]
        median = reached[len(reached) // 2] if len(reached) == len(mine) else "n/a (not every seed reached it)"
        lines.append(f"{agent}_best: {' '.join(f'{b:.6f}' for b in bests)}")
        lines.append(f"{agent}_reached_mark: {len(reached)}/{len(mine)}")
        lines.append(f"{agent}_experiments_to_mark: {' '.join(str(r.mark_experiments or '-') for r in mine)}")
        lines.append(f"{agent}_median_experiments_to_mark: {median}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=20, help="experiments per agent and seed (default 20)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="agent seeds (default 0)")
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per experiment (default 60)")
    parser.add_argument("--eval-tokens", type=int, default=None,
                        help="score each experiment on this many validation tokens (default: prepare.py's)")
    parser.add_argument("--chunk", type=int, default=5, help="experiments per turn (default 5)")
    parser.add_argument("--mark", type=float, default=0.01, help="relative improvement for the mark (default 0.01)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="where the chart goes")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    parser.add_argument("--target", choices=("default", "toy"), default="default",
                        help="default: train.py and prepare.py of this repository; toy: the tests' target with a known "
                             "optimum (--budget and --eval-tokens do not apply)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-agents-"))
    env = dict(data_env(tmp, args.eval_tokens if args.target == "default" else None), PYTHONPATH=str(ROOT))
    if args.target == "default":
        env["AUTORESEARCH_PROFILE"] = "cpu"
    started = time.time()
    try:
        if args.target == "toy":
            ws, base = make_fake_workspace(tmp)
        else:
            ws, base = make_workspace(tmp, args.budget, args.eval_tokens)
        cli = [sys.executable, "-m", "harness.cli"]
        tags: list[str] = []
        for seed in args.seeds:
            pair = [f"random-s{seed}", f"tpe-s{seed}"]
            tags += pair
            done = {tag: 0 for tag in pair}
            while any(n < args.experiments for n in done.values()):
                for tag in pair:
                    n = min(args.chunk, args.experiments - done[tag])
                    if n <= 0:
                        continue
                    # A new run branches from the base commit; a resumed one continues on its own branch.
                    sh(["git", "checkout", "-q", f"autoresearch/{tag}" if done[tag] else base], cwd=ws)
                    resume = ["--resume"] if done[tag] else []
                    out = sh([*cli, "run", "--agent", tag.split("-")[0], "--workspace", str(ws), "--tag", tag,
                              "--seed", str(seed), "--max-experiments", str(n), *resume], cwd=ROOT, env=env)
                    done[tag] += n
                    print(out, end="", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        chart = args.out / ("bench_agents.png" if args.target == "default" else "bench_agents_toy.png")
        table = sh([*cli, "compare", *tags, "--workspace", str(ws), "--mark", f"{args.mark:g}", "--out", str(chart)],
                   cwd=ROOT, env=env)
        print(table)
        print("---")
        print(f"target: {args.target}")
        print(f"experiments_per_run: {args.experiments}")
        print(f"seeds: {' '.join(map(str, args.seeds))}")
        if args.target == "default":
            print(f"budget_s: {args.budget:g}")
            print(f"eval_tokens: {args.eval_tokens or 'default'}")
        print(f"wall_s: {time.time() - started:.0f}")
        print(f"mark: {args.mark:g}")
        print("\n".join(summary(ws, tags, args.mark)))
        print(f"chart: {chart}")
    finally:
        if args.keep:
            print(f"workspace kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
