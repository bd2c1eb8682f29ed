"""One experiment's processes: the command in a training sandbox, then the evaluation in its own sandbox.

Sealed (the default): the command runs in a sandbox (server/sandbox.py) whose only writable places are a private
work folder (copies of the snapshot's mutable files and of the pinned locked files) and an output folder; it sees the
training data and nothing else of the cache, the workspace, `runs/` or the configuration. The budget is the harness's
clock: the sandbox is stopped at `time_budget_s + sandbox.startup_s` (wall seconds, or CPU seconds of the whole
sandbox per thread with `sandbox.clock = "cpu"`), and the training time recorded is that measurement, never the
number train.py prints. The model leaves as one regular file, copied out without following links and bounded in
size; the evaluation runs on it in a second sandbox that sees the pinned locked files (verified by hash first), the
evaluation data (verified by hash first), the model, and nothing train.py wrote. Its output goes to a log only the
server can read; lines naming a holdout value are kept out of everything the agent can see.

The outcome's precedence is fixed: a locked file changed at any point (the workspace's, or the sandbox's own copy),
or data that no longer matches its hash, makes the run `invalid`, whatever the metric; then `timeout`; then `crash`;
only then `ok`.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import stat
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from server import sandbox
from server.config import Config, ConfigError
from server.integrity import Pin, sha256_file
from server.private import HOLDOUT_PREFIX
from server.runner import MARK_VAR, ProcessResult, run_process
from server.summary import parse_summary

INSIDE_WORK = "/exp/work"
INSIDE_OUT = "/exp/out"
INSIDE_EVAL = "/exp/eval"
INSIDE_MODEL = "/exp/in/checkpoint"
INSIDE_SNAPSHOT = "/exp/snapshot"
INSIDE_SCRATCH = "/exp/scratch"


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
    sealed: bool = True
    private: dict[str, float | str] = field(default_factory=dict)
    violations: tuple[str, ...] = ()  # locked copies the command changed inside its own sandbox
    device: str | None = None  # where it ran ("cpu", "cuda:0 NVIDIA H200", a Ray node's ...); set by the executor


@dataclass(frozen=True)
class Plan:
    """What the engine decided about one run of a snapshot: its seed, whether it is sealed, what must hold."""

    exp_id: int
    seed: int
    sealed: bool
    pins: tuple[Pin, ...]
    data_sha256: Mapping[str, str] = field(default_factory=dict)
    passed_env: Mapping[str, str] = field(default_factory=dict)
    gpu: str | None = None  # CUDA_VISIBLE_DEVICES for this experiment (its slot's GPU); None: the machine's default
    cpus: tuple[int, ...] | None = None  # the cores its slot owns (pinned); None: `sandbox.cpu_threads` decides


@dataclass(frozen=True)
class ExperimentPaths:
    experiment_dir: Path
    pinned_dir: Path
    run_dir: Path
    private_dir: Path  # outside the workspace: the evaluation's raw output (holdout lines included) goes there

    @property
    def snapshot(self) -> Path:
        return self.experiment_dir / "snapshot"

    @property
    def work(self) -> Path:
        return self.experiment_dir / "work"

    @property
    def out(self) -> Path:
        return self.experiment_dir / "out"

    @property
    def checkpoint(self) -> Path:
        """The harness's own copy of the model the command wrote (what the evaluation reads)."""
        return self.experiment_dir / "model" / "checkpoint"

    @property
    def eval_log(self) -> Path:
        return self.private_dir / f"{self.experiment_dir.name}-eval.log"


def _threads(config: Config, plan: Plan | None = None) -> int:
    if plan is not None and plan.cpus:
        return len(plan.cpus)
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(config.sandbox.cpu_threads or available, available)


def _cpus(config: Config, plan: Plan | None = None) -> tuple[int, ...]:
    if plan is not None and plan.cpus is not None:
        return plan.cpus
    if not config.sandbox.cpu_threads or not hasattr(os, "sched_getaffinity"):
        return ()
    return tuple(sorted(os.sched_getaffinity(0)))[:config.sandbox.cpu_threads]


def _base_env(config: Config, plan: Plan, marker: str, home: str) -> dict[str, str]:
    """An environment built from nothing when sealed; the server's own otherwise (as an unsealed run always had)."""
    env: dict[str, str] = {"PATH": sandbox.SAFE_PATH, "HOME": home, "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
    if not plan.sealed:
        env = dict(os.environ)
    env.update(dict(config.env))
    env.update(plan.passed_env)  # frozen at init, with ${VAR:-default} in the configured env already expanded
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
                MARK_VAR: marker})
    for name in ("AUTORESEARCH_CHECKPOINT", "AUTORESEARCH_RUN_DIR", "AUTORESEARCH_SEED"):
        env.pop(name, None)
    threads = _threads(config, plan)
    if plan.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = plan.gpu
    if config.sandbox.cpu_threads or plan.cpus or config.sandbox.clock == "cpu":
        env["AUTORESEARCH_CPU_THREADS"] = str(threads)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if config.sandbox.clock == "cpu":
        # Threads that spin while they wait burn CPU seconds that do no work, and spin longer on a busy machine;
        # passive waiting keeps the CPU clock a measure of work done.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def experiment_env(config: Config, plan: Plan, paths: ExperimentPaths, marker: str) -> dict[str, str]:
    """The command's environment: the budget, clock and seed the agent cannot change, and where to put the model."""
    env = _base_env(config, plan, marker, INSIDE_WORK if plan.sealed else str(paths.work))
    env.update({
        "AUTORESEARCH_TIME_BUDGET": f"{config.time_budget_s:g}",
        "AUTORESEARCH_EXPERIMENT_ID": str(plan.exp_id),
        "AUTORESEARCH_SEED": str(plan.seed),
        "AUTORESEARCH_CLOCK": config.sandbox.clock,
    })
    if config.evaluate.mode == "checkpoint":
        env["AUTORESEARCH_CHECKPOINT"] = f"{INSIDE_OUT}/checkpoint" if plan.sealed else str(paths.out / "checkpoint")
    return env


# ---- staging and checks the harness does itself ----

_digests: dict[tuple[str, int, int, int, int], str] = {}


def _digest_cached(path: Path) -> str:
    """sha256 of a data file or folder, recomputed whenever its size, times or inode change (ctime cannot be set)."""
    from server.runstate import data_digest

    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if path.is_dir() or key not in _digests:
        _digests[key] = data_digest(path)
    return _digests[key]


def data_problems(plan: Plan) -> list[str]:
    out = []
    for name, digest in plan.data_sha256.items():
        path = Path(name)
        actual = _digest_cached(path) if path.exists() else "missing"
        if actual != digest:
            out.append(f"{name} changed since the run was created (sha256 {actual[:12]} != {digest[:12]}); "
                       "restore the prepared data or start a new run")
    return out


def pinned_problems(plan: Plan, root: Path, what: str) -> list[str]:
    out = []
    for pin in plan.pins:
        actual = sha256_file(root / pin.path)
        if actual != pin.sha256:
            out.append(f"{what} copy of {pin.path} differs from its pin (sha256 {str(actual)[:12]} != "
                       f"{pin.sha256[:12]})")
    return out


def _copy_tree(files: list[tuple[Path, str]], dest: Path) -> None:
    for src, rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_file():
            shutil.copyfile(src, target)


def stage_work(config: Config, plan: Plan, paths: ExperimentPaths) -> None:
    for folder in (paths.work, paths.out):
        shutil.rmtree(folder, ignore_errors=True)
    _copy_tree([(paths.snapshot / rel, rel) for rel in config.mutable], paths.work)
    _copy_tree([(paths.pinned_dir / pin.path, pin.path) for pin in plan.pins], paths.work)
    drop = plan.sealed and os.geteuid() == 0
    sandbox.prepare_writable(paths.work, drop)
    sandbox.prepare_writable(paths.out, drop)


def take_artifact(config: Config, paths: ExperimentPaths) -> str | None:
    """Copy the command's model out of the sandbox's folder as plain bytes; None when done, else what is wrong."""
    source = paths.out / "checkpoint"
    limit = config.sandbox.max_artifact_mb * 1024 * 1024
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None  # nothing to copy: the evaluation sees no model and says so (targets that score code need none)
    except OSError as exc:
        return f"the model the command wrote cannot be read as a plain file ({exc.strerror}); write a regular file"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "the model the command wrote is not a regular file; write a regular file"
        if info.st_size > limit:
            return (f"the model is {info.st_size / 2**20:.0f} MiB, over sandbox.max_artifact_mb = "
                    f"{config.sandbox.max_artifact_mb}; make it smaller")
        paths.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(fd, "rb", closefd=True) as src, open(paths.checkpoint, "wb") as dst:
            fd = -1
            shutil.copyfileobj(src, dst, 1 << 22)
    finally:
        if fd >= 0:
            os.close(fd)
    return None


def _cleanup(paths: ExperimentPaths) -> None:
    for folder in (paths.work, paths.out, paths.experiment_dir / "eval", paths.experiment_dir / "scratch"):
        shutil.rmtree(folder, ignore_errors=True)


def _private_split(text: str) -> tuple[str, dict[str, float | str]]:
    """The evaluation's output without the lines only the person may see, and those values."""
    private: dict[str, float | str] = {}
    kept = []
    for line in text.splitlines(keepends=True):
        key = line.split(":", 1)[0].strip()
        if key.startswith(HOLDOUT_PREFIX):
            value = line.split(":", 1)[1].strip() if ":" in line else ""
            private[key] = as_float(value) if as_float(value) is not None else value  # type: ignore[assignment]
            continue
        kept.append(line)
    return "".join(kept), private


# ---- the run ----

async def execute(config: Config, plan: Plan, paths: ExperimentPaths,
                  on_started: Callable[[int, str], None], integrity_problems: Callable[[], list[str]]) -> Outcome:
    """Run the command (and the evaluation), then ask `integrity_problems` what changed while they ran."""
    cfg = config
    bad_data = data_problems(plan) + pinned_problems(plan, paths.pinned_dir, "the pinned")
    if bad_data:
        return Outcome("invalid", "; ".join(bad_data), None, False, sealed=plan.sealed)
    stage_work(cfg, plan, paths)
    marker = uuid.uuid4().hex
    threads = _threads(cfg, plan)
    allowance = cfg.time_budget_s + cfg.sandbox.startup_s
    cpu_limit = allowance * threads if cfg.sandbox.clock == "cpu" else None
    wall_limit = cfg.hard_timeout_s if cpu_limit is not None else min(cfg.hard_timeout_s, allowance)
    env = experiment_env(cfg, plan, paths, marker)
    try:
        if plan.sealed:
            argv = cfg.expand(cfg.command, workspace=INSIDE_WORK, pinned=INSIDE_WORK, snapshot=INSIDE_WORK,
                              checkpoint=f"{INSIDE_OUT}/checkpoint", experiment_dir=INSIDE_OUT)
            spec = sandbox.SandboxSpec(work=paths.work, work_inside=INSIDE_WORK, env=env,
                                       read_only=tuple(Path(p) for p in cfg.sandbox.train_read),
                                       extra_rw=((paths.out, INSIDE_OUT),), devices=sandbox.gpu_devices(),
                                       memory_mb=cfg.sandbox.memory_mb, cpus=_cpus(cfg, plan))
            argv = sandbox.build_argv(spec, argv)
            launch_env: dict[str, str] | None = {"PATH": sandbox.SAFE_PATH}
        else:
            argv = cfg.expand(cfg.command, workspace=paths.work, pinned=paths.work, snapshot=paths.work,
                              checkpoint=paths.out / "checkpoint", experiment_dir=paths.out)
            launch_env = env
    except (ConfigError, sandbox.SandboxUnavailable) as exc:
        return Outcome("crash", f"the command cannot be started: {exc}", None, False, sealed=plan.sealed)
    train = await run_process(argv, cwd=paths.experiment_dir if plan.sealed else paths.work, env=launch_env,
                              marker=marker,
                              log_path=paths.experiment_dir / "run.log", log_max_bytes=cfg.log_max_bytes,
                              timeout_s=wall_limit, cpu_limit_s=cpu_limit, tail_lines=cfg.tail_lines,
                              on_started=on_started,
                              preexec=lambda: sandbox.preexec(cfg.sandbox.memory_mb, _cpus(cfg, plan)))
    train_s = (train.cpu_s or 0.0) / threads if cpu_limit is not None else train.duration_s
    run_text = read_text(paths.experiment_dir / "run.log")
    train_metrics = parse_summary(run_text)
    train_metrics.pop(cfg.metric, None) if cfg.evaluate.mode == "checkpoint" else None
    tampered = pinned_problems(plan, paths.work, "the sandbox's")
    outcome = _training_outcome(cfg, train, train_metrics, round(train_s, 3), run_text, wall_limit, cpu_limit)
    if outcome is None:  # trained fine, verified mode: the pinned evaluation decides
        problem = take_artifact(cfg, paths)
        if problem is not None:
            outcome = Outcome("crash", problem, None, False, train_metrics, round(train_s, 3), None, train.tail)
        else:
            outcome = await _evaluate(cfg, plan, paths, train, train_metrics, round(train_s, 3))
    _cleanup(paths)
    outcome = Outcome(**{**outcome.__dict__, "sealed": plan.sealed})
    problems = integrity_problems() + [f"train.py changed {p}" for p in tampered]
    problems += data_problems(plan)
    if problems:
        return Outcome("invalid", "a locked file was changed during the run: " + "; ".join(problems), None, False,
                       outcome.metrics, outcome.train_s, outcome.eval_s, outcome.tail, None, plan.sealed,
                       violations=tuple(tampered))
    return outcome


async def _evaluate(cfg: Config, plan: Plan, paths: ExperimentPaths, train: ProcessResult,
                    train_metrics: dict[str, float | str], train_s: float) -> Outcome:
    eval_dir, scratch = paths.experiment_dir / "eval", paths.experiment_dir / "scratch"
    shutil.rmtree(eval_dir, ignore_errors=True)
    _copy_tree([(paths.pinned_dir / pin.path, pin.path) for pin in plan.pins], eval_dir)
    bad = pinned_problems(plan, eval_dir, "the evaluation's") + data_problems(plan)
    if bad:
        return Outcome("invalid", "; ".join(bad), None, False, train_metrics, train_s, None, train.tail)
    sandbox.prepare_writable(scratch, plan.sealed and os.geteuid() == 0)
    marker = uuid.uuid4().hex
    env = _base_env(cfg, plan, marker, INSIDE_SCRATCH if plan.sealed else str(scratch))
    env.update({name: os.environ[name] for name in cfg.sandbox.eval_env if name in os.environ})
    try:
        if plan.sealed:
            argv = cfg.expand(cfg.evaluate.command, workspace=INSIDE_EVAL, pinned=INSIDE_EVAL,
                              checkpoint=INSIDE_MODEL, snapshot=INSIDE_SNAPSHOT, experiment_dir=INSIDE_SCRATCH)
            spec = sandbox.SandboxSpec(work=scratch, work_inside=INSIDE_SCRATCH, env=env,
                                       read_only=tuple(Path(p) for p in cfg.sandbox.eval_read),
                                       binds=((eval_dir, INSIDE_EVAL), (paths.snapshot, INSIDE_SNAPSHOT),
                                              *(((paths.checkpoint, INSIDE_MODEL),) if paths.checkpoint.is_file()
                                                else ())),
                                       devices=sandbox.gpu_devices(), cpus=_cpus(cfg, plan),
                                       network=cfg.sandbox.eval_network)
            argv = sandbox.build_argv(spec, argv, cwd_inside=INSIDE_EVAL)
            launch_env: dict[str, str] | None = {"PATH": sandbox.SAFE_PATH}
            cwd = paths.experiment_dir
        else:
            argv = cfg.expand(cfg.evaluate.command, workspace=eval_dir, pinned=eval_dir, checkpoint=paths.checkpoint,
                              snapshot=paths.snapshot, experiment_dir=scratch)
            launch_env, cwd = env, eval_dir
    except (ConfigError, sandbox.SandboxUnavailable) as exc:
        return Outcome("crash", f"the evaluation cannot be started: {exc}", None, False, train_metrics, train_s)
    private_log = paths.eval_log
    private_log.parent.mkdir(parents=True, exist_ok=True)
    evaluation = await run_process(argv, cwd=cwd, env=launch_env, marker=marker, log_path=private_log,
                                   log_max_bytes=cfg.log_max_bytes, timeout_s=cfg.evaluate.timeout_s,
                                   tail_lines=cfg.tail_lines)
    public, private = _private_split(read_text(private_log))
    (paths.experiment_dir / "eval.log").write_text(public, encoding="utf-8")
    result = ProcessResult(evaluation.returncode, evaluation.outcome, evaluation.duration_s,
                           paths.experiment_dir / "eval.log", len(public), evaluation.dropped_bytes,
                           _private_split(evaluation.tail)[0])
    outcome = _evaluation_outcome(cfg, result, train, train_metrics, train_s, public)
    return Outcome(**{**outcome.__dict__, "private": private})


def _training_outcome(cfg: Config, train: ProcessResult, metrics: dict[str, float | str], train_s: float,
                      run_text: str, wall_limit: float, cpu_limit: float | None) -> Outcome | None:
    if train.outcome == "timeout":
        clock = (f"{cpu_limit:g} CPU seconds ({cfg.time_budget_s:g} s budget + {cfg.sandbox.startup_s:g} s start-up,"
                 f" per thread)" if cpu_limit is not None and train.duration_s < wall_limit else
                 f"{wall_limit:g} s (budget {cfg.time_budget_s:g} s + start-up {cfg.sandbox.startup_s:g} s, "
                 f"hard limit {cfg.hard_timeout_s:g} s)")
        return Outcome("timeout", f"stopped by the harness's clock at {clock}; train for the budget, not past it",
                       None, False, metrics, train_s, None, train.tail)
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
