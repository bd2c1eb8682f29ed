"""Fixtures for driving the real Claude Code CLI offline: the binary, an isolated HOME, the fake Messages API and a
tiny MCP server, plus a handle on a running `claude -p` process that tests wait on without sleeping.

The CLI is found through `AUTORESEARCH_CLAUDE_BIN` or `<repo>/.tools/claude-code/` (what
`scripts/install_claude_code.sh` installs); tests skip only when neither exists.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.agent_events import AgentEvent, EventKind
from harness.claude_launcher import ClaudeLaunchSpec, SessionLaunch, build_argv, build_env
from harness.claude_stream import parse_line

REPO_ROOT = Path(__file__).resolve().parents[2]
ECHO_SERVER = REPO_ROOT / "tests" / "fakes" / "echo_mcp_server.py"
INSTALLED_BIN = REPO_ROOT / ".tools" / "claude-code" / "node_modules" / ".bin" / "claude"


def find_claude_bin() -> Path | None:
    configured = os.environ.get("AUTORESEARCH_CLAUDE_BIN")
    if configured:
        return Path(configured)
    return INSTALLED_BIN if INSTALLED_BIN.exists() else None


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    found = find_claude_bin()
    if found is None:
        pytest.skip(f"Claude Code CLI not found: AUTORESEARCH_CLAUDE_BIN is unset and {INSTALLED_BIN} is absent; "
                    "run scripts/install_claude_code.sh")
    if not found.exists():
        pytest.skip(f"Claude Code CLI not found at AUTORESEARCH_CLAUDE_BIN={found}; fix the variable or unset it "
                    "and run scripts/install_claude_code.sh")
    return found


@pytest.fixture
def claude_home(tmp_path: Path) -> Path:
    """HOME for the CLI, so its ~/.claude.json and ~/.claude/ never touch the real user's."""
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def agent_workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


@pytest.fixture
def echo_mcp_config(tmp_path: Path) -> Path:
    """An --mcp-config file registering the echo server as `echo` (tools mcp__echo__echo, mcp__echo__fail)."""
    path = tmp_path / "mcp.json"
    config = {"mcpServers": {"echo": {"type": "stdio", "command": sys.executable, "args": [str(ECHO_SERVER)]}}}
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def clean_base_env(home: Path) -> dict[str, str]:
    """The test runner's environment without anything that would point the CLI at a real account or config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
    env["HOME"] = str(home)
    return env


def group_members(pgid: int) -> list[int]:
    """Pids of processes in group `pgid` that are not zombies, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


class ClaudeProcess:
    """A running `claude -p` whose stdout lines are collected, timestamped and parsed as they arrive."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.argv = argv
        self.lines: list[tuple[float, str]] = []
        self.stderr = ""
        self._changed = threading.Condition()
        self.popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append((time.monotonic(), line))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        self.stderr = self.popen.stderr.read()

    @property
    def events(self) -> list[AgentEvent]:
        with self._changed:
            lines = [line for _, line in self.lines]
        return [event for line in lines for event in parse_line(line)]

    def of_kind(self, kind: EventKind) -> list[AgentEvent]:
        return [e for e in self.events if e.kind is kind]

    def wait_for_event(self, predicate: Callable[[AgentEvent], bool], timeout: float) -> AgentEvent:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for _, line in self.lines:
                    for event in parse_line(line):
                        if predicate(event):
                            return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.popen.poll() is not None and not self._readers[0].is_alive()):
                    raise AssertionError(f"no matching event within {timeout} s; output so far:\n{self.transcript()}")
                self._changed.wait(remaining)

    def stays_silent(self, seconds: float) -> bool:
        """True when no stdout line arrives in the next `seconds` (the observation a stall detector makes)."""
        with self._changed:
            count = len(self.lines)
            return not self._changed.wait_for(lambda: len(self.lines) > count, timeout=seconds)

    def wait_exit(self, timeout: float) -> int:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"claude still running after {timeout} s; output:\n{self.transcript()}") from None
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def terminate_group(self, grace: float = 10.0) -> int:
        """SIGTERM the whole process group, SIGKILL it after `grace` seconds; returns claude's exit code."""
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            return self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            return self.popen.wait(grace)

    def transcript(self) -> str:
        with self._changed:
            out = "".join(line for _, line in self.lines)
        return f"argv: {self.argv}\nstdout:\n{out[-6000:]}\nstderr:\n{self.stderr[-2000:]}"


StartClaude = Callable[..., ClaudeProcess]


def wait_group_gone(pgid: int, timeout: float) -> list[int]:
    """Poll until no live process is left in group `pgid` or `timeout` passes; returns the pids still alive."""
    deadline = time.monotonic() + timeout
    while (members := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return members


@pytest.fixture
def live_group_members() -> Callable[[int], list[int]]:
    """The function listing the live (non-zombie) pids of a process group, to check a group was cleaned up."""
    return group_members


@pytest.fixture
def group_gone() -> Callable[[int, float], list[int]]:
    """The function waiting (bounded) for a process group to empty; returns the pids left."""
    return wait_group_gone


@pytest.fixture
def start_claude(claude_bin: Path, claude_home: Path, agent_workspace: Path,
                 echo_mcp_config: Path) -> Iterator[StartClaude]:
    """Start `claude -p` against a fake API at `base_url`, built by the harness's own launcher.

    Keyword arguments: `launch` (SessionLaunch), `env` (extra variables), `settings`, `allowed_tools`.
    Every process started is killed with its group at teardown.
    """
    started: list[ClaudeProcess] = []

    def start(base_url: str, launch: SessionLaunch, *, env: dict[str, str] | None = None,
              settings: Path | None = None, allowed_tools: list[str] | None = None) -> ClaudeProcess:
        extra = {"ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": "sk-ant-test-dummy",
                 "CLAUDE_CODE_MAX_RETRIES": "1", **(env or {})}
        spec = ClaudeLaunchSpec(claude_bin=claude_bin, workspace=agent_workspace, mcp_config=echo_mcp_config,
                                settings=settings,
                                allowed_tools=["mcp__echo"] if allowed_tools is None else allowed_tools,
                                extra_env=extra)
        process = ClaudeProcess(build_argv(spec, launch), build_env(spec, base=clean_base_env(claude_home)),
                                agent_workspace)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.popen.poll() is None:
            process.terminate_group(grace=5)
