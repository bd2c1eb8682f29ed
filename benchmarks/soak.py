"""A compressed, seeded soak of the whole stack: many experiments with faults injected at random, then the audit.

Usage: python benchmarks/soak.py [--seed N] [--experiments 50] [--keep DIR] [--timeout SECONDS]

What runs is what runs overnight: `autoresearch run --agent claude` as a subprocess (supervisor, file guard, the real
Claude Code CLI, its stdio MCP server, the engine, the runner, the pinned evaluation) on a git workspace holding the
tiny fake target. The model is the fake Messages API on 127.0.0.1, whose "brain" plays the loop the way program.md
asks (read_results -> Read -> Edit train.py -> run_experiment -> commit_or_revert -> ...). The brain decides from the
request alone (the last tool result, the file on disk), never from a counter, so a killed, resumed or fresh session
simply carries on.

A seeded plan injects, at chosen experiment numbers: API errors (529/500) outlasting the CLI's own retries, API
streams that hang (the supervisor's stall detector must restart the agent), an agent that tries to stop (the Stop
hook keeps it going), crashing experiments (BEHAVIOUR crash or nan), hanging ones (hang, fork_hang: the hard limit
must kill them and their escaped children), tampering (a train.py that rewrites prepare.py, an Edit of prepare.py
that must be refused, a train.py that prints a fake score), and agent death (kill -9 of the claude pid at a random
moment). Afterwards it checks that no record was lost and nothing was left behind, prints the figures and exits 1 when
an invariant fails. Timing knobs are compressed (hard limit 3 s, stall timeout 8 s, backoff 0.5-2 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from server.ledger import Experiment, Ledger  # noqa: E402
from tests.fakes.fake_anthropic import (  # noqa: E402
    FakeAnthropic,
    ScriptedRequest,
    Step,
    error,
    hang,
    text,
    tool_result_text,
    tool_use,
)

log = logging.getLogger(__name__)

FAKE_TARGET = REPO_ROOT / "tests" / "fixtures" / "fake_target"
CLAUDE_BIN = REPO_ROOT / ".tools" / "claude-code" / "node_modules" / ".bin" / "claude"
TAG = "soak"
AGENT_MARK_VAR = "AUTORESEARCH_AGENT_MARK"
PROC_MARK_VAR = "AUTORESEARCH_PROC_MARK"

# Compressed timings: every fault costs seconds, not minutes.
HARD_LIMIT_S = 3.0
STALL_TIMEOUT_S = 8.0
POLICY_ENV = {
    "AUTORESEARCH_POLICY_INFLIGHT_GRACE_S": "2",
    "AUTORESEARCH_POLICY_BACKOFF_BASE_S": "0.5",
    "AUTORESEARCH_POLICY_BACKOFF_CAP_S": "2",
    "AUTORESEARCH_POLICY_STARTSECS": "2",
    "AUTORESEARCH_POLICY_STOP_GRACE_S": "5",
}
TOML = f"""\
mutable = ["train.py"]
locked = ["prepare.py"]
command = ["{{python}}", "train.py"]
metric = "score"
direction = "minimize"
min_improvement = 0.0
time_budget_s = 1
hard_timeout_s = {HARD_LIMIT_S:g}

[evaluate]
mode = "checkpoint"
command = ["{{python}}", "{{pinned}}/prepare.py", "evaluate", "{{checkpoint}}"]
timeout_s = 10
"""

# Faults per 50 experiments; the plan scales them with --experiments (at least one of each).
FAULTS_PER_50 = {
    "agent_death": 5, "api_error": 4, "api_hang": 3, "stop_attempt": 2,
    "exp_crash": 4, "exp_hang": 3, "tamper": 3, "edit_locked": 3, "lie": 1,
}
REQUEST_FAULTS = ("api_error", "api_hang", "stop_attempt")  # answered instead of the brain's next step
EDIT_FAULTS = ("exp_crash", "exp_hang", "tamper", "lie")  # an Edit that sets BEHAVIOUR


# ---- the fault plan ----

@dataclass
class Fault:
    kind: str
    slot: int  # fires at the first chance once the next experiment id reaches this
    detail: str = ""
    fired_at: float | None = None  # monotonic time it was injected
    recorded_before: int = 0  # experiments in the ledger when it was injected


@dataclass
class FaultPlan:
    faults: list[Fault]
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, rng: random.Random, experiments: int) -> FaultPlan:
        """Each kind `max(1, round(n * experiments / 50))` times, at slots drawn from 3 .. experiments - 3."""
        first, last = 3, max(3, experiments - 3)
        faults = [Fault(kind, rng.randint(first, last)) for kind, per50 in FAULTS_PER_50.items()
                  for _ in range(max(1, round(per50 * experiments / 50)))]
        faults.sort(key=lambda f: (f.slot, f.kind))
        return cls(faults)

    def due(self, kinds: tuple[str, ...], next_id: int) -> Fault | None:
        with self.lock:
            return next((f for f in self.faults if f.kind in kinds and f.fired_at is None and f.slot <= next_id), None)

    def fire(self, fault: Fault, recorded: int, detail: str = "") -> None:
        with self.lock:
            fault.fired_at, fault.recorded_before, fault.detail = time.monotonic(), recorded, detail
        log.info("fault %s injected at experiment %d (%s)", fault.kind, recorded + 1, detail)

    def fired(self) -> list[Fault]:
        with self.lock:
            return [f for f in self.faults if f.fired_at is not None]


# ---- the workspace ----

def build_workspace(root: Path) -> Path:
    """The fake target with a short hard limit, the project's .claude/ and program.md, and a .venv for the hooks."""
    ws = root / "ws"
    ws.mkdir(parents=True)
    for name in ("train.py", "prepare.py"):
        shutil.copy2(FAKE_TARGET / name, ws / name)
    (ws / "autoresearch.toml").write_text(TOML, encoding="utf-8")
    shutil.copytree(REPO_ROOT / ".claude", ws / ".claude", ignore=shutil.ignore_patterns("settings.local.json"))
    shutil.copy2(REPO_ROOT / "program.md", ws / "program.md")
    (ws / ".venv").symlink_to(REPO_ROOT / ".venv")  # the hook commands run `.venv/bin/python -m harness.hooks`
    (ws / ".gitignore").write_text("__pycache__/\nruns/\n.venv\n", encoding="utf-8")
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "soak@example.com"],
                 ["config", "user.name", "soak"], ["add", "-A"], ["commit", "-q", "-m", "fake target"]):
        _git(ws, *args)
    return ws


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}  # no user hooks or signing
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


# ---- the brain: the fake model's side of the loop ----

@dataclass(frozen=True)
class LastCall:
    """The agent's last tool call and what came back, read from the request (None name: a new turn or session)."""

    name: str | None
    input: dict[str, Any]
    result: str
    is_error: bool


def last_call(request: ScriptedRequest) -> LastCall:
    """Claude Code may follow a tool result with reminders of its own ("file changed on disk", a hook's context), so
    the latest tool result after the last assistant turn counts; none there means a new turn or a new session."""
    messages = request.messages
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") == "assistant":
            return LastCall(None, {}, "", False)
        content = message.get("content")
        results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"] \
            if isinstance(content, list) else []
        if results:
            return _with_its_call(messages[:index], results[-1])
    return LastCall(None, {}, "", False)


def _with_its_call(earlier: list[dict[str, Any]], block: dict[str, Any]) -> LastCall:
    for message in reversed(earlier):
        if message.get("role") != "assistant" or not isinstance(message.get("content"), list):
            continue
        for use in message["content"]:
            if isinstance(use, dict) and use.get("type") == "tool_use" and use.get("id") == block.get("tool_use_id"):
                return LastCall(str(use.get("name")), dict(use.get("input") or {}), tool_result_text(block),
                                bool(block.get("is_error")))
        break
    return LastCall(None, {}, tool_result_text(block), bool(block.get("is_error")))


def last_edit_description(request: ScriptedRequest) -> str:
    """What the latest Edit of train.py in the conversation changed, as a run description."""
    for message in reversed(request.messages):
        if message.get("role") != "assistant" or not isinstance(message.get("content"), list):
            continue
        for use in reversed(message["content"]):
            if isinstance(use, dict) and use.get("type") == "tool_use" and use.get("name") == "Edit" \
                    and str(use.get("input", {}).get("file_path", "")).endswith("train.py"):
                return "set " + str(use["input"].get("new_string", "")).split("#")[0].strip()
    return "carry on with the current train.py"


def _json(textual: str) -> dict[str, Any]:
    try:
        value = json.loads(textual)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class Brain:
    """Plays the loop from each request's last tool result; injects the plan's request and edit faults."""

    def __init__(self, ws: Path, rng: random.Random, plan: FaultPlan) -> None:
        self.ws, self.rng, self.plan = ws, rng, plan
        self.ledger = Ledger(ws / "runs" / TAG, metric_name="score")
        self._lock = threading.Lock()
        self._outage_left = 0  # API errors still to answer in the current outage

    def __call__(self, request: ScriptedRequest) -> Step:
        with self._lock:
            if self._outage_left > 0:
                self._outage_left -= 1
                return self._api_error()
            recorded = self._recorded()
            fault = self.plan.due(REQUEST_FAULTS, recorded + 1)
            if fault is not None:
                return self._request_fault(fault, recorded)
            step, pause = self._next(request, recorded)
        if pause:
            time.sleep(pause)  # another server's experiment is finishing; do not spin on refusals
        return step

    def _recorded(self) -> int:
        try:
            return len(self.ledger.experiments())
        except Exception:  # a ledger being written is read again on the next request
            return 0

    def _api_error(self) -> Step:
        status = self.rng.choice((529, 500))
        return error(status, "overloaded_error" if status == 529 else "api_error", "injected by the soak")

    def _request_fault(self, fault: Fault, recorded: int) -> Step:
        if fault.kind == "api_error":
            length = self.rng.randint(2, 4)  # the CLI tries twice (CLAUDE_CODE_MAX_RETRIES=1): 2+ end its session
            self._outage_left = length - 1
            self.plan.fire(fault, recorded, f"{length} errors in a row")
            return self._api_error()
        if fault.kind == "api_hang":
            self.plan.fire(fault, recorded, "stream stalls after message_start")
            return hang(after_start=True)
        self.plan.fire(fault, recorded, "the model ends its turn")
        return text("I have run enough experiments; stopping here.")

    def _next(self, request: ScriptedRequest, recorded: int) -> tuple[Step, float]:
        call = last_call(request)
        tool = (call.name or "").rsplit("__", 1)[-1]
        run = lambda description: tool_use(request.find_tool("__run_experiment"),  # noqa: E731
                                           {"description": description})
        decide = lambda prefer: tool_use(request.find_tool("__commit_or_revert"),  # noqa: E731
                                         {} if prefer is None else {"prefer": prefer})
        results = lambda: tool_use(request.find_tool("__read_results"), {"last_n": 3})  # noqa: E731
        read = tool_use("Read", {"file_path": str(self.ws / "train.py")})
        if tool == "read_results" and not call.is_error:
            state = _json(call.result)
            if state.get("pending_id"):
                return decide(None), 0
            if state.get("in_flight_id"):
                return results(), 1.0
            if not state.get("baseline"):
                return run("baseline"), 0
            return read, 0
        if tool == "Read":
            return self._edit(recorded), 0
        if tool in ("Edit", "Write"):
            target = str(call.input.get("file_path", ""))
            if call.is_error or not target.endswith("train.py"):
                return read, 0  # refused (a locked file) or stale: read train.py again and edit it
            return run(last_edit_description(request)), 0
        if tool == "run_experiment":
            if not call.is_error:
                return decide(None if _json(call.result).get("decision") == "pending" else "revert"), 0
            if "undecided" in call.result:
                return decide(None), 0
            if "unmodified baseline" in call.result:
                return decide("revert"), 0
            if "running on this workspace" in call.result:
                return results(), 1.0
            if "restored" in call.result:
                return run(last_edit_description(request)), 0  # a locked file was put back: run again
            return results(), 0
        if tool == "commit_or_revert":
            if call.is_error:
                if "running on this workspace" in call.result:
                    return results(), 1.0
                return (decide("revert"), 0) if "no experiment is waiting" in call.result else (results(), 0)
            if _json(call.result).get("best_id") is None:
                return run("baseline"), 0
            return read, 0
        return results(), 0  # a new session, a resumed one, a Stop hook's reminder, or anything unexpected

    def _edit(self, recorded: int) -> Step:
        path = self.ws / "train.py"
        fault = self.plan.due(("edit_locked",), recorded + 1)
        if fault is not None:
            done = sum(1 for f in self.plan.fired() if f.kind == "edit_locked")
            if done % 2 == 0:  # refused by the deny rules of .claude/settings.json
                prepare = self.ws / "prepare.py"
                first = prepare.read_text(encoding="utf-8").splitlines()[0]
                self.plan.fire(fault, recorded, "Edit of prepare.py")
                return tool_use("Edit", {"file_path": str(prepare), "old_string": first,
                                         "new_string": first + "  # better metric"})
            # No deny rule names this file: the pre-tool-use hook must refuse it (python imports it at start-up).
            self.plan.fire(fault, recorded, "Write of sitecustomize.py")
            return tool_use("Write", {"file_path": str(self.ws / "sitecustomize.py"),
                                      "content": "import prepare\nprepare.score = lambda params: 0.0\n"})
        source = path.read_text(encoding="utf-8")
        fault = self.plan.due(EDIT_FAULTS, recorded + 1)
        if fault is not None:
            behaviour = {"exp_crash": ("crash", "nan"), "exp_hang": ("hang", "hang", "fork_hang"),
                         "tamper": ("tamper",), "lie": ("lie",)}[fault.kind]
            name, value = "BEHAVIOUR", json.dumps(self.rng.choice(behaviour))
            self.plan.fire(fault, recorded, f"BEHAVIOUR = {value}")
        elif self.rng.random() < 0.5:
            name, value = "LR", f"{self.rng.uniform(0.05, 0.6):.3f}"
        else:
            name, value = "WIDTH", str(self.rng.randint(4, 32))
        line = re.search(rf"^{name} = [^\n#]*", source, re.M)
        if line is None:
            return tool_use("Read", {"file_path": str(path)})
        return tool_use("Edit", {"file_path": str(path), "old_string": line[0].rstrip(),
                                 "new_string": f"{name} = {value}"})


# ---- agent death ----

class AgentKiller(threading.Thread):
    """kill -9 the claude process the supervisor runs, once per planned death, at a random moment of that experiment."""

    def __init__(self, run_dir: Path, rng: random.Random, plan: FaultPlan) -> None:
        super().__init__(name="soak-agent-killer", daemon=True)
        self.run_dir, self.rng, self.plan = run_dir, rng, plan
        self.stop_event = threading.Event()
        self.ledger = Ledger(run_dir, metric_name="score")

    def run(self) -> None:
        while not self.stop_event.is_set():
            recorded = self._recorded()
            fault = self.plan.due(("agent_death",), recorded + 1)
            if fault is None:
                self.stop_event.wait(0.2)
                continue
            if self.stop_event.wait(self.rng.uniform(0.0, 2.5)):
                return
            while not self.stop_event.is_set():
                pid = self._agent_pid()
                if pid is not None:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    self.plan.fire(fault, self._recorded(), f"kill -9 {pid}")
                    break
                self.stop_event.wait(0.2)

    def _recorded(self) -> int:
        try:
            return len(self.ledger.experiments())
        except Exception:
            return 0

    def _agent_pid(self) -> int | None:
        """The live agent pid from supervisor.json, trusted only when its environment carries the run's marker."""
        try:
            status = json.loads((self.run_dir / "supervisor.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        pid, mark = status.get("pid"), status.get("agent_mark")
        if not pid or not mark or status.get("state") not in ("RUNNING", "STARTING"):
            return None
        return int(pid) if f"{AGENT_MARK_VAR}={mark}".encode() in _environ(int(pid)) else None


# ---- processes ----

def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] not in ("Z", "X")


def leftover_processes(marks: set[str], workspace: Path) -> list[str]:
    """Live processes carrying one of the harness's agent marks, or an experiment mark and the soak's workspace."""
    needles = {f"{AGENT_MARK_VAR}={m}".encode() for m in marks}
    ws = str(workspace).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid() or not _alive(int(entry.name)):
            continue
        env = _environ(int(entry.name))
        experiment = any(v.startswith(PROC_MARK_VAR.encode() + b"=") for v in env) and any(ws in v for v in env)
        if experiment or needles.intersection(env):
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = "?"
            found.append(f"{entry.name}: {cmd[:160]}")
    return found


def wait_leftovers(marks: set[str], workspace: Path, timeout_s: float) -> list[str]:
    """Leftovers still alive after `timeout_s` (a process finishing its own exit gets that long)."""
    deadline = time.monotonic() + timeout_s
    while (left := leftover_processes(marks, workspace)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def kill_leftovers(marks: set[str], workspace: Path) -> None:
    for line in leftover_processes(marks, workspace):
        try:
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
        except OSError:
            pass


# ---- the invariants ----

@dataclass
class Report:
    seed: int
    requested: int
    wall_s: float = 0.0
    harness_exit: int | None = None
    experiments: list[Experiment] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    survived: int = 0
    supervisor: dict[str, Any] = field(default_factory=dict)
    records_lost: int = 0
    violations: int = 0
    refusals: Counter[str] = field(default_factory=Counter)  # blocked tool calls in the audit chain, by actor
    leftovers: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    workspace: Path | None = None

    def count(self, **match: Any) -> int:
        return sum(1 for e in self.experiments if all(getattr(e, k) == v for k, v in match.items()))

    def figures(self) -> list[str]:
        by_kind = Counter(f.kind for f in self.faults)
        sup = self.supervisor
        lines = [
            f"soak: seed {self.seed}, {self.requested} experiments requested, harness exit {self.harness_exit}, "
            f"{self.wall_s:.0f} s",
            f"experiments {len(self.experiments)}: kept {self.count(decision='keep')}, crashed "
            f"{self.count(status='crash')}, timed out {self.count(status='timeout')}, invalid "
            f"{self.count(status='invalid')}, ok {self.count(status='ok')}",
            "faults injected: " + (", ".join(f"{k} {by_kind[k]}" for k in FAULTS_PER_50 if by_kind[k]) or "none"),
            f"faults survived {self.survived} of {len(self.faults)}; violations recorded {self.violations}; "
            f"refused tool calls recorded: by the hooks {self.refusals['hook']}, by the permission rules "
            f"{self.refusals['agent']}",
            f"supervisor: restarts {sup.get('restarts', '-')}, resumes {sup.get('resumes', '-')}, fresh "
            f"{sup.get('fresh_starts', '-')}, stalls {sup.get('stalls', '-')}, backoffs {sup.get('backoffs', '-')}, "
            f"quick deaths {sup.get('quick_deaths', '-')}, state {sup.get('state', '-')}",
            f"records lost: {self.records_lost}; processes left behind: {len(self.leftovers)}",
        ]
        lines += [f"FAILED: {f}" for f in self.failures] or ["all invariants hold"]
        lines += ["---", f"seed: {self.seed}", f"experiments: {len(self.experiments)}",
                  f"kept: {self.count(decision='keep')}", f"crashed: {self.count(status='crash')}",
                  f"timed_out: {self.count(status='timeout')}", f"invalid: {self.count(status='invalid')}",
                  f"faults_injected: {len(self.faults)}"]
        lines += [f"faults_{k}: {by_kind[k]}" for k in FAULTS_PER_50]
        lines += [f"faults_survived: {self.survived}", f"violations: {self.violations}",
                  f"refusals_hook: {self.refusals['hook']}", f"refusals_permission: {self.refusals['agent']}",
                  f"restarts: {sup.get('restarts', 0)}", f"stalls: {sup.get('stalls', 0)}",
                  f"backoffs: {sup.get('backoffs', 0)}",
                  f"records_lost: {self.records_lost}", f"leftover_processes: {len(self.leftovers)}",
                  f"invariants_failed: {len(self.failures)}", f"wall_seconds: {self.wall_s:.1f}"]
        return lines


def check_run(ws: Path, report: Report, pinned_prepare: bytes, env: dict[str, str] | None = None) -> None:
    """Fill `report` from the run's files and append every broken invariant to `report.failures`."""
    run_dir = ws / "runs" / TAG
    fail = report.failures.append
    ledger = Ledger(run_dir, metric_name="score")
    report.experiments = ledger.experiments()
    ids = [e.id for e in report.experiments]
    if ids != list(range(1, len(ids) + 1)):
        fail(f"ledger ids are not 1..N without gaps: {ids}")
    if len(ids) < report.requested:
        fail(f"only {len(ids)} experiments recorded, {report.requested} requested")
    started = _started_ids(ws, run_dir)
    lost = sorted(started - set(ids))
    report.records_lost = len(lost)
    if lost:
        fail(f"experiments started without a ledger record: {lost}")
    if (run_dir / "inflight.json").exists():
        fail("inflight.json is still there after the run ended")
    report.violations = sum(1 for line in _lines(run_dir / "violations.jsonl"))
    audit = [json.loads(line) for line in _lines(run_dir / "audit.jsonl")]
    report.refusals = Counter(str(r.get("actor")) for r in audit if r.get("status") == "blocked"
                              and r.get("event") == "tool_call")

    verify = subprocess.run([sys.executable, "-m", "harness.cli", "audit", "verify", "--workspace", str(ws), "--tag",
                             TAG], cwd=ws, env=env, capture_output=True, text=True, timeout=120)
    if verify.returncode != 0:
        fail(f"`autoresearch audit verify` exit {verify.returncode}: {(verify.stdout + verify.stderr).strip()[:300]}")

    if (ws / "prepare.py").read_bytes() != pinned_prepare:
        fail("prepare.py differs from the pinned copy")
    if (run_dir / "pinned" / "prepare.py").read_bytes() != pinned_prepare:
        fail("runs/soak/pinned/prepare.py differs from the original prepare.py")

    stray = [line for line in _git(ws, "status", "--porcelain", "--untracked-files=all").splitlines()
             if line[3:] != "train.py"]
    if stray:
        fail(f"files other than train.py changed in the workspace: {stray}")

    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    commits = _git(ws, "rev-list", "--reverse", f"{run['base_commit']}..{run['branch']}").split()
    kept = [e for e in report.experiments if e.decision == "keep" and not e.is_baseline]
    if commits != [e.kept_commit for e in kept]:
        fail(f"branch {run['branch']} holds {len(commits)} commits after the base, the ledger keeps "
             f"{[e.id for e in kept]} as {[str(e.kept_commit)[:7] for e in kept]}; got {[c[:7] for c in commits]}")
    for exp in kept:
        snapshot = run_dir / "experiments" / f"{exp.id:04d}" / "snapshot" / "train.py"
        committed = _git(ws, "show", f"{exp.kept_commit}:train.py")
        if not snapshot.exists() or committed != snapshot.read_text(encoding="utf-8").rstrip("\n"):
            fail(f"the commit of kept experiment {exp.id} does not hold the train.py it ran ({snapshot})")
    baseline = [e for e in report.experiments if e.is_baseline and e.decision == "keep"]
    if len(baseline) != 1 or baseline[0].kept_commit != run["base_commit"]:
        fail(f"expected one kept baseline at the base commit, got {[(e.id, e.kept_commit) for e in baseline]}")

    for exp in report.experiments:  # the pinned evaluation, never the script's own output, gives the metric
        if exp.status != "ok":
            continue
        snapshot = (run_dir / "experiments" / f"{exp.id:04d}" / "snapshot" / "train.py").read_text(encoding="utf-8")
        honest = honest_score(snapshot)
        if not exp.verified or exp.metric is None or abs(exp.metric - honest) > 1e-5:
            fail(f"experiment {exp.id} recorded score {exp.metric} (verified {exp.verified}); its train.py scores "
                 f"{honest:.6f}")

    rows = _lines(run_dir / "results.tsv")[1:]
    decided = sum(1 for e in report.experiments if e.decision is not None)
    if len(rows) != decided:
        fail(f"results.tsv has {len(rows)} rows, the ledger {decided} decided experiments")


def honest_score(train_source: str) -> float:
    """The fake target's score of a train.py, computed here independently of anything the run printed."""
    values = {name: float(re.search(rf"^{name} = ([^\s#]+)", train_source, re.M)[1]) for name in ("LR", "WIDTH")}
    return 1.0 + (values["LR"] - 0.3) ** 2 + (values["WIDTH"] - 16) ** 2 / 1000.0


def _started_ids(ws: Path, run_dir: Path) -> set[int]:
    """Every experiment id the engine began: its snapshot ref and its folder are made before it runs."""
    refs = _git(ws, "for-each-ref", "--format=%(refname)", f"refs/autoresearch/{TAG}/").split()
    ids = {int(ref.rsplit("/", 1)[-1]) for ref in refs}
    ids |= {int(p.name) for p in (run_dir / "experiments").iterdir() if p.name.isdigit()}
    return ids


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return []


# ---- the soak ----

def find_claude() -> Path | None:
    configured = os.environ.get("AUTORESEARCH_CLAUDE_BIN")
    if configured:
        return Path(configured) if Path(configured).exists() else None
    return CLAUDE_BIN if CLAUDE_BIN.exists() else None


def harness_env(home: Path, base_url: str, claude: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE", "AUTORESEARCH_"))}
    env.update(POLICY_ENV)
    env.update({"HOME": str(home), "ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": "sk-ant-soak-dummy",
                "CLAUDE_CODE_MAX_RETRIES": "1", "AUTORESEARCH_CLAUDE_BIN": str(claude),
                "GIT_CONFIG_NOSYSTEM": "1", "PYTHONUNBUFFERED": "1"})
    return env


def run_soak(root: Path, seed: int = 0, experiments: int = 50, timeout_s: float = 900.0,
             claude: Path | None = None) -> Report:
    """Run the soak in `root` (a fresh folder) and check every invariant; never raises for a failed invariant."""
    claude = claude or find_claude()
    if claude is None:
        raise FileNotFoundError(f"the Claude Code CLI is not at {CLAUDE_BIN} and AUTORESEARCH_CLAUDE_BIN is unset; "
                                "run scripts/install_claude_code.sh")
    report = Report(seed=seed, requested=experiments)
    rng = random.Random(seed)
    plan = FaultPlan.build(rng, experiments)
    ws = build_workspace(root)
    report.workspace = ws
    home = root / "home"
    home.mkdir()
    pinned_prepare = (ws / "prepare.py").read_bytes()
    run_dir = ws / "runs" / TAG
    marks: set[str] = set()
    started = time.monotonic()
    with FakeAnthropic(Brain(ws, random.Random(rng.random()), plan)) as fake:
        killer = AgentKiller(run_dir, random.Random(rng.random()), plan)
        argv = [sys.executable, "-m", "harness.cli", "run", "--agent", "claude", "--workspace", str(ws), "--tag", TAG,
                "--max-experiments", str(experiments), "--stall-timeout", f"{STALL_TIMEOUT_S:g}"]
        with open(root / "harness.log", "wb") as harness_log:
            harness = subprocess.Popen(argv, cwd=ws, env=harness_env(home, fake.url, claude), stdin=subprocess.DEVNULL,
                                       stdout=harness_log, stderr=subprocess.STDOUT, start_new_session=True)
            killer.start()
            try:
                report.harness_exit = _wait_harness(harness, run_dir, marks, timeout_s, report)
            finally:
                killer.stop_event.set()
                killer.join(10)
                if harness.poll() is None:
                    os.killpg(harness.pid, signal.SIGKILL)
                    harness.wait(30)
        fake.release()
    report.wall_s = time.monotonic() - started
    report.supervisor = _read_json(run_dir / "supervisor.json")
    if report.supervisor.get("agent_mark"):
        marks.add(str(report.supervisor["agent_mark"]))
    report.leftovers = wait_leftovers(marks, ws, 10.0)
    if report.leftovers:
        report.failures.append(f"{len(report.leftovers)} process(es) left behind: {report.leftovers}")
        kill_leftovers(marks, ws)
    if report.harness_exit != 0:
        tail = (root / "harness.log").read_text(encoding="utf-8", errors="replace")[-600:]
        report.failures.append(f"the harness exited {report.harness_exit}: {tail}")
    if report.supervisor.get("state") != "STOPPED":
        report.failures.append(f"the supervisor ended in state {report.supervisor.get('state')}, not STOPPED")
    check_run(ws, report, pinned_prepare, harness_env(home, "http://127.0.0.1:9", claude))
    report.faults = plan.fired()
    total = len(report.experiments)
    report.survived = sum(1 for f in report.faults if total > f.recorded_before) if report.harness_exit == 0 else 0
    missing = [k for k in FAULTS_PER_50 if not any(f.kind == k for f in report.faults)]
    if missing:
        report.failures.append(f"fault kinds never injected: {missing}")
    return report


def _wait_harness(harness: subprocess.Popen[bytes], run_dir: Path, marks: set[str], timeout_s: float,
                  report: Report) -> int | None:
    """Wait for the harness to stop by itself; past `timeout_s` stop it (SIGTERM) and record the overrun."""
    deadline = time.monotonic() + timeout_s
    while harness.poll() is None:
        status = _read_json(run_dir / "supervisor.json")
        if status.get("agent_mark"):
            marks.add(str(status["agent_mark"]))
        if time.monotonic() > deadline:
            report.failures.append(f"the harness was still running after {timeout_s:g} s; stopped it")
            harness.send_signal(signal.SIGTERM)
            try:
                return harness.wait(60)
            except subprocess.TimeoutExpired:
                return None
        time.sleep(0.5)
    return harness.returncode


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault plan and the model (default 0)")
    parser.add_argument("--experiments", type=int, default=50, help="experiments to run (default 50)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before the harness is stopped")
    parser.add_argument("--keep", type=Path, default=None, help="run in this new folder and keep it (default: a "
                                                                  "temporary folder, removed afterwards)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.experiments < 10:
        parser.error(f"--experiments must be at least 10 (the faults need room), got {args.experiments}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    if find_claude() is None:
        print(f"soak: the Claude Code CLI is not at {CLAUDE_BIN} and AUTORESEARCH_CLAUDE_BIN is unset; run "
              "scripts/install_claude_code.sh", file=sys.stderr)
        return 2
    root = args.keep or Path(tempfile.mkdtemp(prefix="autoresearch-soak-"))
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=False)
    try:
        report = run_soak(root, args.seed, args.experiments, args.timeout)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"machine: {os.cpu_count()} cores | python {sys.version.split()[0]}")
    print("\n".join(report.figures()))
    if args.keep:
        print(f"files kept in {root}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
