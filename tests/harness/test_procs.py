"""The real process side, with real subprocesses: output read line by line, whole groups stopped."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.agent_events import AgentEvent, EventKind
from harness.procs import LineAgentProcess, spawn_group

PY = sys.executable


def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.01)


def collect_until(proc, predicate: Callable[[list[str]], bool], timeout_s: float = 15.0) -> list[str]:
    seen: list[str] = []

    def more() -> bool:
        seen.extend(proc.lines())
        return predicate(seen)

    wait_until(more, timeout_s)
    return seen


def alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (an orphan may never be reaped by PID 1 in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def test_output_lines_are_read_in_order_and_teed_raw_to_the_log(tmp_path):
    log = tmp_path / "agent.log"
    code = "import sys; print('one'); print('twö'); sys.stderr.write('err\\n'); sys.stderr.flush(); print('three')"
    proc = spawn_group([PY, "-u", "-c", code], cwd=tmp_path, stdout_log=log)
    wait_until(lambda: proc.returncode() is not None)
    assert proc.returncode() == 0
    assert proc.lines() == ["one", "twö", "err", "three"]
    assert proc.lines() == []
    assert log.read_bytes() == "one\ntwö\nerr\nthree\n".encode()


def test_stderr_can_go_to_its_own_log(tmp_path):
    code = "import sys; print('out'); sys.stderr.write('err\\n')"
    proc = spawn_group([PY, "-c", code], cwd=tmp_path, stderr_log=tmp_path / "stderr.log")
    wait_until(lambda: proc.returncode() is not None)
    assert proc.lines() == ["out"]
    assert (tmp_path / "stderr.log").read_text() == "err\n"


def test_stdin_is_empty_so_an_agent_waiting_for_input_does_not_hang(tmp_path):
    proc = spawn_group([PY, "-c", "import sys; print(len(sys.stdin.read()))"], cwd=tmp_path)
    wait_until(lambda: proc.returncode() is not None)
    assert proc.lines() == ["0"]


def test_an_exit_is_reported_only_after_all_output_was_read(tmp_path):
    # Far more than a pipe buffer, so output is still in flight when the process exits.
    code = "import sys\nfor i in range(400): sys.stdout.write(f'{i} ' + 'x' * 8000 + '\\n')\n"
    proc = spawn_group([PY, "-c", code], cwd=tmp_path)
    lines: list[str] = []
    deadline = time.monotonic() + 15
    while proc.returncode() is None and time.monotonic() < deadline:
        lines.extend(proc.lines())
    lines.extend(proc.lines())
    assert [line.split()[0] for line in lines] == [str(i) for i in range(400)]


GRANDCHILD = """
import signal, sys, time
def bye(*_):
    print('grandchild got SIGTERM', flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print('grandchild ready', flush=True)
time.sleep(600)
"""


def test_terminate_stops_the_whole_group_including_a_grandchild(tmp_path):
    code = (
        "import subprocess, sys, time\n"
        f"gc = subprocess.Popen([sys.executable, '-c', {GRANDCHILD!r}])\n"
        "print(gc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = spawn_group([PY, "-c", code], cwd=tmp_path)
    seen = collect_until(proc, lambda seen: "grandchild ready" in seen)
    grandchild = int(next(line for line in seen if line.isdigit()))
    assert alive(grandchild)
    proc.terminate(grace_s=10)
    assert proc.returncode() == -signal.SIGTERM
    assert "grandchild got SIGTERM" in proc.lines()  # the group was signalled, not only its leader
    assert not alive(grandchild)
    assert not alive(proc.pid)


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = spawn_group([PY, "-c", code], cwd=tmp_path)
    collect_until(proc, lambda seen: "ready" in seen)
    proc.terminate(grace_s=0.3)
    assert proc.returncode() == -signal.SIGKILL
    assert not alive(proc.pid)


def test_terminating_a_process_that_already_exited_returns_at_once(tmp_path):
    proc = spawn_group([PY, "-c", "pass"], cwd=tmp_path)
    wait_until(lambda: proc.returncode() is not None)
    proc.terminate(grace_s=30)
    assert proc.returncode() == 0


def test_a_missing_command_fails_with_a_message_that_names_it(tmp_path):
    with pytest.raises(OSError, match="no-such-agent-cli"):
        spawn_group(["no-such-agent-cli", "-p", "hi"], cwd=tmp_path)


def parse_json_line(line: str) -> list[AgentEvent]:
    data = json.loads(line)
    return [AgentEvent(EventKind(data["kind"]), session_id=data.get("session_id"))]


def test_the_line_adapter_turns_lines_into_events_and_survives_a_bad_line(tmp_path):
    code = (
        "import json\n"
        "print(json.dumps({'kind': 'init', 'session_id': 's1'}))\n"
        "print('Warning: not json')\n"
        "print(json.dumps({'kind': 'result', 'session_id': 's1'}))\n"
    )
    agent = LineAgentProcess(spawn_group([PY, "-c", code], cwd=tmp_path, env=dict(os.environ)), parse_json_line)
    wait_until(lambda: agent.returncode() is not None)
    events = agent.events()
    assert [e.kind for e in events] == [EventKind.INIT, EventKind.OTHER, EventKind.RESULT]
    assert events[0].session_id == "s1"
    assert events[1].text == "Warning: not json"
    agent.terminate(1)
