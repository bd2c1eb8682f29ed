"""`autoresearch mcp-config`: the configuration that connects an MCP-capable agent to this project's server.

Every agent reads a different file in a different format, with the per-call timeout in a different unit. The timeout
matters most: an agent that gives up on `run_experiment` before the hard experiment limit cancels a run the engine
would have finished, so each file carries `hard + evaluation + 120 s`. Writing merges into what the user already has
(their other servers and settings stay), and refuses rather than guesses when an existing entry cannot be replaced
safely. A file written into the repository is recorded so that it does not count as a change to the repository under
test while it holds exactly what was written (`server/agent_files.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from server.agent_files import record_written

logger = logging.getLogger(__name__)

SERVER_NAME = "autoresearch"
TOOL_NAMES = ("run_experiment", "read_results", "commit_or_revert")
AGENTS = ("claude", "codex", "gemini", "cursor", "opencode", "goose")
TIMEOUT_MARGIN_S = 120.0
STARTUP_TIMEOUT_S = 30
WORKSPACE_ENV = "AUTORESEARCH_WORKSPACE"


class McpConfigError(Exception):
    """The configuration cannot be rendered or written; the message says what to do instead."""


@dataclass(frozen=True)
class ServerLaunch:
    """How an agent starts the stdio server: the same for every agent, rendered differently by each."""

    command: str
    args: list[str]
    env: dict[str, str]
    cwd: Path
    tool_timeout_s: float


def tool_timeout_for(hard_timeout_s: float, eval_timeout_s: float) -> float:
    """Per-call timeout that outlasts the slowest experiment the engine allows, plus its evaluation."""
    if hard_timeout_s <= 0 or eval_timeout_s < 0:
        raise McpConfigError(
            f"timeouts must be positive (hard_timeout_s={hard_timeout_s}, eval timeout_s={eval_timeout_s}); "
            "fix hard_timeout_s and evaluate.timeout_s in [tool.autoresearch]"
        )
    return float(hard_timeout_s) + float(eval_timeout_s) + TIMEOUT_MARGIN_S


def server_launch(workspace: Path | str, tool_timeout_s: float, python: str = sys.executable) -> ServerLaunch:
    """The server command for `workspace`, run by `python` (the interpreter `autoresearch` itself runs under)."""
    root = Path(workspace).expanduser().resolve()
    return ServerLaunch(
        command=python,
        args=["-P", "-m", "server", "serve", "--workspace", str(root)],
        env={WORKSPACE_ENV: str(root)},
        cwd=root,
        tool_timeout_s=float(tool_timeout_s),
    )


# ---- Renderers: (target path, text). Relative paths are relative to the workspace, absolute ones are per user ----


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def _whole_s(seconds: float) -> int:
    return int(-(-seconds // 1))  # ceiling, so rounding never drops below the hard limit


def _json_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def claude_entry(launch: ServerLaunch) -> dict[str, Any]:
    return {
        "type": "stdio",
        "command": launch.command,
        "args": list(launch.args),
        "env": dict(launch.env),
        "timeout": _ms(launch.tool_timeout_s),
        "alwaysLoad": True,
    }


def gemini_entry(launch: ServerLaunch) -> dict[str, Any]:
    return {
        "command": launch.command,
        "args": list(launch.args),
        "env": dict(launch.env),
        "cwd": str(launch.cwd),
        "timeout": _ms(launch.tool_timeout_s),
        "trust": True,
    }


def cursor_entry(launch: ServerLaunch) -> dict[str, Any]:
    return {"command": launch.command, "args": list(launch.args), "env": dict(launch.env)}


def opencode_entry(launch: ServerLaunch) -> dict[str, Any]:
    # opencode 1.x uses `timeout` (ms) for every request to the server, tool calls included.
    return {
        "type": "local",
        "command": [launch.command, *launch.args],
        "cwd": str(launch.cwd),
        "environment": dict(launch.env),
        "enabled": True,
        "timeout": _ms(launch.tool_timeout_s),
    }


def render_claude(launch: ServerLaunch) -> tuple[Path, str]:
    return Path(".mcp.json"), _json_text({"mcpServers": {SERVER_NAME: claude_entry(launch)}})


def render_gemini(launch: ServerLaunch) -> tuple[Path, str]:
    return Path(".gemini/settings.json"), _json_text({"mcpServers": {SERVER_NAME: gemini_entry(launch)}})


def render_cursor(launch: ServerLaunch) -> tuple[Path, str]:
    return Path(".cursor/mcp.json"), _json_text({"mcpServers": {SERVER_NAME: cursor_entry(launch)}})


def render_opencode(launch: ServerLaunch) -> tuple[Path, str]:
    document = {"$schema": "https://opencode.ai/config.json", "mcp": {SERVER_NAME: opencode_entry(launch)}}
    return Path("opencode.json"), _json_text(document)


def toml_string(value: str) -> str:
    """A TOML basic string; escapes everything TOML forbids raw (quotes, backslash, control characters, DEL)."""
    out = []
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def codex_block(launch: ServerLaunch) -> str:
    """Our two tables for Codex's config.toml, self-contained so they can be appended to or cut from a file."""
    args = ", ".join(toml_string(a) for a in launch.args)
    lines = [
        f"[mcp_servers.{SERVER_NAME}]",
        f"command = {toml_string(launch.command)}",
        f"args = [{args}]",
        f"cwd = {toml_string(str(launch.cwd))}",
        f"startup_timeout_sec = {STARTUP_TIMEOUT_S}",
        f"tool_timeout_sec = {_whole_s(launch.tool_timeout_s)}",
        "",
        f"[mcp_servers.{SERVER_NAME}.env]",
        *(f"{k} = {toml_string(v)}" for k, v in sorted(launch.env.items())),
    ]
    return "\n".join(lines) + "\n"


def render_codex(launch: ServerLaunch) -> tuple[Path, str]:
    return Path(".codex/config.toml"), codex_block(launch)


_YAML_PLAIN = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./=-]*$")
_YAML_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def yaml_scalar(value: str) -> str:
    """A YAML string: plain when unambiguous, else double-quoted with JSON escapes (valid YAML 1.2)."""
    if _YAML_PLAIN.match(value) and value.lower() not in _YAML_RESERVED and not _looks_numeric(value):
        return value
    return json.dumps(value, ensure_ascii=False)


def _looks_numeric(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return value.startswith(("0x", "0o", "0b", "."))
    return True


def goose_entry_lines(launch: ServerLaunch, indent: str) -> list[str]:
    """The `autoresearch:` entry of Goose's `extensions` mapping, each line prefixed with `indent`."""
    i1, i2 = indent, indent * 2
    lines = [
        f"{SERVER_NAME}:",
        f"{i1}type: stdio",
        f"{i1}name: {SERVER_NAME}",
        f"{i1}description: {yaml_scalar('Locked experiment tools: ' + ', '.join(TOOL_NAMES))}",
        f"{i1}cmd: {yaml_scalar(launch.command)}",
        f"{i1}args:",
        *(f"{i2}- {yaml_scalar(a)}" for a in launch.args),
        f"{i1}envs:",
        *(f"{i2}{k}: {yaml_scalar(v)}" for k, v in sorted(launch.env.items())),
        f"{i1}enabled: true",
        f"{i1}timeout: {_whole_s(launch.tool_timeout_s)}",
    ]
    return [indent + line for line in lines]


def goose_path(home: Path) -> Path:
    return home / ".config" / "goose" / "config.yaml"


def render_goose(launch: ServerLaunch, home: Path | None = None) -> tuple[Path, str]:
    text = "extensions:\n" + "\n".join(goose_entry_lines(launch, "  ")) + "\n"
    return goose_path(home or Path.home()), text


def render(agent: str, launch: ServerLaunch, home: Path | None = None) -> tuple[Path, str]:
    """Dispatch to the agent's renderer; an unknown agent is an error that lists the known ones."""
    renderers: dict[str, Callable[[ServerLaunch], tuple[Path, str]]] = {
        "claude": render_claude,
        "codex": render_codex,
        "gemini": render_gemini,
        "cursor": render_cursor,
        "opencode": render_opencode,
        "goose": lambda launch_: render_goose(launch_, home),
    }
    if agent not in renderers:
        raise McpConfigError(f"unknown agent {agent!r}; choose one of: {', '.join(AGENTS)}")
    return renderers[agent](launch)


# ---- Merging into an existing file ----

_JSON_CONTAINER = {"claude": "mcpServers", "gemini": "mcpServers", "cursor": "mcpServers", "opencode": "mcp"}
_JSON_ENTRY: dict[str, Callable[[ServerLaunch], dict[str, Any]]] = {
    "claude": claude_entry,
    "gemini": gemini_entry,
    "cursor": cursor_entry,
    "opencode": opencode_entry,
}


def merge_json(agent: str, existing: str, launch: ServerLaunch, path: Path) -> str:
    """Set our entry in the agent's server map, keeping every other key of the document."""
    try:
        document = json.loads(existing) if existing.strip() else {}
    except json.JSONDecodeError as exc:
        raise McpConfigError(
            f"{path} is not plain JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "fix it (comments are not supported here) or add the entry printed without --write by hand"
        ) from exc
    container = _JSON_CONTAINER[agent]
    if not isinstance(document, dict) or not isinstance(document.get(container, {}), dict):
        raise McpConfigError(f"{path}: expected an object with an object {container!r}; fix the file and retry")
    if agent == "opencode":
        document.setdefault("$schema", "https://opencode.ai/config.json")
    document.setdefault(container, {})[SERVER_NAME] = _JSON_ENTRY[agent](launch)
    return _json_text(document)


_TOML_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _toml_table_key(line: str) -> list[str] | None:
    match = _TOML_HEADER.match(line)
    if not match:
        return None
    return [part.strip().strip('"').strip("'") for part in match.group(1).split(".")]


def merge_codex_toml(existing: str, launch: ServerLaunch, path: Path) -> str:
    """Replace our `[mcp_servers.autoresearch]` tables (or append them), leaving every other line untouched.

    Without a TOML writer the file cannot be rewritten, so this edits lines; the result is parsed again and must hold
    our entry exactly and every other setting unchanged, or nothing is written.
    """
    before = _parse_toml(existing, path)
    ours = tomllib.loads(codex_block(launch))["mcp_servers"][SERVER_NAME]
    lines = existing.splitlines()
    kept: list[str] = []
    inside = False
    found_header = False
    for line in lines:
        key = _toml_table_key(line)
        if key is not None:
            inside = key[:2] == ["mcp_servers", SERVER_NAME]
            found_header = found_header or inside
        if not inside:
            kept.append(line)
    if SERVER_NAME in before.get("mcp_servers", {}) and not found_header:
        raise McpConfigError(
            f"{path} defines mcp_servers.{SERVER_NAME} in a form this command cannot replace safely "
            "(inline table or dotted keys); delete that entry and rerun with --write"
        )
    while kept and not kept[-1].strip():
        kept.pop()
    merged = ("\n".join(kept) + "\n\n" if kept else "") + codex_block(launch)
    after = _parse_toml(merged, path)
    expected = dict(before)
    expected_servers = dict(before.get("mcp_servers", {}))
    expected_servers[SERVER_NAME] = ours
    expected["mcp_servers"] = expected_servers
    if after != expected:
        raise McpConfigError(
            f"merging into {path} would change settings other than mcp_servers.{SERVER_NAME}; "
            "add the block printed without --write by hand"
        )
    return merged


def _parse_toml(text: str, path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise McpConfigError(f"{path} is not valid TOML ({exc}); fix it and retry") from exc


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def merge_goose_yaml(existing: str, launch: ServerLaunch, path: Path) -> str:
    """Put our entry under the top-level block mapping `extensions`, replacing an existing `autoresearch` entry.

    A block-mapping entry ends at the next content line indented no deeper than its key, which is what lets us cut
    an old entry out without a YAML library. Flow style (`extensions: {...}`), tabs or documents we do not recognise
    are refused.
    """
    lines = existing.splitlines()
    if "\t" in existing:
        raise McpConfigError(f"{path} contains tab characters; this command edits only space-indented YAML")
    if any(line.strip() in ("---", "...") for line in lines[1:]):
        raise McpConfigError(f"{path} holds several YAML documents; add the entry printed without --write by hand")
    top = [i for i, line in enumerate(lines) if re.match(r"^extensions\s*:", line)]
    if not top:
        body = list(lines)
        while body and not body[-1].strip():
            body.pop()
        prefix = "\n".join(body) + "\n" if body else ""
        return prefix + "extensions:\n" + "\n".join(goose_entry_lines(launch, "  ")) + "\n"
    if len(top) > 1:
        raise McpConfigError(f"{path} has the key 'extensions' twice; fix the file and retry")
    start = top[0]
    rest = lines[start].split(":", 1)[1].split("#", 1)[0].strip()
    if rest not in ("", "{}"):
        raise McpConfigError(
            f"{path}: 'extensions' is written in flow style ({rest[:40]!r}); rewrite it as a block mapping or add "
            "the entry printed without --write by hand"
        )
    end = start + 1
    while end < len(lines) and (not _is_content(lines[end]) or _indent_of(lines[end]) > 0):
        end += 1
    section = lines[start + 1 : end]
    content = [ln for ln in section if _is_content(ln)]
    indent = " " * (_indent_of(content[0]) if content else 2)
    if rest == "{}" and content:
        raise McpConfigError(f"{path}: 'extensions: {{}}' is followed by indented lines; fix the file and retry")
    new_section: list[str] = []
    i = 0
    while i < len(section):
        line = section[i]
        if _is_content(line) and _indent_of(line) == len(indent) and re.match(
            rf"^{indent}['\"]?{SERVER_NAME}['\"]?\s*:", line
        ):
            i += 1
            while i < len(section) and (not _is_content(section[i]) or _indent_of(section[i]) > len(indent)):
                i += 1
            continue
        new_section.append(line)
        i += 1
    while new_section and not new_section[-1].strip():
        new_section.pop()
    merged_lines = [
        *lines[:start],
        "extensions:",
        *new_section,
        *goose_entry_lines(launch, indent),
        *lines[end:],
    ]
    return "\n".join(merged_lines) + "\n"


def merge(agent: str, existing: str, launch: ServerLaunch, path: Path) -> str:
    """The new content of `path` given its current content (empty when it does not exist)."""
    if agent in _JSON_CONTAINER:
        return merge_json(agent, existing, launch, path)
    if agent == "codex":
        return merge_codex_toml(existing, launch, path)
    if agent == "goose":
        return merge_goose_yaml(existing, launch, path)
    raise McpConfigError(f"unknown agent {agent!r}; choose one of: {', '.join(AGENTS)}")


def _atomic_write(path: Path, text: str) -> None:
    """Replace `path` whole, keeping its permission bits (user config files may hold secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def target_path(agent: str, launch: ServerLaunch, home: Path) -> Path:
    relative, _ = render(agent, launch, home)
    return relative if relative.is_absolute() else launch.cwd / relative


def write_config(agent: str, launch: ServerLaunch, home: Path | None = None) -> Path:
    """Merge our entry into the file the agent reads and return its path."""
    home = home or Path.home()
    path = target_path(agent, launch, home)
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    text = merge(agent, existing, launch, path)
    _atomic_write(path, text)
    if path.is_relative_to(launch.cwd):
        # A file the agent reads from the repository must not count as a change to it (see server/agent_files.py).
        record_written(launch.cwd, path.relative_to(launch.cwd).as_posix(), text.encode("utf-8"), agent)
    logger.info("wrote the %s MCP configuration to %s", agent, path)
    return path


def trust_notes(agent: str, launch: ServerLaunch, home: Path) -> list[str]:
    """What else the agent needs before it loads a project-level file (both CLIs ignore them in untrusted folders)."""
    root = str(launch.cwd)
    if agent == "codex" and not _codex_trusts(home / ".codex" / "config.toml", root):
        return [
            f"Codex reads .codex/config.toml only in trusted projects; {root} is not trusted in ~/.codex/config.toml.",
            "Start `codex` there once and accept the trust prompt, or add to ~/.codex/config.toml:",
            f"  [projects.{toml_string(root)}]",
            '  trust_level = "trusted"',
        ]
    if agent == "gemini" and not _gemini_trusts(home / ".gemini" / "trustedFolders.json", root):
        return [
            f"Gemini CLI disables project MCP servers in untrusted folders; {root} is not in ~/.gemini/trustedFolders.json.",
            f"Start `gemini` there once and trust the folder, or add {json.dumps({root: 'TRUST_FOLDER'})} to that file.",
        ]
    return []


def _codex_trusts(config: Path, root: str) -> bool:
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return data.get("projects", {}).get(root, {}).get("trust_level") == "trusted"


def _gemini_trusts(path: Path, root: str) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get(root) == "TRUST_FOLDER"


# ---- Command line ----


def _limits_from_config(workspace: Path) -> tuple[float, float]:
    """(hard_timeout_s, evaluate.timeout_s) from the workspace's configuration."""
    try:
        from server.config import load_config
    except ImportError as exc:
        raise McpConfigError(
            f"cannot read the experiment limits ({exc}); pass --hard-timeout-s and --eval-timeout-s"
        ) from exc
    config = load_config(workspace)
    return float(config.hard_timeout_s), float(config.evaluate.timeout_s)


def add_mcp_config_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `mcp-config` on an argparse subparsers object; the handler is stored as `handler` (and `func`)."""
    parser = subparsers.add_parser(
        "mcp-config",
        help="print or write the config that connects an agent to the autoresearch MCP server",
        description="Print (or with --write, merge into the file the agent reads) the configuration that starts "
        "this project's MCP server for AGENT. Agents: " + ", ".join(AGENTS) + ".",
    )
    configure_parser(parser)
    return parser


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent", required=True, metavar="AGENT", help="one of: " + ", ".join(AGENTS))
    parser.add_argument("--write", action="store_true", help="merge into the agent's config file instead of printing")
    parser.add_argument("--workspace", type=Path, default=Path.cwd(), help="project root (default: current directory)")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the server (default: this one)")
    parser.add_argument("--hard-timeout-s", type=float, help="override the configured hard experiment limit")
    parser.add_argument("--eval-timeout-s", type=float, help="override the configured evaluation limit")
    parser.add_argument("--home", type=Path, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(handler=run_mcp_config, func=run_mcp_config)


def run_mcp_config(args: argparse.Namespace) -> int:
    """Handler for parsed `mcp-config` arguments; returns the exit code."""
    home = args.home or Path.home()
    try:
        if args.agent not in AGENTS:
            raise McpConfigError(f"unknown agent {args.agent!r}; choose one of: {', '.join(AGENTS)}")
        workspace = args.workspace.expanduser().resolve()
        if not workspace.is_dir():
            raise McpConfigError(f"workspace {str(workspace)!r} is not a directory; pass --workspace PROJECT_ROOT")
        hard, evaluation = args.hard_timeout_s, args.eval_timeout_s
        if hard is None or evaluation is None:
            configured_hard, configured_eval = _limits_from_config(workspace)
            hard = configured_hard if hard is None else hard
            evaluation = configured_eval if evaluation is None else evaluation
        launch = server_launch(workspace, tool_timeout_for(hard, evaluation), python=args.python)
        if args.write:
            path = write_config(args.agent, launch, home)
            print(f"wrote the {SERVER_NAME} MCP server for {args.agent} to {path}")
        else:
            path = target_path(args.agent, launch, home)
            _, text = render(args.agent, launch, home)
            print(f"# {path}")
            print(text, end="")
    except McpConfigError as exc:
        print(f"autoresearch mcp-config: {exc}", file=sys.stderr)
        return 2
    for note in trust_notes(args.agent, launch, home):
        print(note, file=sys.stderr)
    return 0


def main_mcp_config(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: `python -m harness.mcp_config --agent codex [--write]`."""
    parser = argparse.ArgumentParser(prog="autoresearch mcp-config")
    configure_parser(parser)
    return run_mcp_config(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main_mcp_config())
