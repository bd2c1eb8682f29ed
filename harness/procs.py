"""The real process side of supervision: an agent command in its own process group, read line by line.

The agent (and the MCP server and experiments it starts) run in one new session, so stopping it is one signal to the
group and nothing is left behind. Output is read by a daemon thread so the supervisor can drain it without blocking.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from harness.agent_events import AgentEvent, EventKind

log = logging.getLogger(__name__)

# After the leader exits, how long its output may keep arriving before its exit is reported anyway (a grandchild that
# inherited stdout can hold the pipe open forever).
DRAIN_AFTER_EXIT_S = 2.0
# How long to wait for the group to vanish after SIGKILL; only a process stuck in the kernel outlives this.
KILL_WAIT_S = 5.0
_POLL_S = 0.02


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids in process group `pgid`.

    Zombies count as gone: an orphaned grandchild is reparented to PID 1, which in a container may never reap it.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    proc = Path("/proc")
    if not proc.is_dir():
        return [pgid]  # no way to look closer; assume alive while the group answers signals
    members: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


class GroupProcess:
    """A command running as the leader of its own process group, its stdout read into a queue by a daemon thread."""

    def __init__(self, popen: subprocess.Popen[bytes], stdout_log: Path | None) -> None:
        self._popen = popen
        self.pid: int = popen.pid
        self.pgid: int = popen.pid  # start_new_session makes the child the group leader
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._log_file: IO[bytes] | None = open(stdout_log, "ab") if stdout_log is not None else None
        self._reader = threading.Thread(target=self._read, name=f"agent-stdout-{self.pid}", daemon=True)
        self._reader.start()
        self._exit_seen_at: float | None = None

    @property
    def stdin(self) -> IO[bytes] | None:
        """The pipe to the command's stdin when it was asked for, else None."""
        return self._popen.stdin

    def _read(self) -> None:
        stdout = self._popen.stdout
        assert stdout is not None
        try:
            for raw in iter(stdout.readline, b""):
                if self._log_file is not None:
                    self._log_file.write(raw)
                    self._log_file.flush()
                self._lines.put(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        except (OSError, ValueError) as exc:  # the pipe was closed under us during shutdown
            log.debug("stdout reader of pid %d stopped: %s", self.pid, exc)
        finally:
            if self._log_file is not None:
                self._log_file.close()

    def lines(self) -> list[str]:
        """Every complete line read since the last call; never blocks."""
        out: list[str] = []
        while True:
            try:
                out.append(self._lines.get_nowait())
            except queue.Empty:
                return out

    def returncode(self) -> int | None:
        """The leader's exit status, reported only once its output has been read to the end.

        Otherwise a caller that sees the exit and drains the lines could miss the final lines still in the pipe. If a
        descendant keeps the pipe open, the exit is reported anyway `DRAIN_AFTER_EXIT_S` after it was first seen.
        """
        code = self._popen.poll()
        if code is None:
            return None
        if not self._reader.is_alive():
            return code
        now = time.monotonic()
        if self._exit_seen_at is None:
            self._exit_seen_at = now
        return code if now - self._exit_seen_at >= DRAIN_AFTER_EXIT_S else None

    def terminate(self, grace_s: float) -> None:
        """SIGTERM the whole group, wait up to `grace_s` for it to go, then SIGKILL; returns when the group is gone."""
        if self._popen.poll() is None or _group_members(self.pgid):
            _signal_group(self.pgid, signal.SIGTERM)
            if not self._wait_group_gone(grace_s):
                log.warning("process group %d outlived SIGTERM by %.1f s; sending SIGKILL", self.pgid, grace_s)
                _signal_group(self.pgid, signal.SIGKILL)
                if not self._wait_group_gone(KILL_WAIT_S):
                    log.error("process group %d still has members %s after SIGKILL", self.pgid,
                              _group_members(self.pgid))
        try:
            self._popen.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            log.error("pid %d did not exit after SIGKILL; it is probably stuck in the kernel", self.pid)
        self._reader.join(timeout=DRAIN_AFTER_EXIT_S)

    def _wait_group_gone(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            self._popen.poll()  # reap the leader so it does not linger as a zombie member
            if not _group_members(self.pgid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)


def spawn_group(
    argv: Sequence[str],
    *,
    cwd: Path | str,
    env: Mapping[str, str] | None = None,
    stdout_log: Path | None = None,
    stderr_log: Path | None = None,
    stdin_pipe: bool = False,
) -> GroupProcess:
    """Start `argv` in a new session (so a new process group) with stdin from /dev/null unless a pipe is asked for.

    stderr goes to `stderr_log` when given, else it is merged into stdout (and so into `stdout_log`): a parser of
    stdout must therefore tolerate lines that are not its format.
    """
    if not argv:
        raise ValueError("spawn_group needs a command; got an empty argv")
    stderr_file: IO[bytes] | None = open(stderr_log, "ab") if stderr_log is not None else None
    try:
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_file if stderr_file is not None else subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise OSError(f"could not start {argv[0]!r} in {cwd}: {exc}; check that it is installed and on PATH") from exc
    finally:
        if stderr_file is not None:
            stderr_file.close()  # the child holds its own descriptor
    log.info("started pid %d (own process group): %s", popen.pid, " ".join(argv))
    return GroupProcess(popen, stdout_log)


class LineAgentProcess:
    """Adapts a `GroupProcess` to the supervisor's `AgentProcess` by parsing each output line into events."""

    def __init__(self, group: GroupProcess, parse: Callable[[str], list[AgentEvent]]) -> None:
        self.group = group
        self.pid: int = group.pid
        self._parse = parse

    def events(self) -> list[AgentEvent]:
        out: list[AgentEvent] = []
        for line in self.group.lines():
            try:
                out.extend(self._parse(line))
            except Exception as exc:  # one bad line must not take supervision down for the rest of the night
                log.warning("could not parse agent output line %.200r: %s", line, exc)
                out.append(AgentEvent(EventKind.OTHER, text=line[:200]))
        return out

    def returncode(self) -> int | None:
        return self.group.returncode()

    def terminate(self, grace_s: float) -> None:
        self.group.terminate(grace_s)
