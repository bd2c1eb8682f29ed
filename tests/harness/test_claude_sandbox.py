"""The sandbox settings the harness writes for Claude Code's shell, and its refusal where no sandbox can start."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import git
from harness import run_agent
from harness.claude_sandbox import SandboxCheck, check_sandbox, sandbox_settings, write_settings
from harness.cli import main
from server.audit import key_dir
from server.config import load_config
from server.private import private_base
from server.runstate import init_run

REPO = Path(__file__).resolve().parents[2]


def test_everything_in_the_workspace_but_the_mutable_files_is_write_protected_and_the_keys_are_unreadable(
        workspace: Path, tmp_path: Path) -> None:
    config = load_config(workspace)
    run = init_run(config, "t1")
    keys = tmp_path / "keys"

    block = sandbox_settings(config, run.run_dir, key_dir=keys)

    denied = set(block["filesystem"]["denyWrite"])
    for name in ("prepare.py", "autoresearch.toml", ".git", "runs", ".gitignore"):
        assert str(workspace / name) in denied, name
    # Names that do not exist yet are protected too: created later, they would govern the next start.
    for name in ("pyproject.toml", ".mcp.json", ".claude", "sitecustomize.py", "server", ".venv"):
        assert not (workspace / name).exists() and str(workspace / name) in denied, name
    assert str(workspace / "train.py") not in denied
    assert str(keys) in denied and str(private_base()) in denied
    assert block["filesystem"]["denyRead"] == sorted([str(keys), str(private_base())]), "keys and holdout unreadable"
    assert block["enabled"] and block["failIfUnavailable"] and block["allowUnsandboxedCommands"] is False
    assert block["network"] == {"allowedDomains": [], "strictAllowlist": True}


def test_a_mutable_file_in_a_folder_leaves_only_that_file_writable_in_it(workspace: Path, tmp_path: Path) -> None:
    (workspace / "model").mkdir()
    (workspace / "model" / "net.py").write_text("# mutable\n")
    (workspace / "model" / "data.py").write_text("# not mutable\n")
    config = load_config(workspace)
    config = type(config)(**{**config.__dict__, "mutable": ("train.py", "model/net.py")})

    denied = set(sandbox_settings(config, tmp_path / "run", key_dir=tmp_path / "k")["filesystem"]["denyWrite"])

    assert str(workspace / "model" / "data.py") in denied
    assert str(workspace / "model") not in denied and str(workspace / "model" / "net.py") not in denied


def test_the_settings_file_keeps_the_project_hooks_and_permissions_and_adds_the_sandbox(workspace: Path) -> None:
    shutil.copytree(REPO / ".claude", workspace / ".claude")
    git(workspace, "add", "-A")
    git(workspace, "commit", "-q", "-m", "agent settings")
    config = load_config(workspace)
    run = init_run(config, "t1")

    path = write_settings(config, run.run_dir, sandbox={"enabled": True})
    off = json.loads(write_settings(config, run.run_dir, sandbox=None).read_text())

    project = json.loads((REPO / ".claude" / "settings.json").read_text())
    assert path == run.run_dir / "agent" / "claude-settings.json"
    assert off["hooks"] == project["hooks"] and off["permissions"] == project["permissions"]
    assert off["sandbox"] == {"enabled": False}


def test_the_key_directory_comes_from_the_environment_or_the_home_config() -> None:
    assert key_dir({"AUTORESEARCH_KEY_DIR": "/secrets/k", "HOME": "/h"}) == Path("/secrets/k")
    assert key_dir({"AUTORESEARCH_KEY_DIR": "~/k", "HOME": "/h"}) == Path.home() / "k"
    assert key_dir({"HOME": "/h"}) == Path("/h/.config/autoresearch/keys")
    assert key_dir({"HOME": "/h", "XDG_CONFIG_HOME": "/x"}) == Path("/x/autoresearch/keys")


def test_missing_bwrap_or_socat_is_named_with_how_to_install_them() -> None:
    check = check_sandbox(which=lambda tool: None if tool == "socat" else f"/usr/bin/{tool}")
    assert not check.available and "socat not found" in str(check.reason)
    assert "install_sandbox_deps.sh" in str(check.reason)
    assert "only" in str(check_sandbox(platform="darwin").reason)


def test_a_bwrap_that_cannot_create_namespaces_is_reported_with_its_error() -> None:
    def refused(argv: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(argv, 1, b"", b"bwrap: No permissions to creating new namespace")

    check = check_sandbox(which=lambda tool: f"/usr/bin/{tool}", run=refused)
    assert not check.available and "No permissions to creating new namespace" in str(check.reason)
    assert "user namespaces" in str(check.reason)


@pytest.mark.skipif(shutil.which("bwrap") is None or shutil.which("socat") is None,
                    reason="bubblewrap and socat are not installed (scripts/install_sandbox_deps.sh)")
def test_the_sandbox_starts_on_this_machine() -> None:
    assert check_sandbox() == SandboxCheck(True)


def test_allow_bash_without_a_sandbox_is_refused_before_any_run_is_created(
        workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_agent, "check_sandbox", lambda: SandboxCheck(False, "bwrap not found on PATH"))

    code = main(["run", "--agent", "claude", "--allow-bash", "--workspace", str(workspace), "--tag", "t1"])

    err = capsys.readouterr().err
    assert code == 2 and "bwrap not found on PATH" in err and "--allow-unsandboxed-bash" in err
    assert not (workspace / "runs" / "t1").exists()


def test_the_mcp_server_the_harness_registers_never_imports_from_the_workspace_root(workspace: Path) -> None:
    config = load_config(workspace)
    run = init_run(config, "t1")

    server = json.loads(run_agent.write_mcp_config(config, run).read_text())["mcpServers"]["autoresearch"]

    assert server["args"][:3] == ["-P", "-m", "server"]
