"""Attacks on the dashboard: reading a run without the token, from a foreign site, through another name, and
trying to change anything through it. Real uvicorn on a loopback port, or the app in-process for other binds."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import uvicorn
from starlette.testclient import TestClient
from browser import free_port, serve
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from run_builder import BuiltRun

from helpers import make_engine
from server.http import HttpPolicy, build_http_app, uvicorn_config

from harness.dashboard import app as dashboard_app
from harness.dashboard.app import build_dashboard_app, serve_dashboard
from harness.dashboard.data import RunData, RunMeta

TOKEN = "dashboard-token-0123456789-abcdef"
DATA_PATHS = ["/api/summary", "/api/chart", "/api/experiments", "/api/experiments/1", "/api/events"]
PAGE_PATHS = ["/", "/static/dashboard.js", "/static/uPlot.iife.min.js"]


def fingerprint(run_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir()) if p.is_file()}


def remote_client(run: BuiltRun, token: str | None) -> TestClient:
    """The app as bound to a routable address (192.0.2.10, documentation range), driven in-process (the client runs
    its event loop in a thread of its own, so it works beside Playwright's)."""
    data = RunData(RunMeta(run.tag, "val_bpb", "minimize", run.run_dir))
    app = build_dashboard_app(data, HttpPolicy.for_bind("192.0.2.10", 8780, token))
    return TestClient(app, base_url="http://192.0.2.10:8780")


def test_beyond_loopback_run_data_without_the_right_token_is_refused(run: BuiltRun) -> None:
    with remote_client(run, TOKEN) as client:
        for path in DATA_PATHS[:-1]:
            missing = client.get(path)
            assert missing.status_code == 403, path
            assert "bearer token" in missing.json()["error"]["message"]
            wrong = client.get(path, headers={"Authorization": "Bearer " + "x" * 32})
            assert wrong.status_code == 403, path
        allowed = client.get("/api/summary", headers={"Authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code == 200 and allowed.json()["tag"] == run.tag
        # The page's fixed files carry no run data and load without the token, so a browser can start.
        page = client.get("/")
        assert page.status_code == 200 and "weight decay" not in page.text and run.tag not in page.text


def test_an_unset_token_beyond_loopback_is_generated_and_printed_in_the_page_address(
        run: BuiltRun, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)  # nothing binds
    data = RunData(RunMeta(run.tag, "val_bpb", "minimize", run.run_dir))
    assert serve_dashboard(data, host="192.0.2.10", port=8780) == 0
    err = capsys.readouterr().err
    assert "http://192.0.2.10:8780/#token=" in err
    assert len(err.split("#token=")[1].split()[0]) >= 32
    assert serve_dashboard(data, host="192.0.2.10", port=8780, token="short") == 2
    assert "at least 16" in capsys.readouterr().err


def test_a_foreign_origin_or_a_rebound_host_name_is_refused(run: BuiltRun) -> None:
    with serve(run.run_dir) as served:
        for path in DATA_PATHS[:-1] + PAGE_PATHS:
            foreign = httpx.get(served.url.rstrip("/") + path, headers={"Origin": "http://evil.example"}, timeout=10)
            assert foreign.status_code == 403, path
            assert "evil.example" in foreign.json()["error"]["message"]
            rebound = httpx.get(served.url.rstrip("/") + path, headers={"Host": f"evil.example:{served.port}"},
                                timeout=10)
            assert rebound.status_code == 421, path
        same = httpx.get(served.url + "api/summary", headers={"Origin": served.url.rstrip("/")}, timeout=10)
        assert same.status_code == 200


def test_nothing_on_the_dashboard_writes_every_method_but_get_is_refused(run: BuiltRun) -> None:
    before = fingerprint(run.run_dir)
    with serve(run.run_dir, token=TOKEN) as served:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for path in DATA_PATHS + PAGE_PATHS + ["/api/experiments/8/decision", "/api/stop"]:
            for method in ("POST", "PUT", "PATCH", "DELETE"):
                response = httpx.request(method, served.url.rstrip("/") + path, headers=auth,
                                         json={"decision": "keep"}, timeout=10)
                assert response.status_code == 405, (method, path)
                assert response.headers["allow"] == "GET, HEAD"
                assert "read-only" in response.json()["error"]
        page = httpx.get(served.url, timeout=10)
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert "<form" not in page.text
    assert fingerprint(run.run_dir) == before


def test_bad_query_values_and_unknown_experiments_get_a_clear_error(run: BuiltRun) -> None:
    with serve(run.run_dir) as served:
        bad = httpx.get(served.url + "api/experiments?offset=ten", timeout=10)
        assert bad.status_code == 400 and "offset='ten'" in bad.json()["error"]
        missing = httpx.get(served.url + "api/experiments/99", timeout=10)
        assert missing.status_code == 404 and "no experiment 99" in missing.json()["error"]


@contextlib.contextmanager
def serving_mcp_with_dashboard(workspace: Path) -> Iterator[tuple[str, RunData]]:
    engine = make_engine(workspace)
    data = RunData(RunMeta(engine.run.tag, engine.config.metric, engine.config.direction, engine.run_dir))
    port = free_port()
    app = build_http_app(engine, host="127.0.0.1", port=port, token=TOKEN,
                         mount=lambda policy: build_dashboard_app(data, policy))
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start within 20 s"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", data
    finally:
        server.should_exit = True
        thread.join(20)


@contextlib.asynccontextmanager
async def mcp_client(url: str) -> AsyncIterator[Client]:
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {TOKEN}"}) as http_client:
        async with Client(streamable_http_client(url, http_client=http_client)) as client:
            yield client


@pytest.mark.slow
def test_serve_http_with_the_dashboard_keeps_the_tools_at_mcp_and_the_same_guard_on_the_page(
        workspace: Path) -> None:
    with serving_mcp_with_dashboard(workspace) as (base, data):
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(base + "/", timeout=10).status_code == 200
        assert httpx.get(base + "/api/summary", timeout=10).status_code == 403
        summary = httpx.get(base + "/api/summary", headers=auth, timeout=10)
        assert summary.status_code == 200 and summary.json()["tag"] == data.meta.tag
        assert httpx.post(base + "/api/summary", headers=auth, timeout=10).status_code == 405
        assert httpx.get(base + "/api/summary", headers={**auth, "Origin": "http://evil.example"},
                         timeout=10).status_code == 403

        async def tools() -> set[str]:
            async with mcp_client(base + "/mcp") as client:
                return {tool.name for tool in (await client.list_tools()).tools}

        found: list[set[str]] = []
        worker = threading.Thread(target=lambda: found.append(anyio.run(tools)))  # beside Playwright's loop
        worker.start()
        worker.join(30)
        assert found == [{"run_experiment", "read_results", "commit_or_revert"}]
    assert dashboard_app.READ_METHODS == {"GET", "HEAD"}
