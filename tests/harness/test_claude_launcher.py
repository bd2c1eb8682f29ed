"""The argv and environment of a headless Claude Code session, and marking the workspace trusted."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

import pytest

from harness.claude_launcher import (
    ClaudeLaunchSpec,
    SessionLaunch,
    build_argv,
    build_env,
    ensure_workspace_trusted,
)


def make_spec(**overrides: object) -> ClaudeLaunchSpec:
    values: dict[str, object] = dict(claude_bin=Path("/opt/claude"), workspace=Path("/ws"),
                                     mcp_config=Path("/run/mcp.json"))
    values.update(overrides)
    return ClaudeLaunchSpec(**values)  # type: ignore[arg-type]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_a_new_session_is_headless_stream_json_with_only_the_harness_mcp_servers() -> None:
    launch = SessionLaunch("new", "improve train.py")

    argv = build_argv(make_spec(), launch)

    assert argv[:2] == ["/opt/claude", "-p"]
    assert option(argv, "--output-format") == "stream-json" and "--verbose" in argv
    assert option(argv, "--mcp-config") == "/run/mcp.json" and "--strict-mcp-config" in argv
    assert option(argv, "--permission-mode") == "acceptEdits"
    assert option(argv, "--session-id") == launch.session_id
    assert "--resume" not in argv
    assert argv[-2:] == ["--", "improve train.py"]


def test_new_and_fresh_launches_get_a_generated_uuid_session_id_each() -> None:
    first, second = SessionLaunch("new", "p"), SessionLaunch("fresh", "p")

    assert first.session_id != second.session_id
    for launch in (first, second):
        assert str(uuid.UUID(str(launch.session_id))) == launch.session_id


def test_a_given_session_id_is_used_as_is() -> None:
    sid = "0b95ba5c-1167-42dd-a644-0dc756b62a17"

    assert option(build_argv(make_spec(), SessionLaunch("fresh", "p", session_id=sid)), "--session-id") == sid


def test_a_resume_passes_the_session_to_continue_and_no_new_id() -> None:
    argv = build_argv(make_spec(), SessionLaunch("resume", "go on", session_id="abc-123"))

    assert option(argv, "--resume") == "abc-123"
    assert "--session-id" not in argv


def test_a_resume_without_a_session_id_is_refused() -> None:
    with pytest.raises(ValueError, match="needs the session_id"):
        SessionLaunch("resume", "p")


def test_a_session_id_that_is_not_a_uuid_is_refused_before_the_cli_would_refuse_it() -> None:
    with pytest.raises(ValueError, match="UUID"):
        SessionLaunch("new", "p", session_id="not-a-uuid")


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="'new', 'resume' or 'fresh'"):
        SessionLaunch("restart", "p")  # type: ignore[arg-type]


def test_a_prompt_starting_with_a_dash_stays_a_prompt() -> None:
    argv = build_argv(make_spec(), SessionLaunch("new", "-weird prompt"))

    assert argv[-2:] == ["--", "-weird prompt"]


def test_optional_flags_appear_only_when_set_and_tool_lists_are_one_value_each() -> None:
    spec = make_spec(settings=Path("/run/settings.json"), allowed_tools=["mcp__autoresearch", "Read", "Edit(train.py)"],
                     disallowed_tools=["Bash", "WebFetch"], model="claude-sonnet", max_turns=40,
                     append_system_prompt="Only edit train.py.", permission_mode="default")

    argv = build_argv(spec, SessionLaunch("new", "p"))

    assert option(argv, "--settings") == "/run/settings.json"
    assert option(argv, "--allowedTools") == "mcp__autoresearch,Read,Edit(train.py)"
    assert option(argv, "--disallowedTools") == "Bash,WebFetch"
    assert option(argv, "--model") == "claude-sonnet"
    assert option(argv, "--max-turns") == "40"
    assert option(argv, "--append-system-prompt") == "Only edit train.py."
    assert option(argv, "--permission-mode") == "default"

    bare = build_argv(make_spec(), SessionLaunch("new", "p"))
    for flag in ("--settings", "--allowedTools", "--disallowedTools", "--model", "--max-turns",
                 "--append-system-prompt"):
        assert flag not in bare


def test_flags_that_skip_hooks_or_refuse_root_are_never_used() -> None:
    spec = make_spec(settings=Path("/s.json"), allowed_tools=["Read"], permission_mode="bypassPermissions")

    for launch in (SessionLaunch("new", "p"), SessionLaunch("resume", "p", session_id="x")):
        argv = build_argv(spec, launch)
        assert "--bare" not in argv and "--dangerously-skip-permissions" not in argv


def test_the_environment_is_inherited_and_made_fit_for_an_unattended_session() -> None:
    spec = make_spec(mcp_tool_timeout_ms=900_000, extra_env={"ANTHROPIC_BASE_URL": "http://127.0.0.1:9"})

    env = build_env(spec, base={"PATH": "/usr/bin", "HOME": "/home/u", "ENABLE_TOOL_SEARCH": "true"})

    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/home/u"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["ENABLE_TOOL_SEARCH"] == "false"
    assert env["MCP_TOOL_TIMEOUT"] == "900000"
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9"
    assert "IS_SANDBOX" not in env


def test_extra_env_wins_over_the_defaults_and_no_tool_timeout_is_set_unless_given() -> None:
    env = build_env(make_spec(extra_env={"ENABLE_TOOL_SEARCH": "auto"}), base={})

    assert env["ENABLE_TOOL_SEARCH"] == "auto"
    assert "MCP_TOOL_TIMEOUT" not in env


def test_the_environment_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_PROBE", "inherited")

    assert build_env(make_spec())["AUTORESEARCH_PROBE"] == "inherited"


def test_trusting_a_workspace_creates_the_config_when_there_is_none(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()

    path = ensure_workspace_trusted(tmp_path, workspace)

    data = json.loads(path.read_text())
    assert data == {"projects": {str(workspace.resolve()): {"hasTrustDialogAccepted": True}}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_trusting_a_workspace_keeps_everything_else_in_the_config(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    key = str(workspace.resolve())
    config = tmp_path / ".claude.json"
    original = {"userID": "u1", "numStartups": 3,
                "projects": {"/elsewhere": {"hasTrustDialogAccepted": False, "allowedTools": ["Read"]},
                             key: {"lastCost": 1.5}}}
    config.write_text(json.dumps(original))
    config.chmod(0o640)

    ensure_workspace_trusted(tmp_path, workspace)

    data = json.loads(config.read_text())
    assert data["userID"] == "u1" and data["numStartups"] == 3
    assert data["projects"]["/elsewhere"] == {"hasTrustDialogAccepted": False, "allowedTools": ["Read"]}
    assert data["projects"][key] == {"lastCost": 1.5, "hasTrustDialogAccepted": True}
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_trusting_an_already_trusted_workspace_leaves_the_file_alone(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    config = tmp_path / ".claude.json"
    text = json.dumps({"projects": {str(workspace.resolve()): {"hasTrustDialogAccepted": True}}, "x": 1})
    config.write_text(text)

    ensure_workspace_trusted(tmp_path, workspace)

    assert config.read_text() == text


def test_a_corrupt_config_is_reported_and_not_overwritten(tmp_path: Path) -> None:
    config = tmp_path / ".claude.json"
    config.write_text("{half a file")

    with pytest.raises(ValueError, match=r"\.claude\.json is not valid JSON.*left untouched"):
        ensure_workspace_trusted(tmp_path, tmp_path)
    assert config.read_text() == "{half a file"
