"""The built-in API agent end to end: the real agent process, the real MCP server and engine on a real git workspace
with the tiny fake target, and the fake Messages API on 127.0.0.1 playing the model. First the agent alone, then
under the supervisor through `autoresearch run --agent api`, with a context reset and a stall on the way."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import cli
from harness.agent_events import EventKind
from harness.agents.api_events import parse_api_line
from server.audit import AuditLog
from server.config import load_config
from server.ledger import Ledger
from server.runstate import init_run
from tests.fakes.fake_anthropic import (
    FakeAnthropic,
    ScriptedRequest,
    Step,
    call_tool,
    error,
    hang,
    text,
    tool_result_text,
    tool_use,
)

pytestmark = pytest.mark.slow

HANDOFF_MARK = "You are continuing an autoresearch loop"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def run_ws(workspace: Path) -> Path:
    init_run(load_config(workspace), "t1")
    return workspace


@pytest.fixture
def api_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in [k for k in os.environ if k.startswith("ANTHROPIC_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-dummy")
    monkeypatch.setenv("AUTORESEARCH_API_RETRY_BASE_S", "0.05")
    monkeypatch.setenv("AUTORESEARCH_API_RETRY_CAP_S", "0.2")
    yield


def run_agent_alone(ws: Path, fake: FakeAnthropic, prompt: str = "Start the loop.") -> tuple[int, list[Any], str]:
    """The agent process as the supervisor starts it; returns (exit code, events, stderr)."""
    prompt_file = ws / "runs" / "t1" / "agent" / "prompt.txt"
    prompt_file.parent.mkdir(parents=True, exist_ok=True)
    prompt_file.write_text(prompt, encoding="utf-8")
    env = dict(os.environ, ANTHROPIC_BASE_URL=fake.url)
    proc = subprocess.run([sys.executable, "-m", "harness.agents.api_agent", "--workspace", str(ws), "--tag", "t1",
                           "--mode", "new", "--session-id", "s1", "--prompt-file", str(prompt_file)],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=120)
    events = [e for line in proc.stdout.splitlines() for e in parse_api_line(line)]
    assert all(e.kind is not EventKind.OTHER or e.subtype for e in events), f"stray stdout:\n{proc.stdout}"
    return proc.returncode, events, proc.stderr


def test_the_agent_alone_runs_baseline_edit_run_and_keep_through_the_locked_tools(run_ws: Path, api_env: None) -> None:
    script = [call_tool("__read_results", {}), call_tool("__run_experiment", {"description": "baseline"}),
              tool_use("edit_file", {"path": "train.py", "old_text": "LR = 0.1", "new_text": "LR = 0.3"}),
              call_tool("__run_experiment", {"description": "LR 0.1 -> 0.3"}), call_tool("__commit_or_revert", {}),
              text("Kept."), text("Still here."), text("Nothing more.")]
    with FakeAnthropic(script) as fake:
        code, events, stderr = run_agent_alone(run_ws, fake)

    assert code == 0, stderr[-3000:]
    results = [e for e in events if e.kind is EventKind.TOOL_RESULT]
    assert [e.tool_name for e in results] == ["mcp__autoresearch__read_results", "mcp__autoresearch__run_experiment",
                                              "edit_file", "mcp__autoresearch__run_experiment",
                                              "mcp__autoresearch__commit_or_revert"]
    assert not any(e.is_error for e in results), [e.text for e in results]
    final = events[-1]
    assert final.kind is EventKind.RESULT and final.subtype == "success" and final.cost_usd and final.cost_usd > 0
    experiments = Ledger(run_ws / "runs" / "t1").experiments()
    assert [(e.description, e.status, e.decision) for e in experiments] == [
        ("baseline", "ok", "keep"), ("LR 0.1 -> 0.3", "ok", "keep")]
    assert "LR = 0.3" in (run_ws / "train.py").read_text(encoding="utf-8")
    assert "experiment 2" in git(run_ws, "log", "-1", "--format=%s")
    assert git(run_ws, "status", "--porcelain") == ""
    saved = json.loads((run_ws / "runs" / "t1" / "agent" / "api-s1.json").read_text(encoding="utf-8"))
    assert len(saved["messages"]) == 2 * 8 and saved["cost_usd"] == pytest.approx(final.cost_usd)


def test_an_overloaded_api_is_ridden_out_by_the_agents_own_retries(run_ws: Path, api_env: None) -> None:
    script = [error(529, "overloaded_error"), error(529, "overloaded_error"), call_tool("__read_results", {}),
              text("ok"), text("ok"), text("ok")]
    with FakeAnthropic(script, counting="calls") as fake:
        code, events, stderr = run_agent_alone(run_ws, fake)

    assert code == 0, stderr[-3000:]
    retries = [e for e in events if e.kind is EventKind.API_RETRY]
    assert [e.api_error_status for e in retries] == [529, 529]
    assert [e.raw["attempt"] for e in retries] == [1, 2]
    assert [e.tool_name for e in events if e.kind is EventKind.TOOL_RESULT and not e.is_error] == [
        "mcp__autoresearch__read_results"]
    assert len(fake.main_requests) == 6


def test_sigterm_mid_experiment_closes_the_server_so_the_experiment_is_recorded_then_reports_a_result(
        run_ws: Path, api_env: None) -> None:
    script = [call_tool("__run_experiment", {"description": "baseline"}),
              tool_use("edit_file", {"path": "train.py", "old_text": 'BEHAVIOUR = "normal"',
                                     "new_text": 'BEHAVIOUR = "hang"'}),
              call_tool("__run_experiment", {"description": "a run that never ends"})]
    prompt_file = run_ws / "runs" / "t1" / "agent" / "prompt.txt"
    prompt_file.parent.mkdir(parents=True, exist_ok=True)
    prompt_file.write_text("go", encoding="utf-8")
    inflight = run_ws / "runs" / "t1" / "inflight.json"
    with FakeAnthropic(script) as fake:
        proc = subprocess.Popen([sys.executable, "-m", "harness.agents.api_agent", "--workspace", str(run_ws), "--tag",
                                 "t1", "--mode", "new", "--session-id", "s1", "--prompt-file", str(prompt_file)],
                                cwd=run_ws, env=dict(os.environ, ANTHROPIC_BASE_URL=fake.url),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 90
            while not (inflight.exists() and "never ends" in inflight.read_text(encoding="utf-8")):
                assert proc.poll() is None and time.monotonic() < deadline, "experiment 2 never started"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()

    events = [e for line in out.splitlines() for e in parse_api_line(line)]
    assert events[-1].kind is EventKind.RESULT and events[-1].terminal_reason == "interrupted", err[-2000:]
    assert proc.returncode != 0
    experiments = Ledger(run_ws / "runs" / "t1").experiments()
    assert [e.description for e in experiments] == ["baseline", "a run that never ends"]
    assert experiments[1].status != "ok" and not inflight.exists()


# ---- under the supervisor ----

class PlayedAgent:
    """A stand-in model that plays the loop from what the tools said, the way program.md asks.

    It decides from the conversation alone (so a resumed or fresh session simply carries on), reads train.py from
    disk to write an exact edit, and hangs once right after a decision, when no experiment is in flight.
    """

    def __init__(self, ws: Path) -> None:
        self.ws = ws
        self.hung = False
        self.values = iter(["0.2", "0.3", "0.25", "0.35", "0.28", "0.32", "0.27", "0.31", "0.29", "0.33"])

    def __call__(self, request: ScriptedRequest) -> Step:
        last_tool, result = self._last_call(request)
        if last_tool is None or last_tool.endswith("read_results"):
            if last_tool is None:
                return tool_use(request.find_tool("__read_results"), {"last_n": 5})
            state = json.loads(result) if result.startswith("{") else {}
            if state.get("pending_id"):
                return tool_use(request.find_tool("__commit_or_revert"), {})
            if state.get("baseline") is None:
                return tool_use(request.find_tool("__run_experiment"), {"description": "baseline"})
            return self._edit()
        if last_tool == "edit_file":
            value = re.search(r"^LR = (\S+)", (self.ws / "train.py").read_text(encoding="utf-8"), re.M)
            return tool_use(request.find_tool("__run_experiment"), {"description": f"LR {value and value[1]}"})
        if last_tool.endswith("run_experiment"):
            decided = result.startswith("{") and json.loads(result).get("decision") != "pending"  # the baseline
            return self._edit() if decided else tool_use(request.find_tool("__commit_or_revert"), {})
        if last_tool.endswith("commit_or_revert") and not self.hung:
            self.hung = True
            return hang()
        return self._edit()

    def _edit(self) -> Step:
        line = re.search(r"^LR = \S+", (self.ws / "train.py").read_text(encoding="utf-8"), re.M)
        assert line is not None
        return tool_use("edit_file", {"path": "train.py", "old_text": line[0], "new_text": f"LR = {next(self.values)}"})

    @staticmethod
    def _last_call(request: ScriptedRequest) -> tuple[str | None, str]:
        messages = request.messages
        for index in range(len(messages) - 1, -1, -1):
            message = messages[index]
            if message["role"] != "assistant" or not isinstance(message["content"], list):
                continue
            calls = [b for b in message["content"] if b.get("type") == "tool_use"]
            if not calls:
                return None, ""
            results = request.tool_results()
            return calls[-1]["name"], tool_result_text(results[-1]) if results else ""
        return None, ""


def test_a_supervised_api_agent_runs_experiments_survives_a_context_reset_and_a_stall_and_stops_at_the_limit(
        run_ws: Path, api_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("STARTSECS", "1"), ("BACKOFF_BASE_S", "0.2"), ("BACKOFF_CAP_S", "1"),
                        ("STOP_GRACE_S", "10"), ("INFLIGHT_GRACE_S", "5")):
        monkeypatch.setenv(f"AUTORESEARCH_POLICY_{name}", value)
    monkeypatch.setenv("AUTORESEARCH_API_MAX_CONTEXT_TOKENS", "1200")
    with FakeAnthropic(PlayedAgent(run_ws)) as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        code = cli.main(["run", "--agent", "api", "--workspace", str(run_ws), "--tag", "t1", "--resume",
                         "--max-experiments", "4", "--stall-timeout", "3", "--hours", "0.05"])
        requests = fake.main_requests

    run_dir = run_ws / "runs" / "t1"
    records = AuditLog(run_dir / "audit.jsonl").records()
    events = [(r.seq, r.event) for r in records if r.actor == "supervisor"]
    names = [name for _, name in events]
    assert code == 0, names
    end = [r for r in records if r.event == "run_end"][-1]
    assert end.summary and end.summary["state"] == "STOPPED" and "4 experiments" in end.summary["reason"]

    experiments = Ledger(run_dir).experiments()
    # The supervisor checks the limit between ticks; this stand-in model starts its next experiment within
    # milliseconds of the last, so one more may slip in before the stop (a real model takes seconds).
    assert len(experiments) >= 4 and experiments[0].description == "baseline"
    assert all(e.status == "ok" for e in experiments[:4])
    assert any(e.decision == "keep" and not e.is_baseline for e in experiments)

    stall_seq = next(seq for seq, name in events if name == "stall")
    assert any(name in ("resume", "fresh") and seq > stall_seq for seq, name in events)
    assert any(r.tool == "run_experiment" and r.seq > stall_seq for r in records if r.actor == "server")
    resumed = [r.body["messages"] for r in requests if "The session was interrupted" in json.dumps(r.body["messages"])]
    assert resumed and len(resumed[0]) > 1, "the resumed session did not carry its saved conversation"

    assert "fresh" in names
    fresh_firsts = [r.body for r in requests if len(r.body["messages"]) == 1
                    and HANDOFF_MARK in json.dumps(r.body["messages"][0])]
    assert fresh_firsts, "no fresh session began with the handoff"

    assert cli.main(["audit", "verify", "--workspace", str(run_ws), "--tag", "t1"]) == 0
