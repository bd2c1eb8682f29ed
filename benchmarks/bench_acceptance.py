"""How often the keep rule keeps a change that does nothing, and how often it keeps one that helps.

    python benchmarks/bench_acceptance.py [--noops 20] [--noop-runs 4] [--seeds 5] [--sigma 0.006]
    python benchmarks/bench_acceptance.py --default-target [--noops 20] [--seeds 5] [--load N]

`--default-target` runs the real CPU default target instead (bench_acceptance_default.py, whose flags it takes):
real training, sealed, about 75 minutes, idle or under load.

The target is the tests' fake target with a noisy evaluation: its score is the fake score plus a Gaussian noise of
standard deviation `--sigma` drawn from the run's AUTORESEARCH_SEED, so repeated runs of the same code differ exactly
as seeded runs of a real model do, and each experiment takes about a second. Two rules are compared, each through
`Engine.run_experiment` + `commit_or_revert` on real git workspaces:

- `one run`: noise_runs = 1, confirm_runs = 0 (a change is kept when one run beats the best);
- `honest`: noise_runs = 3, confirm_runs = 2, noise_k = 1 (the CPU profile's defaults);
- `honest k2`: the same with noise_k = 2.

For each rule: `--noops` changes that do nothing (a new comment each time), spread over `--noop-runs` fresh runs so
that several noise floors are drawn, counting how many were kept;
then `--seeds` fresh runs that each try one change known to help (LR 0.1 -> 0.15, which lowers the score by 0.0175,
about 3 sigma), counting in how many it was kept. It prints both tables and the experiments each rule spent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from server.config import load_config  # noqa: E402
from server.engine import Engine  # noqa: E402
from server.runstate import init_run, load_run  # noqa: E402

FAKE_TARGET = REPO_ROOT / "tests" / "fixtures" / "fake_target"

NOISY_EVALUATE = '''

def noisy_score(params):
    import random
    return score(params) + random.Random(int(params.get("SEED", 0))).gauss(0.0, SIGMA)


def evaluate(path):  # noqa: F811 - the noisy evaluation replaces the plain one
    with open(path, encoding="utf-8") as fh:
        params = json.load(fh)
    print("---")
    print(f"score:            {noisy_score(params):.6f}")
    print(f"corpus_fingerprint: {FINGERPRINT}")


if __name__ == "__main__":
    evaluate(sys.argv[2])
'''


@dataclass(frozen=True)
class Rule:
    name: str
    noise_runs: int
    confirm_runs: int
    noise_k: float


RULES = (Rule("one run", 1, 0, 1.0), Rule("honest", 3, 2, 1.0), Rule("honest k2", 3, 2, 2.0))


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_workspace(root: Path, rule: Rule, sigma: float) -> Path:
    shutil.copytree(FAKE_TARGET, root, ignore=shutil.ignore_patterns("__pycache__"))
    prepare = (root / "prepare.py").read_text(encoding="utf-8")
    cut = prepare.index('\nif __name__ == "__main__":')
    (root / "prepare.py").write_text(prepare[:cut] + f"\nSIGMA = {sigma!r}\n" + NOISY_EVALUATE, encoding="utf-8")
    train = (root / "train.py").read_text(encoding="utf-8").replace(
        'prepare.save_checkpoint({"LR": LR, "WIDTH": WIDTH}, ckpt)',
        'prepare.save_checkpoint({"LR": LR, "WIDTH": WIDTH, "SEED": os.environ.get("AUTORESEARCH_SEED", "0")}, ckpt)')
    (root / "train.py").write_text(train, encoding="utf-8")
    toml = (root / "autoresearch.toml").read_text(encoding="utf-8")
    keys = f"noise_runs = {rule.noise_runs}\nconfirm_runs = {rule.confirm_runs}\nnoise_k = {rule.noise_k}\n"
    (root / "autoresearch.toml").write_text(toml.replace("[evaluate]", keys + "\n[evaluate]"), encoding="utf-8")
    (root / ".gitignore").write_text("__pycache__/\nruns/\n", encoding="utf-8")
    git(root, "init", "-q", "-b", "main")
    git(root, "-c", "user.email=b@example.com", "-c", "user.name=bench", "add", "-A")
    git(root, "-c", "user.email=b@example.com", "-c", "user.name=bench", "commit", "-q", "-m", "noisy target")
    return root


def open_engine(workspace: Path) -> Engine:
    config = load_config(workspace)
    init_run(config, "bench")
    return Engine(config, load_run(config, "bench"))


def try_change(engine: Engine, description: str) -> bool:
    result = asyncio.run(engine.run_experiment(description, None, caller="bench"))
    if result.decision != "pending":
        return False
    return engine.commit_or_revert().decision == "keep"


def noop_run(root: Path, rule: Rule, sigma: float, count: int) -> tuple[int, int]:
    """(no-ops kept, experiments spent) over one run of `count` changes that do nothing."""
    workspace = make_workspace(root, rule, sigma)
    engine = open_engine(workspace)
    asyncio.run(engine.run_experiment("baseline", None, caller="bench"))
    kept = 0
    for i in range(count):
        with open(workspace / "train.py", "a", encoding="utf-8") as fh:
            fh.write(f"# a comment that changes nothing ({i})\n")
        kept += try_change(engine, f"no-op {i}: a comment")
    return kept, engine.ledger.counts()["total"]


def good_run(root: Path, rule: Rule, sigma: float) -> tuple[bool, int]:
    """(kept?, experiments spent) for one run that tries the known-good change once."""
    workspace = make_workspace(root, rule, sigma)
    engine = open_engine(workspace)
    asyncio.run(engine.run_experiment("baseline", None, caller="bench"))
    train = workspace / "train.py"
    train.write_text(train.read_text(encoding="utf-8").replace("LR = 0.1 ", "LR = 0.15 ", 1), encoding="utf-8")
    return try_change(engine, "LR 0.1 -> 0.15"), engine.ledger.counts()["total"]


def main() -> None:
    if "--default-target" in sys.argv[1:]:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_acceptance_default import main as default_target_main

        default_target_main([arg for arg in sys.argv[1:] if arg != "--default-target"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noops", type=int, default=20)
    parser.add_argument("--noop-runs", type=int, default=4, help="fresh runs (each its own noise floor) sharing --noops")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sigma", type=float, default=0.006)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_acceptance_"))
    os.environ.update(HOME=str(tmp / "home"), AUTORESEARCH_PRIVATE_DIR=str(tmp / "private"),
                      AUTORESEARCH_KEY_DIR=str(tmp / "keys"), GIT_CONFIG_NOSYSTEM="1")
    for name in ("home", "private", "keys"):
        (tmp / name).mkdir()
    gain = (0.1 - 0.3) ** 2 - (0.15 - 0.3) ** 2
    print(f"noisy fake target: sigma {args.sigma:g}; the known-good change lowers the score by {gain:.4f} "
          f"({gain / args.sigma:.1f} sigma)")
    figures: dict[str, str] = {}
    try:
        for rule in RULES:
            key = rule.name.replace(" ", "_")
            started = time.monotonic()
            noops = [noop_run(tmp / f"{key}_noop_{r}", rule, args.sigma, args.noops // args.noop_runs)
                     for r in range(args.noop_runs)]
            kept, spent = sum(k for k, _ in noops), sum(n for _, n in noops)
            tried = (args.noops // args.noop_runs) * args.noop_runs
            goods = [good_run(tmp / f"{key}_good_{s}", rule, args.sigma) for s in range(args.seeds)]
            elapsed = time.monotonic() - started
            good_kept = sum(1 for k, _ in goods if k)
            print(f"{rule.name:9s} (noise_runs {rule.noise_runs}, confirm_runs {rule.confirm_runs}, "
                  f"k {rule.noise_k:g}): no-ops kept {kept} of {tried} ({spent} experiments); "
                  f"in {args.noop_runs} runs; known-good change kept in {good_kept} of {args.seeds} runs ({sum(n for _, n in goods)} experiments); {elapsed:.0f} s")
            figures[f"{key}_noops_kept"] = f"{kept}/{tried}"
            figures[f"{key}_noop_experiments"] = str(spent)
            figures[f"{key}_good_kept"] = f"{good_kept}/{args.seeds}"
            figures[f"{key}_good_experiments"] = str(sum(n for _, n in goods))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("---")
    for name, value in figures.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
