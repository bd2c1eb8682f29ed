"""The command line and environment of one headless Claude Code session.

Kept apart from the supervisor so the exact flags can be unit-tested and read in one place. Choices that matter:

- Never `--bare`: it skips hooks, and the harness's hooks are part of its guard.
- Never `--dangerously-skip-permissions`: it refuses to run as root (cloud GPU boxes run as root) and would also
  drop the allow-list. Tools are granted with `--allowedTools` instead, which is honoured even in an untrusted
  workspace.
- The prompt goes last, after `--`. Claude Code parses a prompt that starts with `-` as options (`-weird` reads as
  `-w eird`, a worktree request), so the separator is not optional.
- `--strict-mcp-config` so only the harness's MCP servers load, never ones from the user's own configuration.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

LaunchMode = Literal["new", "resume", "fresh"]


@dataclass(frozen=True)
class ClaudeLaunchSpec:
    """Everything about a session that stays the same across restarts of the agent."""

    claude_bin: Path
    workspace: Path
    mcp_config: Path
    settings: Path | None = None
    allowed_tools: list[str] = field(default_factory=list)
    disallowed_tools: list[str] = field(default_factory=list)
    model: str | None = None
    max_turns: int | None = None
    append_system_prompt: str | None = None
    permission_mode: str = "acceptEdits"
    mcp_tool_timeout_ms: int | None = None  # MCP_TOOL_TIMEOUT; a server's own "timeout" in the config wins
    extra_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionLaunch:
    """One start of the agent process.

    `new` starts the run's first session, `fresh` a new session after one could not be continued (both pass
    `--session-id`, generated here when not given, so the caller knows the id before the process prints it);
    `resume` continues `session_id` with `--resume`.
    """

    mode: LaunchMode
    prompt: str
    session_id: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("new", "resume", "fresh"):
            raise ValueError(f"launch mode must be 'new', 'resume' or 'fresh', got {self.mode!r}")
        if self.mode == "resume":
            if not self.session_id:
                raise ValueError("a 'resume' launch needs the session_id to continue; pass the id from the INIT event")
            return
        if self.session_id is None:
            object.__setattr__(self, "session_id", str(uuid.uuid4()))
        else:
            try:
                uuid.UUID(self.session_id)
            except ValueError:
                raise ValueError(f"Claude Code needs a UUID for --session-id, got {self.session_id!r}; "
                                 "leave session_id empty to generate one") from None


def build_argv(spec: ClaudeLaunchSpec, launch: SessionLaunch) -> list[str]:
    """The argv for `launch`, to run with cwd=spec.workspace and env=build_env(spec)."""
    argv = [str(spec.claude_bin), "-p", "--output-format", "stream-json", "--verbose",
            "--mcp-config", str(spec.mcp_config), "--strict-mcp-config",
            "--permission-mode", spec.permission_mode]
    if launch.mode == "resume":
        argv += ["--resume", str(launch.session_id)]
    else:
        argv += ["--session-id", str(launch.session_id)]
    if spec.settings is not None:
        argv += ["--settings", str(spec.settings)]
    # One comma-joined value each: the flags are variadic and would otherwise swallow what follows.
    if spec.allowed_tools:
        argv += ["--allowedTools", ",".join(spec.allowed_tools)]
    if spec.disallowed_tools:
        argv += ["--disallowedTools", ",".join(spec.disallowed_tools)]
    if spec.model:
        argv += ["--model", spec.model]
    if spec.max_turns is not None:
        argv += ["--max-turns", str(spec.max_turns)]
    if spec.append_system_prompt:
        argv += ["--append-system-prompt", spec.append_system_prompt]
    argv += ["--", launch.prompt]
    return argv


def build_env(spec: ClaudeLaunchSpec, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment: `base` (default os.environ) plus what an unattended session needs.

    Nonessential traffic is off (offline boxes would otherwise wait on telemetry hosts), tool search is off so the
    model sees the MCP tools' full schemas, and `extra_env` comes last so a run can override anything.
    """
    env = dict(os.environ if base is None else base)
    env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"
    env["ENABLE_TOOL_SEARCH"] = "false"
    if spec.mcp_tool_timeout_ms is not None:
        env["MCP_TOOL_TIMEOUT"] = str(spec.mcp_tool_timeout_ms)
    env.update(spec.extra_env)
    return env


def ensure_workspace_trusted(home: Path, workspace: Path) -> Path:
    """Mark `workspace` trusted in `<home>/.claude.json` and return that file's path.

    In a workspace not marked trusted Claude Code ignores the project's `.claude/settings.json` allow rules (deny
    rules and hooks still apply), and headless mode cannot show the trust dialog. The harness calls this for the
    run's workspace only, never for any other directory; everything else in the file is kept as it was. The write
    is atomic so a crash cannot leave Claude Code with a truncated configuration.
    """
    config_path = home / ".claude.json"
    key = str(workspace.resolve())
    data: dict[str, object] = {}
    mode = 0o600
    if config_path.exists():
        text = config_path.read_text(encoding="utf-8")
        mode = config_path.stat().st_mode & 0o777
        if text.strip():
            try:
                loaded = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"{config_path} is not valid JSON ({exc}); fix or remove it, then start again. "
                                 "It was left untouched.") from exc
            if not isinstance(loaded, dict):
                raise ValueError(f"{config_path} holds a JSON {type(loaded).__name__}, expected an object; "
                                 "fix or remove it, then start again. It was left untouched.")
            data = loaded
    projects = data.get("projects")
    if not isinstance(projects, dict):
        projects = {}
        data["projects"] = projects
    entry = projects.get(key)
    if not isinstance(entry, dict):
        entry = {}
        projects[key] = entry
    if entry.get("hasTrustDialogAccepted") is True:
        return config_path
    entry["hasTrustDialogAccepted"] = True
    _atomic_write(config_path, json.dumps(data, indent=2) + "\n", mode)
    logger.info("marked %s trusted in %s", key, config_path)
    return config_path


def _atomic_write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
