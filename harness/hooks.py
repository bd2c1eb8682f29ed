"""Claude Code hooks: `python -m harness.hooks pre-tool-use|post-tool-use|stop|session-start`, JSON on stdin.

- pre-tool-use refuses edits to anything but the mutable files (after resolving symlinks and `..`), reads of the
  person's private folder and the audit keys (`read_policy`), and shell commands (unless a user turned them on, and
  then `bash_policy` reads each one), and records every refusal. A call
  to a tool outside `KNOWN_TOOLS` is recorded too (status `unknown_tool`): a new tool of a newer CLI is seen before
  it is trusted. Claude Code's own permission rules and the harness's tool allow-list decide whether it runs.
- post-tool-use records every tool call in the audit chain and tells the agent about violations it has not seen.
- stop keeps the agent in the loop until the run's limits or a stop request say it may end.
- session-start puts the loop's state in front of a new, resumed or compacted session.

A hook must never break a session silently: pre-tool-use fails closed for edits and shell commands (an error denies,
with the error in the reason), every other event logs the error to stderr and lets the session go on. Start-up stays
fast (no git, no torch): hooks run on every tool call. They keep working while a locked file is briefly missing (the
configuration is read without requiring its files to exist; the file guard restores them).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from server.config import Config, load_config

from harness.read_policy import READ_TOOLS, read_refusal

log = logging.getLogger(__name__)

EDIT_TOOLS = {"Edit": "file_path", "Write": "file_path", "MultiEdit": "file_path", "NotebookEdit": "notebook_path"}
# Tools the loop uses or Claude Code offers harmlessly; anything else reaching the hook is recorded as unknown.
KNOWN_TOOLS = frozenset({*EDIT_TOOLS, *READ_TOOLS, "Bash", "TodoWrite", "TodoRead", "BashOutput",
                         "KillShell", "KillBash", "ExitPlanMode"})
KNOWN_TOOL_PREFIXES = ("mcp__autoresearch__",)
ALLOW_BASH_ENV = "AUTORESEARCH_ALLOW_BASH"
TAG_ENV = "AUTORESEARCH_TAG"
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ARG_CHARS = 500


@dataclass(frozen=True)
class HookRun:
    """The run a hook reports into (a `loop_state.RunRef`)."""

    tag: str
    run_dir: Path


@dataclass(frozen=True)
class HookContext:
    payload: dict[str, Any]
    workspace: Path
    config: Config
    run: HookRun | None

    @property
    def session(self) -> str | None:
        value = self.payload.get("session_id")
        return str(value) if value else None

    def audit(self, event: str, *, status: str = "ok", tool: str | None = None, args: dict[str, Any] | None = None,
              summary: dict[str, Any] | None = None, duration_ms: float | None = None) -> None:
        """Append to the run's audit chain; outside a run there is no chain and nothing is written."""
        if self.run is None:
            return
        from server.audit import AuditLog

        AuditLog(self.run.run_dir / "audit.jsonl").append("hook", event, session=self.session, tool=tool, args=args,
                                                          status=status, summary=summary, duration_ms=duration_ms)


def workspace_of(payload: dict[str, Any]) -> Path:
    root = os.environ.get("CLAUDE_PROJECT_DIR") or payload.get("cwd") or os.getcwd()
    return Path(os.path.realpath(root))


def find_run(config: Config) -> HookRun | None:
    """The run named by $AUTORESEARCH_TAG or runs/CURRENT, if it exists."""
    tag = os.environ.get(TAG_ENV, "").strip()
    if not tag:
        try:
            tag = (config.runs_dir / "CURRENT").read_text(encoding="utf-8").strip()
        except OSError:
            return None
    if not _TAG.match(tag):
        log.warning("ignoring run tag %r: not a valid tag", tag)
        return None
    run_dir = config.runs_dir / tag
    return HookRun(tag, run_dir) if (run_dir / "run.json").is_file() else None


def build_context(payload: dict[str, Any]) -> HookContext:
    workspace = workspace_of(payload)
    config = load_config(workspace, require_files=False)
    return HookContext(payload, workspace, config, find_run(config))


# ---- pre-tool-use ----

def _deny(reason: str) -> dict[str, Any]:
    return {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny",
                                   "permissionDecisionReason": reason}}


def protected_paths(config: Config) -> list[str]:
    """Paths no shell command may touch: the locked files, the configuration, the agent settings and the runs."""
    paths = list(config.locked) + [".claude", ".mcp.json", ".git", "program.md"]
    for path in (config.source, config.runs_dir):
        try:
            paths.append(path.relative_to(config.workspace).as_posix())
        except ValueError:
            pass
    return list(dict.fromkeys(p for p in paths if p not in config.mutable))


def edit_refusal(config: Config, workspace: Path, payload: dict[str, Any], tool: str) -> str | None:
    """Why this edit must not happen, or None when it targets exactly a mutable file (symlinks and `..` resolved)."""
    tool_input = payload.get("tool_input") or {}
    raw = tool_input.get(EDIT_TOOLS[tool]) if isinstance(tool_input, dict) else None
    files = ", ".join(config.mutable)
    if not isinstance(raw, str) or not raw.strip():
        return f"{tool} without a {EDIT_TOOLS[tool]} was refused. Edit only {files} with the Edit tool."
    base = payload.get("cwd") or str(workspace)
    real = os.path.realpath(os.path.join(base, os.path.expanduser(raw)))
    allowed = {os.path.join(str(workspace), *m.split("/")) for m in config.mutable}
    if real in allowed:
        return None
    try:
        rel = Path(real).relative_to(workspace).as_posix()
    except ValueError:
        rel = None
    if rel is not None and rel in config.locked:
        why = f"{rel} is locked (pinned for this run and restored automatically if it changes)"
    elif rel is not None:
        why = f"{rel} is not one of the files this run may change"
    else:
        why = f"{real} is outside the workspace"
    if os.path.realpath(os.path.join(base, raw)) != os.path.normpath(os.path.join(base, raw)):
        why += f" ({raw} resolves to {real})"
    return (f"{tool} of {raw} was blocked: {why}. Edit only {files} with the Edit tool; the server commits and "
            "reverts, and the locked files stay as they are.")


def pre_tool_use(ctx: HookContext) -> dict[str, Any] | None:
    tool = str(ctx.payload.get("tool_name") or "")
    tool_input = ctx.payload.get("tool_input") or {}
    if tool in EDIT_TOOLS:
        reason = edit_refusal(ctx.config, ctx.workspace, ctx.payload, tool)
    elif tool == "Bash":
        reason = bash_refusal(ctx.config, ctx.workspace, tool_input)
    elif tool in READ_TOOLS:
        reason = read_refusal(tool, tool_input, str(ctx.payload.get("cwd") or ctx.workspace))
    elif is_known_tool(tool):
        return None  # the autoresearch tools and the harmless ones
    else:
        try:
            ctx.audit("tool_call", status="unknown_tool", tool=tool or "?", args=bounded_args(tool, tool_input),
                      summary={"reason": f"{tool or 'a tool without a name'} is not one of the tools the harness "
                                         "knows; recorded before Claude Code's permission rules decide"})
        except Exception:
            log.exception("could not record the call of unknown tool %r in the audit chain", tool)
        return None
    if reason is None:
        return None
    try:
        ctx.audit("tool_call", status="blocked", tool=tool, args=bounded_args(tool, tool_input),
                  summary={"reason": reason[:300]})
    except Exception:  # the refusal matters more than its record
        log.exception("could not record the refusal of %s in the audit chain", tool)
    return _deny(reason)


def is_known_tool(tool: str) -> bool:
    return tool in KNOWN_TOOLS or tool.startswith(KNOWN_TOOL_PREFIXES)


def bash_refusal(config: Config, workspace: Path, tool_input: Any) -> str | None:
    if os.environ.get(ALLOW_BASH_ENV) != "1":
        return ("Shell commands are turned off for this run. Run and judge experiments with the mcp__autoresearch "
                f"tools (run_experiment, read_results, commit_or_revert), read files with Read, Grep and Glob, and "
                f"change {', '.join(config.mutable)} with the Edit tool.")
    from harness.bash_policy import check_command

    command = tool_input.get("command") if isinstance(tool_input, dict) else None
    if not isinstance(command, str):
        return "Bash without a command string was refused."
    return check_command(command, protected_paths(config), workspace)


# ---- post-tool-use ----

def bounded_args(tool: str, tool_input: Any) -> dict[str, Any]:
    """The arguments worth keeping: paths and sizes for edits (never whole file contents), short strings otherwise."""
    if not isinstance(tool_input, dict):
        return {"input": _short(tool_input)}
    if tool == "Write":
        return {"file_path": tool_input.get("file_path"), "content_chars": len(str(tool_input.get("content", "")))}
    if tool == "Edit":
        return {"file_path": tool_input.get("file_path"), "old_chars": len(str(tool_input.get("old_string", ""))),
                "new_chars": len(str(tool_input.get("new_string", ""))),
                "replace_all": bool(tool_input.get("replace_all", False))}
    if tool == "MultiEdit":
        edits = tool_input.get("edits") if isinstance(tool_input.get("edits"), list) else []
        return {"file_path": tool_input.get("file_path"), "edits": len(edits),
                "new_chars": sum(len(str(e.get("new_string", ""))) for e in edits if isinstance(e, dict))}
    if tool == "NotebookEdit":
        return {"notebook_path": tool_input.get("notebook_path"), "cell_id": tool_input.get("cell_id"),
                "edit_mode": tool_input.get("edit_mode"), "new_chars": len(str(tool_input.get("new_source", "")))}
    return {str(k): _short(v) for k, v in list(tool_input.items())[:20]}


def _short(value: Any, limit: int = _ARG_CHARS) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + f"...[{len(text) - limit} chars]"


def _failed(payload: dict[str, Any]) -> bool:
    if payload.get("hook_event_name") == "PostToolUseFailure" or payload.get("error"):
        return True
    response = payload.get("tool_response")
    if isinstance(response, dict):
        return bool(response.get("is_error") or response.get("isError") or response.get("error")
                    or response.get("success") is False or response.get("interrupted"))
    return False


def post_tool_use(ctx: HookContext) -> dict[str, Any] | None:
    if ctx.run is None:
        return None
    tool = str(ctx.payload.get("tool_name") or "")
    failed = _failed(ctx.payload)
    response = ctx.payload.get("tool_response")
    if failed:
        summary: dict[str, Any] = {"error": _short(ctx.payload.get("error") or response, 300)}
    else:
        summary = {"response_chars": len(response) if isinstance(response, str) else
                   len(json.dumps(response, ensure_ascii=False, default=str))}
    duration = ctx.payload.get("duration_ms")
    ctx.audit("tool_call", status="error" if failed else "ok", tool=tool,
              args=bounded_args(tool, ctx.payload.get("tool_input")), summary=summary,
              duration_ms=duration if isinstance(duration, (int, float)) and not isinstance(duration, bool) else None)
    news = new_violations(ctx)
    if not news:
        return None
    return {"hookSpecificOutput": {"hookEventName": "PostToolUse", "additionalContext": violation_notice(ctx, news)}}


def _cursor_path(ctx: HookContext) -> Path:
    assert ctx.run is not None
    name = re.sub(r"[^A-Za-z0-9._-]", "_", ctx.session or "no-session")[:100]
    return ctx.run.run_dir / "hooks" / f"{name}.json"


def new_violations(ctx: HookContext, *, mark_all_seen: bool = False) -> list[dict[str, Any]]:
    """Violation records this session has not been told about; moves its cursor past them."""
    from server.jsonl import atomic_write_text, locked, read_records

    assert ctx.run is not None
    path = _cursor_path(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):  # parallel tool calls of one session must not both report the same violation
        records = read_records(ctx.run.run_dir / "violations.jsonl")
        try:
            seen = int(json.loads(path.read_text(encoding="utf-8")).get("seen", 0))
        except (OSError, ValueError, AttributeError, TypeError):
            seen = 0
        seen = min(max(seen, 0), len(records))
        news = [] if mark_all_seen else records[seen:]
        if len(records) != seen or not path.exists():
            atomic_write_text(path, json.dumps({"seen": len(records)}) + "\n")
    return news


def violation_notice(ctx: HookContext, news: list[dict[str, Any]]) -> str:
    lines = [f"WARNING: {len(news)} new integrity violation(s) in run {ctx.run.tag if ctx.run else '?'}:"]
    for rec in news[-5:]:
        exp = rec.get("experiment_id")
        during = f" during experiment {exp} (that result is void)" if exp is not None else ""
        lines.append(f"- {str(rec.get('detail') or rec.get('path'))[:200]}{during}")
    lines.append(f"Locked files are restored automatically and every change is recorded. Edit only "
                 f"{', '.join(ctx.config.mutable)}, with the Edit tool.")
    return "\n".join(lines)


# ---- stop and session-start ----

def stop(ctx: HookContext) -> dict[str, Any] | None:
    if ctx.run is None:
        return None
    from harness.loop_state import read_loop_state

    state = read_loop_state(ctx.config, ctx.run)
    reason = state.stop_reason()
    active = bool(ctx.payload.get("stop_hook_active"))
    if reason is not None:
        ctx.audit("stop_allowed", summary={"reason": reason, "stop_hook_active": active})
        return None
    ctx.audit("stop_blocked", summary={"stop_hook_active": active, "experiments": len(state.experiments)})
    return {"decision": "block",
            "reason": "Do not stop: the autoresearch loop continues until the harness ends it (time, experiment or "
                      "cost limit, or a stop request). Continue with the next step.\n\n" + state.brief()}


def session_start(ctx: HookContext) -> dict[str, Any] | None:
    source = str(ctx.payload.get("source") or "")
    if ctx.run is None:
        text = ("No autoresearch run is active in this workspace. A person starts one with `autoresearch init --tag "
                f"TAG` (or `autoresearch run`); until then only {', '.join(ctx.config.mutable)} may be edited.")
    else:
        from harness.loop_state import read_loop_state

        text = read_loop_state(ctx.config, ctx.run).brief()
        new_violations(ctx, mark_all_seen=True)  # the brief already counts them; report only later ones
        ctx.audit("session_start", summary={"source": source})
    return {"hookSpecificOutput": {"hookEventName": "SessionStart", "additionalContext": text}}


HANDLERS: dict[str, Callable[[HookContext], dict[str, Any] | None]] = {
    "pre-tool-use": pre_tool_use, "post-tool-use": post_tool_use, "stop": stop, "session-start": session_start,
}


def _fail_closed(event: str, payload: dict[str, Any], exc: BaseException) -> dict[str, Any] | None:
    """After an internal error, pre-tool-use denies edits, shell commands and input it could not read."""
    if event != "pre-tool-use":
        return None
    tool = str(payload.get("tool_name") or "")
    if not payload:
        return _deny(f"the tool call was refused: the hook could not read its input ({exc})")
    if tool not in EDIT_TOOLS and tool != "Bash":
        return None
    return _deny(f"{tool} was refused because the guard hook failed ({type(exc).__name__}: {str(exc)[:300]}); "
                 "nothing was changed. Fix the configuration or tell a person; edits resume once the hook works.")


def _read_payload() -> dict[str, Any]:
    payload = json.loads(sys.stdin.read() or "{}")
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object on stdin, got {type(payload).__name__}")
    return payload


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="autoresearch hook %(levelname)s: %(message)s")
    if len(args) != 1 or args[0] not in HANDLERS:
        print(f"usage: python -m harness.hooks {{{'|'.join(HANDLERS)}}}; got {args!r}. Fix the hook command in "
              ".claude/settings.json.", file=sys.stderr)
        return 1  # a non-blocking error: Claude Code shows it to the user
    event = args[0]
    payload: dict[str, Any] = {}
    try:
        payload = _read_payload()
        out = HANDLERS[event](build_context(payload))
    except Exception as exc:
        log.exception("%s hook failed", event)
        out = _fail_closed(event, payload, exc)
    if out is not None:
        sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
