"""Helpers for driving `autoresearch run --agent claude` end to end: the real CLI, the fake Messages API, a real run.

Three pieces, shared by the harness end-to-end tests:

- `build_harness_workspace`: the tiny fake target as a git repository, plus what a real project carries for Claude
  Code (a copy of this repository's `.claude/` and `program.md`) and a `.venv` link to this interpreter's environment,
  so the hook commands in `.claude/settings.json` (`.venv/bin/python -m harness.hooks ...`) run as they would for a
  user.
- `Brain`: a scripted model for the fake API. It reads the tool result it was sent and picks the next tool call the way
  the loop in `program.md` asks (read, baseline, edit, run, decide), so it survives restarts and resumes the way a
  real model does. Scenarios queue extra steps up front (`prelude`) or when a condition first holds (`Trigger`).
- `HarnessProcess`: the harness as a subprocess in its own process group, with an isolated HOME, short supervisor
  timings, and bounded waits on the run's files (the ledger, the audit chain, supervisor.json).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.jsonl import read_records
from server.ledger import Experiment, Ledger
from tests.fakes.fake_anthropic import Reply, ScriptedRequest, Step, text, tool_result_text, tool_use
from tests.helpers import git, make_workspace

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN = "train.py"
LOCKED = "prepare.py"
METRIC = "score"
AGENT_MARK_VAR = "AUTORESEARCH_AGENT_MARK"

# Supervisor timings compressed for tests (seconds): a session counts as started after 2 s, backoffs are short, a
# stopping agent gets 5 s before SIGKILL.
FAST_POLICY = {
    "AUTORESEARCH_POLICY_STARTSECS": "2",
    "AUTORESEARCH_POLICY_BACKOFF_BASE_S": "0.5",
    "AUTORESEARCH_POLICY_BACKOFF_CAP_S": "2",
    "AUTORESEARCH_POLICY_STOP_GRACE_S": "5",
    "AUTORESEARCH_POLICY_INFLIGHT_GRACE_S": "2",
}


# ---- the workspace ----

def build_harness_workspace(root: Path, *, train_constants: Mapping[str, str] | None = None) -> Path:
    """The fake target as a committed git repository with `.claude/`, `program.md` and a `.venv` link; returns it.

    `train_constants` rewrites `NAME = value` lines of train.py before the commit (the baseline the run starts from).
    """
    from tests.helpers import set_constant

    ws = make_workspace(root)
    shutil.copytree(REPO_ROOT / ".claude", ws / ".claude", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO_ROOT / "program.md", ws / "program.md")
    (ws / ".venv").symlink_to(Path(sys.prefix))
    with (ws / ".gitignore").open("a", encoding="utf-8") as fh:
        fh.write(".venv\n")
    for name, value in (train_constants or {}).items():
        set_constant(ws / TRAIN, name, value)
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "harness files: .claude, program.md")
    return ws.resolve()


# ---- the scripted model ----

@dataclass(frozen=True)
class ToolOutcome:
    """One tool call the model made and the result the CLI sent back for it."""

    id: str
    name: str
    input: Mapping[str, Any]
    text: str
    is_error: bool

    def data(self) -> dict[str, Any] | None:
        """The result as JSON (MCP tools answer with their structured content), or None when it is not JSON."""
        try:
            value = json.loads(self.text)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


@dataclass
class Trigger:
    """When `when(brain)` first holds, `steps` are answered next, one per request, before the loop goes on."""

    when: Callable[[Brain], bool]
    steps: Sequence[Step]
    fired_at: int | None = None  # the index of the request that fired it


@dataclass(frozen=True)
class EditPlan:
    """One change the brain makes to train.py with the Edit tool."""

    old: str
    new: str
    description: str


class Brain:
    """A scripted model: queued steps first, then the autoresearch loop driven by the last tool result.

    Everything it saw is kept for assertions: `outcomes` (each tool call with its result, once), `prompts` (the text
    of each user message that was not a tool result: start and resume prompts, Stop hook feedback).
    """

    def __init__(self, workspace: Path, *, prelude: Iterable[Step] = (), triggers: Iterable[Trigger] = (),
                 edits: Iterable[EditPlan] = ()) -> None:
        self.workspace = workspace
        self.queue: deque[Step] = deque(prelude)
        self.triggers = list(triggers)
        self.edits = deque(edits)
        self.outcomes: list[ToolOutcome] = []
        self.prompts: list[str] = []
        self.requests = 0
        self._seen: set[str] = set()
        self._reverted: set[int] = set()
        self._lock = threading.Lock()

    # -- what tests read --

    def results_of(self, name_suffix: str) -> list[ToolOutcome]:
        return [o for o in self.outcomes if o.name.endswith(name_suffix)]

    def experiments_returned(self) -> int:
        """run_experiment calls that came back with a result (not an error)."""
        return sum(1 for o in self.results_of("__run_experiment") if not o.is_error)

    # -- the fake API's callable step --

    def __call__(self, request: ScriptedRequest) -> Step:
        with self._lock:
            self.requests += 1
            latest = self._absorb(request)
            for trigger in self.triggers:
                if trigger.fired_at is None and trigger.when(self):
                    trigger.fired_at = self.requests
                    self.queue.extend(trigger.steps)
            if self.queue:
                return self.queue.popleft()
            return self._next(latest)

    def _absorb(self, request: ScriptedRequest) -> ToolOutcome | None:
        """Record the results and prompts this request carries; return the outcome of the latest tool call, if any."""
        calls: dict[str, tuple[str, Mapping[str, Any]]] = {}
        for message in request.messages:
            content = message.get("content")
            if message.get("role") == "assistant" and isinstance(content, list):
                for block in content:
                    if isinstance(block, dict) and block.get("type") == "tool_use":
                        calls[str(block.get("id"))] = (str(block.get("name")), block.get("input") or {})
        last_user = next((m for m in reversed(request.messages) if m.get("role") == "user"), None)
        content = last_user.get("content") if last_user else None
        blocks = content if isinstance(content, list) else [{"type": "text", "text": str(content or "")}]
        results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
        if not results:
            words = " ".join(str(b.get("text", "")) for b in blocks if isinstance(b, dict) and b.get("type") == "text")
            self.prompts.append(words)
            return None
        latest = None
        for block in results:
            use_id = str(block.get("tool_use_id"))
            name, args = calls.get(use_id, ("?", {}))
            latest = ToolOutcome(use_id, name, args, tool_result_text(block), block.get("is_error") is True)
            if use_id not in self._seen:
                self._seen.add(use_id)
                self.outcomes.append(latest)
        return latest

    # -- the loop of program.md --

    def _next(self, last: ToolOutcome | None) -> Reply:
        if last is None:
            return self._mcp("read_results", {})
        name = last.name
        if name.endswith("__read_results"):
            return self._after_read_results(last.data() or {})
        if name == "Read" and str(last.input.get("file_path", "")).endswith(TRAIN) and not last.is_error:
            return self._edit(last.text)
        if name in ("Edit", "Write", "MultiEdit") and str(last.input.get("file_path", "")).endswith(TRAIN):
            if last.is_error:
                return self.read_train()
            return self._mcp("run_experiment", {"description": self._last_description})
        if name.endswith("__run_experiment"):
            data = last.data() or {}
            if data.get("decision") == "pending":
                return self._mcp("commit_or_revert", {})
        return self._mcp("read_results", {})

    def _after_read_results(self, data: Mapping[str, Any]) -> Reply:
        if data.get("in_flight_id") is not None:
            return self._mcp("read_results", {})
        if data.get("pending_id") is not None:
            return self._mcp("commit_or_revert", {})
        rows = data.get("experiments") or []
        last_row = rows[-1] if rows else None
        if last_row and last_row.get("status") != "ok" and last_row.get("id") not in self._reverted:
            self._reverted.add(last_row.get("id"))
            return self._mcp("commit_or_revert", {"prefer": "revert"})  # back to the best code after a failure
        if data.get("baseline") is None:
            return self._mcp("run_experiment", {"description": "baseline"})
        return self.read_train()

    _last_description = "an edit"

    def _edit(self, read_text: str) -> Reply:
        if self.edits:
            plan = self.edits.popleft()
        else:
            match = re.search(r"^\s*(?:\d+[\t→])?LR = ([0-9.]+)", read_text, re.M)
            current = match.group(1) if match else "0.1"
            new = "0.2" if current == "0.3" else "0.3"
            plan = EditPlan(f"LR = {current}", f"LR = {new}", f"LR {current} -> {new}")
        self._last_description = plan.description
        return tool_use("Edit", {"file_path": str(self.workspace / TRAIN), "old_string": plan.old,
                                 "new_string": plan.new})

    def read_train(self) -> Reply:
        return tool_use("Read", {"file_path": str(self.workspace / TRAIN)})

    @staticmethod
    def _mcp(tool: str, args: Mapping[str, Any]) -> Reply:
        return tool_use(f"mcp__autoresearch__{tool}", args)


def stop_talking(words: str = "I have finished; stopping here.") -> Reply:
    """A turn that ends with text and no tool call: the model trying to stop."""
    return text(words)


# ---- the harness as a process ----

def harness_env(fake_url: str, home: Path, claude_bin: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a user would run the harness with, offline: the fake API, an isolated HOME, short timings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE", "AUTORESEARCH_"))}
    env.update({
        "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1",
        "ANTHROPIC_BASE_URL": fake_url, "ANTHROPIC_API_KEY": "sk-ant-test-dummy",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "CLAUDE_CODE_MAX_RETRIES": "1", "API_TIMEOUT_MS": "60000",
        "AUTORESEARCH_CLAUDE_BIN": str(claude_bin), **FAST_POLICY,
    })
    env.update(extra or {})
    return env


class HarnessProcess:
    """`python -m harness.cli run --agent claude ...` in its own process group, output kept in a log file."""

    def __init__(self, workspace: Path, tag: str, env: Mapping[str, str], args: Sequence[str] = (),
                 *, log_dir: Path) -> None:
        self.workspace = workspace
        self.tag = tag
        self.env = dict(env)
        self.run_dir = workspace / "runs" / tag
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"harness-{tag}-{time.monotonic_ns()}.log"
        self.argv = [sys.executable, "-m", "harness.cli", "run", "--agent", "claude", "--workspace", str(workspace),
                     "--tag", tag, *args]
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(self.argv, cwd=workspace, env=dict(env), stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    # -- process control --

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the harness was still running after {timeout} s\n{self.describe()}") from None

    def send(self, sig: signal.Signals) -> None:
        os.kill(self.popen.pid, sig)

    def kill_hard(self) -> None:
        """kill -9 the harness process alone (not its group): what it started keeps running, as after a crash."""
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    # -- the run's files --

    def supervisor(self) -> dict[str, Any]:
        try:
            data = json.loads((self.run_dir / "supervisor.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def audit(self) -> list[dict[str, Any]]:
        return read_records(self.run_dir / "audit.jsonl")

    def experiments(self) -> list[Experiment]:
        return Ledger(self.run_dir, metric_name=METRIC).experiments()

    def ledger_lines(self) -> list[dict[str, Any]]:
        return read_records(self.run_dir / "experiments.jsonl")

    def in_flight(self) -> bool:
        return (self.run_dir / "inflight.json").exists()

    def cli(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Another `autoresearch` command on this run (audit, status, ...), run to completion, with the harness's
        environment (the same audit key folder) unless another is given."""
        return subprocess.run([sys.executable, "-m", "harness.cli", *args, "--workspace", str(self.workspace),
                               "--tag", self.tag], cwd=self.workspace, env=dict(env) if env else self.env,
                              capture_output=True, text=True, timeout=60)

    def describe(self) -> str:
        """What to print when a wait fails: the harness output, supervisor.json and the audit events."""
        try:
            output = self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            output = "(no output)"
        events = [f"{r.get('actor')}/{r.get('event')}/{r.get('tool') or ''}/{r.get('status')}" for r in self.audit()]
        return (f"argv: {' '.join(self.argv)}\nexit: {self.popen.poll()}\noutput:\n{output}\n"
                f"supervisor.json: {json.dumps(self.supervisor())[:1500]}\naudit: {events[-60:]}\n"
                f"ledger: {[(e.id, e.status, e.decision) for e in self.experiments()]}")

    def wait_until(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll `condition` until it returns something truthy; fail after `timeout` s naming `what`."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.describe()}")
            time.sleep(0.1)


def audit_events(records: Iterable[Mapping[str, Any]], actor: str | None = None,
                 event: str | None = None) -> list[Mapping[str, Any]]:
    return [r for r in records
            if (actor is None or r.get("actor") == actor) and (event is None or r.get("event") == event)]


def processes_with_env(needle: str) -> list[int]:
    """Live pids whose environment holds the entry `needle` (e.g. "AUTORESEARCH_AGENT_MARK=<mark>")."""
    wanted = needle.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text()
        except OSError:
            continue
        if state[state.rfind(")") + 2:].split()[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def kill_everything_of(workspace: Path, harnesses: Iterable[HarnessProcess]) -> None:
    """Teardown: the harnesses' groups and every process that carries this workspace in its environment."""
    for harness in harnesses:
        if harness.popen.poll() is None:
            try:
                os.killpg(harness.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            harness.popen.wait(10)
    for pid in processes_with_env(f"AUTORESEARCH_WORKSPACE={workspace}"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


__all__ = [
    "AGENT_MARK_VAR", "Brain", "EditPlan", "FAST_POLICY", "HarnessProcess", "LOCKED", "TRAIN", "ToolOutcome",
    "Trigger", "audit_events", "build_harness_workspace", "harness_env", "kill_everything_of", "processes_with_env",
    "stop_talking",
]
