"""One experiment's processes: the configured command, then the verified evaluation, then the integrity check.

The outcome's precedence is fixed: a locked file changed at any point (training or evaluation) makes the run
`invalid`, whatever the metric; then `timeout`; then `crash`; only then `ok`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from server.config import Config
from server.runner import ProcessResult, run_process
from server.summary import parse_summary


@dataclass(frozen=True)
class Outcome:
    status: str  # ok | crash | timeout | invalid
    failure: str | None
    metric: float | None
    verified: bool
    metrics: dict[str, float | str] = field(default_factory=dict)
    train_s: float | None = None
    eval_s: float | None = None
    tail: str = ""
    fingerprint: str | None = None


@dataclass(frozen=True)
class ExperimentPaths:
    experiment_dir: Path
    pinned_dir: Path
    run_dir: Path

    @property
    def checkpoint(self) -> Path:
        return self.experiment_dir / "checkpoint.pt"

    def placeholders(self) -> dict[str, str]:
        return {"pinned": str(self.pinned_dir), "checkpoint": str(self.checkpoint),
                "snapshot": str(self.experiment_dir / "snapshot"), "experiment_dir": str(self.experiment_dir),
                "run_dir": str(self.run_dir)}


def experiment_env(config: Config, exp_id: int, paths: ExperimentPaths) -> dict[str, str]:
    """The command's environment: the server's, the configured extras, and the budget the agent cannot change."""
    env = dict(os.environ)
    env.update(dict(config.env))
    env.update({
        "AUTORESEARCH_TIME_BUDGET": f"{config.time_budget_s:g}",
        "AUTORESEARCH_EXPERIMENT_ID": str(exp_id),
        "AUTORESEARCH_RUN_DIR": str(paths.run_dir),
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("AUTORESEARCH_CHECKPOINT", None)
    if config.evaluate.mode == "checkpoint":
        env["AUTORESEARCH_CHECKPOINT"] = str(paths.checkpoint)
    return env


async def execute(config: Config, exp_id: int, paths: ExperimentPaths,
                  on_started: Callable[[int, str], None], integrity_problems: Callable[[], list[str]]) -> Outcome:
    """Run the command (and the evaluation), then ask `integrity_problems` what changed while they ran."""
    cfg = config
    env = experiment_env(cfg, exp_id, paths)
    placeholders = paths.placeholders()
    train = await run_process(cfg.expand(cfg.command, **placeholders), cwd=cfg.workspace, env=env,
                              log_path=paths.experiment_dir / "run.log", log_max_bytes=cfg.log_max_bytes,
                              timeout_s=cfg.hard_timeout_s, tail_lines=cfg.tail_lines, on_started=on_started)
    run_text = read_text(paths.experiment_dir / "run.log")
    train_metrics = parse_summary(run_text)
    train_s = as_float(train_metrics.get("training_seconds"))
    outcome = _training_outcome(cfg, train, train_metrics, train_s, run_text)
    if outcome is None:  # trained fine, verified mode: the pinned evaluation decides
        evaluation = await run_process(
            cfg.expand(cfg.evaluate.command, **placeholders), cwd=cfg.workspace,
            env={k: v for k, v in env.items() if k != "AUTORESEARCH_CHECKPOINT"},
            log_path=paths.experiment_dir / "eval.log", log_max_bytes=cfg.log_max_bytes,
            timeout_s=cfg.evaluate.timeout_s, tail_lines=cfg.tail_lines)
        outcome = _evaluation_outcome(cfg, evaluation, train, train_metrics, train_s,
                                      read_text(paths.experiment_dir / "eval.log"))
    problems = integrity_problems()
    if problems:
        return Outcome("invalid", "a locked file was changed during the run: " + "; ".join(problems), None, False,
                       outcome.metrics, outcome.train_s, outcome.eval_s, outcome.tail, None)
    return outcome


def _training_outcome(cfg: Config, train: ProcessResult, metrics: dict[str, float | str], train_s: float | None,
                      run_text: str) -> Outcome | None:
    if train.outcome == "timeout":
        return Outcome("timeout", f"killed at the hard limit of {cfg.hard_timeout_s:g} s (budget "
                                  f"{cfg.time_budget_s:g} s)", None, False, metrics, train_s, None, train.tail)
    if train.returncode != 0:
        return Outcome("crash", crash_reason(train), None, False, metrics, train_s, None, train.tail)
    if cfg.evaluate.mode == "checkpoint":
        return None
    metric = as_float(metrics.get(cfg.metric))
    if metric is None or not math.isfinite(metric):
        return Outcome("crash", f"no finite '{cfg.metric}:' line in the summary block", None, False, metrics,
                       train_s, None, train.tail)
    return Outcome("ok", None, metric, False, metrics, train_s, None, train.tail,
                   fingerprint(run_text, cfg.fingerprint_metric))


def _evaluation_outcome(cfg: Config, evaluation: ProcessResult, train: ProcessResult,
                        train_metrics: dict[str, float | str], train_s: float | None, eval_text: str) -> Outcome:
    eval_metrics = parse_summary(eval_text)
    eval_s = as_float(eval_metrics.get("eval_seconds")) or evaluation.duration_s
    metrics = {k: v for k, v in train_metrics.items() if k != cfg.metric}  # a printed metric is never recorded
    metrics.update(eval_metrics)
    if evaluation.outcome == "timeout":
        return Outcome("timeout", f"evaluation killed at its limit of {cfg.evaluate.timeout_s:g} s", None, True,
                       metrics, train_s, eval_s, evaluation.tail)
    if evaluation.returncode != 0:
        return Outcome("crash", "evaluation failed: " + crash_reason(evaluation), None, True, metrics, train_s,
                       eval_s, evaluation.tail)
    metric = as_float(eval_metrics.get(cfg.metric))
    if metric is None or not math.isfinite(metric):
        return Outcome("crash", f"the evaluation printed no finite '{cfg.metric}:' line", None, True, metrics,
                       train_s, eval_s, evaluation.tail)
    metrics[cfg.metric] = metric
    return Outcome("ok", None, metric, True, metrics, train_s, eval_s, train.tail,
                   fingerprint(eval_text, cfg.fingerprint_metric))


# ---- reading what the processes left ----

def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def read_tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def as_float(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def fingerprint(text: str, key: str | None) -> str | None:
    """Read the fingerprint as raw text: a hex digest that happens to be all digits must not become a float."""
    if not key:
        return None
    found = re.findall(rf"^{re.escape(key)}:\s*(\S+)\s*$", text, flags=re.MULTILINE)
    return found[-1] if found else None


def crash_reason(result: ProcessResult) -> str:
    lines = [line for line in result.tail.splitlines() if line.strip()]
    last = lines[-1][:200] if lines else "no output"
    code = result.returncode
    if code is not None and code < 0:
        return f"killed by signal {-code}; last line: {last}"
    return f"exit code {code}; last line: {last}"
