"""Experiment slots: where the experiments of one run execute, and how many at once.

A run has N slots. On one machine a slot is either one GPU (`slots.gpus = "all"` or a list of indexes: the
experiment gets `CUDA_VISIBLE_DEVICES` set to that GPU) or a share of the CPUs (`slots.count` CPU slots, each pinned
to its own cores when the cores divide evenly, so two experiments never fight over a core and the CPU clock of one is
not bent by the other). With `slots.executor = "ray"`, a slot is a Ray task kept in flight: Ray picks the node and
the GPU (server/ray_executor.py). One slot is the single loop: it behaves exactly as a run without slots.

A slot is held with an exclusive `flock` on `runs/<tag>/slots/<k>.lock` while an experiment runs in it, so two
servers on one run never put two experiments on one GPU, and a slot whose holder died is free again at once (the
kernel drops the lock with the process). Waiting experiments take free slots in id order (first queued, first run).

Device classes. Each experiment records the device it ran on (`Experiment.device`); results from different device
classes are never compared as if equal: the engine marks a result `invalid` when its device class differs from the
baseline's (a run is one kind of hardware; screen on cheap GPUs and confirm on fast ones with two tags). That is the
simplest rule a person can check in the ledger, and it keeps every comparison the keep rule makes like for like.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from server.config import Config, ConfigError

POLL_S = 0.1  # how often a waiting experiment looks for a slot another process freed


@dataclass(frozen=True)
class Slot:
    """One place an experiment can run. `gpu` is its CUDA_VISIBLE_DEVICES (None: leave the machine's default),
    `cpus` the cores it is pinned to (None: the configuration's `sandbox.cpu_threads` decides), `device` a label for
    the ledger (the executor may refine it, e.g. with the Ray node that ran it)."""

    index: int
    device: str
    gpu: str | None = None
    cpus: tuple[int, ...] | None = None


def device_class(device: str | None) -> str | None:
    """The part of a device label that says what hardware it is, without where it is ("cuda:0 NVIDIA H200" and
    "ray:10.0.0.2 cuda:3 NVIDIA H200" -> "NVIDIA H200")."""
    if not device:
        return None
    words = device.split()  # "cuda:0 NVIDIA H200", "gpu NVIDIA H200", "ray:10.0.0.2 cuda:1 NVIDIA H200", "cpu"
    while len(words) > 1 and (words[0].startswith(("ray:", "cuda:")) or words[0] == "gpu"):
        words = words[1:]
    return " ".join(words) or None


def visible_gpus() -> list[tuple[int, str]]:
    """(index, name) of the GPUs this process may use, in CUDA's order (honours CUDA_VISIBLE_DEVICES)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index,name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.splitlines():
        index, _, name = line.partition(",")
        if index.strip().isdigit():
            gpus.append((int(index), name.strip()))
    allowed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if allowed is not None:
        wanted = [int(x) for x in allowed.split(",") if x.strip().isdigit()]
        by_index = dict(gpus)
        gpus = [(i, by_index[i]) for i in wanted if i in by_index]
    return gpus


class SlotError(ConfigError):
    """The configured slots cannot be made on this machine; the message says why and what to change."""


def plan_slots(config: Config, gpus: list[tuple[int, str]] | None = None) -> list[Slot]:
    """The run's slots from `[slots]` (see the module docstring). `gpus` overrides the detection (tests)."""
    cfg = config.slots
    if cfg.executor == "ray":
        return [Slot(i, "ray") for i in range(cfg.count)]
    if cfg.gpus == "none":
        if cfg.count == 1:  # the single loop: the experiment sees the machine as it always did
            found = gpus if gpus is not None else visible_gpus()
            return [Slot(0, f"gpu {found[0][1]}" if found else "cpu")]
        return [Slot(i, "cpu", cpus=cores) for i, cores in enumerate(_split_cores(cfg.count, config))]
    found = gpus if gpus is not None else visible_gpus()
    if not found:
        raise SlotError(f"slots.gpus = {cfg.gpus!r} but no NVIDIA GPU is visible (nvidia-smi found none); set "
                        "slots.gpus = \"none\" and slots.count for CPU slots")
    names = dict(found)
    if cfg.gpus == "all":
        chosen = [index for index, _ in found]
    else:
        missing = [i for i in cfg.gpus if i not in names]
        if missing:
            raise SlotError(f"slots.gpus lists GPU(s) {missing} but the visible GPUs are {sorted(names)}; list only "
                            "those")
        chosen = list(cfg.gpus)
    classes = {names[i] for i in chosen}
    if len(classes) > 1:
        raise SlotError(f"the GPUs chosen by slots.gpus are of different kinds ({', '.join(sorted(classes))}); a run "
                        "compares results only on one kind of device: list GPUs of one kind (and start a second tag "
                        "for the others)")
    return [Slot(k, f"cuda:{i} {names[i]}", gpu=str(i)) for k, i in enumerate(chosen)]


def _split_cores(count: int, config: Config) -> list[tuple[int, ...] | None]:
    """Give each of `count` CPU slots its own cores when they divide evenly, else let them share (None)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    per = config.sandbox.cpu_threads or (len(cores) // count if cores else 0)
    if not cores or per < 1 or per * count > len(cores):
        return [None] * count
    return [tuple(cores[i * per:(i + 1) * per]) for i in range(count)]


class SlotPool:
    """The slots of one run, shared by every server process on it (one `flock` per slot)."""

    def __init__(self, slots: list[Slot], lock_dir: Path) -> None:
        if not slots:
            raise SlotError("a run needs at least one slot")
        self.slots = slots
        self.lock_dir = lock_dir
        self._queue: list[int] = []  # experiment ids waiting in this process, lowest first
        self._held: dict[int, int] = {}  # slot index -> fd, for the slots this process holds

    def __len__(self) -> int:
        return len(self.slots)

    def _try(self, slot: Slot) -> int | None:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_dir / f"{slot.index}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    async def acquire(self, exp_id: int) -> Slot:
        """Wait for a free slot; experiments of this process take them in id order. Cancellation-safe."""
        self._queue.append(exp_id)
        self._queue.sort()
        try:
            while True:
                if self._queue.index(exp_id) < len(self.slots) - len(self._held):
                    for slot in self.slots:
                        if slot.index in self._held:
                            continue
                        fd = self._try(slot)
                        if fd is not None:
                            self._held[slot.index] = fd
                            return slot
                await asyncio.sleep(POLL_S)
        finally:
            self._queue.remove(exp_id)

    def release(self, slot: Slot) -> None:
        fd = self._held.pop(slot.index, None)
        if fd is not None:
            os.close(fd)

    def busy(self) -> list[int]:
        """Indexes of the slots held by any process now."""
        out = []
        for slot in self.slots:
            if slot.index in self._held:
                out.append(slot.index)
                continue
            fd = self._try(slot)
            if fd is None:
                out.append(slot.index)
            else:
                os.close(fd)
        return out

    def position(self, exp_id: int) -> int | None:
        """0-based place of `exp_id` among the experiments this process has waiting, None when it is not waiting."""
        try:
            return self._queue.index(exp_id)
        except ValueError:
            return None
