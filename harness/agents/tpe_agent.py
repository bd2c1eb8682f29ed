"""The Bayesian-optimization agent: Optuna's TPE over train.py's hyperparameters, through the same locked tools.

It runs the loop every offline agent runs (`harness.agents.random_agent.run_loop`: a real MCP client of the server on
stdio; `run_experiment`, then `commit_or_revert`, whose rule alone decides what is kept). What it adds is the choice of
the next experiment.

Why Optuna: it is well kept and widely used; its TPE sampler handles int, float (linear or log), categorical and
conditional spaces (a trial may lack a parameter), which is what the UPPER_CASE constants of a training script are;
and its ask/tell interface fits a loop where the evaluation happens elsewhere (here, in the server). Its in-memory
storage is enough: the ledger is the record, and the study is rebuilt from it at every start.

One change per experiment. The loop keeps a change only if it beats the best code, so each experiment starts from the
best code and changes one constant: TPE samples that constant while the others stay at the best code's values
(Optuna's PartialFixedSampler), the constants taking turns in a fixed, seeded order. A full configuration per
experiment would move away from the best code on every dimension at once, most such moves lose to it, and a ledger of
one-line diffs says which constant did what. Every experiment is still a full point of the study: the best code's
values plus the change.

Resuming. Each experiment's full configuration goes into its hypothesis as `tpe-params {json}`. At start the agent
reads the run through `read_results`, the view any agent has, and adds every experiment that carries such a line as a
finished trial: its metric, or for a crash, timeout or invalid run the worst metric seen before it (so TPE learns to
avoid what breaks). Experiments of other agents have no such line; the best code, if it is one of them, is added with
the values in the file. `read_results` shows the last 200 experiments; older ones are not part of the rebuilt study.

Ranges come from the comments of train.py (see `harness.hyperparams`); they are read once, from the best code at start.
"""

from __future__ import annotations

import json
import logging
import math
import random
import warnings
from typing import Any, Callable

import anyio
import optuna
from mcp import Client
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from harness.agents.random_agent import AgentOptions, Proposal, Step, run_loop, structured
from harness.hyperparams import Tunable, Value, find_tunables, read_values, set_hyperparameter

log = logging.getLogger(__name__)

PARAMS_MARK = "tpe-params "
MAX_HYPOTHESIS = 1000  # the server's limit


def distribution(tunable: Tunable) -> BaseDistribution:
    if tunable.kind == "categorical":
        return CategoricalDistribution(tunable.choices)
    if tunable.kind in ("int", "pow2"):
        return IntDistribution(int(math.ceil(tunable.low)), int(math.floor(tunable.high)),
                               log=tunable.log and tunable.kind == "int")
    return FloatDistribution(tunable.low, tunable.high, log=tunable.log)


def to_param(tunable: Tunable, value: Value) -> Value:
    """The file's value as the study sees it (a power of two is its exponent)."""
    if tunable.kind == "pow2" and not isinstance(value, (bool, str)):
        return int(round(math.log2(value)))
    return value


def to_value(tunable: Tunable, param: Any) -> Value:
    if tunable.kind == "pow2":
        return 2 ** int(param)
    return param  # type: ignore[no-any-return]


def encode_params(config: dict[str, Value]) -> str:
    return PARAMS_MARK + json.dumps(config, sort_keys=True, separators=(",", ":"))


def decode_params(hypothesis: str | None) -> dict[str, Value] | None:
    """The configuration a `tpe-params {json}` line records, or None when the hypothesis has none."""
    if not hypothesis or PARAMS_MARK not in hypothesis:
        return None
    text = hypothesis[hypothesis.index(PARAMS_MARK) + len(PARAMS_MARK):]
    try:
        data, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): v for k, v in data.items() if isinstance(v, (int, float, str, bool))}


class TpeProposer:
    """Chooses each experiment with TPE; `study` holds one finished trial per experiment it knows."""

    name = "tpe"

    def __init__(self, seed: int = 0, startup_trials: int | None = None,
                 on_note: Callable[[str], None] | None = None) -> None:
        self.seed = seed
        self.startup_trials = startup_trials
        self.on_note = on_note or (lambda message: log.info("%s", message))
        self.space: dict[str, Tunable] = {}
        self.order: list[str] = []
        self.study: optuna.Study | None = None
        self.rebuilt = 0  # trials taken from the ledger at start
        self._direction = "minimize"
        self._worst: float | None = None
        self._pending: dict[str, Value] | None = None

    # ---- the search space and the study ----

    def read_space(self, source: str) -> None:
        if self.space:
            return
        self.space = {t.name: t for t in find_tunables(source)}
        if not self.space:
            raise ValueError("no tunable hyperparameter in the file: no positive UPPER_CASE number, no bool, no "
                             "constant with a `range:` or `choices:` comment (see harness/hyperparams.py)")
        self.order = sorted(self.space)
        random.Random(self.seed).shuffle(self.order)

    def _config(self, source: str) -> dict[str, Value]:
        values = read_values(source)
        return {name: values[name] for name in self.space if name in values}

    def _params(self, config: dict[str, Value]) -> dict[str, Value]:
        """The configuration as study parameters, leaving out what is not in the space (or outside its range)."""
        params: dict[str, Value] = {}
        for name, value in config.items():
            tunable = self.space.get(name)
            if tunable is None or (tunable.kind != "categorical" and isinstance(value, (bool, str))):
                continue
            if tunable.contains(value):
                params[name] = to_param(tunable, value)
        return params

    def _add(self, config: dict[str, Value], metric: float | None) -> None:
        assert self.study is not None
        if metric is not None:
            if self._worst is None or (metric > self._worst if self._direction == "minimize" else metric < self._worst):
                self._worst = metric
        value = metric if metric is not None else self._worst
        params = self._params(config)
        if value is None or not params:
            return  # a failure before any success teaches nothing measurable
        dists = {name: distribution(self.space[name]) for name in params}
        self.study.add_trial(create_trial(params=params, distributions=dists, value=value))

    async def start(self, client: Client, source: str) -> None:
        """Read the ranges from the best code and rebuild the study from the ledger."""
        self.read_space(source)
        state = structured(await client.call_tool("read_results", {"last_n": 200}))
        known: set[int] = set()
        records: list[tuple[int, dict[str, Value], float | None]] = []
        for row in state.get("experiments", []):
            detail = structured(await client.call_tool("read_results", {"last_n": 1, "experiment_id": row["id"]}))
            config = decode_params((detail.get("detail") or {}).get("hypothesis"))
            if config is None:
                continue
            known.add(int(row["id"]))
            records.append((int(row["id"]), config, row["metric"] if row["status"] == "ok" else None))
        best = state.get("best")
        if best and int(best["id"]) not in known:  # the best code came from another agent: its values are the file's
            records.append((int(best["id"]), self._config(source), float(best["metric"])))
        self.rebuild(str(state.get("direction", "minimize")), records)
        skipped = len(state.get("experiments", [])) - len(known)
        self.on_note(f"study: {self.rebuilt} trials rebuilt from the ledger ({skipped} experiments of other agents "
                     f"not used); searching {', '.join(self.order)}")

    def rebuild(self, direction: str, records: list[tuple[int, dict[str, Value], float | None]]) -> None:
        """A fresh study holding one finished trial per (experiment id, configuration, metric or None if it failed)."""
        self._direction, self._worst = direction, None
        records = sorted(records, key=lambda r: r[0])
        n_startup = self.startup_trials if self.startup_trials is not None else max(4, min(10, 2 * len(self.space)))
        # The sampler's seed moves on with the study, so a restarted agent does not replay the proposals it made.
        sampler = optuna.samplers.TPESampler(seed=self.seed + len(records), n_startup_trials=n_startup)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(direction=direction, sampler=sampler)
        for _, config, metric in records:
            self._add(config, metric)
        self.rebuilt = len(self.study.trials)

    # ---- the loop's questions ----

    def baseline_hypothesis(self, source: str) -> str | None:
        self.read_space(source)
        return _bounded(f"The unmodified code. {encode_params(self._config(source))}")

    def propose(self, source: str) -> Proposal:
        assert self.study is not None, "start() builds the study before the first proposal"
        current = self._config(source)
        base_params = self._params(current)
        tpe = self.study.sampler
        finished = sum(1 for t in self.study.trials if t.state is TrialState.COMPLETE)
        for attempt in range(3 * len(self.order)):
            name = self.order[(finished + attempt) % len(self.order)]
            tunable = self.space[name]
            fixed = {k: v for k, v in base_params.items() if k != name}
            dists = {k: distribution(self.space[k]) for k in [*fixed, name]}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.sampler = optuna.samplers.PartialFixedSampler(fixed, tpe)
                try:
                    trial = self.study.ask(dists)
                finally:
                    self.study.sampler = tpe
            # The suggestion is only a suggestion: the finished trial is added once the experiment has run, with the
            # value as written to the file, exactly as a restarted agent will read it back from the ledger.
            self.study.tell(trial, state=TrialState.FAIL)
            new = to_value(tunable, trial.params[name])
            old = current.get(name, tunable.current)
            old_text, new_text = tunable.format(old), tunable.format(new)
            if new_text == old_text:
                continue
            config = dict(current)
            config[name] = _parse_back(tunable, new_text)
            self._pending = config
            hypothesis = _bounded(f"TPE ({finished} trials) suggests {name} = {new_text}. {encode_params(config)}")
            return Proposal(set_hyperparameter(source, name, new_text), f"{name} {old_text} -> {new_text} (tpe)",
                            hypothesis)
        raise ValueError(f"TPE kept suggesting the values already in the file for {', '.join(self.order)}; "
                         "widen the ranges in the comments of the mutable file")

    def observe(self, proposal: Proposal | None, result: dict[str, Any]) -> None:
        if self.study is None or proposal is None or self._pending is None:
            return  # the baseline is read back from the ledger when the study is built
        metric = result.get("metric") if result.get("status") == "ok" else None
        self._add(self._pending, metric)
        self._pending = None


def _parse_back(tunable: Tunable, text: str) -> Value:
    """The value exactly as written to the file (a float rounded to 4 significant digits, say)."""
    return read_values(f"X = {text}\n")["X"]


def _bounded(hypothesis: str) -> str:
    if len(hypothesis) > MAX_HYPOTHESIS:
        raise ValueError(f"the configuration needs {len(hypothesis)} characters, over the {MAX_HYPOTHESIS} a "
                         "hypothesis may hold; mark constants that need no search `# fixed` in the mutable file")
    return hypothesis


async def run_tpe_agent(options: AgentOptions, on_step: Callable[[Step], None] | None = None,
                        proposer: TpeProposer | None = None) -> list[Step]:
    """Run the TPE loop for `max_experiments` experiments (the baseline included, if the run has none yet)."""
    return await run_loop(options, proposer or TpeProposer(options.seed), on_step)


def run_tpe_agent_sync(options: AgentOptions, on_step: Callable[[Step], None] | None = None,
                       proposer: TpeProposer | None = None) -> list[Step]:
    return anyio.run(run_tpe_agent, options, on_step, proposer)
