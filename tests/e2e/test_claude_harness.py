"""`autoresearch run --agent claude` end to end: the real Claude Code CLI, offline against the fake Messages API.

Each test runs the harness as a subprocess on a real git workspace (the tiny fake target), with the repository's own
`.claude/settings.json` hooks, the MCP server, the file guard and the supervisor, and checks that the ledger, the git
branch and the audit chain agree after normal work, tampering, stop attempts, API hangs and outages, and kills.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from server.inflight import read_entries
from server.jsonl import read_records
from tests.e2e.claude_workspace import (
    AGENT_MARK_VAR,
    Brain,
    EditPlan,
    HarnessProcess,
    Trigger,
    audit_events,
    build_harness_workspace,
    harness_env,
    kill_everything_of,
    processes_with_env,
    stop_talking,
)
from tests.fakes.fake_anthropic import FakeAnthropic, error, hang, tool_use
from tests.helpers import git

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TAG = "night"
RUN_LIMIT = 90.0  # a whole scenario takes 10-30 s; the bound only keeps a broken harness from hanging the suite
# Silence that counts as a stall. A CLI starting up on a busy 2-core machine can be silent for several seconds, and a
# shorter limit turns each slow start into a stall of its own.
STALL_TIMEOUT = "10"


@dataclass
class Bench:
    """One workspace, one fake API and the harness processes started on them (all cleaned up at teardown)."""

    workspace: Path
    home: Path
    claude_bin: Path
    logs: Path
    fakes: list[FakeAnthropic] = field(default_factory=list)
    harnesses: list[HarnessProcess] = field(default_factory=list)

    def fake(self, brain: Brain) -> FakeAnthropic:
        fake = FakeAnthropic(brain).start()
        self.fakes.append(fake)
        return fake

    def start(self, fake: FakeAnthropic, *args: str, env: dict[str, str] | None = None) -> HarnessProcess:
        harness = HarnessProcess(self.workspace, TAG, harness_env(fake.url, self.home, self.claude_bin, env), args,
                                 log_dir=self.logs)
        self.harnesses.append(harness)
        return harness

    def cli_env(self) -> dict[str, str]:
        return harness_env("http://127.0.0.1:9", self.home, self.claude_bin)


@pytest.fixture
def bench_factory(tmp_path: Path, claude_bin: Path) -> Iterator[Callable[..., Bench]]:
    benches: list[Bench] = []

    def make(**constants: str) -> Bench:
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        ws = build_harness_workspace(tmp_path / "ws", train_constants=constants)
        bench = Bench(ws, home, claude_bin, tmp_path / "logs")
        benches.append(bench)
        return bench

    yield make
    for bench in benches:
        kill_everything_of(bench.workspace, bench.harnesses)
        for fake in bench.fakes:
            fake.close()


def show(harness: HarnessProcess, *filters: str) -> list[dict[str, Any]]:
    """`autoresearch audit show FILTERS --json`, parsed: what a person reading the audit would find."""
    result = harness.cli("audit", "show", *filters, "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def verify(harness: HarnessProcess) -> None:
    result = harness.cli("audit", "verify")
    assert result.returncode == 0, f"{result.stdout}{result.stderr}"



def run_branch(harness: HarnessProcess) -> str:
    return json.loads((harness.run_dir / "run.json").read_text(encoding="utf-8"))["branch"]


def by_seq(records: list[dict[str, Any]], **match: Any) -> list[int]:
    """The positions of the audit records whose fields equal `match`."""
    return [i for i, r in enumerate(records) if all(r.get(k) == v for k, v in match.items())]


def marked(mark: str) -> list[int]:
    return processes_with_env(f"{AGENT_MARK_VAR}={mark}")


# ---- the loop ----

def test_a_session_runs_the_baseline_edits_runs_and_keeps_then_stops_at_the_experiment_limit(
        bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory()
    brain = Brain(bench.workspace)
    harness = bench.start(bench.fake(brain), "--max-experiments", "2")

    assert harness.wait_exit(RUN_LIMIT) == 0, harness.describe()

    experiments = harness.experiments()
    assert [(e.id, e.status, e.decision) for e in experiments] == [(1, "ok", "keep"), (2, "ok", "keep")], \
        harness.describe()
    assert experiments[0].is_baseline and experiments[1].description == "LR 0.1 -> 0.3"
    assert experiments[1].metric < experiments[0].metric  # type: ignore[operator]
    # The branch holds the kept change, and the working tree is at its tip.
    branch = run_branch(harness)
    assert git(bench.workspace, "rev-parse", branch) == experiments[1].kept_commit
    assert "LR = 0.3" in git(bench.workspace, "show", f"{branch}:train.py")
    assert "experiment 2" in git(bench.workspace, "log", "-1", "--format=%s", branch)
    assert git(bench.workspace, "status", "--porcelain", "--", "train.py") == ""
    # The audit chain tells the same story: the hook saw the Read and the Edit between the server's two runs.
    records = harness.audit()
    runs = by_seq(records, actor="server", event="tool_call", tool="run_experiment", status="ok")
    read = by_seq(records, actor="hook", tool="Read")
    edit = by_seq(records, actor="hook", tool="Edit", status="ok")
    decide = by_seq(records, actor="server", tool="commit_or_revert", status="ok")
    assert len(runs) == 2 and len(edit) == 1 and len(decide) == 1, harness.describe()
    assert runs[0] < read[-1] < edit[0] < runs[1] < decide[0]
    assert records[edit[0]]["args"]["file_path"] == str(bench.workspace / "train.py")
    session = harness.supervisor()["session_id"]
    assert session and harness.supervisor()["sessions"] == [session]
    assert {r["session"] for r in records if r["actor"] in ("server", "hook")} == {session}
    supervisor_events = audit_events(records, actor="supervisor")
    assert {r["event"] for r in supervisor_events} >= {"run_start", "start", "state", "stop", "run_end"}
    assert any(r["event"] == "stop" and r["session"] == session for r in supervisor_events)
    assert records[-1]["event"] == "run_end" and records[-1]["status"] == "ok"
    (shown,) = show(harness, "--tool", "Edit")
    assert shown["actor"] == "hook" and shown["args"]["file_path"].endswith("train.py")
    verify(harness)
    # The session saw only the tools the loop needs: no shell, web, sub-agents or worktrees.
    init = next(json.loads(line) for line in (harness.run_dir / "agent" / f"{session}.jsonl").read_text().splitlines()
                if '"subtype":"init"' in line.replace(" ", ""))
    offered = set(init["tools"])
    assert {"mcp__autoresearch__run_experiment", "Read", "Edit"} <= offered
    assert not offered & {"Bash", "WebFetch", "Task", "EnterWorktree", "CronCreate", "Skill"}, sorted(offered)


def test_attempts_to_change_the_locked_file_are_refused_recorded_and_leave_it_byte_identical(
        bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory()
    ws = bench.workspace
    original = (ws / "prepare.py").read_bytes()
    locked = str(ws / "prepare.py")
    edit = {"old_string": "FINGERPRINT = ", "new_string": "FINGERPRINT = 'forged' or "}
    attempts = [
        tool_use("Edit", {"file_path": "prepare.py", **edit}),
        tool_use("Write", {"file_path": locked, "content": "print('score: 0.0')\n"}),
        tool_use("Edit", {"file_path": locked, **edit}),
        tool_use("Edit", {"file_path": f"{ws}/../{ws.name}/prepare.py", **edit}),
        tool_use("Edit", {"file_path": str(ws / "autoresearch.toml"), "old_string": "hard_timeout_s = 20",
                          "new_string": "hard_timeout_s = 2000"}),
        tool_use("Bash", {"command": "sed -i 's/1.0 +/0.0 +/' prepare.py"}),
        tool_use("Bash", {"command": "echo 'FINGERPRINT = 1' >> prepare.py"}),
        tool_use("Bash", {"command": "python3 -c \"open('prepare.py', 'a').write('# forged')\""}),
    ]
    reads = [tool_use("Read", {"file_path": locked}), tool_use("Read", {"file_path": str(ws / "autoresearch.toml")})]
    brain = Brain(ws, prelude=reads + attempts)
    harness = bench.start(bench.fake(brain), "--max-experiments", "1", "--allow-bash")

    assert harness.wait_exit(RUN_LIMIT) == 0, harness.describe()

    assert (ws / "prepare.py").read_bytes() == original
    outcomes = [o for o in brain.outcomes if o.name in ("Edit", "Write", "Bash")]
    assert [o.name for o in outcomes] == [a.blocks[0].name for a in attempts]  # type: ignore[attr-defined]
    violations = read_records(harness.run_dir / "violations.jsonl")
    for outcome in outcomes:
        # The refusal (by a deny rule of .claude/settings.json or by the PreToolUse hook) reached the model.
        refused = outcome.is_error and any(w in outcome.text for w in ("denied", "blocked"))
        assert refused or violations, f"{outcome} was neither refused nor repaired"
    hook_refusal = next(o for o in outcomes if "autoresearch.toml" in str(o.input.get("file_path")))
    assert "was blocked: autoresearch.toml is not one of the files this run may change" in hook_refusal.text
    assert all("blocked" in o.text for o in outcomes if o.name == "Bash")
    # Each attempt is in the audit chain, with who refused it.
    blocked = [r for r in harness.audit() if r["event"] == "tool_call" and r["status"] == "blocked"]
    # (Refusals by a deny rule are recorded by the harness from the CLI's stream, a moment later than the hooks'.)
    assert sorted(r["tool"] for r in blocked) == sorted(o.name for o in outcomes), harness.describe()
    assert {r["actor"] for r in blocked if r["tool"] in ("Edit", "Write")} <= {"agent", "hook"}
    assert {r["actor"] for r in blocked if r["tool"] == "Bash"} == {"hook"}
    shown = show(harness, "--status", "blocked")
    assert [r["seq"] for r in shown] == [r["seq"] for r in blocked]
    assert all("prepare.py" in json.dumps(r["args"]) or "autoresearch.toml" in json.dumps(r["args"]) for r in shown)
    assert [(e.id, e.status) for e in harness.experiments()] == [(1, "ok")]
    verify(harness)


def test_a_train_py_that_rewrites_the_locked_file_while_training_is_restored_and_its_experiment_is_invalid(
        bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory()
    original = (bench.workspace / "prepare.py").read_bytes()
    brain = Brain(bench.workspace, edits=[EditPlan('BEHAVIOUR = "normal"', 'BEHAVIOUR = "tamper"', "tamper")])
    harness = bench.start(bench.fake(brain), "--max-experiments", "2")

    assert harness.wait_exit(RUN_LIMIT) == 0, harness.describe()

    assert (bench.workspace / "prepare.py").read_bytes() == original
    experiments = harness.experiments()
    assert [(e.id, e.status, e.decision) for e in experiments] == [(1, "ok", "keep"), (2, "invalid", "discard")]
    violations = read_records(harness.run_dir / "violations.jsonl")
    assert violations and all(v["path"] == "prepare.py" for v in violations)
    assert any(v["experiment_id"] == 2 for v in violations), violations
    runs = [r for r in show(harness, "--tool", "run_experiment") if r["actor"] == "server"]
    assert [r["summary"]["status"] for r in runs] == ["ok", "invalid"]
    assert audit_events(harness.audit(), event="violation")
    assert git(bench.workspace, "rev-parse", run_branch(harness)) == experiments[0].kept_commit
    verify(harness)


# ---- keeping the agent going ----

def test_an_attempt_to_stop_is_turned_back_by_the_stop_hook_and_the_same_process_continues(
        bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory()
    brain = Brain(bench.workspace, triggers=[Trigger(lambda b: b.experiments_returned() >= 1, [stop_talking()])])
    harness = bench.start(bench.fake(brain), "--max-experiments", "2")

    assert harness.wait_exit(RUN_LIMIT) == 0, harness.describe()

    assert brain.triggers[0].fired_at is not None
    assert any("Do not stop: the autoresearch loop continues" in p for p in brain.prompts), brain.prompts
    status = harness.supervisor()
    assert status["restarts"] == 0 and len(status["sessions"]) == 1, status
    records = harness.audit()
    assert len(audit_events(records, actor="hook", event="stop_blocked")) == 1
    assert len(audit_events(records, actor="supervisor", event="start")) == 1
    assert [(e.id, e.status) for e in harness.experiments()] == [(1, "ok"), (2, "ok")]
    verify(harness)


def test_a_hung_api_is_detected_as_a_stall_and_the_same_session_is_resumed(
        bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory()
    brain = Brain(bench.workspace,
                  triggers=[Trigger(lambda b: b.experiments_returned() >= 1, [hang(after_start=True)])])
    harness = bench.start(bench.fake(brain), "--max-experiments", "2", "--stall-timeout", STALL_TIMEOUT)

    assert harness.wait_exit(RUN_LIMIT) == 0, harness.describe()

    records = harness.audit()
    (stall,) = audit_events(records, actor="supervisor", event="stall")
    status = harness.supervisor()
    session = status["session_id"]
    assert status["stalls"] == 1 and status["resumes"] >= 1 and status["sessions"] == [session], status
    assert stall["session"] == session and stall["status"] == "error"
    resumes = audit_events(records, actor="supervisor", event="resume")
    assert resumes and resumes[0]["session"] == session and resumes[0]["seq"] > stall["seq"]
    assert any("The session was interrupted" in p for p in brain.prompts), brain.prompts
    assert [(e.id, e.status) for e in harness.experiments()] == [(1, "ok"), (2, "ok")]
    assert marked(status["agent_mark"]) == []
    verify(harness)


def test_overloaded_answers_past_the_cli_retries_end_the_session_and_the_supervisor_backs_off_then_resumes(
        bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory()
    overloaded = [error(529, "overloaded_error")] * 2  # the first attempt and CLAUDE_CODE_MAX_RETRIES=1 retry
    brain = Brain(bench.workspace, triggers=[Trigger(lambda b: b.experiments_returned() >= 1, overloaded)])
    harness = bench.start(bench.fake(brain), "--max-experiments", "2", env={"CLAUDE_CODE_MAX_RETRIES": "1"})

    assert harness.wait_exit(RUN_LIMIT) == 0, harness.describe()

    records = harness.audit()
    restarts = audit_events(records, actor="supervisor", event="restart")
    assert restarts and restarts[0]["summary"]["end"] == "API_OUTAGE", restarts
    backoffs = audit_events(records, actor="supervisor", event="backoff")
    assert backoffs and backoffs[0]["seq"] > restarts[0]["seq"]
    status = harness.supervisor()
    assert status["backoffs"] >= 1 and status["resumes"] >= 1 and len(status["sessions"]) == 1, status
    assert status["quick_deaths"] == 0
    assert [(e.id, e.status) for e in harness.experiments()] == [(1, "ok"), (2, "ok")]
    verify(harness)


# ---- kills ----

def test_the_cli_killed_with_sigkill_mid_session_is_resumed_and_the_loop_continues(
        bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory()
    brain = Brain(bench.workspace)
    harness = bench.start(bench.fake(brain), "--max-experiments", "2")
    harness.wait_until(lambda: len(harness.experiments()) >= 1 and not harness.in_flight(), RUN_LIMIT,
                       "the baseline to be recorded")
    victim = harness.wait_until(lambda: harness.supervisor().get("pid"), RUN_LIMIT, "the CLI's pid")

    os.kill(victim, signal.SIGKILL)

    assert harness.wait_exit(RUN_LIMIT) == 0, harness.describe()
    records = harness.audit()
    restarts = audit_events(records, actor="supervisor", event="restart")
    assert restarts and restarts[0]["summary"]["end"] == "CRASHED", restarts
    status = harness.supervisor()
    assert status["resumes"] >= 1 and len(status["sessions"]) == 1, status
    assert [(e.id, e.status) for e in harness.experiments()] == [(1, "ok"), (2, "ok")]
    assert victim not in marked(status["agent_mark"])
    verify(harness)


def test_a_harness_killed_with_sigkill_mid_experiment_is_cleaned_up_and_recorded_once_on_resume(
        bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory()
    brain = Brain(bench.workspace, edits=[EditPlan('BEHAVIOUR = "normal"', 'BEHAVIOUR = "hang"', "hang")])
    fake = bench.fake(brain)
    first = bench.start(fake, "--max-experiments", "3")
    first.wait_until(lambda: len(first.experiments()) == 1 and _inflight_id(first) == 2, RUN_LIMIT,
                     "experiment 2 to be in flight")
    mark = first.supervisor()["agent_mark"]
    assert marked(mark), "the agent should be running"

    first.kill_hard()
    assert marked(mark), "a harness killed with SIGKILL leaves its agent behind"
    second = bench.start(fake, "--resume", "--max-experiments", "1")

    assert second.wait_exit(RUN_LIMIT) == 0, second.describe()
    assert marked(mark) == [] and not second.in_flight()
    lines = [r for r in second.ledger_lines() if r.get("type") == "experiment"]
    assert sorted(r["id"] for r in lines) == [1, 2, 3], second.describe()  # each experiment recorded exactly once
    experiments = second.experiments()
    assert [(e.id, e.status) for e in experiments] == [(1, "ok"), (2, "crash"), (3, "ok")], second.describe()
    assert "interrupted" in (experiments[1].failure or "")
    records = second.audit()
    recoveries = audit_events(records, actor="server", event="recovery")
    assert [r["summary"]["experiment_id"] for r in recoveries] == [2]
    run_starts = audit_events(records, actor="supervisor", event="run_start")
    assert len(run_starts) == 2 and recoveries[0]["seq"] < run_starts[1]["seq"]  # by the harness, before the agent
    assert 'BEHAVIOUR = "normal"' in (bench.workspace / "train.py").read_text(encoding="utf-8")
    verify(second)


def test_sigterm_stops_the_harness_gracefully_and_leaves_no_agent_process_behind(
        bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory()
    harness = bench.start(bench.fake(Brain(bench.workspace)))
    harness.wait_until(lambda: len(harness.experiments()) >= 1, RUN_LIMIT, "the baseline to be recorded")
    mark = harness.supervisor()["agent_mark"]
    assert marked(mark)

    harness.send(signal.SIGTERM)

    assert harness.wait_exit(RUN_LIMIT) == 0, harness.describe()
    status = harness.supervisor()
    assert status["state"] == "STOPPED" and "SIGTERM" in status["stop_reason"], status
    last = harness.audit()[-1]
    assert (last["actor"], last["event"], last["status"]) == ("supervisor", "run_end", "ok")
    assert marked(mark) == []
    verify(harness)


def _inflight_id(harness: HarnessProcess) -> int | None:
    running = [e for e in read_entries(harness.run_dir) if e.get("pgid")]
    return running[0]["id"] if running else None


def test_a_repository_left_detached_with_a_stray_commit_is_repaired_by_the_harness_and_the_loop_continues(
        bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory()
    ws = bench.workspace
    broken: list[str] = []

    def break_the_repository(brain: Brain) -> bool:
        """After the baseline: a commit the server never made, then HEAD detached (as a shell command could)."""
        if brain.experiments_returned() < 1 or broken:
            return False
        branch = git(ws, "symbolic-ref", "--short", "HEAD")
        git(ws, "commit", "-q", "--allow-empty", "-m", "stray")
        broken.append(git(ws, "rev-parse", "HEAD"))
        git(ws, "checkout", "-q", "--detach")
        broken.append(branch)
        return True

    brain = Brain(ws, triggers=[Trigger(break_the_repository, [])])
    harness = bench.start(bench.fake(brain), "--max-experiments", "2")

    assert harness.wait_exit(RUN_LIMIT) == 0, harness.describe()

    stray, branch = broken
    experiments = harness.experiments()
    assert [(e.id, e.status) for e in experiments] == [(1, "ok"), (2, "ok")], harness.describe()
    assert git(ws, "symbolic-ref", "--short", "HEAD") == branch == run_branch(harness)
    assert stray not in git(ws, "rev-list", branch)
    repairs = [v for v in read_records(harness.run_dir / "violations.jsonl") if v["path"] == ".git"]
    assert len(repairs) == 1 and f"stray commits {stray[:7]}" in repairs[0]["detail"], repairs
    assert "a detached HEAD" in repairs[0]["detail"] and repairs[0]["experiment_id"] is None
    assert any(r["summary"]["path"] == ".git" for r in audit_events(harness.audit(), actor="guard",
                                                                    event="violation"))
    verify(harness)
