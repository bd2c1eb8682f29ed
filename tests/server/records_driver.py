"""A loop that an agent would drive, run as its own process so tests can kill it anywhere: baseline, then edit ->
run_experiment -> commit_or_revert, seeded. Usage: records_driver.py WORKSPACE TAG EXPERIMENTS SEED.

Prints `ready` once the engine is open, then one line per finished call, so a test can wait on real progress.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import set_constant  # noqa: E402
from server.config import load_config  # noqa: E402
from server.engine import Engine, Refusal  # noqa: E402
from server.runstate import load_run  # noqa: E402


def main() -> None:
    workspace, tag, count, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    config = load_config(workspace)
    engine = Engine(config, load_run(config, tag))
    engine.recover()
    rng = random.Random(seed)
    print("ready", flush=True)
    for _ in range(count):
        if engine.ledger.pending() is not None:
            engine.commit_or_revert()
        if engine.ledger.baseline() is None:
            engine.commit_or_revert(prefer="revert")
        else:
            set_constant(workspace / "train.py", "LR", f"{rng.uniform(0.0, 0.6):.4f}")
        try:
            result = asyncio.run(engine.run_experiment(f"LR trial seed {seed}", None, caller="driver"))
        except Refusal as exc:
            print(f"refused {exc}", flush=True)
            continue
        print(f"ran {result.id} {result.status}", flush=True)
        if result.decision == "pending":
            decision = engine.commit_or_revert(prefer=rng.choice(["keep_if_better", "keep_if_better", "revert"]))
            print(f"decided {decision.experiment_id} {decision.decision}", flush=True)


if __name__ == "__main__":
    main()
