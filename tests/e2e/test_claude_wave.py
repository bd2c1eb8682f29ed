"""A wave through the real Claude Code CLI: four variants submitted with wait=false on two slots, decided out of order.

The harness runs as a user runs it (`autoresearch run --agent claude`) on the fake target with `[slots] count = 2`,
against the fake Messages API. The scripted model reads only what the CLI sends back (the tools' structured results):
it records the baseline, edits train.py and submits four variants without waiting, blocks in
`read_results(wait_s=...)` until the whole wave is finished, decides each variant by id in an order that is not the id
order, then asks the run to stop. Afterwards the ledger, the branch and the audit chain must agree.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.audit import AuditLog
from server.config import load_config
from server.gitrepo import GitRepo
from server.runcheck import verify_run
from server.runstate import load_run
from tests.e2e.claude_workspace import (
    TRAIN,
    Brain,
    HarnessProcess,
    ToolOutcome,
    audit_events,
    build_harness_workspace,
    harness_env,
    kill_everything_of,
    stop_talking,
)
from tests.fakes.fake_anthropic import FakeAnthropic, Reply, tool_use_block, turn
from tests.helpers import git

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TAG = "wave"
RUN_LIMIT = 180.0  # the scenario takes 40-70 s on a busy 2-core machine; the bound only stops a hung harness
WAIT_S = 60  # read_results(wait_s): far below the per-call timeout the harness gives the CLI
# The wave as the model submits it: two assistant turns, each [Edit, run_experiment, Edit, run_experiment], with
# (LR, SLEEP_S) per variant. The first of each pair trains for 8 s; the three tool calls (with their hooks) that submit
# the second take the CLI 3-5 s on a busy 2-core machine, so each pair runs side by side on the two slots.
PAIRS = [[("0.35", "8"), ("0.25", "1.5")], [("0.9", "8"), ("0.31", "1.5")]]
DECIDE_ORDER = [3, 5, 2, 4]  # ids; LR 0.25 is kept, then 0.31 beats it; 0.35 and 0.9 no longer beat the best
CONSTANTS = re.compile(r"^LR = .*?^SLEEP_S = [^\n]*", re.M | re.S)


def with_constants(block: str, lr: str, sleep_s: str) -> str:
    """train.py's constant block (LR through SLEEP_S) with these values: one Edit changes both."""
    block = re.sub(r"^LR = [0-9.]+", f"LR = {lr}", block, flags=re.M)
    return re.sub(r"^SLEEP_S = [0-9.]+", f"SLEEP_S = {sleep_s}", block, flags=re.M)


class WaveModel(Brain):
    """The scripted model of this scenario: a fixed plan, each step checked against the results the CLI sent back.

    Anything unexpected (an error result, a run_experiment that waited) is recorded in `problems` and the model asks
    the run to stop, so a broken scenario ends in seconds with the reason rather than at the time limit.
    """

    def __init__(self, workspace: Path, request_stop: Callable[[], None]) -> None:
        super().__init__(workspace)
        self.request_stop = request_stop
        self.train = (workspace / TRAIN).read_text(encoding="utf-8")
        self.pairs = [list(pair) for pair in PAIRS]
        self.submitted: list[int] = []
        self.answers: list[str] = []  # the status each run_experiment(wait=false) answered: queued or running
        self.to_decide = list(DECIDE_ORDER)
        self.waits = 0
        self.problems: list[str] = []
        self.finished = False
        self._handled = 0  # outcomes already looked at (a turn of several tool calls brings several)

    def _next(self, last: ToolOutcome | None) -> Reply:
        new, self._handled = self.outcomes[self._handled:], len(self.outcomes)
        if self.finished:
            return stop_talking("The wave is decided; stopping.")
        failed = [o for o in new if o.is_error]
        if failed:
            return self._give_up("; ".join(f"{o.name}({dict(o.input)}) failed: {o.text[:600]}" for o in failed))
        if last is None:
            return self._mcp("run_experiment", {"description": "baseline"})
        if last.name.endswith("__run_experiment") and last.input.get("wait") is None:
            return self.read_train()  # the baseline is recorded (it waited): start the wave
        if last.name == "Read":
            return self._submit_pair()
        if last.name.endswith("__run_experiment"):
            for outcome in new:
                if outcome.name.endswith("__run_experiment"):
                    data = outcome.data() or {}
                    self.answers.append(str(data.get("status")))
                    if data.get("status") not in ("queued", "running"):
                        return self._give_up(f"run_experiment(wait=false) answered {data}")
                    self.submitted.append(int(data["id"]))
            return self._submit_pair() if self.pairs else self._wait()
        if last.name.endswith("__read_results"):
            data = last.data() or {}
            flying = {row["id"] for row in data.get("in_flight") or []}
            if flying & set(self.submitted) or not set(self.submitted) <= set(data.get("pending_ids") or []):
                return self._wait()
            return self._decide_next()
        if last.name.endswith("__commit_or_revert"):
            return self._decide_next()
        return self._give_up(f"unexpected tool result from {last.name}: {last.text[:300]}")

    def _submit_pair(self) -> Reply:
        blocks = []
        for lr, sleep_s in self.pairs.pop(0):
            old = CONSTANTS.search(self.train)
            assert old is not None, "train.py of the fake target has LR ... SLEEP_S at the top"
            new = with_constants(old.group(0), lr, sleep_s)
            self.train = self.train.replace(old.group(0), new)
            blocks.append(tool_use_block("Edit", {"file_path": str(self.workspace / TRAIN), "old_string": old.group(0),
                                                  "new_string": new}))
            blocks.append(tool_use_block("mcp__autoresearch__run_experiment", {
                "description": f"LR {lr}", "hypothesis": f"LR {lr} scores better", "wait": False}))
        return turn(*blocks)

    def _wait(self) -> Reply:
        self.waits += 1
        if self.waits > 20:
            return self._give_up(f"the wave {self.submitted} did not finish after 20 read_results(wait_s) calls")
        return self._mcp("read_results", {"wait_s": WAIT_S})

    def _decide_next(self) -> Reply:
        if self.to_decide:
            return self._mcp("commit_or_revert", {"experiment_id": self.to_decide.pop(0)})
        return self._finish()

    def _give_up(self, problem: str) -> Reply:
        self.problems.append(problem)
        return self._finish()

    def _finish(self) -> Reply:
        self.finished = True
        self.request_stop()
        return stop_talking("The wave is decided; stopping.")


@pytest.fixture
def wave_workspace(tmp_path: Path) -> Path:
    ws = build_harness_workspace(tmp_path / "ws")
    with (ws / "autoresearch.toml").open("a", encoding="utf-8") as fh:
        fh.write("\n[slots]\ncount = 2\n")
    git(ws, "commit", "-qam", "two slots")
    return ws


@pytest.fixture
def started(wave_workspace: Path) -> Iterator[list[Any]]:
    """Whatever the test starts (fakes, harnesses), cleaned up at teardown whatever happened."""
    things: list[Any] = []
    yield things
    kill_everything_of(wave_workspace, [t for t in things if isinstance(t, HarnessProcess)])
    for thing in things:
        if isinstance(thing, FakeAnthropic):
            thing.close()


def overlap(a: Any, b: Any) -> bool:
    return a.started_at < b.finished_at and b.started_at < a.finished_at


def start_harness(ws: Path, claude_bin: Path, tmp_path: Path, started: list[Any], *args: str,
                  stop_when_done: bool) -> tuple[HarnessProcess, WaveModel]:
    """The fake API scripted by a WaveModel and the harness on it. With `stop_when_done` the model asks the run to
    stop (`autoresearch stop`) once the wave is decided; without, the run must end by its own limits."""
    home = tmp_path / "home"
    home.mkdir()
    harness: list[HarnessProcess] = []

    def request_stop() -> None:
        if stop_when_done:
            result = harness[0].cli("stop")
            assert result.returncode == 0, result.stderr

    model = WaveModel(ws, request_stop)
    fake = FakeAnthropic(model).start()
    started.append(fake)
    # The harness keeps its audit key and private files where this test's own checks look for them.
    places = {name: os.environ[name] for name in ("AUTORESEARCH_KEY_DIR", "AUTORESEARCH_PRIVATE_DIR")}
    harness.append(HarnessProcess(ws, TAG, harness_env(fake.url, home, claude_bin, places), args,
                                  log_dir=tmp_path / "logs"))
    started.append(harness[0])
    return harness[0], model


def test_a_wave_of_four_submitted_with_wait_false_through_the_cli_is_waited_for_and_decided_out_of_order(
        wave_workspace: Path, claude_bin: Path, tmp_path: Path, started: list[Any]) -> None:
    ws = wave_workspace
    run, model = start_harness(ws, claude_bin, tmp_path, started, stop_when_done=True)

    assert run.wait_exit(RUN_LIMIT) == 0, run.describe()
    assert model.problems == [], f"{model.problems}\n{run.describe()}"

    # The ledger: the baseline and the four variants, every one decided, the kept ones in decision order.
    experiments = {e.id: e for e in run.experiments()}
    assert sorted(experiments) == [1, 2, 3, 4, 5], run.describe()
    assert model.submitted == [2, 3, 4, 5]
    assert experiments[1].is_baseline and experiments[1].decision == "keep"
    wave = [experiments[i] for i in model.submitted]
    assert all(e.status == "ok" for e in wave), [(e.id, e.status, e.failure) for e in wave]
    assert {e.id: e.decision for e in wave} == {2: "discard", 3: "keep", 4: "discard", 5: "keep"}
    assert {e.slot for e in wave} == {0, 1}
    # Two slots: the wave ran as two overlapping pairs, never three at once.
    assert overlap(experiments[2], experiments[3]) and overlap(experiments[4], experiments[5]), \
        [(e.id, e.slot, e.started_at, e.finished_at) for e in wave]
    for exp in wave:
        at_start = [o for o in wave if o is not exp and o.started_at <= exp.started_at < o.finished_at]
        assert len(at_start) <= 1, f"experiment {exp.id} started while {[o.id for o in at_start]} ran"

    # The branch holds exactly the kept changes, in decision order, each commit the code that was measured.
    decided = sorted((e for e in wave if e.decision == "keep"), key=lambda e: DECIDE_ORDER.index(e.id))
    branch = load_run(load_config(ws), TAG).branch
    base = load_run(load_config(ws), TAG).base_commit
    chain = git(ws, "rev-list", "--first-parent", f"{base}..{branch}").split()
    assert chain[::-1] == [e.kept_commit for e in decided]
    for exp in decided:
        assert git(ws, "rev-parse", f"{exp.kept_commit}^{{tree}}") == git(ws, "rev-parse", f"{exp.commit}^{{tree}}")
    assert "LR = 0.31" in git(ws, "show", f"{branch}:{TRAIN}")

    # The calls reached the server as the model made them: wait=false, read_results with wait_s, decisions by id.
    records = run.audit()
    calls = list(audit_events(records, actor="server", event="tool_call"))
    runs = [r for r in calls if r.get("tool") == "run_experiment"]
    assert [r["args"].get("wait") for r in runs] == [None, False, False, False, False], [r["args"] for r in runs]
    assert all(r["status"] == "ok" for r in runs)
    waits = [r for r in calls if r.get("tool") == "read_results"]
    assert waits and all(r["args"].get("wait_s") == WAIT_S and r["status"] == "ok" for r in waits)
    decisions = [r["args"].get("experiment_id") for r in calls if r.get("tool") == "commit_or_revert"]
    assert decisions == DECIDE_ORDER
    last_submit = max(i for i, r in enumerate(records) if r in runs)
    first_decision = min(i for i, r in enumerate(records) if r.get("tool") == "commit_or_revert")
    assert last_submit < first_decision, "all four were submitted before any was decided"

    verdict = verify_run(load_run(load_config(ws), TAG), GitRepo(ws))
    assert verdict.ok, verdict.message
    assert AuditLog(run.run_dir / "audit.jsonl").verify().ok
    audit_cli = run.cli("audit", "verify")
    assert audit_cli.returncode == 0, f"{audit_cli.stdout}{audit_cli.stderr}"


def test_a_last_wave_that_reaches_the_experiment_limit_is_decided_before_the_supervisor_ends_the_agent(
        wave_workspace: Path, claude_bin: Path, tmp_path: Path, started: list[Any]) -> None:
    # The limit counts the baseline and the four variants: it is reached when the fourth is submitted, and all four
    # finish before any is decided. Every one of them is held until decided, not only the one with the highest id.
    run, model = start_harness(wave_workspace, claude_bin, tmp_path, started, "--max-experiments", "5",
                               stop_when_done=False)

    assert run.wait_exit(RUN_LIMIT) == 0, run.describe()
    assert model.problems == [], f"{model.problems}\n{run.describe()}"
    assert {e.id: e.decision for e in run.experiments()} == {1: "keep", 2: "discard", 3: "keep", 4: "discard",
                                                             5: "keep"}, run.describe()
    assert "the limit" in run.supervisor()["stop_reason"]
    branch = load_run(load_config(wave_workspace), TAG).branch
    assert "LR = 0.31" in git(wave_workspace, "show", f"{branch}:{TRAIN}"), "the wave's best change reached the branch"
