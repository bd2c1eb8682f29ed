"""Serving the dashboard on a free loopback port and opening it in the system's headless Chromium.

Playwright cannot download its own browser here; it drives Debian's `/usr/bin/chromium` (installed by
scripts/install_browser.sh) through `executable_path`. Used by the tests, the benchmark and the README screenshots.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from server.http import HttpPolicy

from harness.dashboard.app import build_dashboard_app
from harness.dashboard.data import RunData, RunMeta

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
START_TIMEOUT_S = 15.0


def chromium_path() -> Path | None:
    configured = os.environ.get("AUTORESEARCH_CHROMIUM")
    if configured:
        return Path(configured)
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    return Path(found) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Served:
    url: str
    port: int
    data: RunData


@contextlib.contextmanager
def serve(run_dir: Path, *, tag: str = "demo", token: str | None = None, direction: str = "minimize",
          poll_s: float = 0.2, metric: str = "val_bpb") -> Iterator[Served]:
    """The dashboard of `run_dir` on 127.0.0.1 in a uvicorn thread, stopped on exit."""
    port = free_port()
    data = RunData(RunMeta(tag, metric, direction, run_dir))
    app = build_dashboard_app(data, HttpPolicy.for_bind("127.0.0.1", port, token), poll_s=poll_s)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    started = threading.Event()

    def watch() -> None:
        while not server.started and thread.is_alive():
            started.wait(0.02)
        started.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    if not started.wait(START_TIMEOUT_S) or not server.started:
        raise RuntimeError(f"the dashboard did not start on 127.0.0.1:{port} within {START_TIMEOUT_S} s")
    try:
        yield Served(f"http://127.0.0.1:{port}/", port, data)
    finally:
        # Under a signal uvicorn tells open event streams to end; a server in a thread must say so itself.
        from sse_starlette.sse import AppStatus

        AppStatus.should_exit = True
        server.should_exit = True
        thread.join(10)
        AppStatus.should_exit = False


@contextlib.contextmanager
def chromium() -> Iterator["object"]:
    """A headless Chromium browser (Playwright's `Browser`)."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        raise FileNotFoundError("no chromium found: run scripts/install_browser.sh or set AUTORESEARCH_CHROMIUM")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(path), args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()
