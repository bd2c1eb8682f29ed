"""Make the README's screenshots from a real run: the random agent on a tiny target, through the real server.

Usage: python docs/img/make_screenshots.py [--experiments 40] [--seed 7]

The target is the tests' fake target (a score that depends on LR and WIDTH, evaluated by its locked prepare.py) with
a train.py that fails the way real training does: a large learning rate diverges (crash), a wide model runs past the
hard limit (timeout), and a tiny one writes no checkpoint (invalid). `autoresearch run --agent random` drives it
through the locked tools; `autoresearch report` writes progress.png; the dashboard is opened in headless Chromium and
photographed with one experiment's diff open. Needs chromium (scripts/install_browser.sh).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "dashboard")]

from browser import chromium, serve  # noqa: E402
from helpers import make_workspace  # noqa: E402

TRAIN = '''"""A tiny target that fails the way training does. Scored by prepare.py from the checkpoint."""

import os
import sys
import time

import prepare

LR = 0.1          # the "hyperparameters" the score depends on
WIDTH = 8

if __name__ == "__main__":
    print("training", flush=True)
    if LR > 0.5:
        raise RuntimeError(f"loss diverged to nan at step 12 (LR={LR})")
    if WIDTH > 22:
        print("out of memory: retrying with gradient checkpointing", flush=True)
        time.sleep(60)
    ckpt = os.environ.get("AUTORESEARCH_CHECKPOINT")
    if ckpt and WIDTH >= 6:
        prepare.save_checkpoint({"LR": LR, "WIDTH": WIDTH}, ckpt)
    print("---")
    print("training_seconds: 0.1")
    print("peak_vram_mb:     12.5")
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "target"
        shutil.copytree(REPO / "tests" / "fixtures" / "fake_target", source)
        (source / "train.py").write_text(TRAIN, encoding="utf-8")
        toml = (source / "autoresearch.toml").read_text(encoding="utf-8")
        (source / "autoresearch.toml").write_text(toml.replace("time_budget_s = 5", "time_budget_s = 2")
                                                  .replace("hard_timeout_s = 20", "hard_timeout_s = 4"))
        ws = make_workspace(Path(tmp) / "ws", source)
        cli = [sys.executable, "-m", "harness.cli"]
        env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": tmp}
        subprocess.run(cli + ["run", "--agent", "random", "--workspace", str(ws), "--tag", "night",
                              "--max-experiments", str(args.experiments), "--seed", str(args.seed)],
                       check=True, env=env)
        subprocess.run(cli + ["report", "--workspace", str(ws)], check=True, env=env)
        run_dir = ws / "runs" / "night"
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copy(run_dir / "progress.png", args.out / "progress.png")
        with serve(run_dir, tag="night", metric="score") as served, chromium() as browser:
            page = browser.new_page(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
            page.goto(served.url)
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            kept = page.locator("#experiments tbody tr:has(.d-keep)").nth(0)
            kept.click()
            page.wait_for_selector("#detail[data-id]", timeout=30_000)
            page.screenshot(path=str(args.out / "dashboard.png"), full_page=True)
    print(f"wrote {args.out / 'progress.png'} and {args.out / 'dashboard.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
