"""Random search against TPE on the default target, the same number of experiments each, then `autoresearch compare`.

Usage: python benchmarks/bench_agents.py [--experiments 20] [--seeds 0] [--budget 60] [--eval-tokens N] [--chunk 5]
                                        [--out DIR]

It clones the committed repository into a temporary folder (the workspace: train.py with its range comments,
prepare.py, pyproject.toml), sets the CPU profile's `time_budget_s` to `--budget` there, and with `--eval-tokens` the
evaluation's `AUTORESEARCH_EVAL_TOKENS` (a commit of the clone, so the runs start from a clean tree); then it prepares
the data. The agents are this checkout's code; the clone only holds the
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
    if eval_tokens:  # a smaller validation set: the same data and metric, scored on fewer tokens
        tail += (f'\n[tool.autoresearch.env]\nAUTORESEARCH_EVAL_TOKENS = "{eval_tokens}"\n'
                 f'AUTORESEARCH_CACHE = "{where / "cache"}"\n')  # its own cache: prepared for these settings
    pyproject.write_text(head + tail, encoding="utf-8")
    sh(["git", "-c", "user.email=bench@example.com", "-c", "user.name=bench", "commit", "-qam",
        f"benchmark: CPU budget {budget:g} s, eval tokens {eval_tokens or 'default'}"], cwd=ws)
    env = dict(os.environ)
    if eval_tokens:
        env.update(AUTORESEARCH_EVAL_TOKENS=str(eval_tokens), AUTORESEARCH_CACHE=str(where / "cache"))
    sh([sys.executable, "prepare.py"], cwd=ws, env=env)
    return ws, sh(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=ws).strip()


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
    args = parser.parse_args()

    env = dict(os.environ, PYTHONPATH=str(ROOT), AUTORESEARCH_PROFILE="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="bench-agents-"))
    started = time.time()
    try:
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
                    sh(["git", "checkout", "-q", base], cwd=ws)
                    resume = ["--resume"] if done[tag] else []
                    out = sh([*cli, "run", "--agent", tag.split("-")[0], "--workspace", str(ws), "--tag", tag,
                              "--seed", str(seed), "--max-experiments", str(n), *resume], cwd=ROOT, env=env)
                    done[tag] += n
                    print(out, end="", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        chart = args.out / "bench_agents.png"
        table = sh([*cli, "compare", *tags, "--workspace", str(ws), "--mark", f"{args.mark:g}", "--out", str(chart)],
                   cwd=ROOT, env=env)
        print(table)
        print("---")
        print(f"experiments_per_run: {args.experiments}")
        print(f"seeds: {' '.join(map(str, args.seeds))}")
        print(f"budget_s: {args.budget:g}")
        print(f"eval_tokens: {args.eval_tokens or 'default'}")
        print(f"wall_s: {time.time() - started:.0f}")
        print(f"chart: {chart}")
    finally:
        if args.keep:
            print(f"workspace kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
