"""`runs/<tag>/inflight.json`: the experiments of a run that are queued or running, for recovery and for people.

One file, `{"slots": [entry, ...]}`, rewritten atomically by the engine under the run's state lock whenever an
experiment is queued, starts, or is recorded; removed when nothing is in flight (so "no file" means "idle"). Each
entry holds what recovery needs to record the experiment if its server dies (id, snapshot commit, description,
folder, seed, the marker and process group of its command) and what a person wants to see (slot, device, start and
deadline). `owner` names the server process that runs it (pid and the process's start time, so a reused pid is not
mistaken for it): an entry whose owner is gone is an experiment a dead server left, and the next engine to take the
state lock records it as a crash. Readers outside the server (the harness, the dashboard) use `read_entries`, which
also accepts the one-object file older versions wrote.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from server.jsonl import atomic_write_text

INFLIGHT_FILE = "inflight.json"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), None if it is gone.

    A process that was killed but not yet reaped (a zombie) is gone: its files and locks are released, yet its
    /proc entry stays until its parent waits for it, and in a container whose init never reaps (or a harness killed
    with its children orphaned) that can be for ever. Only when every thread is a zombie, though: a killed
    multi-threaded process has a zombie leader while its other threads still exit, holding its locks.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X") and not threads_running(pid):
        return None
    return fields[19]


def threads_running(pid: int) -> bool:
    """True while any thread of `pid` still runs. The leader of a killed multi-threaded process turns zombie before
    its other threads are gone, and its files (and so its locks) are released only when the last thread exits."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            state = (task / "stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            return True
    return False


def owner_token() -> dict[str, Any]:
    """This process, as an owner that cannot be confused with a later process given the same pid."""
    pid = os.getpid()
    return {"pid": pid, "start": _start_time(pid)}


def owner_alive(owner: object) -> bool:
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return False  # written by an older server, which ran one experiment while it held the lock: it is gone
    start = _start_time(owner["pid"])
    return start is not None and start == owner.get("start")


def read_entries(run_dir: Path) -> list[dict[str, Any]]:
    """The entries of `inflight.json` (empty when there is none or it cannot be read)."""
    try:
        data = json.loads((Path(run_dir) / INFLIGHT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    items = data.get("slots") if isinstance(data, dict) and "slots" in data else data
    if isinstance(items, dict):
        items = [items]
    return [item for item in items if isinstance(item, dict) and isinstance(item.get("id"), int)] \
        if isinstance(items, list) else []


def write_entries(run_dir: Path, entries: list[dict[str, Any]]) -> None:
    """Replace the file (the caller holds the state lock); remove it when `entries` is empty."""
    path = Path(run_dir) / INFLIGHT_FILE
    if not entries:
        path.unlink(missing_ok=True)
        return
    atomic_write_text(path, json.dumps({"slots": sorted(entries, key=lambda e: e["id"]), "updated_at": time.time()}))


def remaining_s(entry: dict[str, Any], now: float | None = None) -> float | None:
    deadline = entry.get("deadline")
    if not isinstance(deadline, (int, float)):
        return None
    return max(0.0, float(deadline) - (time.time() if now is None else now))
