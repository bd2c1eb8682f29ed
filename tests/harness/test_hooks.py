"""The Claude Code hooks, run as the real hook process with JSON on stdin, as Claude Code runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from server.audit import AuditLog
from server.config import load_config
from server.jsonl import append_record
from server.runstate import RunInfo, init_run

REPO = Path(__file__).resolve().parents[2]


def hook(event: str, payload: dict[str, Any], workspace: Path, **env: str) -> tuple[int, dict[str, Any] | None, str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("AUTORESEARCH_ALLOW_BASH", "AUTORESEARCH_TAG")}
    full_env.update({"CLAUDE_PROJECT_DIR": str(workspace), "PYTHONPATH": str(REPO)}, **env)
    body = {"session_id": "sess-1", "transcript_path": "/tmp/t.jsonl", "cwd": str(workspace),
            "permission_mode": "default", **payload}
    proc = subprocess.run([sys.executable, "-m", "harness.hooks", event], input=json.dumps(body), capture_output=True,
                          text=True, cwd=REPO, env=full_env, timeout=60)
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, out, proc.stderr


def edit(path: str) -> dict[str, Any]:
    return {"hook_event_name": "PreToolUse", "tool_name": "Edit", "tool_use_id": "tu1",
            "tool_input": {"file_path": path, "old_string": "a", "new_string": "b"}}


def bash(command: str) -> dict[str, Any]:
    return {"hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_input": {"command": command}}


def denial(out: dict[str, Any] | None) -> str | None:
    if out is None:
        return None
    spec = out["hookSpecificOutput"]
    assert spec["hookEventName"] == "PreToolUse" and spec["permissionDecision"] == "deny"
    return str(spec["permissionDecisionReason"])


@pytest.fixture
def run(workspace: Path) -> RunInfo:
    return init_run(load_config(workspace), "t1")


@pytest.mark.parametrize("spelling", ["prepare.py", "./prepare.py", "ABS", "sub/../prepare.py", "LINK"])
def test_editing_the_locked_file_is_denied_by_any_spelling_and_audited(workspace: Path, run: RunInfo,
                                                                       spelling: str) -> None:
    if spelling == "LINK":
        (workspace / "notes.py").symlink_to(workspace / "prepare.py")
        spelling = "notes.py"
    path = str(workspace / "prepare.py") if spelling == "ABS" else spelling
    code, out, _ = hook("pre-tool-use", edit(path), workspace)
    reason = denial(out)
    assert code == 0 and reason is not None
    assert "prepare.py is locked" in reason and "Edit only train.py" in reason
    audit = AuditLog(run.run_dir / "audit.jsonl")
    last = audit.records()[-1]
    assert (last.actor, last.event, last.status, last.tool, last.session) == ("hook", "tool_call", "blocked", "Edit",
                                                                              "sess-1")
    assert last.args == {"file_path": path, "old_chars": 1, "new_chars": 1, "replace_all": False}
    assert audit.verify().ok


@pytest.mark.parametrize("spelling", ["train.py", "./train.py", "ABS"])
def test_editing_the_mutable_file_is_allowed_silently(workspace: Path, run: RunInfo, spelling: str) -> None:
    path = str(workspace / "train.py") if spelling == "ABS" else spelling
    code, out, _ = hook("pre-tool-use", edit(path), workspace)
    assert code == 0 and out is None


def test_a_mutable_name_that_is_a_symlink_to_a_locked_file_is_denied(workspace: Path, run: RunInfo) -> None:
    (workspace / "train.py").unlink()
    (workspace / "train.py").symlink_to(workspace / "prepare.py")
    _, out, _ = hook("pre-tool-use", edit("train.py"), workspace)
    assert "resolves to" in (denial(out) or "")


def test_writing_a_new_file_is_denied(workspace: Path, run: RunInfo) -> None:
    payload = {"tool_name": "Write", "tool_input": {"file_path": "helper.py", "content": "print(1)\n"}}
    reason = denial(hook("pre-tool-use", payload, workspace)[1])
    assert reason and "helper.py is not one of the files this run may change" in reason
    assert not (workspace / "helper.py").exists()


def test_shell_commands_are_denied_unless_turned_on(workspace: Path, run: RunInfo) -> None:
    reason = denial(hook("pre-tool-use", bash("ls"), workspace)[1])
    assert reason and "Shell commands are turned off" in reason
    assert hook("pre-tool-use", bash("ls"), workspace, AUTORESEARCH_ALLOW_BASH="1")[1] is None


@pytest.mark.parametrize("command", [
    "sed -i 's/1/2/' prepare.py", "echo x > prepare.py", """python -c "open('prepare.py','w')" """,
    "mv prepare.py /tmp/p.py", "rm ./prepare.py", "git reset --hard", "git checkout -- prepare.py",
])
def test_with_shell_commands_on_writes_to_the_locked_file_and_git_are_still_blocked(
        workspace: Path, run: RunInfo, command: str) -> None:
    reason = denial(hook("pre-tool-use", bash(command), workspace, AUTORESEARCH_ALLOW_BASH="1")[1])
    assert reason and "blocked" in reason
    assert AuditLog(run.run_dir / "audit.jsonl").records()[-1].args == {"command": command}


@pytest.mark.parametrize("command", ["ls", "cat train.py", "git diff"])
def test_with_shell_commands_on_reading_commands_run(workspace: Path, run: RunInfo, command: str) -> None:
    assert hook("pre-tool-use", bash(command), workspace, AUTORESEARCH_ALLOW_BASH="1")[1] is None


def test_read_only_and_autoresearch_tools_are_left_alone(workspace: Path, run: RunInfo) -> None:
    for tool in ("Read", "Grep", "mcp__autoresearch__run_experiment"):
        assert hook("pre-tool-use", {"tool_name": tool, "tool_input": {"file_path": "prepare.py"}}, workspace) \
            == (0, None, "")


def test_reads_of_the_private_folder_and_the_audit_keys_are_refused_whatever_the_tool_or_spelling(
        workspace: Path, run: RunInfo) -> None:
    from server.audit import key_dir
    from server.private import private_base, private_folder

    private = private_folder(run.run_dir)
    (private / "holdout.jsonl").write_text('{"experiment_id": 1, "holdout_bpb": 1.5}\n')
    (workspace / "peek").symlink_to(private)
    relative = os.path.relpath(private / "holdout.jsonl", workspace)
    attempts = {
        "Read": {"file_path": str(private / "holdout.jsonl")},
        "Read ": {"file_path": relative},  # ../../ from the workspace
        "Read  ": {"file_path": "peek/holdout.jsonl"},  # a symlink in the workspace
        "NotebookRead": {"notebook_path": str(key_dir() / "any.ipynb")},
        "LS": {"path": str(key_dir())},
        "Grep": {"pattern": "holdout", "path": str(private_base().parent)},  # a search that would descend into it
        "Glob": {"pattern": f"{private_base().parent}/**/holdout.jsonl"},
        "Glob ": {"pattern": "*/holdout.jsonl", "path": str(private_base())},
    }
    for tool, tool_input in attempts.items():
        code, out, _ = hook("pre-tool-use", {"tool_name": tool.strip(), "tool_input": tool_input}, workspace)
        reason = denial(out)
        assert code == 0 and reason is not None, f"{tool} {tool_input} was let through"
        assert "only the person may read" in reason and "read_results" in reason
    blocked = [r for r in AuditLog(run.run_dir / "audit.jsonl").records() if r.status == "blocked"]
    assert [r.tool for r in blocked] == [t.strip() for t in attempts]


def test_reads_and_searches_inside_the_workspace_are_left_alone(workspace: Path, run: RunInfo) -> None:
    for tool, tool_input in {"Read": {"file_path": "train.py"}, "Grep": {"pattern": "LR"},
                             "Glob": {"pattern": "**/*.py"}, "LS": {"path": "."},
                             "Read ": {"file_path": str(run.run_dir / "experiments.jsonl")}}.items():
        assert hook("pre-tool-use", {"tool_name": tool.strip(), "tool_input": tool_input}, workspace) == (0, None, "")


def test_post_tool_use_records_each_call_in_the_chain_without_file_contents(workspace: Path, run: RunInfo) -> None:
    payload = {"hook_event_name": "PostToolUse", "tool_name": "Write", "duration_ms": 12,
               "tool_input": {"file_path": "train.py", "content": "x" * 100_000},
               "tool_response": {"type": "update", "filePath": "train.py"}}
    code, out, _ = hook("post-tool-use", payload, workspace)
    assert code == 0 and out is None
    failure = {"hook_event_name": "PostToolUseFailure", "tool_name": "mcp__autoresearch__run_experiment",
               "tool_input": {"description": "wider"}, "error": "refused: decide experiment 3 first"}
    hook("post-tool-use", failure, workspace)
    audit = AuditLog(run.run_dir / "audit.jsonl")
    first, second = audit.records()[-2:]
    assert (first.actor, first.event, first.status, first.tool) == ("hook", "tool_call", "ok", "Write")
    assert first.args == {"file_path": "train.py", "content_chars": 100_000} and first.duration_ms == 12
    assert (second.status, second.args) == ("error", {"description": "wider"})
    assert "decide experiment 3" in json.dumps(second.summary)
    assert second.prev == first.hash and audit.verify().ok


def test_a_new_violation_is_reported_to_each_session_once(workspace: Path, run: RunInfo) -> None:
    payload = {"hook_event_name": "PostToolUse", "tool_name": "Read", "tool_input": {"file_path": "train.py"},
               "tool_response": "..."}
    assert hook("post-tool-use", payload, workspace)[1] is None
    append_record(run.run_dir / "violations.jsonl", {
        "time": "2026-01-01T00:00:00.000Z", "source": "guard", "path": "prepare.py", "when": "during experiment 4",
        "experiment_id": 4, "detail": "prepare.py was deleted; restored it", "restored": True})
    out = hook("post-tool-use", payload, workspace)[1]
    assert out is not None
    context = out["hookSpecificOutput"]["additionalContext"]
    assert out["hookSpecificOutput"]["hookEventName"] == "PostToolUse"
    assert "1 new integrity violation" in context and "prepare.py was deleted" in context
    assert "during experiment 4 (that result is void)" in context
    assert hook("post-tool-use", payload, workspace)[1] is None
    assert hook("post-tool-use", {**payload, "session_id": "sess-2"}, workspace)[1] is not None


def test_stop_is_blocked_with_the_brief_while_the_loop_has_no_reason_to_end(workspace: Path, run: RunInfo) -> None:
    code, out, _ = hook("stop", {"hook_event_name": "Stop", "stop_hook_active": False}, workspace)
    assert code == 0 and out is not None and out["decision"] == "block"
    assert "Do not stop" in out["reason"] and "autoresearch run t1" in out["reason"]
    assert AuditLog(run.run_dir / "audit.jsonl").records()[-1].event == "stop_blocked"


def test_stop_is_allowed_after_a_stop_request_or_past_the_deadline(workspace: Path, run: RunInfo) -> None:
    (run.run_dir / "stop").touch()
    assert hook("stop", {"hook_event_name": "Stop"}, workspace)[1] is None
    (run.run_dir / "stop").unlink()
    (run.run_dir / "limits.json").write_text(json.dumps({"deadline": time.time() - 5, "max_experiments": None,
                                                         "max_cost_usd": None}))
    assert hook("stop", {"hook_event_name": "Stop"}, workspace)[1] is None
    last = AuditLog(run.run_dir / "audit.jsonl").records()[-1]
    assert last.event == "stop_allowed" and "time limit" in json.dumps(last.summary)


def test_session_start_injects_the_brief_and_records_its_source(workspace: Path, run: RunInfo) -> None:
    code, out, _ = hook("session-start", {"hook_event_name": "SessionStart", "source": "compact"}, workspace)
    assert code == 0 and out is not None
    spec = out["hookSpecificOutput"]
    assert spec["hookEventName"] == "SessionStart"
    assert "autoresearch run t1" in spec["additionalContext"] and "next:" in spec["additionalContext"]
    last = AuditLog(run.run_dir / "audit.jsonl").records()[-1]
    assert (last.event, last.summary) == ("session_start", {"source": "compact"})


def test_outside_a_run_edits_are_still_guarded_by_the_configuration(workspace: Path) -> None:
    assert "prepare.py is locked" in (denial(hook("pre-tool-use", edit("prepare.py"), workspace)[1]) or "")
    assert hook("pre-tool-use", edit("train.py"), workspace)[1] is None
    assert hook("stop", {"hook_event_name": "Stop"}, workspace)[1] is None
    assert not (workspace / "runs").exists()


def test_an_internal_error_denies_edits_and_shell_but_never_breaks_other_events(workspace: Path) -> None:
    (workspace / "autoresearch.toml").write_text("this is = = not toml")
    code, out, stderr = hook("pre-tool-use", edit("train.py"), workspace)
    assert code == 0 and "guard hook failed" in (denial(out) or "") and "not valid TOML" in (denial(out) or "")
    assert "Traceback" in stderr
    assert denial(hook("pre-tool-use", bash("ls"), workspace, AUTORESEARCH_ALLOW_BASH="1")[1])
    for event in ("post-tool-use", "stop", "session-start"):
        code, out, stderr = hook(event, {"tool_name": "Read"}, workspace)
        assert code == 0 and out is None and "hook failed" in stderr


def test_unreadable_hook_input_denies_the_tool_call(workspace: Path) -> None:
    env = {k: v for k, v in os.environ.items()}
    env.update({"CLAUDE_PROJECT_DIR": str(workspace), "PYTHONPATH": str(REPO)})
    proc = subprocess.run([sys.executable, "-m", "harness.hooks", "pre-tool-use"], input="{truncated",
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert proc.returncode == 0 and "could not read its input" in (denial(json.loads(proc.stdout)) or "")


def test_every_hook_keeps_working_while_the_locked_file_is_missing(workspace: Path, run: RunInfo) -> None:
    (workspace / "prepare.py").unlink()  # deleted; the file guard puts it back a moment later

    assert hook("pre-tool-use", edit("train.py"), workspace)[1] is None
    assert "prepare.py is locked" in (denial(hook("pre-tool-use", edit("prepare.py"), workspace)[1]) or "")
    assert hook("pre-tool-use", bash("ls"), workspace, AUTORESEARCH_ALLOW_BASH="1")[1] is None
    code, out, stderr = hook("post-tool-use", {"hook_event_name": "PostToolUse", "tool_name": "Read",
                                               "tool_input": {"file_path": "train.py"}, "tool_response": "x"},
                             workspace)
    assert code == 0 and "Traceback" not in stderr
    assert any(r.tool == "Read" for r in AuditLog(run.run_dir / "audit.jsonl").records())
    assert (hook("stop", {"hook_event_name": "Stop"}, workspace)[1] or {}).get("decision") == "block"
    start = hook("session-start", {"hook_event_name": "SessionStart", "source": "startup"}, workspace)[1]
    assert start and "Edit only train.py" in start["hookSpecificOutput"]["additionalContext"]


def test_a_call_to_a_tool_the_harness_does_not_know_is_recorded_and_left_to_the_permission_rules(
        workspace: Path, run: RunInfo) -> None:
    call = {"hook_event_name": "PreToolUse", "tool_name": "mcp__elsewhere__upload",
            "tool_input": {"path": "prepare.py", "blob": "x" * 2000}}

    assert hook("pre-tool-use", call, workspace)[1] is None
    assert hook("pre-tool-use", {"hook_event_name": "PreToolUse", "tool_name": "Read",
                                 "tool_input": {"file_path": "train.py"}}, workspace)[1] is None

    records = [r for r in AuditLog(run.run_dir / "audit.jsonl").records() if r.actor == "hook"]
    assert [(r.tool, r.status) for r in records] == [("mcp__elsewhere__upload", "unknown_tool")]
    assert records[0].args and records[0].args["path"] == "prepare.py" and len(records[0].args["blob"]) < 600


def test_a_module_planted_in_the_workspace_root_is_not_imported_by_the_hook_commands(
        workspace: Path, run: RunInfo) -> None:
    """A sandboxed shell may create new files in the workspace root; the hooks run there, outside any sandbox."""
    marker = workspace.parent / "planted-module-ran"
    for name in ("json.py", "logging.py", "dataclasses.py"):
        (workspace / name).write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    (workspace / ".venv").symlink_to(Path(sys.prefix))
    settings = json.loads((REPO / ".claude" / "settings.json").read_text(encoding="utf-8"))
    command = settings["hooks"]["PreToolUse"][0]["hooks"][0]["command"]
    env = {k: v for k, v in os.environ.items() if k not in ("AUTORESEARCH_ALLOW_BASH", "AUTORESEARCH_TAG")}
    env.update({"CLAUDE_PROJECT_DIR": str(workspace), "PYTHONPATH": str(REPO)})

    proc = subprocess.run(["bash", "-c", command], input=json.dumps(edit("prepare.py")), capture_output=True,
                          text=True, env=env, timeout=60)

    assert not marker.exists(), "a module in the workspace root ran inside the hook"
    assert "prepare.py is locked" in (denial(json.loads(proc.stdout)) or ""), proc.stderr
