"""What the records cost as a run grows: harness overhead per experiment and each read, at 100 to 10,000 experiments.

Usage: python benchmarks/bench_records.py [--sizes 100,1000,10000] [--rounds 6] [--keep DIR]

For each size a run is built with the project's own classes, as the server writes one: `Ledger` (with every line
sealed into the audit chain, as `Engine` does), `AuditLog` (an `experiment_started`, a `run_experiment`, a
`commit_or_revert` and a `read_results` record per experiment) and one `refs/autoresearch/<tag>/NNNN` ref per
experiment. Records have the size the default target writes (a 4,000-character log tail, a 2 KB diff, a dozen
metrics). To save time the run is built in memory (`/dev/shm` where there is one) with `os.fsync` skipped, then
copied to the disk the measurements run on, with fsync.

Then a fresh process per size measures, on that run, with the tiny test target (train.py and its evaluator take
~0.1 s):
- `overhead`: wall time of `run_experiment` + `commit_or_revert` through an in-process MCP client minus the same
  round's bare `python train.py` + evaluation (median of `--rounds`; rounds alternate kept and discarded results);
- `read_results`: one call on the open engine (median of 5);
- `results`, `status`, `audit verify`: the CLI commands run in-process (interpreter start-up not included);
- `server start`: opening the engine (`serve.open_engine`: load, recovery) plus its first `read_results`;
- `server memory`: the measuring process's resident set after the experiments (VmRSS), the server's whole state.
The figures end with a `---` block of `key: value` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from server.audit import AuditLog  # noqa: E402
from server.config import load_config  # noqa: E402
from server.ledger import Experiment, Ledger, LedgerLine  # noqa: E402
from server.runstate import init_run, load_run  # noqa: E402

TARGET = REPO_ROOT / "tests" / "fixtures" / "fake_target"
TAG = "bench"
FINGERPRINT = "fake0123456789abcdef"  # what the test target's evaluator reports
LOG_TAIL = ("step 01234 | loss 3.141592 | lr 0.000400 | dt 123.4ms | tok/s 123456 | mfu 45.6%\n" * 48)[:4000]
DIFF = ("--- a/train.py\n+++ b/train.py\n@@ -1,3 +1,3 @@\n-LR = 0.1\n+LR = 0.2\n" + " context line\n" * 140)[:2000]


def git(cwd: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          input=stdin).stdout.strip()


def make_workspace(root: Path) -> Path:
    shutil.copytree(TARGET, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".gitignore").write_text("__pycache__/\nruns/\n", encoding="utf-8")
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "bench@example.com")
    git(root, "config", "user.name", "bench")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial target")
    return root


# ---- building a large run with the project's own classes ----

def build_run(workspace: Path, count: int) -> None:
    config = load_config(workspace)
    run = init_run(config, TAG)
    audit = AuditLog(run.run_dir / "audit.jsonl")

    def seal(line: LedgerLine) -> None:  # what Engine._seal writes
        import hashlib

        audit.append("server", "ledger_append", status="ok", summary={
            "offset": line.offset, "length": len(line.data), "sha256": hashlib.sha256(line.data).hexdigest(),
            "type": line.kind, "experiment_id": line.experiment_id})

    ledger = Ledger(run.run_dir, metric_name=config.metric, on_append=seal)
    base = run.base_commit
    real_fsync = os.fsync
    os.fsync = lambda fd: None  # building only: measured operations run with fsync
    try:
        for i in range(1, count + 1):
            metric = 1.1 - 0.00001 * i if i % 7 == 0 or i == 1 else 1.2 + (i % 13) / 1000
            status = "crash" if i % 11 == 0 else "ok"
            audit.append("server", "experiment_started", summary={"experiment_id": i, "commit": base,
                                                                  "parent": base, "description": f"idea {i}"})
            exp = Experiment(
                id=i, tag=TAG, parent=base, commit=base, description=f"idea {i}: change the learning rate schedule",
                hypothesis="a longer warmup stabilises the first steps", diff=DIFF,
                status=status,  # type: ignore[arg-type]
                metric_name=config.metric, metric=None if status == "crash" else metric, verified=True,
                metrics={k: 1.0 + j for j, k in enumerate(("score", "training_seconds", "total_seconds", "mfu",
                                                           "tokens_m", "steps", "params_m", "depth", "peak_vram_mb",
                                                           "eval_seconds", "corpus_fingerprint_n"))},
                started_at="2026-01-01T00:00:00.000Z", finished_at="2026-01-01T00:05:00.000Z", duration_s=300.0,
                train_s=290.0, eval_s=8.0, peak_memory_mb=44000.0, failure="boom" if status == "crash" else None,
                log_tail=LOG_TAIL, log_path=f"runs/{TAG}/experiments/{i:04d}/run.log", fingerprint=FINGERPRINT,
                is_baseline=i == 1, caller="agent", decision="keep" if i == 1 else ("discard" if status == "crash"
                                                                                    else None),
                decision_reason="baseline" if i == 1 else None, kept_commit=base if i == 1 else None)
            ledger.append_experiment(exp)
            audit.append("server", "tool_call", tool="run_experiment", args={"description": exp.description},
                         summary={"id": i, "status": status, "metric": exp.metric, "caller": "agent"},
                         duration_ms=300000.0)
            if exp.decision is None:
                keep = i % 7 == 0
                ledger.append_decision(i, "keep" if keep else "discard", "bench", base if keep else None)
                audit.append("server", "tool_call", tool="commit_or_revert", args={"prefer": "keep_if_better"},
                             summary={"experiment_id": i, "decision": "keep" if keep else "discard"},
                             duration_ms=40.0)
            audit.append("server", "tool_call", tool="read_results", args={"last_n": 10},
                         summary={"counts": {"total": i}}, duration_ms=5.0)
    finally:
        os.fsync = real_fsync
    refs = "".join(f"create refs/autoresearch/{TAG}/{i:04d} {base}\n" for i in range(1, count + 1))
    git(workspace, "update-ref", "--stdin", stdin=refs)
    git(workspace, "pack-refs", "--all")


# ---- measuring, in a fresh process per size ----

def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _timed(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cli(*argv: str) -> None:
    from harness.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    if code not in (0,):
        raise SystemExit(f"autoresearch {' '.join(argv)} exited {code}")


def set_lr(path: Path, value: float) -> None:
    """The agent's edit: rewrite `LR = ...` in train.py."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(f"LR = {value:.4f}\n" if line.startswith("LR =") else line for line in lines),
                    encoding="utf-8")


def _bare(workspace: Path) -> float:
    """The original's loop for this target: train, then evaluate the checkpoint."""
    ckpt = Path(tempfile.mkdtemp()) / "ckpt.json"
    start = time.perf_counter()
    env = {**os.environ, "AUTORESEARCH_CHECKPOINT": str(ckpt)}
    subprocess.run([sys.executable, "train.py"], cwd=workspace, env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "prepare.py", "evaluate", str(ckpt)], cwd=workspace, check=True,
                   capture_output=True)
    took = time.perf_counter() - start
    shutil.rmtree(ckpt.parent)
    return took


def measure(workspace: Path, rounds: int) -> dict[str, float]:
    from mcp import Client

    from server.app import build_server
    from server.serve import open_engine

    out: dict[str, float] = {}
    start = time.perf_counter()
    engine = open_engine(workspace, TAG)
    engine.read_results(last_n=10)
    out["server_start_s"] = time.perf_counter() - start
    out["read_results_s"] = _timed(lambda: engine.read_results(last_n=10), 5)

    overheads = []

    async def loop() -> None:
        async with Client(build_server(engine)) as client:
            for r in range(rounds):
                bare = _bare(workspace)
                set_lr(workspace / "train.py", 0.3 - 0.01 * r if r % 2 == 0 else 0.9)  # kept, discarded, ...
                t0 = time.perf_counter()
                result = await client.call_tool("run_experiment", {"description": f"bench round {r}"})
                assert not result.is_error, result.content[0].text
                assert result.structured_content["status"] == "ok", result.structured_content
                decided = await client.call_tool("commit_or_revert", {})
                assert not decided.is_error, decided.content[0].text
                overheads.append(time.perf_counter() - t0 - bare)

    asyncio.run(loop())
    out["overhead_s"] = statistics.median(overheads)
    out["server_memory_mb"] = _rss_mb()
    ws = str(workspace)
    out["results_cli_s"] = _timed(lambda: _cli("results", "--workspace", ws, "--tag", TAG, "--last", "20"), 3)
    out["status_cli_s"] = _timed(lambda: _cli("status", "--workspace", ws, "--tag", TAG), 3)
    out["audit_verify_s"] = _timed(lambda: _cli("audit", "verify", "--workspace", ws, "--tag", TAG), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--keep", type=Path, default=None, help="build the runs here and keep them")
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.rounds)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-records-"))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT),
           "AUTORESEARCH_KEY_DIR": str(root / "keys")}
    os.environ["AUTORESEARCH_KEY_DIR"] = env["AUTORESEARCH_KEY_DIR"]
    rows = {}
    try:
        for n in sizes:
            shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else root
            staging = Path(tempfile.mkdtemp(prefix="bench-records-build-", dir=shm))
            t0 = time.perf_counter()
            build_run(make_workspace(staging / "ws"), n)
            workspace = root / f"run{n}"
            shutil.copytree(staging / "ws", workspace, symlinks=True)
            shutil.rmtree(staging)
            built = time.perf_counter() - t0
            ledger_mb = (workspace / "runs" / TAG / "experiments.jsonl").stat().st_size / 1e6
            audit_mb = (workspace / "runs" / TAG / "audit.jsonl").stat().st_size / 1e6
            print(f"built {n} experiments in {built:.1f} s (ledger {ledger_mb:.1f} MB, audit {audit_mb:.1f} MB)",
                  flush=True)
            done = subprocess.run([sys.executable, __file__, "--measure", str(workspace), "--rounds",
                                   str(args.rounds)], env=env, check=True, capture_output=True, text=True)
            rows[n] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  {json.dumps({k: round(v, 4) for k, v in rows[n].items()})}", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    keys = ["overhead_s", "read_results_s", "results_cli_s", "status_cli_s", "server_start_s", "audit_verify_s",
            "server_memory_mb"]
    print("\n| experiments | " + " | ".join(keys) + " |")
    print("| ---: | " + " | ".join("---:" for _ in keys) + " |")
    for n, row in rows.items():
        print(f"| {n:,} | " + " | ".join(f"{row[k]:.3f}" if not k.endswith("_mb") else f"{row[k]:.0f}"
                                         for k in keys) + " |")
    print("---")
    for n, row in rows.items():
        for k in keys:
            print(f"{k}_{n}: {row[k]:.4f}")
    if len(rows) > 1:
        lo, hi = rows[min(rows)], rows[max(rows)]
        print(f"overhead_ratio_{max(rows)}_vs_{min(rows)}: {hi['overhead_s'] / lo['overhead_s']:.2f}")
        print(f"memory_growth_mb_{min(rows)}_to_{max(rows)}: {hi['server_memory_mb'] - lo['server_memory_mb']:.1f}")


if __name__ == "__main__":
    main()
