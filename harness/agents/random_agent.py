"""The offline agents' loop, and the first of them: random search over train.py's hyperparameters.

Every offline agent is a real MCP client of the server (stdio, a subprocess), so it exercises exactly what Claude Code
uses: `read_results`, then one edit of the mutable file, `run_experiment`, `commit_or_revert`, again and again; the
server decides what is kept. `run_loop` is that loop; an agent only supplies a `Proposer` (what to change next, and
what to learn from each result). The TPE agent (`harness.agents.tpe_agent`) is the other one.

Random search multiplies one hyperparameter by a random factor, or picks another of its choices, staying inside the
range its comment declares (see `harness.hyperparams`). It is the classic baseline any smarter agent should beat.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from harness.hyperparams import SKIP, Tunable, find_tunables, read_values, set_hyperparameter

log = logging.getLogger(__name__)

FACTORS = (0.5, 0.67, 0.8, 1.25, 1.5, 2.0)
__all__ = ["SKIP", "AgentError", "AgentOptions", "RandomAgentOptions", "Proposal", "Proposer", "Step", "ToolCallFailed",
           "propose", "run_loop", "run_random_agent", "run_random_agent_sync"]


@dataclass(frozen=True)
class AgentOptions:
    workspace: Path
    tag: str
    max_experiments: int
    seed: int = 0
    mutable_file: str = "train.py"
    python: str = sys.executable
    extra_server_args: tuple[str, ...] = ()
    log_dir: Path | None = None  # where the server's stderr goes (default: runs/<tag>/agent)


RandomAgentOptions = AgentOptions


@dataclass(frozen=True)
class Step:
    experiment_id: int | None
    description: str
    status: str
    metric: float | None
    decision: str


@dataclass(frozen=True)
class Proposal:
    source: str  # the new content of the mutable file
    description: str
    hypothesis: str | None = None


class Proposer(Protocol):
    name: str  # the session id prefix the ledger records as the caller: "random", "tpe"

    async def start(self, client: Client, source: str) -> None:
        """Called once the best code is in the file and the baseline exists; `source` is that file."""

    def baseline_hypothesis(self, source: str) -> str | None:
        """What to record with the baseline, when this agent runs it."""

    def propose(self, source: str) -> Proposal:
        """The next experiment, from the best code."""

    def observe(self, proposal: Proposal | None, result: dict[str, Any]) -> None:
        """The result of run_experiment for `proposal` (None: the baseline)."""


class AgentError(RuntimeError):
    """The loop cannot go on; the message says why and what to fix."""


class ToolCallFailed(AgentError):
    pass


def structured(result: Any) -> dict[str, Any]:
    """A tool result's structured content; ToolCallFailed with the server's message when it is an error."""
    if result.is_error:
        text = " ".join(getattr(block, "text", "") for block in result.content)
        raise ToolCallFailed(text or "tool call failed")
    return dict(result.structured_content or {})


# ---- the loop every offline agent runs ----

async def run_loop(options: AgentOptions, proposer: Proposer,
                   on_step: Callable[[Step], None] | None = None) -> list[Step]:
    """Run `max_experiments` experiments (the baseline included, if the run has none yet) through a server on stdio."""
    params = StdioServerParameters(
        command=options.python,
        args=["-m", "server", "serve", "--workspace", str(options.workspace), "--tag", options.tag,
              *options.extra_server_args],
        # The whole environment, not the MCP SDK's short default list: the server needs the run's settings
        # (AUTORESEARCH_KEY_DIR for the audit key, AUTORESEARCH_CACHE and the data sizes, XDG_CONFIG_HOME).
        env={**os.environ, "AUTORESEARCH_SESSION_ID": f"{proposer.name}-{options.seed}", "PYTHONPATH": _import_path()},
        cwd=str(options.workspace),
    )
    # The server's stderr goes to a file beside its log: the terminal shows the agent's progress, not the server's.
    errlog_path = (options.log_dir or options.workspace / "runs" / options.tag / "agent") / \
        f"{proposer.name}-server.stderr.log"
    errlog_path.parent.mkdir(parents=True, exist_ok=True)
    with errlog_path.open("a", encoding="utf-8") as errlog:
        connection = Client(stdio_client(params, errlog=errlog), read_timeout_seconds=None)
        return await _loop(connection, options, proposer, on_step)


async def _loop(connection: Client, options: AgentOptions, proposer: Proposer,
                on_step: Callable[[Step], None] | None) -> list[Step]:
    steps: list[Step] = []
    target = options.workspace / options.mutable_file

    def record(step: Step) -> None:
        steps.append(step)
        if on_step:
            on_step(step)

    failure: AgentError | None = None
    async with connection as client:
        try:
            state = structured(await client.call_tool("read_results", {"last_n": 5}))
            if state.get("pending_id"):  # measured before a restart: the rule decides it, as it would have
                await client.call_tool("commit_or_revert", {})
            await client.call_tool("commit_or_revert", {"prefer": "revert"})  # the file is the best code again
            first_total = int(state.get("counts", {}).get("total", 0))
            done = 0
            if state.get("baseline") is None:
                hypothesis = proposer.baseline_hypothesis(target.read_text(encoding="utf-8"))
                result = structured(await client.call_tool("run_experiment", {"description": "baseline",
                                                                              **_optional(hypothesis)}))
                proposer.observe(None, result)
                record(Step(result["id"], "baseline", result["status"], result.get("metric"), result["decision"]))
                done = await _experiments_since(client, first_total)
                if result["status"] != "ok":
                    raise AgentError(f"the baseline failed ({result['status']}: {result.get('failure')}), so nothing "
                                     f"can be compared to it. Last lines of its log:\n{result.get('log_tail') or '-'}\n"
                                     "Fix the target or its configuration, then run the agent again with --resume")
            await proposer.start(client, target.read_text(encoding="utf-8"))
            while done < options.max_experiments:
                proposal = proposer.propose(target.read_text(encoding="utf-8"))
                target.write_text(proposal.source, encoding="utf-8")
                result = structured(await client.call_tool("run_experiment", {"description": proposal.description,
                                                                              **_optional(proposal.hypothesis)}))
                decision = result["decision"]
                if result["status"] == "ok":
                    decision = structured(await client.call_tool("commit_or_revert", {}))["decision"]
                else:
                    await client.call_tool("commit_or_revert", {"prefer": "revert"})
                proposer.observe(proposal, result)
                record(Step(result["id"], proposal.description, result["status"], result.get("metric"), decision))
                done = await _experiments_since(client, first_total)
        except ValueError as exc:  # the proposer found nothing to change, or a range it cannot read
            failure = AgentError(str(exc))
        except AgentError as exc:
            failure = exc
    if failure is not None:  # raised here, not inside the client's task group, so it arrives unwrapped
        raise failure
    return steps


async def _experiments_since(client: Client, first_total: int) -> int:
    """Experiments the ledger gained since the loop began: noise and confirmation re-runs count like any other."""
    state = structured(await client.call_tool("read_results", {"last_n": 1}))
    return int(state["counts"]["total"]) - first_total


def _import_path() -> str:
    """The server runs the code this agent was loaded from, not whatever else the interpreter would find first."""
    import server

    root = str(Path(server.__file__).resolve().parent.parent)
    extra = os.environ.get("PYTHONPATH")
    return os.pathsep.join([root, extra] if extra else [root])


def _optional(hypothesis: str | None) -> dict[str, str]:
    return {"hypothesis": hypothesis} if hypothesis else {}


# ---- random search ----

def propose(source: str, rng: random.Random, space: list[Tunable] | None = None) -> tuple[str, str]:
    """One random change inside the declared ranges: (new source, description).

    `space` anchors the ranges (the agent reads it once, from the file it started with); by default it is read from
    `source`. Raises ValueError when the file has nothing to tune.
    """
    tunables = space if space is not None else find_tunables(source)
    current = read_values(source)
    tunables = [t for t in tunables if t.name in current]
    if not tunables:
        raise ValueError("no tunable hyperparameter in the file: no positive UPPER_CASE number, no bool, no constant "
                         "with a `range:` or `choices:` comment (see harness/hyperparams.py)")
    for _ in range(50):
        tunable = rng.choice(tunables)
        old = current[tunable.name]
        if tunable.kind == "categorical":
            others = [c for c in tunable.choices if c != old]
            if not others:
                continue
            new: Any = rng.choice(others)
            how = "other choice"
        else:
            if isinstance(old, (bool, str)):
                continue
            factor = rng.choice(FACTORS)
            new = tunable.clip(old * factor if old != 0 else tunable.low + (tunable.high - tunable.low) * factor / 4)
            how = f"x{factor:g}"
        old_text, new_text = tunable.format(old), tunable.format(new)
        if new_text != old_text:
            description = f"{tunable.name} {old_text} -> {new_text} ({how})"
            return set_hyperparameter(source, tunable.name, new_text), description
    raise ValueError("could not find a change that alters the file inside the declared ranges; widen a range")


class RandomProposer:
    name = "random"

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.space: list[Tunable] | None = None

    async def start(self, client: Client, source: str) -> None:
        self.space = find_tunables(source)
        # A resumed run must not replay the draws it made before: the seed moves on with the run.
        state = structured(await client.call_tool("read_results", {"last_n": 1}))
        self.rng = random.Random(self.seed * 1_000_003 + int(state.get("counts", {}).get("total", 0)))

    def baseline_hypothesis(self, source: str) -> str | None:
        return None

    def propose(self, source: str) -> Proposal:
        new_source, description = propose(source, self.rng, self.space)
        return Proposal(new_source, description)

    def observe(self, proposal: Proposal | None, result: dict[str, Any]) -> None:
        pass


async def run_random_agent(options: AgentOptions, on_step: Callable[[Step], None] | None = None) -> list[Step]:
    """Run the random-search loop for `max_experiments` experiments (the baseline included, if the run has none)."""
    return await run_loop(options, RandomProposer(options.seed), on_step)


def run_random_agent_sync(options: AgentOptions, on_step: Callable[[Step], None] | None = None) -> list[Step]:
    return anyio.run(run_random_agent, options, on_step)
