import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from server.runner import (
    MARK_VAR,
    is_our_group,
    kill_group,
    kill_marked,
    marked_alive,
    pid_alive,
    run_process,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process tracking needs /proc")

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]
UNBUFFERED = {**os.environ, "PYTHONUNBUFFERED": "1"}

# A leader that forks a grandchild inside its group and one that escapes with setsid and ignores SIGTERM, prints
# their pids, then "ready", then sleeps forever. Both descendants keep the output pipe open.
FAMILY = textwrap.dedent(
    """
    import os, signal, time

    def spawn(escape):
        pid = os.fork()
        if pid == 0:
            if escape:
                os.setsid()
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                time.sleep(1)
        return pid

    print("grandchild", spawn(False), flush=True)
    print("escaper", spawn(True), flush=True)
    print("ready", flush=True)
    while True:
        time.sleep(1)
    """
)


@pytest.fixture
def anyio_backend():
    return "asyncio"


def wait_until(condition, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


async def wait_for_line(log: Path, line: str, timeout_s: float = 15.0) -> None:
    with anyio.fail_after(timeout_s):
        while not (log.exists() and line in log.read_text().splitlines()):
            await anyio.sleep(0.01)


def family_pids(log: Path) -> list[int]:
    pids = [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith(("grandchild", "escaper"))]
    assert len(pids) == 2, f"the family script did not report both descendants: {log.read_text()!r}"
    return pids


def assert_all_gone(pids: list[int], marker: str) -> None:
    assert marked_alive(marker) == []
    for pid in pids:
        wait_until(lambda pid=pid: not pid_alive(pid), timeout_s=5, what=f"pid {pid} to exit")


def run(tmp_path: Path, script: str, **overrides):
    options = dict(
        cwd=tmp_path,
        env=UNBUFFERED,
        log_path=tmp_path / "run.log",
        log_max_bytes=1 << 20,
        timeout_s=60,
        grace_s=0.5,
    )
    options.update(overrides)
    return run_process([PY, "-c", script], **options)


@pytest.mark.anyio
async def test_a_normal_run_logs_merged_output_and_reports_the_tail_and_returncode(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, sys
        print("cwd", os.getcwd())
        print("mark", os.environ["{MARK_VAR}"])
        for i in range(100):
            print(f"line {{i}}")
        print("to stderr", file=sys.stderr)
        """
    )
    started, finished = [], []
    result = await run(tmp_path, script, tail_lines=5, on_started=lambda *a: started.append(a), on_finished=finished.append)

    assert result.outcome == "exited"
    assert result.returncode == 0
    assert result.dropped_bytes == 0
    text = (tmp_path / "run.log").read_text()
    pgid, marker = started[0]
    assert text.splitlines() == [f"cwd {tmp_path}", f"mark {marker}"] + [f"line {i}" for i in range(100)] + ["to stderr"]
    assert result.log_bytes == len(text.encode())
    assert result.tail.splitlines() == ["line 96", "line 97", "line 98", "line 99", "to stderr"]
    assert finished == [result]
    assert marked_alive(marker) == []


@pytest.mark.anyio
async def test_a_crash_reports_its_exit_code_and_the_traceback_in_the_tail(tmp_path):
    script = textwrap.dedent(
        """
        import sys, traceback
        def train():
            raise ValueError("loss is nan at step 7")
        try:
            train()
        except ValueError:
            traceback.print_exc()
            sys.exit(3)
        """
    )
    result = await run(tmp_path, script)

    assert result.outcome == "exited"
    assert result.returncode == 3
    assert result.tail.splitlines()[0] == "Traceback (most recent call last):"
    assert result.tail.splitlines()[-1] == "ValueError: loss is nan at step 7"


@pytest.mark.anyio
async def test_a_run_over_its_limit_is_stopped_with_its_whole_family_and_recorded_as_timeout(tmp_path):
    started = []
    result = await run(tmp_path, FAMILY, timeout_s=2.5, on_started=lambda *a: started.append(a))

    assert result.outcome == "timeout"
    assert result.returncode == -signal.SIGTERM  # the graceful stop came first
    assert "ready" in result.tail.splitlines()
    _, marker = started[0]
    assert_all_gone(family_pids(tmp_path / "run.log"), marker)


@pytest.mark.anyio
async def test_a_child_that_ignores_sigterm_is_sigkilled_after_the_grace_period(tmp_path):
    script = textwrap.dedent(
        """
        import signal, time
        signal.signal(signal.SIGTERM, lambda *_: print("got SIGTERM, ignoring it", flush=True))
        print("ready", flush=True)
        while True:
            time.sleep(1)
        """
    )
    result = await run(tmp_path, script, timeout_s=1.5, grace_s=0.5)

    assert result.outcome == "timeout"
    assert result.returncode == -signal.SIGKILL
    assert result.tail.splitlines() == ["ready", "got SIGTERM, ignoring it"]


@pytest.mark.anyio
async def test_an_output_flood_is_capped_without_blocking_the_child_and_keeps_its_real_end(tmp_path):
    block = (b"x" * 1023 + b"\n") * 1024  # 1 MiB of 1 KiB lines
    script = textwrap.dedent(
        """
        import sys
        block = (b"x" * 1023 + b"\\n") * 1024
        for _ in range(50):
            sys.stdout.buffer.write(block)
        sys.stdout.buffer.write(b"END-OF-OUTPUT\\n")
        """
    )
    cap = 1 << 20
    result = await run(tmp_path, script, log_max_bytes=cap)

    assert result.outcome == "exited" and result.returncode == 0
    data = (tmp_path / "run.log").read_bytes()
    assert len(data) == result.log_bytes
    assert data[:cap] == block[:cap]
    note = f"[... {result.dropped_bytes} bytes of output dropped: log capped at {cap} bytes ...]\n".encode()
    assert data[cap : cap + len(note)] == note
    kept_tail = data[cap + len(note) :]
    assert kept_tail.endswith(b"x\nEND-OF-OUTPUT\n")
    assert len(kept_tail) <= 64 * 1024
    assert cap + result.dropped_bytes + len(kept_tail) == 50 * len(block) + len(b"END-OF-OUTPUT\n")
    lines = result.tail.splitlines()
    assert lines[-1] == "END-OF-OUTPUT"
    assert all(len(line) <= 300 for line in lines) and len(result.tail) <= 4000


@pytest.mark.anyio
async def test_output_just_over_the_cap_is_kept_whole_because_the_tail_covers_it(tmp_path):
    script = "for i in range(100):\n    print(f'line {i:03d}')\n"
    result = await run(tmp_path, script, log_max_bytes=100)

    assert result.dropped_bytes == 0
    assert (tmp_path / "run.log").read_text().splitlines() == [f"line {i:03d}" for i in range(100)]


@pytest.mark.anyio
async def test_cancelling_a_run_kills_every_process_finishes_the_log_and_reraises(tmp_path):
    started, finished = [], []
    task = asyncio.ensure_future(run(tmp_path, FAMILY, on_started=lambda *a: started.append(a), on_finished=finished.append))
    await wait_for_line(tmp_path / "run.log", "ready")

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    (result,) = finished
    assert result.outcome == "cancelled"
    assert "ready" in result.tail.splitlines()
    assert (tmp_path / "run.log").stat().st_size == result.log_bytes
    _, marker = started[0]
    assert_all_gone(family_pids(tmp_path / "run.log"), marker)


@pytest.mark.anyio
async def test_an_anyio_cancel_scope_cannot_skip_the_cleanup(tmp_path):
    started, finished, reraised = [], [], []

    async def experiment() -> None:
        try:
            await run(tmp_path, FAMILY, on_started=lambda *a: started.append(a), on_finished=finished.append)
        except anyio.get_cancelled_exc_class():
            reraised.append(True)
            raise

    async with anyio.create_task_group() as group:
        group.start_soon(experiment)
        await wait_for_line(tmp_path / "run.log", "ready")
        group.cancel_scope.cancel()

    assert reraised == [True]
    assert finished[0].outcome == "cancelled"
    assert_all_gone(family_pids(tmp_path / "run.log"), started[0][1])


def test_a_killed_server_takes_its_direct_child_down_and_recovery_kills_the_rest(tmp_path):
    server_script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from server.runner import run_process

        def started(pgid, marker):
            Path({str(tmp_path / "started")!r}).write_text(f"{{pgid}} {{marker}}")

        asyncio.run(run_process([sys.executable, "-c", {FAMILY!r}], cwd={str(tmp_path)!r}, env=None,
                                log_path={str(tmp_path / "run.log")!r}, log_max_bytes=1 << 20, timeout_s=600,
                                on_started=started))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([PY, "-c", server_script], env=env, cwd=tmp_path)
    marker = None
    try:
        log = tmp_path / "run.log"
        wait_until(lambda: log.exists() and "ready" in log.read_text().splitlines(), 15, "the family to be ready")
        pgid_text, marker = (tmp_path / "started").read_text().split()
        pgid = int(pgid_text)
        grandchild, escaper = family_pids(log)

        server.kill()
        server.wait(timeout=10)
        wait_until(lambda: not pid_alive(pgid), 5, "the direct child to die with the server")
        assert pid_alive(grandchild) and pid_alive(escaper)

        assert is_our_group(pgid, marker)
        assert not is_our_group(pgid, "0" * 32)
        assert kill_group(pgid, "0" * 32, grace_s=0.2) == 0  # a recycled pgid is left alone
        assert pid_alive(grandchild)

        assert kill_group(pgid, marker, grace_s=0.5) == 2
        assert_all_gone([grandchild, escaper], marker)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if marker is not None:
            kill_marked(marker)


def test_kill_marked_finds_a_process_by_its_marker_alone(tmp_path):
    marker = "test-" + os.urandom(8).hex()
    child = subprocess.Popen(
        [PY, "-c", "import time\nwhile True: time.sleep(1)"],
        env={**os.environ, MARK_VAR: marker},
        start_new_session=True,
    )
    try:
        wait_until(lambda: marked_alive(marker) == [child.pid], 10, "the marked child to start")
        assert kill_marked(marker) == 1
        assert child.wait(timeout=10) == -signal.SIGKILL
        assert marked_alive(marker) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.anyio
async def test_an_empty_command_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="empty command"):
        await run_process([], cwd=tmp_path, env=None, log_path=tmp_path / "x.log", log_max_bytes=10, timeout_s=1)
