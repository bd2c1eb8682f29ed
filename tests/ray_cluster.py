"""A local Ray cluster for the tests and the benchmark: one head node in a session of its own, stopped by killing
that session's processes and nothing else (`ray stop` would stop every Ray process of the machine)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_members(sid: int) -> list[int]:
    """Live processes of session `sid` (Ray's workers change their process group, not their session)."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            data = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split()
        if int(fields[3]) == sid and fields[0] not in (b"Z", b"X"):
            members.append(int(name))
    return members


def stop_session(sid: int) -> None:
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        for pid in session_members(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while session_members(sid) and time.monotonic() < deadline:
            time.sleep(0.1)


@contextmanager
def local_ray_cluster(cpus: int = 4, gpus: int = 4) -> Iterator[str]:
    """Start a head with `gpus` logical GPUs (the scheduler hands them out on a machine without any) and a small
    object store; yield its address; disconnect this process from it and stop it."""
    import ray

    temp = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must fit in 107 bytes
    port = free_port()
    argv = [str(RAY), "start", "--head", "--num-cpus", str(cpus), "--num-gpus", str(gpus), "--port", str(port),
            "--temp-dir", temp, "--disable-usage-stats", "--include-dashboard=false",
            "--object-store-memory", str(100 * 2**20), "--dashboard-agent-listen-port", str(free_port()),
            "--node-ip-address", "127.0.0.1"]
    starter = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = starter.communicate(timeout=120)
        if starter.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{output}")
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stop_session(starter.pid)
        shutil.rmtree(temp, ignore_errors=True)
