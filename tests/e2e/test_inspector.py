"""A third-party MCP client, the MCP Inspector's command-line mode, against `python -m server serve` on stdio and HTTP.

The Inspector is found through `AUTORESEARCH_INSPECTOR_BIN` or `<repo>/.tools/inspector/` (what
`scripts/install_inspector.sh` installs); tests skip only when neither exists.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.audit import AuditLog
from server.config import load_config
from server.runstate import init_run

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALLED_BIN = REPO_ROOT / ".tools" / "inspector" / "node_modules" / ".bin" / "mcp-inspector"
TOKEN = "inspector-token-0123456789abcdef"

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def inspector_bin() -> Path:
    configured = os.environ.get("AUTORESEARCH_INSPECTOR_BIN")
    found = Path(configured) if configured else INSTALLED_BIN
    if not found.exists():
        pytest.skip(f"MCP Inspector not found (AUTORESEARCH_INSPECTOR_BIN unset and {INSTALLED_BIN} absent); "
                    "run scripts/install_inspector.sh")
    return found


@pytest.fixture
def run_workspace(workspace: Path) -> Path:
    init_run(load_config(workspace), "t1")
    return workspace


def inspect(inspector: Path, target: list[str], *args: str) -> dict[str, Any]:
    """One Inspector CLI call's JSON output; the test's own HOME keeps the Inspector's catalog out of the user's."""
    argv = [str(inspector), "--cli", *target, *args]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 0, f"{argv} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return json.loads(done.stdout)


def check_tools_and_read_results(inspector: Path, target: list[str]) -> None:
    listed = inspect(inspector, target, "--method", "tools/list")
    tools = {tool["name"]: tool for tool in listed["tools"]}
    assert set(tools) == {"run_experiment", "read_results", "commit_or_revert"}
    assert tools["run_experiment"]["inputSchema"]["required"] == ["description"]
    assert tools["read_results"]["inputSchema"]["properties"]["last_n"]["maximum"] == 200
    assert set(tools["commit_or_revert"]["inputSchema"]["properties"]) == {"experiment_id", "prefer"}
    called = inspect(inspector, target, "--method", "tools/call", "--tool-name", "read_results",
                     "--tool-arg", "last_n=5")
    assert called["isError"] is False
    assert called["structuredContent"]["tag"] == "t1"
    assert called["structuredContent"]["counts"]["total"] == 0


def test_the_inspector_lists_and_calls_the_tools_over_stdio(inspector_bin: Path, run_workspace: Path) -> None:
    target = [sys.executable, "-m", "server", "serve", "--workspace", str(run_workspace), "--tag", "t1"]
    check_tools_and_read_results(inspector_bin, ["--cwd", str(REPO_ROOT), *target])


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def http_server(run_workspace: Path) -> Iterator[str]:
    """`python -m server serve --http` with a token on a free loopback port, until it accepts; SIGTERM after."""
    port = _free_loopback_port()
    env = {**os.environ, "AUTORESEARCH_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--workspace", str(run_workspace), "--tag", "t1",
                             "--http", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, f"the server exited with {proc.returncode}: {proc.communicate()[1][-2000:]}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the HTTP server did not accept connections within 30 s"
            time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells how it ended
        assert proc.returncode in (0, -signal.SIGTERM), f"the server exited {proc.returncode}: {err[-2000:]}"
        server_log = (load_config(run_workspace).runs_dir / "t1" / "server.log").read_text(encoding="utf-8")
        assert "Application shutdown complete" in server_log
        assert f"http://127.0.0.1:{port}/mcp" in err, "the address is shown on stderr"
        assert TOKEN not in out + err + server_log, "a token passed in is never echoed"


def test_the_inspector_lists_and_calls_the_tools_over_http_with_the_token(inspector_bin: Path,
                                                                         http_server: str) -> None:
    target = [http_server, "--transport", "http", "--header", f"Authorization: Bearer {TOKEN}"]
    check_tools_and_read_results(inspector_bin, target)


def test_the_inspector_without_the_token_shows_the_servers_own_message(inspector_bin: Path, http_server: str,
                                                                       tmp_path: Path) -> None:
    argv = [str(inspector_bin), "--cli", http_server, "--transport", "http", "--method", "tools/list"]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(tmp_path)})
    output = done.stdout + done.stderr
    assert done.returncode != 0 and '"tools"' not in done.stdout
    assert "missing bearer token" in output and "Authorization: Bearer <token>" in output, output[-2000:]
    assert "OAuth requires" not in output, "a 401 would have sent the Inspector into an OAuth flow instead"


def test_the_inspector_with_a_wrong_token_shows_the_servers_own_message(inspector_bin: Path, http_server: str,
                                                                        tmp_path: Path) -> None:
    argv = [str(inspector_bin), "--cli", http_server, "--transport", "http", "--method", "tools/list",
            "--header", "Authorization: Bearer " + "w" * len(TOKEN)]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(tmp_path)})
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "wrong bearer token" in output, output[-2000:]


def test_the_inspector_sees_an_unknown_argument_refused_with_the_servers_message(inspector_bin: Path,
                                                                                 run_workspace: Path) -> None:
    target = ["--cwd", str(REPO_ROOT), sys.executable, "-m", "server", "serve", "--workspace", str(run_workspace),
              "--tag", "t1"]
    argv = [str(inspector_bin), "--cli", *target, "--method", "tools/call", "--tool-name", "read_results",
            "--tool-arg", "last_n=5", "--tool-arg", "force=true"]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, "the Inspector exits non-zero on an is_error result"
    called = json.loads(done.stdout)
    assert called["isError"] is True
    assert "read_results does not take 'force' (sent true)" in called["content"][0]["text"]
    refused = [r for r in AuditLog(load_config(run_workspace).runs_dir / "t1" / "audit.jsonl").records()]
    assert [(r.tool, r.status, r.args) for r in refused] == [("read_results", "refused", {"last_n": 5, "force": True})]
