"""Run one command under a hard time limit and leave no process behind.

An experiment is untrusted code that may fork workers, daemonise them with setsid, ignore SIGTERM, or print
gigabytes. The runner therefore:

- starts the command in a new session (its own process group) with stdin from /dev/null and stdout+stderr merged
  into one pipe, and asks the kernel to SIGKILL the direct child if the server dies (PR_SET_PDEATHSIG, Linux);
- stamps the environment with `AUTORESEARCH_PROC_MARK=<uuid>`, which every descendant inherits, so descendants
  that left the process group are still found through `/proc/*/environ`;
- drains the pipe continuously (a full pipe would freeze the child), keeps the first `log_max_bytes` in the log
  file and the last 64 KiB in memory, and appends that real end to the log when the middle had to be dropped;
- on timeout sends SIGTERM to the group and the marked processes, waits `grace_s`, then SIGKILLs them; after a
  normal exit of the leader it SIGKILLs whatever is left at once; on cancellation it does the same synchronously,
  so a cancelled caller cannot skip the cleanup.

Limits: a descendant that re-executes itself with a cleared environment AND leaves the process group cannot be
found. PR_SET_PDEATHSIG fires when the forking *thread* exits, so run the event loop in a long-lived thread (the
main one). Off Linux there is no /proc: marked processes cannot be found and groups cannot be verified.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "MARK_VAR",
    "ProcessResult",
    "run_process",
    "kill_marked",
    "kill_group",
    "group_alive",
    "marked_alive",
    "is_our_group",
    "pid_alive",
]

logger = logging.getLogger(__name__)

MARK_VAR = "AUTORESEARCH_PROC_MARK"
Outcome = Literal["exited", "timeout", "cancelled"]

_IS_LINUX = sys.platform.startswith("linux")
_PR_SET_PDEATHSIG = 1
_RING_BYTES = 64 * 1024
_READ_CHUNK = 64 * 1024
_CHUNKS_PER_WAKEUP = 16  # bounded so a flooding child cannot starve the event loop (and with it the timeout)
_TAIL_LINE_CHARS = 300
_TAIL_TOTAL_CHARS = 4000
_POLL_S = 0.05
_REAP_WAIT_S = 10.0  # SIGKILLed processes holding a GPU can take seconds to vanish
_SYNC_REAP_WAIT_S = 1.0  # the same wait on the cancellation path, where it blocks the event loop
_EOF_WAIT_S = 5.0


@dataclass(frozen=True)
class ProcessResult:
    """What happened to one command.

    `returncode` is negative for a signal (-15 SIGTERM, -9 SIGKILL) and may be None for a cancelled run whose
    leader had not been reaped yet. `log_bytes` is the size of the log file as written (head, drop marker and
    tail); `dropped_bytes` counts output bytes that appear nowhere in it. `tail` is the last lines of the output.
    """

    returncode: int | None
    outcome: Outcome
    duration_s: float
    log_path: Path
    log_bytes: int
    dropped_bytes: int
    tail: str
    cpu_s: float | None = None


# ---- /proc inspection ----


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _state_and_pgrp(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) from /proc/<pid>/stat, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()  # the command name may contain spaces and parentheses
    try:
        return fields[0].decode("ascii", "replace"), int(fields[2])
    except (IndexError, ValueError):
        return None


def _is_live(state: str) -> bool:
    return state not in ("Z", "X", "x")  # a zombie has exited; it only waits for its parent to reap it


def _marker_entry(marker: str) -> bytes:
    if not marker or "\0" in marker:
        raise ValueError(f"process marker {marker!r} is empty or contains NUL; pass the marker recorded at spawn")
    return f"{MARK_VAR}={marker}".encode()


def _carries(pid: int, entry: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return entry in handle.read().split(b"\0")
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and has not exited (a zombie counts as gone)."""
    if _IS_LINUX:
        info = _state_and_pgrp(pid)
        return info is not None and _is_live(info[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_members(pgid: int) -> list[int]:
    members = []
    for pid in _pids():
        info = _state_and_pgrp(pid)
        if info is not None and info[1] == pgid and _is_live(info[0]):
            members.append(pid)
    return members


def group_alive(pgid: int) -> bool:
    """True while some live (non-zombie) process is in process group `pgid`."""
    if _IS_LINUX:
        return bool(_group_members(pgid))
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def marked_alive(marker: str) -> list[int]:
    """Live processes whose environment carries `AUTORESEARCH_PROC_MARK=<marker>`; always [] off Linux."""
    entry = _marker_entry(marker)
    if not _IS_LINUX:
        return []
    me = os.getpid()
    found = []
    for pid in _pids():
        if pid == me:
            continue
        info = _state_and_pgrp(pid)
        if info is not None and _is_live(info[0]) and _carries(pid, entry):
            found.append(pid)
    return found


def is_our_group(pgid: int, marker: str) -> bool:
    """True when some live process of group `pgid` carries `marker`: pids are reused, so a recorded pgid alone
    does not prove the group is still ours. Always False off Linux (nothing to check against)."""
    entry = _marker_entry(marker)
    if not _IS_LINUX or pgid <= 1:
        return False
    return any(_carries(pid, entry) for pid in _group_members(pgid))


# ---- signalling ----


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _signal_group(pgid: int, sig: int) -> bool:
    if pgid <= 1 or pgid == os.getpgrp():
        raise ValueError(f"refusing to signal process group {pgid}: it is not an experiment's group")
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _signal_marked(marker: str, sig: int, skip_pgid: int | None = None) -> int:
    """Signal the marked processes, except members of `skip_pgid` (already signalled through their group, and
    a second SIGTERM would be a second request to stop). SIGKILL repeats the scan, as a process can fork between
    a scan and its death."""
    signalled: set[int] = set()
    for _ in range(5 if sig == signal.SIGKILL else 1):
        fresh = [pid for pid in marked_alive(marker) if pid not in signalled]
        if skip_pgid is not None:
            fresh = [pid for pid in fresh if (info := _state_and_pgrp(pid)) is not None and info[1] != skip_pgid]
        if not fresh:
            break
        signalled.update(pid for pid in fresh if _signal(pid, sig))
    return len(signalled)


def kill_marked(marker: str, sig: int = signal.SIGKILL) -> int:
    """Send `sig` to every live process carrying `marker`; returns how many were signalled (0 off Linux)."""
    return _signal_marked(marker, sig)


def _signal_everything(pgid: int, marker: str, sig: int) -> None:
    """Signal the group (only once it is proven ours on Linux: its leader may be reaped and its pid reused) and
    every marked process, including those that left the group."""
    if not _IS_LINUX or is_our_group(pgid, marker):
        if _signal_group(pgid, sig):
            _signal_marked(marker, sig, skip_pgid=pgid)
            return
    _signal_marked(marker, sig)


def _anything_alive(pgid: int, marker: str) -> bool:
    return group_alive(pgid) or bool(marked_alive(marker))


def _wait_gone_sync(pgid: int, marker: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _anything_alive(pgid, marker):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S / 5)
    return True


async def _wait_gone(pgid: int, marker: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _anything_alive(pgid, marker):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True


def kill_group(pgid: int, marker: str | None = None, grace_s: float = 5.0) -> int:
    """Stop process group `pgid` and the processes carrying `marker`: SIGTERM, up to `grace_s`, then SIGKILL.

    Used by crash recovery with the pgid and marker recorded in inflight.json. With a marker the group is signalled
    only if `is_our_group` confirms it (a recycled pgid belongs to someone else); marked processes are signalled
    regardless, since the marker is unique to our run. Without a marker the group is signalled unverified: pass
    None only for a group whose leader you still hold. Blocks up to `grace_s` plus a second. Returns the number of
    processes found at the start (on Linux; elsewhere 1 if the group existed, else 0).
    """
    ours = marker is None or is_our_group(pgid, marker)
    if not ours:
        logger.warning("process group %s does not carry marker %s; not signalling the group", pgid, marker)
    found = set(_group_members(pgid) if ours and _IS_LINUX else [])
    if marker is not None:
        found.update(marked_alive(marker))
    if ours and not _IS_LINUX and group_alive(pgid):
        found.add(pgid)

    def send(sig: int) -> None:
        grouped = ours and _signal_group(pgid, sig)
        if marker is not None:
            _signal_marked(marker, sig, skip_pgid=pgid if grouped else None)

    def alive() -> bool:
        return (ours and group_alive(pgid)) or (marker is not None and bool(marked_alive(marker)))

    if found:
        send(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while alive() and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        send(signal.SIGKILL)
        deadline = time.monotonic() + _SYNC_REAP_WAIT_S
        while alive() and time.monotonic() < deadline:
            time.sleep(_POLL_S / 5)
        logger.info("killed %d stale process(es) of group %s", len(found), pgid)
    return len(found)


# ---- spawning ----


@functools.lru_cache(maxsize=1)
def _prctl() -> Callable[..., int] | None:
    if not _IS_LINUX:
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        logger.warning("prctl is unavailable; an experiment may outlive a killed server until crash recovery")
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    function.restype = ctypes.c_int
    return function


def _combined_preexec(*fns: Callable[[], None] | None) -> Callable[[], None] | None:
    present = [fn for fn in fns if fn is not None]
    if not present:
        return None

    def run_all() -> None:
        for fn in present:
            fn()

    return run_all


_CPU_POLL_S = 0.25
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class _CpuMeter:
    """CPU seconds used by a process and all its descendants, found by parent links in /proc.

    Live descendants count their own user+system time plus that of children they reaped; a process that exited and
    was reaped is already inside its parent's count. The highest total seen is kept, so a tree that shrinks (a
    child reaped by nobody we still see) never lowers it.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.total = 0.0

    def sample(self) -> float:
        if not _IS_LINUX:
            return self.total
        parents: dict[int, int] = {}
        times: dict[int, float] = {}
        for pid in _pids():
            try:
                with open(f"/proc/{pid}/stat", "rb") as handle:
                    data = handle.read()
            except OSError:
                continue
            fields = data[data.rfind(b")") + 2:].split()
            try:
                parents[pid] = int(fields[1])
                times[pid] = sum(int(x) for x in fields[11:15]) / _CLK_TCK  # utime stime cutime cstime
            except (IndexError, ValueError):
                continue
        tree, frontier = {self.root}, [self.root]
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        while frontier:
            for child in children.get(frontier.pop(), []):
                if child not in tree:
                    tree.add(child)
                    frontier.append(child)
        self.total = max(self.total, sum(times.get(pid, 0.0) for pid in tree))
        return self.total


def _death_signal_preexec() -> Callable[[], None] | None:
    """A preexec function that makes the kernel SIGKILL the child when the server dies, or None off Linux.

    prctl is looked up before the fork so the child does no dynamic loading between fork and exec."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()
    kill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, kill, 0, 0, 0)
        if os.getppid() != parent:  # the server died before prctl took effect
            os.kill(os.getpid(), kill)

    return preexec


# ---- output ----


class _OutputSink:
    """Drains the child's pipe without ever blocking it: the head goes to the log file up to the cap, everything
    passes through a ring of the last bytes so the real end of the output survives a flood."""

    def __init__(self, fd: int, log_path: Path, max_bytes: int) -> None:
        self._fd = fd
        os.set_blocking(fd, False)
        self._file = open(log_path, "wb", buffering=0)  # noqa: SIM115 - closed in finish()
        self._max = max_bytes
        self._written = 0
        self._total = 0
        self._last = b"\n"
        self._ring = bytearray()
        self._eof = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished: tuple[int, int] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self._fd, self._drain, _CHUNKS_PER_WAKEUP)

    def _drain(self, max_chunks: int) -> None:
        for _ in range(max_chunks):
            try:
                chunk = os.read(self._fd, _READ_CHUNK)
            except BlockingIOError:
                return
            except OSError as exc:
                logger.warning("reading the experiment's output failed (%s); treating it as the end", exc)
                chunk = b""
            if not chunk:
                self._stop_reading()
                return
            self._accept(chunk)

    def _stop_reading(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        self._eof.set()

    def _accept(self, chunk: bytes) -> None:
        self._total += len(chunk)
        room = self._max - self._written
        if room > 0:
            head = chunk[:room]
            try:
                self._file.write(head)
                self._written += len(head)
                self._last = head[-1:]
            except OSError as exc:
                logger.warning("writing %s failed (%s); dropping further output", self._file.name, exc)
                self._max = self._written
        self._ring += chunk
        if len(self._ring) > 2 * _RING_BYTES:
            del self._ring[:-_RING_BYTES]

    async def wait_eof(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._eof.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    def finish(self) -> tuple[int, int]:
        """Read what is left, close the pipe, append the drop marker and the tail; returns (log_bytes, dropped)."""
        if self._finished is not None:
            return self._finished
        if not self._eof.is_set():
            self._drain(256)  # bounded: a writer that escaped every kill must not hang us
            self._stop_reading()
        os.close(self._fd)
        dropped = 0
        try:
            if self._total > self._written:
                ring = bytes(self._ring[-_RING_BYTES:])
                start = max(self._written, self._total - len(ring))
                tail = ring[len(ring) - (self._total - start) :]
                if start > self._written:  # a gap: begin the tail at a line start
                    newline = tail.find(b"\n")
                    if 0 <= newline < len(tail) - 1:
                        tail = tail[newline + 1 :]
                dropped = self._total - self._written - len(tail)
                if dropped:
                    lead = b"" if self._last == b"\n" else b"\n"
                    note = f"[... {dropped} bytes of output dropped: log capped at {self._max} bytes ...]\n"
                    self._file.write(lead + note.encode())
                self._file.write(tail)
        except OSError as exc:
            logger.warning("could not finish %s (%s)", self._file.name, exc)
        log_bytes = self._file.tell()
        self._file.close()
        self._finished = (log_bytes, dropped)
        return self._finished

    def tail(self, max_lines: int) -> str:
        text = bytes(self._ring[-_RING_BYTES:]).decode("utf-8", "replace")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if self._total > _RING_BYTES and len(lines) > 1:
            lines.pop(0)  # cut by the ring, not a whole line
        # A progress bar redraws with \r: keep what a terminal would show.
        lines = [line.rstrip("\r").rsplit("\r", 1)[-1][:_TAIL_LINE_CHARS] for line in lines]
        lines = lines[-max_lines:] if max_lines > 0 else []
        while lines and sum(len(line) + 1 for line in lines) - 1 > _TAIL_TOTAL_CHARS:
            lines.pop(0)
        return "\n".join(lines)


async def run_process(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str],
    env: Mapping[str, str] | None,
    log_path: str | os.PathLike[str],
    log_max_bytes: int,
    timeout_s: float,
    tail_lines: int = 30,
    grace_s: float = 5.0,
    on_started: Callable[[int, str], None] | None = None,
    on_finished: Callable[[ProcessResult], None] | None = None,
    marker: str | None = None,
    preexec: Callable[[], None] | None = None,
    cpu_limit_s: float | None = None,
) -> ProcessResult:
    """Run `argv` to completion or to `timeout_s`, whichever is first, and return what happened.

    `env` is the complete environment (None: the server's); `AUTORESEARCH_PROC_MARK` is added. `on_started(pgid,
    marker)` is called right after the spawn so the caller can record them for crash recovery. `on_finished(result)`
    is called with the result on every path, and is the only way to get the result of a cancelled run: on
    cancellation (or any exception) every process is SIGKILLed and the log finished synchronously, `on_finished`
    receives an outcome "cancelled", and the exception is re-raised.

    `marker` lets the caller choose the marker (a sandbox must be told it explicitly, since it clears the
    environment). `preexec` runs in the child before exec (limits). With `cpu_limit_s` the CPU seconds of the whole
    process tree are measured every few hundred milliseconds and the run is stopped as a timeout past the limit;
    `cpu_s` in the result is that measurement (also without a limit, where /proc exists).
    """
    if not argv:
        raise ValueError("run_process got an empty command; pass at least the program to run")
    if timeout_s <= 0 or grace_s < 0 or log_max_bytes < 0:
        raise ValueError(
            f"run_process limits must be positive (timeout_s={timeout_s}, grace_s={grace_s}, "
            f"log_max_bytes={log_max_bytes}); fix the configuration"
        )
    marker = marker or uuid.uuid4().hex
    child_env = dict(os.environ if env is None else env)
    child_env[MARK_VAR] = marker
    log_file = Path(log_path)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()

    read_fd, write_fd = os.pipe()  # both ends close-on-exec; Popen dup2()s the write end onto 1 and 2
    try:
        sink = _OutputSink(read_fd, log_file, log_max_bytes)
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_fd,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            env=child_env,
            start_new_session=True,
            preexec_fn=_combined_preexec(_death_signal_preexec(), preexec),
        )
    except BaseException:
        kill_marked(marker)  # asyncio kills a half-started leader; this catches anything it forked already
        os.close(write_fd)
        sink.finish()
        raise
    os.close(write_fd)  # keep only the child's copy, so EOF means every writer is gone
    pgid = proc.pid
    sink.start(loop)
    logger.info("started pgid %d (marker %s): %s", pgid, marker, " ".join(map(str, argv)))
    wait_task = asyncio.ensure_future(proc.wait())

    cpu = _CpuMeter(pgid)

    def result(outcome: Outcome) -> ProcessResult:
        log_bytes, dropped = sink.finish()
        return ProcessResult(
            returncode=proc.returncode,
            outcome=outcome,
            duration_s=time.monotonic() - started,
            log_path=log_file,
            log_bytes=log_bytes,
            dropped_bytes=dropped,
            tail=sink.tail(tail_lines),
            cpu_s=cpu.total,
        )

    outcome: Outcome = "exited"
    try:
        if on_started is not None:
            on_started(pgid, marker)
        deadline = started + timeout_s
        while True:
            left = deadline - time.monotonic()
            done, _ = await asyncio.wait({wait_task}, timeout=max(0.0, min(left, _CPU_POLL_S)))
            if done or left <= 0:
                break
            cpu.sample()
            if cpu_limit_s is not None and cpu.total > cpu_limit_s:
                logger.warning("pgid %d used %.1f CPU seconds, past its limit of %.1f", pgid, cpu.total, cpu_limit_s)
                break
        if not done:
            outcome = "timeout"
            logger.warning("pgid %d ran past %.1f s; sending SIGTERM, SIGKILL after %.1f s", pgid, timeout_s, grace_s)
            _signal_everything(pgid, marker, signal.SIGTERM)
            await _wait_gone(pgid, marker, grace_s)
        _signal_everything(pgid, marker, signal.SIGKILL)
        if not await _wait_gone(pgid, marker, _REAP_WAIT_S):
            logger.error("pgid %d: processes survived SIGKILL for %.0f s", pgid, _REAP_WAIT_S)
        if not await sink.wait_eof(_EOF_WAIT_S):
            logger.warning("pgid %d: output pipe still open after every process was killed; closing it", pgid)
        await asyncio.wait({wait_task}, timeout=_REAP_WAIT_S)
    except BaseException:
        # Synchronous on purpose: under anyio every await in a cancelled scope is cancelled again.
        _signal_everything(pgid, marker, signal.SIGKILL)
        if not _wait_gone_sync(pgid, marker, _SYNC_REAP_WAIT_S):
            logger.error("pgid %d: processes still alive %.1f s after SIGKILL", pgid, _SYNC_REAP_WAIT_S)
        wait_task.cancel()
        final = result("cancelled")
        logger.warning("pgid %d cancelled after %.1f s", pgid, final.duration_s)
        if on_finished is not None:
            try:
                on_finished(final)
            except Exception:
                logger.exception("on_finished failed for a cancelled run (pgid %d)", pgid)
        raise
    final = result(outcome)
    logger.info("pgid %d %s rc=%s after %.1f s", pgid, outcome, final.returncode, final.duration_s)
    if on_finished is not None:
        on_finished(final)
    return final
