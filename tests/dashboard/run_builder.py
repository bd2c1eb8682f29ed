"""Runs to show: a run directory written with the project's own Ledger and AuditLog, holding every status.

Used by the dashboard tests, `benchmarks/bench_dashboard.py` and the README's screenshots. `bulk_ledger` writes a big
ledger in one pass (appending 10,000 experiments through `Ledger.append_experiment` would re-read the file each time);
its lines are `Experiment.to_json()` exactly as the ledger writes them, and the tests read them back through `Ledger`.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from server.audit import AuditLog
from server.jsonl import append_record, atomic_write_text, encode_record
from server.ledger import Experiment, Ledger, utc_now_iso

CHANGES = [
    "raise learning rate to 0.04", "swap ReLU for GELU", "add a warmup of 200 steps", "halve the batch size",
    "weight decay 0.1 on matrices only", "increase depth to 10 layers", "rotary embeddings base 50k",
    "Muon optimizer for 2D weights", "untie the embedding and the head", "QK-norm in attention",
    "value embeddings every other layer", "lower the final LR fraction to 0.02", "sliding window on half the layers",
    "larger vocabulary (16k)", "z-loss 1e-4", "logit soft-capping at 15", "bigger MLP ratio (4.5x)",
    "gradient clipping at 0.8", "cosine to zero schedule", "remove dropout",
]

DIFF = """diff --git a/train.py b/train.py
--- a/train.py
+++ b/train.py
@@ -12,7 +12,7 @@ DEPTH = 8
 # ---- Hyperparameters (edit these directly) ----
-{name} = {old}
+{name} = {new}
 WARMUP_STEPS = 100
"""


def experiment(exp_id: int, *, status: str = "ok", metric: float | None = None, description: str = "",
               decision: str | None = None, verified: bool = True, is_baseline: bool = False,
               failure: str | None = None, started: float | None = None, duration_s: float = 300.0,
               tag: str = "demo") -> Experiment:
    started = started if started is not None else time.time() - 3600
    iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))  # noqa: E731
    return Experiment(
        id=exp_id, tag=tag, parent="a" * 40, commit=f"{exp_id:040x}", description=description,
        hypothesis=None if is_baseline else f"{description} should lower the loss",
        status=status,  # type: ignore[arg-type]
        diff="" if is_baseline else DIFF.format(name="LEARNING_RATE", old="0.02", new=f"0.0{exp_id % 9 + 1}"),
        metric_name="val_bpb", metric=metric, verified=verified,
        metrics={} if metric is None else {"val_bpb": metric, "training_seconds": 300.0, "num_steps": 950 + exp_id},
        started_at=iso(started), finished_at=iso(started + duration_s), duration_s=duration_s,
        train_s=duration_s - 20 if status == "ok" else None, eval_s=15.0 if status == "ok" else None,
        peak_memory_mb=1800.0 + exp_id, failure=failure,
        log_tail=(f"step 950 | loss 3.21\n---\nval_bpb: {metric}\n" if metric is not None
                  else f"Traceback ...\n{failure}\n"),
        log_path=f"runs/{tag}/experiments/{exp_id:04d}/run.log", fingerprint="f" * 16, is_baseline=is_baseline,
        caller="test", decision=None if decision is None else decision,  # type: ignore[arg-type]
        decision_reason=None, kept_commit=None)


@dataclass(frozen=True)
class BuiltRun:
    run_dir: Path
    ledger: Ledger
    audit: AuditLog
    tag: str


def every_status_run(run_dir: Path, tag: str = "demo") -> BuiltRun:
    """Eight experiments: a baseline, kept and discarded changes, a crash, a timeout, an invalid run, an unverified
    result and one still pending; an audit chain with tool calls, a refusal and a supervisor's night."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(run_dir)
    audit = AuditLog(run_dir / "audit.jsonl")
    t0 = time.time() - 8 * 400
    plan = [
        dict(status="ok", metric=1.1020, description="baseline", is_baseline=True, decision="keep"),
        dict(status="ok", metric=1.0870, description="raise learning rate to 0.04", decision="keep"),
        dict(status="ok", metric=1.0950, description="swap ReLU for GELU", decision="discard"),
        dict(status="crash", description="Muon optimizer for 2D weights", failure="RuntimeError: shape mismatch",
             decision="discard"),
        dict(status="timeout", description="increase depth to 16 layers", failure="ran past the 600 s hard limit",
             decision="discard"),
        dict(status="invalid", description="evaluate on the training split",
             failure="the evaluation refused the checkpoint", decision="discard"),
        dict(status="ok", metric=1.0790, description="add a warmup of 200 steps", decision="keep", verified=False),
        dict(status="ok", metric=1.0810, description="weight decay 0.1 on matrices only", decision=None),
    ]
    for i, spec in enumerate(plan, start=1):
        decision = spec.pop("decision")
        exp = experiment(i, started=t0 + i * 400, tag=tag, **spec)  # type: ignore[arg-type]
        ledger.append_experiment(exp)
        audit.append("server", "tool_call", session="s1", tool="run_experiment", args={"description": exp.description},
                     status="ok", summary={"id": i, "status": exp.status}, duration_ms=300000)
        if decision is not None:
            ledger.append_decision(i, decision, f"{decision} by test", "b" * 40 if decision == "keep" else None)
            audit.append("server", "tool_call", session="s1", tool="commit_or_revert", status="ok",
                         summary={"decision": decision})
    audit.append("server", "tool_call", session="s1", tool="run_experiment", status="refused",
                 summary={"reason": "experiment 8 is undecided"})
    audit.append("hook", "tool_call", session="s1", tool="Edit", args={"file_path": "prepare.py"}, status="blocked")
    for event, status, message in [("run_start", "ok", "agent claude"), ("start", "ok", "session s1 started"),
                                   ("stall", "error", "no output for 600 s"), ("restart", "ok", "restarted"),
                                   ("backoff", "ok", "waiting 30 s before the next start"),
                                   ("resume", "ok", "resumed session s1")]:
        audit.append("supervisor", event, session="s1", status=status, summary={"message": message})
    append_record(run_dir / "violations.jsonl", {"time": utc_now_iso(), "source": "guard", "path": "prepare.py",
                                                 "when": "during", "experiment_id": 6, "detail": "prepare.py changed",
                                                 "restored": True})
    write_supervisor(run_dir, state="RUNNING", restarts=1, stalls=1, backoffs=1, cost_usd=3.42)
    return BuiltRun(run_dir, ledger, audit, tag)


def write_supervisor(run_dir: Path, **fields: object) -> None:
    status = {"state": "RUNNING", "reason": "agent alive", "session_id": "s1", "pid": 4242, "uptime_s": 7200.0,
              "silent_s": 3.0, "restarts": 0, "resumes": 1, "fresh_starts": 0, "stalls": 0, "backoffs": 0,
              "quick_deaths": 0, "cost_usd": 0.0, "sessions": ["s1", "s2"], "violations": 1, "stop_reason": None,
              "fatal_message": None, "updated_at": time.time()}
    status.update(fields)
    atomic_write_text(run_dir / "supervisor.json", json.dumps(status, indent=2) + "\n")


def random_walk_plan(n: int, seed: int = 0, start: float = 1.10) -> list[dict[str, object]]:
    """A believable night: rare improvements that shrink, many discards, a few failures and wild outliers."""
    rng = random.Random(seed)
    best = start
    out: list[dict[str, object]] = [dict(status="ok", metric=start, description="baseline", is_baseline=True,
                                         decision="keep")]
    for i in range(2, n + 1):
        desc = rng.choice(CHANGES)
        roll = rng.random()
        if roll < 0.05:
            out.append(dict(status="crash", description=desc, failure="RuntimeError: CUDA error", decision="discard"))
        elif roll < 0.07:
            out.append(dict(status="timeout", description=desc, failure="ran past the hard limit", decision="discard"))
        elif roll < 0.08:
            out.append(dict(status="invalid", description=desc, failure="no metric in the summary", decision="discard"))
        else:
            scale = 0.004 * (1 + 4 / (1 + i / 15))  # early ideas move the metric more than late ones
            gain = rng.gauss(-0.7 * scale, scale)  # most changes make things a little worse
            metric = best - gain
            if rng.random() < 0.04:
                metric = best + rng.uniform(0.2, 2.0)  # diverged: the outlier that used to squash the chart
            keep = metric < best - 0.0005
            if keep:
                best = metric
            out.append(dict(status="ok", metric=round(metric, 6), description=desc,
                            decision="keep" if keep else "discard"))
    return out


def bulk_ledger(run_dir: Path, n: int, seed: int = 0, tag: str = "bench") -> Ledger:
    """Write a ledger of n experiments (with their decisions) in one pass, in the ledger's own line format."""
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time() - n * 330
    chunks = []
    for i, spec in enumerate(random_walk_plan(n, seed), start=1):
        decision = spec.pop("decision")
        exp = experiment(i, started=t0 + i * 330, tag=tag, **spec)  # type: ignore[arg-type]
        chunks.append(encode_record({"type": "experiment", **exp.to_json()}))
        chunks.append(encode_record({"type": "decision", "experiment_id": i, "decision": decision, "reason": "bench",
                                     "commit": "b" * 40 if decision == "keep" else None, "time": exp.finished_at}))
    (run_dir / "experiments.jsonl").write_bytes(b"".join(chunks))
    return Ledger(run_dir)
