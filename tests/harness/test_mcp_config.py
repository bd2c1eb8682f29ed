"""`autoresearch mcp-config`: each agent's file has its documented shape, timeouts outlast the hard limit, and
writing merges into what the user already has."""

from __future__ import annotations

import json
import stat
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from harness import mcp_config
from harness.mcp_config import (
    AGENTS,
    McpConfigError,
    ServerLaunch,
    main_mcp_config,
    merge,
    render,
    server_launch,
    tool_timeout_for,
    write_config,
)

HARD_S = 600.0
EVAL_S = 600.0
TIMEOUT_S = tool_timeout_for(HARD_S, EVAL_S)

try:
    import yaml  # not a dependency: used only when present
except ImportError:
    yaml = None


# ---- A strict reader for the small block-YAML subset Goose's config uses (used when PyYAML is absent) ----


def _yaml_scalar(text: str) -> Any:
    if text.startswith('"'):
        return json.loads(text)
    if text.startswith("'") or text[:1] in "{[&*!|>%@`":
        raise ValueError(f"unsupported YAML scalar {text!r}")
    if text == "true":
        return True
    if text == "false":
        return False
    if text.lstrip("-").isdigit():
        return int(text)
    if ": " in text or " #" in text:
        raise ValueError(f"ambiguous plain scalar {text!r}")
    return text


def mini_yaml(text: str) -> Any:
    """Parse block mappings and sequences of scalars; anything else raises, so a malformed file fails the test."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]

    def block(i: int, indent: int) -> tuple[Any, int]:
        is_seq = lines[i][indent:].startswith("- ")
        result: Any = [] if is_seq else {}
        while i < len(lines):
            line = lines[i]
            current = len(line) - len(line.lstrip(" "))
            if current < indent:
                break
            if current > indent:
                raise ValueError(f"unexpected indentation: {line!r}")
            body = line[indent:]
            if is_seq:
                if not body.startswith("- "):
                    raise ValueError(f"mixed sequence and mapping: {line!r}")
                result.append(_yaml_scalar(body[2:].strip()))
                i += 1
                continue
            key, sep, value = body.partition(":")
            if not sep or key in result or (value and not value.startswith(" ")):
                raise ValueError(f"bad mapping line: {line!r}")
            value = value.strip()
            if value:
                result[key] = _yaml_scalar(value)
                i += 1
            else:
                nxt = lines[i + 1] if i + 1 < len(lines) else ""
                child_indent = len(nxt) - len(nxt.lstrip(" "))
                if child_indent <= indent:
                    raise ValueError(f"key without value: {line!r}")
                result[key], i = block(i + 1, child_indent)
        return result, i

    value, end = block(0, 0)
    assert end == len(lines)
    return value


def load_yaml(text: str) -> Any:
    return yaml.safe_load(text) if yaml is not None else mini_yaml(text)


# ---- Fixtures ----


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "my project"
    root.mkdir()
    return root


@pytest.fixture
def launch(workspace: Path) -> ServerLaunch:
    return server_launch(workspace, TIMEOUT_S, python="/opt/py/bin/python3")


def test_the_tool_timeout_outlasts_the_hard_limit_and_the_evaluation_by_two_minutes() -> None:
    assert tool_timeout_for(600, 300) == 1020.0
    with pytest.raises(McpConfigError, match="hard_timeout_s"):
        tool_timeout_for(0, 300)


def test_the_server_is_started_by_the_given_interpreter_on_the_absolute_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ws").mkdir()
    launch = server_launch("ws", 900)
    assert launch.command == sys.executable
    assert launch.args == ["-P", "-m", "server", "serve", "--workspace", str(tmp_path / "ws")]
    assert launch.env == {"AUTORESEARCH_WORKSPACE": str(tmp_path / "ws")}
    assert launch.cwd == tmp_path / "ws"


def test_claude_gets_a_project_mcp_json_with_a_stdio_entry_always_loaded(launch: ServerLaunch) -> None:
    path, text = render("claude", launch)
    entry = json.loads(text)["mcpServers"]["autoresearch"]
    assert path == Path(".mcp.json")
    assert entry == {
        "type": "stdio",
        "command": "/opt/py/bin/python3",
        "args": launch.args,
        "env": launch.env,
        "timeout": 1_320_000,
        "alwaysLoad": True,
    }


def test_codex_gets_toml_tables_with_timeouts_in_seconds_and_the_workspace_env(launch: ServerLaunch) -> None:
    path, text = render("codex", launch)
    entry = tomllib.loads(text)["mcp_servers"]["autoresearch"]
    assert path == Path(".codex/config.toml")
    assert entry["command"] == "/opt/py/bin/python3"
    assert entry["args"] == launch.args
    assert entry["cwd"] == str(launch.cwd)
    assert entry["tool_timeout_sec"] == 1320
    assert entry["startup_timeout_sec"] > 0
    assert entry["env"] == {"AUTORESEARCH_WORKSPACE": str(launch.cwd)}


def test_gemini_gets_settings_json_with_cwd_trust_and_a_timeout_in_milliseconds(launch: ServerLaunch) -> None:
    path, text = render("gemini", launch)
    entry = json.loads(text)["mcpServers"]["autoresearch"]
    assert path == Path(".gemini/settings.json")
    assert entry == {
        "command": "/opt/py/bin/python3",
        "args": launch.args,
        "env": launch.env,
        "cwd": str(launch.cwd),
        "timeout": 1_320_000,
        "trust": True,
    }


def test_cursor_gets_the_plain_command_args_env_shape(launch: ServerLaunch) -> None:
    path, text = render("cursor", launch)
    assert path == Path(".cursor/mcp.json")
    assert json.loads(text) == {
        "mcpServers": {"autoresearch": {"command": "/opt/py/bin/python3", "args": launch.args, "env": launch.env}}
    }


def test_opencode_gets_a_local_entry_with_the_command_as_one_list(launch: ServerLaunch) -> None:
    path, text = render("opencode", launch)
    entry = json.loads(text)["mcp"]["autoresearch"]
    assert path == Path("opencode.json")
    assert entry["type"] == "local"
    assert entry["command"] == ["/opt/py/bin/python3", *launch.args]
    assert entry["environment"] == launch.env
    assert entry["enabled"] is True
    assert entry["timeout"] == 1_320_000


def test_goose_gets_a_stdio_extension_in_its_user_config_yaml(launch: ServerLaunch, tmp_path: Path) -> None:
    path, text = render("goose", launch, home=tmp_path / "home")
    entry = load_yaml(text)["extensions"]["autoresearch"]
    assert path == tmp_path / "home" / ".config" / "goose" / "config.yaml"
    assert entry["type"] == "stdio"
    assert entry["name"] == "autoresearch"
    assert entry["cmd"] == "/opt/py/bin/python3"
    assert entry["args"] == launch.args
    assert entry["envs"] == launch.env
    assert entry["enabled"] is True
    assert entry["timeout"] == 1320


@pytest.mark.parametrize("agent", [a for a in AGENTS if a != "cursor"])
def test_every_agent_waits_longer_than_the_hard_limit_in_its_own_unit(agent: str, launch: ServerLaunch) -> None:
    _, text = render(agent, launch, home=Path("/home/u"))
    seconds = {
        "claude": lambda: json.loads(text)["mcpServers"]["autoresearch"]["timeout"] / 1000,
        "gemini": lambda: json.loads(text)["mcpServers"]["autoresearch"]["timeout"] / 1000,
        "opencode": lambda: json.loads(text)["mcp"]["autoresearch"]["timeout"] / 1000,
        "codex": lambda: tomllib.loads(text)["mcp_servers"]["autoresearch"]["tool_timeout_sec"],
        "goose": lambda: load_yaml(text)["extensions"]["autoresearch"]["timeout"],
    }[agent]()
    assert seconds > HARD_S + EVAL_S


def test_quotes_backslashes_and_colons_in_paths_survive_every_format(tmp_path: Path) -> None:
    odd = tmp_path / 'we"ird\\ dir: #1'
    odd.mkdir()
    launch = server_launch(odd, TIMEOUT_S, python="/opt/py: 3/bin/python")
    codex = tomllib.loads(render("codex", launch)[1])["mcp_servers"]["autoresearch"]
    goose = load_yaml(render("goose", launch, home=tmp_path)[1])["extensions"]["autoresearch"]
    claude = json.loads(render("claude", launch)[1])["mcpServers"]["autoresearch"]
    for entry_command, entry_args in ((codex["command"], codex["args"]), (goose["cmd"], goose["args"])):
        assert entry_command == "/opt/py: 3/bin/python"
        assert entry_args[-1] == str(odd)
    assert claude["env"]["AUTORESEARCH_WORKSPACE"] == str(odd)


def test_an_unknown_agent_is_refused_with_the_list_of_known_ones(launch: ServerLaunch) -> None:
    with pytest.raises(McpConfigError, match="claude, codex, gemini, cursor, opencode, goose"):
        render("copilot", launch)


# ---- Merging ----


def test_json_merge_keeps_the_users_other_servers_and_settings(launch: ServerLaunch) -> None:
    existing = json.dumps({"theme": "dark", "mcpServers": {"github": {"command": "gh-mcp"}}})
    merged = json.loads(merge("gemini", existing, launch, Path("settings.json")))
    assert merged["theme"] == "dark"
    assert merged["mcpServers"]["github"] == {"command": "gh-mcp"}
    assert merged["mcpServers"]["autoresearch"]["timeout"] == 1_320_000


def test_json_merge_replaces_a_stale_entry_of_ours(launch: ServerLaunch) -> None:
    stale = json.dumps({"mcp": {"autoresearch": {"type": "local", "command": ["old"]}, "other": {"type": "local"}}})
    merged = json.loads(merge("opencode", stale, launch, Path("opencode.json")))
    assert merged["mcp"]["autoresearch"]["command"][0] == "/opt/py/bin/python3"
    assert merged["mcp"]["other"] == {"type": "local"}


def test_json_with_comments_is_refused_with_the_file_named(launch: ServerLaunch) -> None:
    with pytest.raises(McpConfigError, match=r"settings\.json is not plain JSON.*line 1"):
        merge("gemini", '{ // mine\n "a": 1}', launch, Path("settings.json"))


CODEX_USER_FILE = """\
model = "gpt-5"

[mcp_servers.github]
command = "gh-mcp"

[mcp_servers.autoresearch]
command = "old-python"
args = ["old"]

[mcp_servers.autoresearch.env]
OLD = "1"

[projects."/elsewhere"]
trust_level = "trusted"
"""


def test_codex_merge_replaces_our_tables_and_keeps_everything_else(launch: ServerLaunch) -> None:
    merged = merge("codex", CODEX_USER_FILE, launch, Path("config.toml"))
    data = tomllib.loads(merged)
    assert data["model"] == "gpt-5"
    assert data["mcp_servers"]["github"] == {"command": "gh-mcp"}
    assert data["projects"] == {"/elsewhere": {"trust_level": "trusted"}}
    assert data["mcp_servers"]["autoresearch"]["env"] == {"AUTORESEARCH_WORKSPACE": str(launch.cwd)}
    assert "old-python" not in merged
    assert merge("codex", merged, launch, Path("config.toml")) == merged


def test_codex_merge_refuses_an_inline_table_entry_it_cannot_cut_out(launch: ServerLaunch) -> None:
    existing = '[mcp_servers]\nautoresearch = { command = "x" }\n'
    with pytest.raises(McpConfigError, match="inline table or dotted keys"):
        merge("codex", existing, launch, Path("config.toml"))


def test_codex_merge_refuses_a_file_that_is_not_toml(launch: ServerLaunch) -> None:
    with pytest.raises(McpConfigError, match="not valid TOML"):
        merge("codex", "model = \n", launch, Path("config.toml"))


GOOSE_USER_FILE = """\
GOOSE_PROVIDER: anthropic
extensions:
    developer:
        bundled: true
        enabled: true
        name: developer
        type: builtin
    autoresearch:
        cmd: old-python
        args:
        - old
        type: stdio
    memory:
        enabled: false
        type: builtin
GOOSE_MODEL: claude-sonnet
"""


def test_goose_merge_replaces_our_extension_in_the_users_indentation(launch: ServerLaunch) -> None:
    merged = merge("goose", GOOSE_USER_FILE, launch, Path("config.yaml"))
    data = load_yaml(merged)
    assert data["GOOSE_PROVIDER"] == "anthropic"
    assert data["GOOSE_MODEL"] == "claude-sonnet"
    assert data["extensions"]["developer"]["type"] == "builtin"
    assert data["extensions"]["memory"] == {"enabled": False, "type": "builtin"}
    assert data["extensions"]["autoresearch"]["cmd"] == "/opt/py/bin/python3"
    assert "old-python" not in merged
    assert merge("goose", merged, launch, Path("config.yaml")) == merged


def test_goose_merge_adds_an_extensions_section_when_there_is_none(launch: ServerLaunch) -> None:
    merged = merge("goose", "GOOSE_PROVIDER: openai\n\n", launch, Path("config.yaml"))
    data = load_yaml(merged)
    assert data["GOOSE_PROVIDER"] == "openai"
    assert data["extensions"]["autoresearch"]["timeout"] == 1320


def test_goose_merge_fills_an_empty_flow_mapping(launch: ServerLaunch) -> None:
    data = load_yaml(merge("goose", "extensions: {}\nX: 1\n", launch, Path("config.yaml")))
    assert set(data["extensions"]) == {"autoresearch"}
    assert data["X"] == 1


def test_goose_merge_refuses_flow_style_extensions(launch: ServerLaunch) -> None:
    with pytest.raises(McpConfigError, match="flow style"):
        merge("goose", "extensions: {developer: {type: builtin}}\n", launch, Path("config.yaml"))


# ---- Command line ----


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main_mcp_config(["--hard-timeout-s", str(HARD_S), "--eval-timeout-s", str(EVAL_S), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_printing_shows_the_target_path_as_a_comment_then_the_content(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "--agent", "codex", "--workspace", str(workspace))
    first, _, rest = out.partition("\n")
    assert code == 0
    assert first == f"# {workspace / '.codex' / 'config.toml'}"
    assert tomllib.loads(rest)["mcp_servers"]["autoresearch"]["command"] == sys.executable
    assert not (workspace / ".codex").exists()


def test_the_cli_rejects_an_unknown_agent_with_the_allowed_ones(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "--agent", "vim", "--workspace", str(workspace))
    assert code == 2
    assert "unknown agent 'vim'; choose one of: claude, codex, gemini, cursor, opencode, goose" in err


def test_writing_creates_parent_directories_merges_and_says_where(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = workspace / ".cursor" / "mcp.json"
    settings.parent.mkdir()
    settings.write_text(json.dumps({"mcpServers": {"mine": {"command": "x"}}}))
    settings.chmod(0o600)
    code, out, _ = run_cli(capsys, "--agent", "cursor", "--workspace", str(workspace), "--write")
    assert code == 0
    assert out.strip() == f"wrote the autoresearch MCP server for cursor to {settings}"
    assert set(json.loads(settings.read_text())["mcpServers"]) == {"mine", "autoresearch"}
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600
    assert [p.name for p in settings.parent.iterdir()] == ["mcp.json"]


def test_writing_goose_goes_to_the_users_config_dir(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    code, _, _ = run_cli(capsys, "--agent", "goose", "--workspace", str(workspace), "--write", "--home", str(home))
    assert code == 0
    assert load_yaml((home / ".config/goose/config.yaml").read_text())["extensions"]["autoresearch"]["enabled"]


def test_a_refused_merge_leaves_the_file_untouched_and_exits_2(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = workspace / ".codex" / "config.toml"
    path.parent.mkdir()
    path.write_text('[mcp_servers]\nautoresearch = { command = "x" }\n')
    code, _, err = run_cli(capsys, "--agent", "codex", "--workspace", str(workspace), "--write")
    assert code == 2
    assert "cannot replace safely" in err
    assert path.read_text() == '[mcp_servers]\nautoresearch = { command = "x" }\n'


def test_codex_and_gemini_users_are_told_when_the_project_is_not_trusted(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    _, _, err = run_cli(capsys, "--agent", "codex", "--workspace", str(workspace), "--home", str(home))
    assert "trust_level" in err
    (home / ".codex").mkdir(parents=True)
    (home / ".codex" / "config.toml").write_text(
        f'[projects.{mcp_config.toml_string(str(workspace))}]\ntrust_level = "trusted"\n'
    )
    _, _, err = run_cli(capsys, "--agent", "codex", "--workspace", str(workspace), "--home", str(home))
    assert err == ""
    _, _, err = run_cli(capsys, "--agent", "gemini", "--workspace", str(workspace), "--home", str(home))
    assert "trustedFolders.json" in err


def test_write_config_is_idempotent(launch: ServerLaunch, tmp_path: Path) -> None:
    for agent in AGENTS:
        first = write_config(agent, launch, tmp_path / "home").read_text()
        second = write_config(agent, launch, tmp_path / "home").read_text()
        assert first == second, agent
