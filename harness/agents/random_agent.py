"""The offline agent: random search over train.py's hyperparameters, through the same locked tools as any agent.

It is a real MCP client of the server (stdio, a subprocess), so the demo exercises exactly what Claude Code uses. Each
experiment multiplies one UPPER_CASE numeric hyperparameter by a random factor; the server decides what is kept.
Random search is the classic baseline any smarter agent should beat.
"""

from __future__ import annotations

import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

import server

from harness.hyperparams import Hyperparameter, find_hyperparameters, format_value, set_hyperparameter

log = logging.getLogger(__name__)

FACTORS = (0.5, 0.67, 0.8, 1.25, 1.5, 2.0)
# Changing these tells us nothing about the model (or breaks the contract with the evaluation).
SKIP = frozenset({"SEED", "EVAL_TOKENS", "MAX_SEQ_LEN", "VOCAB_SIZE", "TIME_BUDGET", "MAX_LOSS", "UNTIMED_STEPS"})


@dataclass(frozen=True)
class RandomAgentOptions:
    workspace: Path
    tag: str
    max_experiments: int
    seed: int = 0
    mutable_file: str = "train.py"
    python: str = sys.executable
    extra_server_args: tuple[str, ...] = ()
    log_dir: Path | None = None  # where the server's stderr goes (default: runs/<tag>/agent)


@dataclass(frozen=True)
class Step:
    experiment_id: int | None
    description: str
    status: str
    metric: float | None
    decision: str


class ToolCallFailed(RuntimeError):
    pass


def _structured(result: Any) -> dict[str, Any]:
    if result.is_error:
        text = " ".join(getattr(block, "text", "") for block in result.content)
        raise ToolCallFailed(text or "tool call failed")
    return dict(result.structured_content or {})


def propose(source: str, rng: random.Random) -> tuple[str, str]:
    """One random change: (new source, description). Raises ValueError when the file has nothing to tune."""
    params: list[Hyperparameter] = [p for p in find_hyperparameters(source) if p.name not in SKIP and p.value > 0]
    if not params:
        raise ValueError("no positive UPPER_CASE numeric hyperparameter to change")
    for _ in range(20):
        param = rng.choice(params)
        factor = rng.choice(FACTORS)
        new_text = format_value(param, param.value * factor)
        old_text = format_value(param, param.value)
        if new_text != old_text:
            return set_hyperparameter(source, param.name, new_text), f"{param.name} {old_text} -> {new_text} (x{factor:g})"
    raise ValueError("could not find a change that alters the file")


async def run_random_agent(options: RandomAgentOptions, on_step: Callable[[Step], None] | None = None) -> list[Step]:
    """Run the loop for `max_experiments` experiments (the baseline included, if the run has none yet)."""
    rng = random.Random(options.seed)
    params = StdioServerParameters(
        command=options.python,
        args=["-m", "server", "serve", "--workspace", str(options.workspace), "--tag", options.tag,
              *options.extra_server_args],
        # the server runs the same code as this process (a checkout that is not the installed one included)
        env={"AUTORESEARCH_SESSION_ID": f"random-{options.seed}",
             "PYTHONPATH": str(Path(server.__file__).parent.parent)},
        cwd=str(options.workspace),
    )
    steps: list[Step] = []
    target = options.workspace / options.mutable_file
    # The server's stderr goes to a file beside its log: the terminal shows the agent's progress, not the server's.
    errlog_path = (options.log_dir or options.workspace / "runs" / options.tag / "agent") / "random-server.stderr.log"
    errlog_path.parent.mkdir(parents=True, exist_ok=True)
    with errlog_path.open("a", encoding="utf-8") as errlog:
        return await _loop(Client(stdio_client(params, errlog=errlog), read_timeout_seconds=None), options, rng,
                           target, steps, on_step)


async def _loop(connection: Client, options: RandomAgentOptions, rng: random.Random, target: Path, steps: list[Step],
                on_step: Callable[[Step], None] | None) -> list[Step]:
    async with connection as client:
        state = _structured(await client.call_tool("read_results", {"last_n": 5}))
        if state.get("pending_id"):
            await client.call_tool("commit_or_revert", {"prefer": "revert"})
        first_total = int(state.get("counts", {}).get("total", 0))
        done = 0
        if state.get("baseline") is None:
            await client.call_tool("commit_or_revert", {"prefer": "revert"})  # a baseline runs unmodified code
            result = _structured(await client.call_tool("run_experiment", {"description": "baseline"}))
            steps.append(Step(result["id"], "baseline", result["status"], result.get("metric"), result["decision"]))
            if on_step:
                on_step(steps[-1])
            done = await _experiments_since(client, first_total)
        while done < options.max_experiments:
            source = target.read_text(encoding="utf-8")
            new_source, description = propose(source, rng)
            target.write_text(new_source, encoding="utf-8")
            result = _structured(await client.call_tool("run_experiment", {"description": description}))
            decision = result["decision"]
            if result["status"] == "ok":
                verdict = _structured(await client.call_tool("commit_or_revert", {}))
                decision = verdict["decision"]
            else:
                await client.call_tool("commit_or_revert", {"prefer": "revert"})
            steps.append(Step(result["id"], description, result["status"], result.get("metric"), decision))
            if on_step:
                on_step(steps[-1])
            done = await _experiments_since(client, first_total)
    return steps


async def _experiments_since(client: Client, first_total: int) -> int:
    """Experiments the ledger gained since the loop began: noise and confirmation re-runs count like any other."""
    state = _structured(await client.call_tool("read_results", {"last_n": 1}))
    return int(state["counts"]["total"]) - first_total


def run_random_agent_sync(options: RandomAgentOptions, on_step: Callable[[Step], None] | None = None) -> list[Step]:
    return anyio.run(run_random_agent, options, on_step)
