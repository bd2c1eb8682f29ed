"""The streamable HTTP transport over a real socket: uvicorn in a thread on an ephemeral loopback port, real clients."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from helpers import REPO_ROOT, git, make_engine, set_constant  # not "conftest": tests/e2e has one too
from server import http as server_http
from server.audit import AuditLog
from server.engine import Engine
from server.http import HttpPolicy, HttpSetupError, build_http_app, decide_token, serve_http, uvicorn_config

pytestmark = pytest.mark.anyio

TOKEN = "test-token-0123456789-abcdefghij"
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                         "clientInfo": {"name": "raw", "version": "0"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"



@dataclass(frozen=True)
class Running:
    url: str
    port: int


@contextmanager
def serving(engine: Engine, token: str | None, host: str = "127.0.0.1") -> Iterator[Running]:
    """uvicorn in a background thread on a port the OS picked, waited on until it accepts (bounded)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    app = build_http_app(engine, host=host, port=port, token=token)
    server = uvicorn.Server(uvicorn_config(app, host=host, port=port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn exited before it started"
        assert time.monotonic() < deadline, "uvicorn did not start within 20 s"
        time.sleep(0.01)
    name = f"[{host}]" if ":" in host else host
    try:
        yield Running(f"http://{name}:{port}/mcp", port)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not shut down within 20 s"


@asynccontextmanager
async def mcp_client(url: str, token: str | None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with create_mcp_http_client(headers=headers) as http_client:
        async with Client(streamable_http_client(url, http_client=http_client)) as client:
            yield client


def post(url: str, *, headers: dict[str, str] | None = None, content: bytes | None = None) -> httpx.Response:
    body = content if content is not None else json.dumps(INITIALIZE).encode()
    return httpx.post(url, headers={**MCP_HEADERS, **(headers or {})}, content=body, timeout=10)


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, which is how the SDK client's task groups report failures."""
    inner = getattr(exc, "exceptions", None)
    return [leaf for sub in inner for leaf in leaves(sub)] if inner else [exc]


def error_message(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]["message"]


async def test_a_client_with_the_token_lists_the_three_tools_and_reads_results(workspace: Path) -> None:
    engine = make_engine(workspace)
    with serving(engine, TOKEN) as running:
        async with mcp_client(running.url, TOKEN) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            view = await client.call_tool("read_results", {"last_n": 3})
    assert set(tools) == {"run_experiment", "read_results", "commit_or_revert"}
    assert tools["run_experiment"].input_schema["required"] == ["description"]
    assert not view.is_error and view.structured_content["tag"] == "t1"
    assert [r.tool for r in engine.audit.records()] == ["read_results"]


async def test_requests_without_the_right_token_are_refused_with_403_and_no_oauth_challenge(workspace: Path) -> None:
    engine = make_engine(workspace)
    with serving(engine, TOKEN) as running:
        missing = post(running.url)
        wrong = post(running.url, headers={"Authorization": "Bearer " + "x" * len(TOKEN)})
        not_bearer = post(running.url, headers={"Authorization": f"Basic {TOKEN}"})
        accepted = post(running.url, headers={"Authorization": f"Bearer {TOKEN}"})
        with pytest.raises(BaseException) as failed:
            async with mcp_client(running.url, "y" * 32) as client:
                await client.list_tools()
    for response in (missing, wrong, not_bearer):
        # 401 (with or without a challenge) makes MCP clients start an OAuth flow that hides this message
        assert response.status_code == 403
        assert "www-authenticate" not in response.headers
        assert "Authorization: Bearer <token>" in error_message(response)
        assert "does not offer OAuth" in error_message(response)
    assert "missing bearer token" in error_message(missing)
    assert "wrong bearer token" in error_message(wrong)
    assert accepted.status_code == 200
    assert "wrong bearer token" in " ".join(str(e) for e in leaves(failed.value)), "the SDK client shows our message"
    assert engine.audit.records() == [], "a refused request must not reach the tools"


async def test_a_foreign_origin_or_host_is_refused_even_with_the_token(workspace: Path) -> None:
    engine = make_engine(workspace)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serving(engine, TOKEN) as running:
        foreign = post(running.url, headers={**auth, "Origin": "http://evil.example"})
        rebound = post(running.url, headers={**auth, "Host": f"evil.example:{running.port}"})
        same_origin = post(running.url, headers={**auth, "Origin": f"http://127.0.0.1:{running.port}"})
        alias = post(running.url, headers={**auth, "Host": f"localhost:{running.port}"})
    assert foreign.status_code == 403 and "http://evil.example" in error_message(foreign)
    assert rebound.status_code == 421 and "DNS rebinding" in error_message(rebound)
    assert same_origin.status_code == 200 and alias.status_code == 200


async def test_a_loopback_server_without_a_token_accepts_plain_clients_but_not_foreign_origins(workspace: Path) -> None:
    engine = make_engine(workspace)
    with serving(engine, None) as running:
        async with mcp_client(running.url, None) as client:
            assert len((await client.list_tools()).tools) == 3
        foreign = post(running.url, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403


async def test_a_body_over_the_limit_is_refused_with_413_declared_or_chunked(workspace: Path) -> None:
    engine = make_engine(workspace)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    oversized = b" " * (server_http.MAX_BODY_BYTES + 1)

    def chunks() -> Iterator[bytes]:
        for _ in range(server_http.MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    with serving(engine, TOKEN) as running:
        declared = post(running.url, headers=auth, content=oversized)
        chunked = httpx.post(running.url, headers={**MCP_HEADERS, **auth}, content=chunks(), timeout=10)
        unauthenticated = post(running.url, content=oversized)
    assert declared.status_code == 413 and "exceeds 1048576 bytes" in error_message(declared)
    assert chunked.status_code == 413
    assert unauthenticated.status_code == 403 and "missing bearer token" in error_message(unauthenticated), \
        "an anonymous client learns nothing beyond the missing token"


@pytest.mark.slow
async def test_a_second_client_is_refused_while_the_first_runs_and_the_records_stay_whole(workspace: Path) -> None:
    config_path = workspace / "autoresearch.toml"
    config_path.write_text(config_path.read_text().replace("time_budget_s = 5", "time_budget_s = 1")
                           .replace("hard_timeout_s = 20", "hard_timeout_s = 3"))
    git(workspace, "commit", "-qam", "short hard limit")
    engine = make_engine(workspace)
    with serving(engine, TOKEN) as running:
        async with mcp_client(running.url, TOKEN) as first, mcp_client(running.url, TOKEN) as second:
            base = await first.call_tool("run_experiment", {"description": "baseline"})
            assert base.structured_content["status"] == "ok"
            set_constant(workspace / "train.py", "BEHAVIOUR", '"hang"')
            outcome: dict[str, object] = {}

            async def run_slow() -> None:
                outcome["result"] = await first.call_tool("run_experiment", {"description": "hangs until killed"})

            async with anyio.create_task_group() as tg:
                tg.start_soon(run_slow)
                with anyio.fail_after(15):
                    while engine.in_flight() is None:
                        await anyio.sleep(0.02)
                refused = await second.call_tool("run_experiment", {"description": "a concurrent attempt"})
                view = await second.call_tool("read_results", {})
            slow = outcome["result"]
    assert refused.is_error and "is running on this workspace now" in refused.content[0].text
    assert view.structured_content["in_flight_id"] == 2
    assert slow.structured_content["status"] == "timeout"  # type: ignore[attr-defined]
    experiments = engine.ledger.experiments()
    assert [(e.id, e.status) for e in experiments] == [(1, "ok"), (2, "timeout")]
    records = [r for r in AuditLog(engine.run_dir / "audit.jsonl").records() if r.event == "tool_call"]
    assert [(r.tool, r.status) for r in records] == [("run_experiment", "ok"), ("run_experiment", "refused"),
                                                     ("read_results", "ok"), ("run_experiment", "ok")]
    assert AuditLog(engine.run_dir / "audit.jsonl").verify().ok
    assert not (engine.run_dir / "inflight.json").exists()


def test_a_non_loopback_bind_without_a_token_gets_a_generated_one() -> None:
    public = decide_token("192.0.2.10", None)
    assert public.generated and public.token is not None and len(public.token) >= 40
    assert decide_token("192.0.2.10", "").generated, "an empty token counts as none"
    assert decide_token("192.0.2.10", None).token != public.token
    for loopback in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"):
        assert decide_token(loopback, None).token is None
    assert decide_token("127.0.0.1", TOKEN).token == TOKEN, "a token given on loopback is still enforced"
    with pytest.raises(HttpSetupError, match="at least 16"):
        decide_token("192.0.2.10", "short")


def test_no_policy_lets_a_reachable_address_run_without_a_token() -> None:
    with pytest.raises(HttpSetupError, match="needs a bearer token"):
        HttpPolicy.for_bind("0.0.0.0", 8765, None)
    with pytest.raises(HttpSetupError, match="needs a token"):
        HttpPolicy.for_bind("192.0.2.10", 8765, None)
    loopback = HttpPolicy.for_bind("127.0.0.1", 8765, None)
    assert loopback.allowed_hosts == {"127.0.0.1:8765", "localhost:8765", "[::1]:8765"}
    assert HttpPolicy.for_bind("::1", 9000, None).allowed_hosts == {"127.0.0.1:9000", "localhost:9000", "[::1]:9000"}
    assert HttpPolicy.for_bind("192.0.2.10", 8765, TOKEN).allowed_hosts == {"192.0.2.10:8765"}


async def test_a_generated_token_is_printed_once_on_stderr_and_never_logged(
        workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(workspace)
    started: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: started.append(self.config))
    caplog.set_level(logging.DEBUG)
    assert serve_http(engine, host="192.0.2.10", port=8765) == 0  # nothing binds: run() is replaced
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if "Authorization: Bearer" in line]
    assert len(lines) == 1 and "http://192.0.2.10:8765/mcp" in lines[0]
    token = lines[0].rsplit("Bearer ", 1)[1].rstrip("'")
    assert len(token) >= 40 and token not in out and token not in caplog.text
    assert started[0].access_log is False
    transport = httpx.ASGITransport(app=started[0].app)
    async with httpx.AsyncClient(transport=transport, base_url="http://192.0.2.10:8765") as client:
        refused = await client.post("/mcp", headers=MCP_HEADERS, json=INITIALIZE)
    assert refused.status_code == 403


def test_an_unusable_token_stops_the_server_before_it_listens(workspace: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    engine = make_engine(workspace)
    assert serve_http(engine, host="127.0.0.1", port=8765, token="short") == 2
    assert "at least 16" in capsys.readouterr().err



@pytest.mark.slow
async def test_sigterm_during_an_experiment_over_http_kills_the_run_and_records_it(workspace: Path) -> None:
    engine = make_engine(workspace)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--workspace", str(workspace), "--tag", "t1",
                             "--http", "--port", str(port)], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        with anyio.fail_after(30):
            while True:
                assert proc.poll() is None, f"the server exited early: {proc.communicate()[1][-2000:]}"
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    await anyio.sleep(0.05)
        stopped = False
        try:  # the server goes away under the call: the client's transport may fail on its way out
            async with mcp_client(f"http://127.0.0.1:{port}/mcp", None) as client:
                await client.call_tool("run_experiment", {"description": "baseline"})
                set_constant(workspace / "train.py", "BEHAVIOUR", '"hang"')
                async with anyio.create_task_group() as tg:
                    async def run_hanging() -> None:
                        with pytest.raises(Exception):
                            await client.call_tool("run_experiment", {"description": "hangs until the server stops"})

                    tg.start_soon(run_hanging)
                    with anyio.fail_after(15):
                        while engine.in_flight() is None:
                            await anyio.sleep(0.02)
                    proc.send_signal(signal.SIGTERM)
                    with anyio.fail_after(30):
                        await anyio.to_thread.run_sync(proc.wait)
                    stopped = True
        except Exception:  # noqa: BLE001 - what is asserted is the server's record, below
            assert stopped, "the client failed before the server was stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    exp = engine.ledger.get(2)
    assert exp is not None and exp.status == "crash" and "cancelled" in (exp.failure or "")
    assert not (engine.run_dir / "inflight.json").exists()
    assert AuditLog(engine.run_dir / "audit.jsonl").verify().ok


async def test_a_connection_that_never_finishes_its_headers_is_answered_408_and_closed(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_http.HeaderTimeoutProtocol, "header_timeout_s", 0.5)
    engine = make_engine(workspace)
    with serving(engine, TOKEN) as running:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never the rest
            received = b""
            while chunk := sock.recv(4096):  # bounded by the socket timeout: the server must close first
                received += chunk
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as idle:
            assert idle.recv(4096).startswith(b"HTTP/1.1 408"), "a connection that sends nothing is closed too"
        served = post(running.url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert received.startswith(b"HTTP/1.1 408 Request Timeout")
    assert b"request headers not complete within 0.5 s" in received
    assert served.status_code == 200, "a normal request after the deadline is still served"


async def test_host_and_origin_in_capitals_are_accepted_by_both_checks(workspace: Path) -> None:
    engine = make_engine(workspace)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serving(engine, TOKEN) as running:
        upper = post(running.url, headers={**auth, "Host": f"LOCALHOST:{running.port}",
                                           "Origin": f"HTTP://LocalHost:{running.port}"})
        foreign = post(running.url, headers={**auth, "Host": f"EVIL.example:{running.port}"})
        mismatched = post(running.url, headers={**auth, "Host": f"LOCALHOST:{running.port}",
                                                "Origin": "HTTP://EVIL.EXAMPLE"})
    assert upper.status_code == 200, upper.text  # the SDK's exact-match check behind ours sees the lower-cased names
    assert foreign.status_code == 421 and "does not name this server" in error_message(foreign)
    assert mismatched.status_code == 403 and "HTTP://EVIL.EXAMPLE" in error_message(mismatched)
