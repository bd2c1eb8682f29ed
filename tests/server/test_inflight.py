"""Who owns an entry of inflight.json: a server that was killed is gone even before anyone reaps it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from server.inflight import owner_alive, owner_token


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]


def test_a_running_owner_is_alive_and_a_killed_one_is_gone_while_still_a_zombie_and_after_it_is_reaped() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        owner = {"pid": child.pid, "start": Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]}
        assert owner_alive(owner)
        assert owner_alive(owner_token()), "this process owns what it queues"
        child.kill()
        deadline = time.monotonic() + 10
        while process_state(child.pid) != "Z":  # killed, not yet waited for: what an orphan becomes under a lazy init
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        assert not owner_alive(owner), "a zombie holds no locks and runs nothing: its experiments must be recovered"
    finally:
        child.kill()
        child.wait()
    assert not owner_alive(owner)
    assert not owner_alive({"pid": child.pid, "start": "0"}) and not owner_alive(None)
