"""The sandbox and the harness's clock, on the tests' fast fake target (the real target's attacks are in
test_sealed_attacks.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from helpers import git, make_engine, set_constant
from server import engine as engine_module
from server import runstate
from server.config import ConfigError, load_config
from server.engine import Engine, Refusal
from server.runstate import RunError, init_run, load_run


def run(engine: Engine, description: str):
    return asyncio.run(engine.run_experiment(description))


def configure(workspace: Path, extra: str, replace: tuple[str, str] | None = None) -> None:
    path = workspace / "autoresearch.toml"
    text = path.read_text()
    if replace:
        text = text.replace(*replace)
    path.write_text(text + "\n" + extra)
    git(workspace, "commit", "-qam", "configure the sandbox")


def write_train(workspace: Path, body: str) -> None:
    """A train.py whose main block is `body` (then the usual checkpoint and summary)."""
    source = (workspace / "train.py").read_text()
    head, sep, rest = source.partition('if __name__ == "__main__":\n')
    (workspace / "train.py").write_text(head + sep + "    " + body.replace("\n", "\n    ") + "\n" + rest)


def test_a_baseline_runs_sealed_and_its_ledger_line_carries_the_seed(workspace: Path) -> None:
    engine = make_engine(workspace)
    result = run(engine, "baseline")
    assert result.status == "ok" and engine.sealed
    exp = engine.ledger.get(1)
    assert exp is not None and exp.sealed is True and isinstance(exp.seed, int)
    second = make_engine(workspace, tag="t2")
    run(second, "baseline")
    assert second.ledger.get(1).seed != exp.seed, "repeated runs get different seeds"


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop applies when the server runs as root")
def test_the_command_runs_as_an_unprivileged_user_without_capabilities(workspace: Path) -> None:
    write_train(workspace, 'caps = [l for l in open("/proc/self/status") if l.startswith("CapEff")][0].split()[1]\n'
                           'print("identity", os.getuid(), os.getgid(), caps, flush=True)')
    git(workspace, "commit", "-qam", "print identity")
    engine = make_engine(workspace)
    assert run(engine, "baseline").status == "ok"
    log = (engine.run_dir / "experiments" / "0001" / "run.log").read_text()
    assert "identity 65534 65534 0000000000000000" in log


def test_the_wall_clock_stops_the_sandbox_at_budget_plus_startup(workspace: Path) -> None:
    configure(workspace, "[sandbox]\nstartup_s = 1\n", ("time_budget_s = 5", "time_budget_s = 2"))
    engine = make_engine(workspace)
    run(engine, "baseline")
    set_constant(workspace / "train.py", "BEHAVIOUR", '"hang"')
    result = run(engine, "trains past its budget")
    assert result.status == "timeout"
    assert "3 s (budget 2 s + start-up 1 s" in (result.failure or "")
    assert result.train_s is not None and result.train_s < 10


def test_the_cpu_clock_stops_a_command_that_burns_cpu_past_its_budget(workspace: Path) -> None:
    configure(workspace, '[sandbox]\nclock = "cpu"\nstartup_s = 1\ncpu_threads = 1\n',
              ("time_budget_s = 5", "time_budget_s = 1"))
    engine = make_engine(workspace)
    run(engine, "baseline")
    write_train(workspace, "if BEHAVIOUR == 'burn':\n    while True:\n        pass")
    set_constant(workspace / "train.py", "BEHAVIOUR", '"burn"')
    result = run(engine, "burns the CPU")
    assert result.status == "timeout" and "CPU seconds" in (result.failure or "")
    assert 1.5 <= (result.train_s or 0) < 6, "the recorded training time is the harness's CPU measurement"


def test_a_command_that_writes_no_model_leaves_the_evaluation_without_one(workspace: Path) -> None:
    engine = make_engine(workspace)
    run(engine, "baseline")
    write_train(workspace, "os.environ.pop('AUTORESEARCH_CHECKPOINT', None)")
    result = run(engine, "forgets the checkpoint")
    assert result.status == "crash" and "evaluation failed" in (result.failure or "")
    assert "/exp/in/checkpoint" in (result.log_tail or ""), "the evaluator was asked for a model that is not there"


def test_init_refuses_where_no_sandbox_can_be_made_unless_unsealed_runs_are_allowed(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reason = "bubblewrap is not installed"
    monkeypatch.setattr(runstate, "sandbox_probe", lambda: reason)
    monkeypatch.setattr(engine_module.sandbox, "probe", lambda: reason)
    config = load_config(workspace)
    with pytest.raises(RunError, match="--allow-unsealed"):
        init_run(config, "sealed")
    init_run(config, "open", allow_unsealed=True)
    engine = Engine(config, load_run(config, "open"))
    result = run(engine, "baseline")
    assert result.status == "ok" and engine.ledger.get(1).sealed is False


def test_an_engine_on_a_machine_without_a_sandbox_refuses_a_sealed_run(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(workspace)
    init_run(config, "t1")
    monkeypatch.setattr(engine_module.sandbox, "probe", lambda: "user namespaces are disabled")
    engine = Engine(config, load_run(config, "t1"))
    with pytest.raises(Refusal, match="must run sealed, but user namespaces are disabled"):
        run(engine, "baseline")


def test_sandbox_off_without_allow_unsealed_is_a_configuration_error(workspace: Path) -> None:
    (workspace / "autoresearch.toml").write_text((workspace / "autoresearch.toml").read_text()
                                                 + '\n[sandbox]\nmode = "off"\n')
    with pytest.raises(ConfigError, match="allow_unsealed"):
        load_config(workspace)
