"""Honest acceptance: the noise floor, confirmation re-runs and the keep rule (a part of `Engine`).

A change is kept only when its metric beats the mean of the best's runs by more than max(min_improvement, noise_k x
noise floor), and, when `confirm_runs` > 0, only when the mean of its own runs (itself plus `confirm_runs` re-runs of
its snapshot with fresh seeds) still does. The noise floor is the sample standard deviation of the baseline's
`noise_runs` runs, measured once at the start of a run and never re-measured automatically: a re-measurement costs
`noise_runs` experiments, the spread it measures comes from the seed and the machine far more than from the code, and
a floor that moved during a night would make early and late decisions incomparable. A person who changes the model a
lot starts a new tag, which measures a new floor.

Re-runs are ledger lines of their own (`repeat_of`), never candidates, and count in every limit. They are queued like
any experiment, so with several slots the baseline's noise runs and a candidate's confirmation runs run side by side.
The rule is applied twice: once when the decision is asked for (a result that does not beat the best by the margin is
refused at once and costs nothing more), and once after the confirmation runs, against the best *at that moment*
(another change may have been kept meanwhile from another slot).
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from server.ledger import Experiment

if TYPE_CHECKING:
    from server.engine import Engine


@dataclass
class Verdict:
    keep: bool
    reason: str
    facts: dict[str, object] = field(default_factory=dict)


class AcceptanceMixin:
    """The parts of `Engine` that measure noise, confirm candidates and apply the keep rule."""

    def _repeats_of(self: Engine, exp: Experiment) -> list[Experiment]:
        return self.ledger.repeats_of(exp.id)

    def _run_values(self: Engine, exp: Experiment) -> list[float]:
        """The metrics of `exp`'s successful runs: its own and its repeats'."""
        runs = [exp] + self._repeats_of(exp)
        return [r.metric for r in runs if r.status == "ok" and r.metric is not None]

    def noise_floor(self: Engine) -> float | None:
        """The sample standard deviation of the baseline's runs (None before two of them succeeded)."""
        base = self.ledger.baseline()
        values = self._run_values(base) if base is not None else []
        return statistics.stdev(values) if len(values) >= 2 else None

    def _repeats_in_flight(self: Engine, exp_id: int) -> list[int]:
        return [e["id"] for e in self._entries() if e.get("repeat_of") == exp_id]

    def noise_missing(self: Engine, base: Experiment) -> int:
        """How many noise runs of the baseline still have to run: the successful ones missing, less those in flight.

        A noise run that failed (a crash, a timeout, a kill) does not count: the floor must come from `noise_runs`
        successful runs. A failed one is replaced, but at most `noise_runs - 1` times in all, so a baseline that keeps
        failing is not re-run forever; the floor then rests on the runs that succeeded (or is missing, which the rule's
        words and `read_results` say)."""
        wanted = self.config.noise_runs
        if wanted <= 1:
            return 0
        repeats = self._repeats_of(base)
        in_flight = len(self._repeats_in_flight(base.id))
        missing = wanted - len(self._run_values(base)) - in_flight
        attempts_left = 2 * (wanted - 1) - len(repeats) - in_flight
        return max(0, min(missing, attempts_left))

    def noise_failed(self: Engine, base: Experiment) -> int:
        """Noise runs of the baseline that failed."""
        return sum(1 for r in self._repeats_of(base) if r.status != "ok" or r.metric is None)

    async def _measure_noise(self: Engine, base: Experiment, caller: str | None) -> None:
        """Bring the baseline to `noise_runs` successful runs (its own included), all missing ones at once (they
        share the slots), replacing failed ones within `noise_missing`'s bound. Called after the baseline and again
        when a kill cut the measurement short; stops quietly at the run's limits."""
        while True:
            with self._state():
                entries = []
                for _ in range(self.noise_missing(base)):
                    if self._past_limits(extra=len(entries)) is not None:
                        break
                    entries.append(self._submit_repeat(base, "noise run", caller))
            if not entries:
                return
            await self._run_all(entries)

    async def _confirm(self: Engine, target: Experiment, caller: str | None) -> tuple[list[float], str | None]:
        """Bring `target` to `1 + confirm_runs` successful runs; returns their metrics, and why confirmation could
        not finish (None when it did). Successful repeats recorded before a kill count and only the missing ones run;
        one of these that fails stops the confirmation (the candidate is not kept)."""
        with self._state():
            entries = []
            limited = None
            for number in range(len(self._run_values(target)), 1 + self.config.confirm_runs):
                stop = self._past_limits(extra=len(entries))
                if stop is not None:
                    limited = f"confirmation could not run: {stop.split(';')[0]}"
                    if not entries:
                        return self._run_values(target), limited
                    break
                entries.append(self._submit_repeat(target, f"confirmation {number}/{self.config.confirm_runs}",
                                                   caller))
        await self._run_all(entries)
        values = self._run_values(target)
        ran = {int(e["id"]) for e in entries}  # a repeat a kill interrupted earlier is replaced, not held against it
        failed = [r for r in self._repeats_of(target) if r.id in ran and r.status != "ok"]
        if failed:
            return values, f"confirmation run {failed[0].id} ended {failed[0].status} ({failed[0].failure})"
        if len(values) < 1 + self.config.confirm_runs:
            return values, limited or f"only {len(values)} of {1 + self.config.confirm_runs} runs could be made"
        return values, None

    async def _run_all(self: Engine, entries: list[dict[str, object]]) -> None:
        """Run submitted experiments side by side (as many at once as there are free slots); a cancelled caller
        cancels them all (each is then recorded as a crash)."""
        if entries:
            await asyncio.gather(*(self._spawn(entry) for entry in entries))

    def _rule(self: Engine, best: Experiment | None) -> tuple[float | None, float, float | None, list[float], str]:
        """(noise floor, margin, the best's mean, the best's values, the rule in words) at this moment."""
        floor = self.noise_floor()
        margin = self.config.margin(floor)
        values = self._run_values(best) if best is not None and best.metric is not None else []
        words = (f"max(min_improvement {self.config.min_improvement:g}, {self.config.noise_k:g} x noise floor "
                 f"{floor:.6f})" if floor is not None else f"min_improvement {self.config.min_improvement:g}")
        base = self.ledger.baseline()
        if floor is None and self.config.noise_runs > 1 and base is not None and self.noise_failed(base):
            words += (f"; the noise floor could not be measured: {self.noise_failed(base)} of the baseline's noise "
                      "runs failed")
        return floor, margin, (statistics.fmean(values) if values else None), values, words

    def _screen(self: Engine, target: Experiment, best: Experiment | None) -> Verdict:
        """The rule on the candidate's single result: a refusal here is final, a pass leads to confirmation."""
        assert target.metric is not None
        floor, margin, best_mean, values, words = self._rule(best)
        if best_mean is None:
            return Verdict(False, "there is no best to compare with (the baseline failed)")
        facts: dict[str, object] = {"noise_floor": floor, "margin": margin, "best_mean": best_mean,
                                    "best_runs": len(values), "best_id": best.id if best else None}
        against = (f"the best's mean {best_mean:.6f} over {len(values)} runs" if len(values) > 1
                   else f"the best {best_mean:.6f}")
        if not self.config.beats(target.metric, best_mean, margin):
            return Verdict(False, f"{target.metric:.6f} does not beat {against} by more than {margin:.6f} ({words})",
                           facts)
        return Verdict(True, f"beats {against} by {abs(target.metric - best_mean):.6f} > {margin:.6f} ({words})", facts)

    def _final(self: Engine, target: Experiment, values: list[float], stopped: str | None,
               best: Experiment | None) -> Verdict:
        """The rule on the mean of the candidate's runs against the best at this moment (after confirmation)."""
        if not self.config.confirm_runs:
            return self._screen(target, best)
        floor, margin, best_mean, best_values, words = self._rule(best)
        mean = statistics.fmean(values) if values else float("nan")
        facts: dict[str, object] = {"noise_floor": floor, "margin": margin, "best_mean": best_mean,
                                    "best_runs": len(best_values), "best_id": best.id if best else None,
                                    "mean": mean, "runs": len(values)}
        if best_mean is None:
            return Verdict(False, "there is no best to compare with (the baseline failed)", facts)
        against = (f"the best's mean {best_mean:.6f} over {len(best_values)} runs" if len(best_values) > 1
                   else f"the best {best_mean:.6f}")
        if stopped is not None:
            return Verdict(False, f"not confirmed: {stopped}; mean {mean:.6f} over {len(values)} runs", facts)
        if not self.config.beats(mean, best_mean, margin):
            return Verdict(False, (f"not confirmed: mean {mean:.6f} over {len(values)} runs does not beat {against} "
                                   f"by more than {margin:.6f} ({words})"), facts)
        return Verdict(True, (f"confirmed: mean {mean:.6f} over {len(values)} runs beats {against} by "
                              f"{abs(mean - best_mean):.6f} > {margin:.6f} ({words})"), facts)
