"""`autoresearch run --agent claude|api`: the supervisor wired to a real agent, the file guard, the audit chain.

The agent runs as a process group of its own (Claude Code with its stdio MCP server child, or the built-in API agent),
so a stall or a stop can take the whole group down. The harness itself keeps no state that the files do not: killed
with kill -9 and started again with --resume, it kills what the previous harness left running (found by a marker in
the environment) and carries on from the ledger.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from argparse import Namespace
from datetime import datetime
from pathlib import Path

from harness.agent_events import AgentEvent
from harness.claude_sandbox import SandboxCheck, check_sandbox, sandbox_settings, write_settings
from harness.loop_state import RunLoopView, read_loop_state
from harness.procs import LineAgentProcess, spawn_group
from harness.supervisor import Launch, Limits, Policy, State, Supervisor, SupervisorEvent
from server.inflight import threads_running
from server.audit import AuditLog, key_dir
from server.config import Config
from server.engine import Engine
from server.jsonl import atomic_write_text
from server.runstate import RunInfo

log = logging.getLogger(__name__)

AGENT_MARK_VAR = "AUTORESEARCH_AGENT_MARK"
DISALLOWED_CLAUDE_TOOLS = (
    "WebFetch", "WebSearch", "NotebookEdit", "Task", "TaskStop", "ListAgents", "SendMessage", "Workflow", "Skill",
    "EnterWorktree", "ExitWorktree", "CronCreate", "CronDelete", "CronList", "ScheduleWakeup", "Monitor",
    "ReportFindings", "ListMcpResourcesTool", "ReadMcpResourceTool", "ReadMcpResourceDirTool",
)


class HarnessError(RuntimeError):
    """The run cannot start; the message says what to fix."""


# ---- spawners ----

def find_claude(workspace: Path) -> Path:
    candidates = [os.environ.get("AUTORESEARCH_CLAUDE_BIN"), shutil.which("claude"),
                  str(workspace / ".tools" / "claude-code" / "node_modules" / ".bin" / "claude")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise HarnessError("the Claude Code CLI was not found: install it (`npm install -g @anthropic-ai/claude-code`, or "
                       "`bash scripts/install_claude_code.sh` for the pinned version) or set AUTORESEARCH_CLAUDE_BIN")


def write_mcp_config(config: Config, run: RunInfo, python: str = sys.executable) -> Path:
    """The server as the agent sees it: stdio, this interpreter, this workspace and tag, a timeout above the limits."""
    timeout_ms = int((config.hard_timeout_s + config.evaluate.timeout_s + 120) * 1000)
    body = {"mcpServers": {"autoresearch": {
        "type": "stdio", "command": python,
        "args": ["-P", "-m", "server", "serve", "--workspace", str(config.workspace), "--tag", run.tag],
        "env": {"AUTORESEARCH_WORKSPACE": str(config.workspace)},
        "timeout": timeout_ms, "alwaysLoad": True,
    }}}
    path = run.run_dir / "agent" / "mcp.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(body, indent=2) + "\n")
    return path


class DenialRecorder:
    """Puts the tool calls Claude Code refused by its own permission rules into the audit chain.

    A `deny` rule in .claude/settings.json (e.g. `Edit(prepare.py)`) refuses the call before any hook runs, so the
    hooks, which record everything else, never see it. The CLI's stream still shows it: a `tool_result` whose
    `tool_result_meta` says `decision: reject`. Refusals by the hooks (`source: hook`) are recorded by the hooks.
    """

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self._calls: dict[str, tuple[str, object]] = {}  # tool_use id -> (tool name, input)

    def __call__(self, line: str) -> list[AgentEvent]:
        from harness.claude_stream import parse_line

        events = parse_line(line)
        if '"tool_use"' in line or '"tool_result_meta"' in line:
            try:
                self._inspect(json.loads(line))
            except Exception:  # the record is best effort; reading the agent must go on
                log.warning("could not audit a refused tool call from line %.200r", line, exc_info=True)
        return events

    def _inspect(self, data: object) -> None:
        from harness.hooks import bounded_args

        if not isinstance(data, dict):
            return
        message = data.get("message") if isinstance(data.get("message"), dict) else {}
        blocks = [b for b in message.get("content") or [] if isinstance(b, dict)]
        if data.get("type") == "assistant":
            for block in blocks:
                if block.get("type") == "tool_use":
                    self._calls[str(block.get("id"))] = (str(block.get("name")), block.get("input"))
            return
        results = {str(b.get("tool_use_id")): b for b in blocks if b.get("type") == "tool_result"}
        for meta in data.get("tool_result_meta") or []:
            decision = meta.get("permission_decision") if isinstance(meta, dict) else None
            if not isinstance(decision, dict) or decision.get("decision") != "reject":
                continue
            if decision.get("source") == "hook":
                continue
            use_id = str(meta.get("id"))
            tool, tool_input = self._calls.pop(use_id, ("?", None))
            content = results.get(use_id, {}).get("content")
            reason = content if isinstance(content, str) else json.dumps(content, default=str)
            self.audit.append("agent", "tool_call", session=_text_or_none(data.get("session_id")), tool=tool,
                              args=bounded_args(tool, tool_input), status="blocked",
                              summary={"reason": reason[:300], "by": f"permission {decision.get('source')} "
                                                                    f"{decision.get('reason_type')}"})


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def require_shell_sandbox(args: Namespace) -> SandboxCheck:
    """With `--allow-bash`, refuse to go on where Claude Code's shell sandbox cannot start, unless the user said yes.

    Called before a run is created, so a refusal leaves nothing behind.
    """
    check = check_sandbox()
    if check.available or not getattr(args, "allow_bash", False):
        return check
    if getattr(args, "allow_unsandboxed_bash", False):
        log.warning("the shell sandbox cannot start (%s); shell commands run unsandboxed, as "
                    "--allow-unsandboxed-bash asked", check.reason)
        return check
    raise HarnessError(
        f"--allow-bash runs the agent's shell commands in Claude Code's sandbox, and it cannot start here: "
        f"{check.reason}. Install what is missing and start again, leave out --allow-bash, or add "
        "--allow-unsandboxed-bash to run shell commands without the sandbox (then only the shell policy and the file "
        "guard stand between the agent and the run's files).")


def shell_sandbox(config: Config, run: RunInfo, args: Namespace, audit: AuditLog) -> dict[str, object] | None:
    """The `sandbox` settings for this session, or None when shell commands are off or run unsandboxed (audited)."""
    if not getattr(args, "allow_bash", False):
        return None
    check = require_shell_sandbox(args)
    if not check.available:
        audit.append("supervisor", "unsandboxed_shell", status="warning",
                     summary={"reason": str(check.reason)[:300], "flag": "--allow-unsandboxed-bash"})
        return None
    return sandbox_settings(config, run.run_dir, key_dir=key_dir())


class ClaudeSpawner:
    """Starts `claude -p` headless with stream-json output, an explicit tool allow-list and the run's MCP config."""

    def __init__(self, config: Config, run: RunInfo, args: Namespace, mark: str, audit: AuditLog | None = None) -> None:
        from harness.claude_launcher import ClaudeLaunchSpec

        self.config, self.run, self.mark = config, run, mark
        self.audit = audit if audit is not None else AuditLog(run.run_dir / "audit.jsonl")
        self.allow_bash = bool(getattr(args, "allow_bash", False))
        sandbox = shell_sandbox(config, run, args, self.audit)
        mcp = write_mcp_config(config, run)
        tools = ["mcp__autoresearch__run_experiment", "mcp__autoresearch__read_results",
                 "mcp__autoresearch__commit_or_revert", "Read", "Glob", "Grep", "Edit", "MultiEdit", "Write"]
        # Everything else Claude Code 2.1 offers is removed outright, not merely left unapproved: web access, sub-agents,
        # worktrees (edits outside the workspace), schedulers and skills have no place in the loop.
        disallowed = list(DISALLOWED_CLAUDE_TOOLS)
        if self.allow_bash:
            tools.append("Bash")
        else:
            disallowed.append("Bash")
        program = (config.workspace / "program.md")
        self.spec = ClaudeLaunchSpec(
            claude_bin=find_claude(config.workspace), workspace=config.workspace, mcp_config=mcp,
            settings=write_settings(config, run.run_dir, sandbox=sandbox),
            allowed_tools=tools, disallowed_tools=disallowed, model=getattr(args, "model", None),
            max_turns=getattr(args, "max_turns", None),
            append_system_prompt=program.read_text(encoding="utf-8") if program.exists() else None,
            mcp_tool_timeout_ms=int((config.hard_timeout_s + config.evaluate.timeout_s + 120) * 1000),
        )

    def spawn(self, launch: Launch) -> LineAgentProcess:
        from harness.claude_launcher import SessionLaunch, build_argv, build_env

        session = SessionLaunch(mode=launch.mode, prompt=launch.prompt, session_id=launch.session_id)
        env = build_env(self.spec)
        env.update({"AUTORESEARCH_SESSION_ID": str(session.session_id), "AUTORESEARCH_TAG": self.run.tag,
                    "AUTORESEARCH_WORKSPACE": str(self.config.workspace), AGENT_MARK_VAR: self.mark})
        if self.allow_bash:
            env["AUTORESEARCH_ALLOW_BASH"] = "1"
        log_dir = self.run.run_dir / "agent"
        group = spawn_group(build_argv(self.spec, session), cwd=self.config.workspace, env=env,
                            stdout_log=log_dir / f"{session.session_id}.jsonl",
                            stderr_log=log_dir / f"{session.session_id}.stderr.log")
        return LineAgentProcess(group, DenialRecorder(self.audit))


class ApiAgentSpawner:
    """Starts the built-in API agent (`python -m harness.agents.api_agent`) as its own process group."""

    def __init__(self, config: Config, run: RunInfo, args: Namespace, mark: str) -> None:
        self.config, self.run, self.mark, self.args = config, run, mark, args

    def spawn(self, launch: Launch) -> LineAgentProcess:
        from harness.agents.api_events import parse_api_line

        session_id = launch.session_id or str(uuid.uuid4())
        log_dir = self.run.run_dir / "agent"
        log_dir.mkdir(parents=True, exist_ok=True)
        prompt_file = log_dir / f"{session_id}.prompt.txt"
        prompt_file.write_text(launch.prompt, encoding="utf-8")
        argv = [sys.executable, "-m", "harness.agents.api_agent", "--workspace", str(self.config.workspace),
                "--tag", self.run.tag, "--mode", launch.mode, "--session-id", session_id,
                "--prompt-file", str(prompt_file)]
        if getattr(self.args, "model", None):
            argv += ["--model", self.args.model]
        if getattr(self.args, "max_turns", None):
            argv += ["--max-turns", str(self.args.max_turns)]
        env = dict(os.environ)
        env.update({"AUTORESEARCH_SESSION_ID": session_id, "AUTORESEARCH_TAG": self.run.tag, AGENT_MARK_VAR: self.mark})
        group = spawn_group(argv, cwd=self.config.workspace, env=env, stdout_log=log_dir / f"{session_id}.jsonl",
                            stderr_log=log_dir / f"{session_id}.stderr.log")
        return LineAgentProcess(group, parse_api_line)


# ---- leftovers of a harness killed with kill -9 ----

def kill_marked_agents(mark: str, wait_s: float = 5.0) -> int:
    """Kill every process whose environment carries our agent marker (pids are never trusted alone).

    Returns once they are gone (or `wait_s` passed): until then a killed MCP server may still hold the experiment
    lock, and the recovery that follows would take the interrupted experiment for one still running.
    """
    needle = f"{AGENT_MARK_VAR}={mark}".encode()
    killed: list[int] = []
    for entry in Path("/proc").iterdir() if Path("/proc").exists() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except OSError:
                pass
    deadline = time.monotonic() + wait_s
    while any(threads_running(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(killed)


# ---- the run ----

class StatusWriter:
    """`supervisor.json` for `autoresearch status` and the hooks, plus a live line on the terminal."""

    def __init__(self, run: RunInfo, engine: Engine, config: Config, mark: str, live: bool) -> None:
        self.path = run.run_dir / "supervisor.json"
        self.engine, self.config, self.mark, self.live = engine, config, mark, live
        self._last_line = 0.0

    def write(self, sup: Supervisor) -> None:
        status = sup.snapshot().to_dict()
        status.update({"updated_at": time.time(), "agent_mark": self.mark, "harness_pid": os.getpid()})
        atomic_write_text(self.path, json.dumps(status, indent=2) + "\n")
        now = time.monotonic()
        if self.live and now - self._last_line >= (1.0 if sys.stderr.isatty() else 60.0):
            self._last_line = now
            self._print(status)

    def _print(self, s: dict[str, object]) -> None:
        view = self.engine.read_results(last_n=1)
        best = f"{view.best.metric:.6f}" if view.best else "-"
        current = self.engine.in_flight()
        flight = f"exp {current.id} {current.remaining_s:.0f}s left" if current else "idle"
        line = (f"[{s['state']}] session {str(s['session_id'] or '-')[:8]} up {float(s['uptime_s']):.0f}s "  # type: ignore[arg-type]
                f"restarts {s['restarts']} | experiments {view.counts['total']} best {best} | {flight} | "
                f"violations {s['violations']} | ${float(s['cost_usd']):.2f}")  # type: ignore[arg-type]
        if sys.stderr.isatty():
            print("\r" + line[:160].ljust(160), end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


class DecidingLoopView(RunLoopView):
    """The run's files as the supervisor sees them, where the last allowed experiment counts as "in flight" until the
    agent has decided it.

    The supervisor stops at the experiment limit once nothing is in flight; without this it ends the agent the moment
    the last experiment's run ends, before the agent can call commit_or_revert, so an improvement found by the last
    experiment would never reach the branch. With several slots the last wave ends together: every undecided
    experiment is held, not only the one with the highest id. The hold applies only once the limit is reached exactly
    (no experiment can start after that, so the undecided ones can only get fewer) and lasts `decide_s` after the
    last of them finished or the last decision, whichever is later: an agent deciding a wave one by one keeps it, an
    agent that does nothing loses it after `decide_s`.
    """

    def __init__(self, config: Config, run: RunInfo, decide_s: float) -> None:
        super().__init__(config, run)
        self.decide_s = decide_s

    def inflight_deadline(self) -> float | None:
        state = read_loop_state(self.config, self.run)
        if state.in_flight is not None:
            return state.in_flight.deadline
        cap = state.limits.max_experiments
        waiting = [e for e in state.experiments if e.decision is None and not e.is_baseline]
        if not waiting or cap is None or len(state.experiments) != cap:
            return None
        stamps = [e.finished_at for e in waiting] + [e.decided_at for e in state.experiments if e.decided_at]
        try:
            last = max(datetime.fromisoformat(str(t).replace("Z", "+00:00")).timestamp() for t in stamps)
        except ValueError:
            return None
        deadline = last + self.decide_s
        return deadline if deadline > state.now else None


def _audit_sink(audit: AuditLog):
    def sink(event: SupervisorEvent) -> None:
        status = "error" if event.name.value in ("fatal", "stall") else "ok"
        audit.append("supervisor", event.name.value, session=event.session_id, status=status,
                     summary={"message": event.message[:500], "state": event.state.value,
                              **{k: v for k, v in event.details.items() if k != "prompt"}})
    return sink


def run_supervised(config: Config, run: RunInfo, args: Namespace) -> int:
    engine = Engine(config, run)
    engine.recover()
    previous = run.run_dir / "supervisor.json"
    if previous.exists():
        try:
            old_mark = json.loads(previous.read_text(encoding="utf-8")).get("agent_mark")
        except (OSError, ValueError):
            old_mark = None
        if old_mark and kill_marked_agents(old_mark):
            log.warning("killed the agent processes a previous harness left running")
            engine.recover()
    (run.run_dir / "stop").unlink(missing_ok=True)
    mark = uuid.uuid4().hex
    deadline = time.time() + args.hours * 3600 if args.hours else None
    limits = Limits(deadline=deadline, max_experiments=_remaining_experiments(engine, args.max_experiments),
                    max_cost_usd=args.max_cost_usd)
    atomic_write_text(run.run_dir / "limits.json", json.dumps({
        "deadline": deadline, "max_experiments": limits.max_experiments, "max_cost_usd": args.max_cost_usd}) + "\n")
    audit = AuditLog(run.run_dir / "audit.jsonl")
    spawner = (ClaudeSpawner(config, run, args, mark, audit) if args.agent == "claude"
               else ApiAgentSpawner(config, run, args, mark))
    policy = Policy(stall_timeout_s=args.stall_timeout,
                    **_policy_overrides())
    view = DecidingLoopView(config, run, decide_s=policy.stop_grace_s)
    sup = Supervisor(spawner, view, policy, limits, on_event=_audit_sink(audit),
                     log_hint=str(run.run_dir / "agent"))
    status = StatusWriter(run, engine, config, mark, live=True)
    wake = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        sup.request_stop(f"received {signal.Signals(signum).name}")
        wake.set()

    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    guard = None
    if not getattr(args, "no_guard", False):
        from harness.guard import FileGuard

        guard = FileGuard(config, run, audit=audit)
        guard.start()
    audit.append("supervisor", "run_start", status="ok", summary={
        "agent": args.agent, "tag": run.tag, "hours": args.hours, "max_experiments": args.max_experiments,
        "max_cost_usd": args.max_cost_usd, "pid": os.getpid()})
    try:
        while True:
            state = sup.tick()
            status.write(sup)
            if state in (State.STOPPED, State.FATAL):
                break
            wake.wait(0.5)
            wake.clear()
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        if guard is not None:
            guard.stop()
        if kill_marked_agents(mark):  # anything of the agent's that escaped its process group
            log.warning("killed agent processes left after the supervisor stopped")
        engine.recover()  # an experiment the agent's server could not record (killed hard) is recorded now
        # The limits belong to this invocation: an interactive session afterwards must not inherit them.
        (run.run_dir / "limits.json").unlink(missing_ok=True)
    snap = sup.snapshot()
    audit.append("supervisor", "run_end", status="ok" if snap.state is State.STOPPED else "error",
                 summary={"state": snap.state.value, "reason": snap.stop_reason or snap.fatal_message,
                          "restarts": snap.restarts, "cost_usd": snap.cost_usd})
    print("", file=sys.stderr)
    if snap.state is State.FATAL:
        print(f"autoresearch: FATAL: {snap.fatal_message}", file=sys.stderr)
        return 1
    print(f"autoresearch: stopped: {snap.stop_reason}", file=sys.stderr)
    return 0


def _remaining_experiments(engine: Engine, requested: int | None) -> int | None:
    """--max-experiments counts experiments of this invocation; the supervisor counts the run's total."""
    if requested is None:
        return None
    return len(engine.ledger.experiments()) + requested


def _policy_overrides() -> dict[str, float]:
    """Timing knobs from the environment, for compressed tests and soaks (AUTORESEARCH_POLICY_<FIELD>=seconds)."""
    out: dict[str, float] = {}
    for name in ("inflight_grace_s", "backoff_base_s", "backoff_cap_s", "startsecs", "stop_grace_s"):
        value = os.environ.get(f"AUTORESEARCH_POLICY_{name.upper()}")
        if value is not None:
            try:
                out[name] = float(value)
            except ValueError:
                raise HarnessError(f"AUTORESEARCH_POLICY_{name.upper()}={value!r} is not a number of seconds")
    for name in ("crash_loop_deaths", "max_resumes"):
        value = os.environ.get(f"AUTORESEARCH_POLICY_{name.upper()}")
        if value is not None:
            if not value.isdigit():
                raise HarnessError(f"AUTORESEARCH_POLICY_{name.upper()}={value!r} is not a positive integer")
            out[name] = int(value)  # type: ignore[assignment]
    return out
