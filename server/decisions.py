"""Decisions: commit_or_revert, the decision intent and the branch (a part of `Engine`).

A decision is written as an intent (`decision.json`) before the branch moves and removed after its ledger line is
durable, so a kill at any point is completed exactly once by recovery (server/recovery.py). The rule itself is in
server/acceptance.py; this module picks the experiment, runs its confirmations outside the state lock, and concludes
under it against the best at that moment.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from server.jsonl import atomic_write_text
from server.ledger import Experiment
from server.models import DecisionResult
from server.promotion import OBSERVE_PREFIX, auto_promote
from server.shared import InvalidArgument, Refusal, iso

if TYPE_CHECKING:
    from server.engine import Engine

log = logging.getLogger(__name__)


class DecisionMixin:
    """The parts of `Engine` that decide experiments and move the branch."""

    # ---- commit_or_revert ----

    def commit_or_revert(self: Engine, experiment_id: int | None = None, prefer: str = "keep_if_better",
                         caller: str | None = None) -> DecisionResult:
        """`decide` for synchronous callers (tests, benchmarks, the CLI). Called from inside a running event loop it
        runs on a thread of its own and blocks that loop until the decision is made, as a synchronous call does."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.decide(experiment_id, prefer, caller))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.decide(experiment_id, prefer, caller)).result()

    async def decide(self: Engine, experiment_id: int | None = None, prefer: str = "keep_if_better",
                     caller: str | None = None) -> DecisionResult:
        """Keep or revert a finished experiment by the acceptance rule (server/acceptance.py).

        Confirmation re-runs happen here, inside commit_or_revert, not inside run_experiment: run_experiment stays
        one experiment per call, so its duration and the agent's per-call timeout (1500 s in .mcp.json) keep their
        meaning, and only a result the agent asks to keep that already beats the best pays for re-runs (they share
        the slots, so with several they run side by side). The stall detector sees a tool call in flight all that
        time, and a cancelled call kills the re-runs and records them as crashes like any run. The decision intent
        is written only after the confirmations, against the best at that moment: a kill -9 during one leaves the
        candidate pending with the repeats recorded, and the next commit_or_revert runs only the missing ones."""
        if prefer not in ("keep_if_better", "revert"):
            raise InvalidArgument(f"prefer must be 'keep_if_better' or 'revert', got {prefer!r}")
        with self._state():
            finished = self._finished_intent
            if finished is not None and experiment_id in (None, finished.id):
                self._finished_intent = None
                return self._decision_result(finished, "completed the decision an interrupted call had started")
            target = self._target(experiment_id, prefer)
            if target is None:  # prefer == "revert" with nothing to decide: restore the best code
                tip = self.repo.branch_tip(self.run.branch)
                best = self.ledger.best_kept()
                self.repo.restore_paths(tip, list(self.config.mutable))
                return DecisionResult(experiment_id=None, decision="restored",
                                      reason=f"restored {', '.join(self.config.mutable)} to the best commit",
                                      commit=tip[:12], best=best.metric if best else None,
                                      best_id=best.id if best else None,
                                      next_step="Edit with one idea, then call run_experiment.")
            screen = self._screen(target, self.ledger.best_kept()) if prefer == "keep_if_better" else None
            self._deciding.add(target.id)
        try:
            values: list[float] = [target.metric] if target.metric is not None else []
            stopped = None
            if screen is not None and screen.keep and self.config.confirm_runs:
                values, stopped = await self._confirm(target, caller)
            with self._state():
                result = self._conclude(target, prefer, screen, values, stopped)
            if result.decision == "discard" and self.ray is not None:
                await self._drop_remote_checkpoint(target.id)
            return result
        finally:
            self._deciding.discard(target.id)

    async def _drop_remote_checkpoint(self: Engine, exp_id: int) -> None:
        """A discarded experiment's model on its Ray node is removed, as a local one is (models pile up otherwise)."""
        from server.ray_executor import RemoteCheckpoint

        where = RemoteCheckpoint.read(self.run_dir / "experiments" / f"{exp_id:04d}")
        if where is None:
            return
        try:
            await self.ray.remove_checkpoint(where)
        except Exception as exc:  # noqa: BLE001 - a node gone since: the model is gone with it; say so, go on
            log.warning("could not remove experiment %d's checkpoint on Ray node %s: %s", exp_id, where, exc)

    def _target(self: Engine, experiment_id: int | None, prefer: str) -> Experiment | None:
        """The experiment a decision is about; refusals name what to do. None: nothing to decide, revert asked."""
        pending = self.ledger.pending_ids()
        flying = {e["id"]: e for e in self.in_flight_all()}
        if experiment_id is None:
            if len(pending) > 1:
                raise Refusal(f"experiments {', '.join(str(i) for i in pending)} are finished and undecided; name one: "
                              "commit_or_revert(experiment_id=...).")
            if not pending:
                if prefer != "revert":
                    running = f" ({len(flying)} still running or queued: read_results with wait_s)" if flying else ""
                    raise Refusal("no experiment is waiting for a decision" + running + ". To discard your edits and "
                                  "return to the best code, call commit_or_revert with prefer='revert'.")
                return None
            experiment_id = pending[0]
        exp = self.ledger.get(experiment_id)
        if exp is None:
            if experiment_id in flying:
                raise Refusal(f"experiment {experiment_id} has not finished yet ({flying[experiment_id]['state']}); "
                              "call read_results with wait_s to wait for it, then decide it")
            top = self.ledger.max_id()
            known = f"1..{top}" if top else "none yet"
            raise InvalidArgument(f"no experiment {experiment_id} (ids: {known}); call read_results")
        if exp.decision is not None:
            waiting = ", ".join(str(i) for i in pending)
            raise Refusal(
                f"experiment {experiment_id} was already decided ({exp.decision}); "
                + (f"experiment {pending[0]} is the one pending. Call commit_or_revert without experiment_id to decide "
                   "it." if len(pending) == 1 else
                   f"undecided: {waiting}. Call commit_or_revert with one of them." if pending else
                   "nothing is pending. Call commit_or_revert with prefer='revert' (and no experiment_id) to restore "
                   "the best code."))
        if exp.id in self._deciding or any(e.get("repeat_of") == exp.id for e in flying.values()):
            raise Refusal(f"experiment {exp.id} is being decided by another call (its confirmation runs are running); "
                          "call read_results with wait_s and look at its decision")
        base = self.ledger.baseline()
        if prefer == "keep_if_better" and base is not None and self._repeats_in_flight(base.id):
            raise Refusal("the noise floor is still being measured (the baseline's noise runs are running); every "
                          "decision needs it. Call read_results with wait_s, then decide.")
        return exp

    def _conclude(self: Engine, target: Experiment, prefer: str, screen: Any, values: list[float],
                  stopped: str | None) -> DecisionResult:
        """Under the state lock: the verdict against the best now, the intent, then the branch and the ledger."""
        current = self.ledger.get(target.id)
        if current is not None and current.decision is not None:
            return self._decision_result(current, "decided meanwhile by another call")
        best = self.ledger.best_kept()
        if prefer != "keep_if_better":
            verdict_keep, why, facts = False, "revert requested", {}
        elif not screen.keep:
            verdict_keep, why, facts = False, screen.reason, screen.facts
        else:
            verdict = self._final(target, values, stopped, best)
            verdict_keep, why, facts = verdict.keep, verdict.reason, verdict.facts
        tip = self.repo.branch_tip(self.run.branch)
        intent: dict[str, object] = {"experiment_id": target.id, "from_tip": tip, "time": iso(time.time()),
                                     "facts": facts}
        observe_only = self.config.autonomy == "observe" and verdict_keep
        best_metric = best.metric if best else None
        if verdict_keep and not observe_only:
            assert target.metric is not None and best_metric is not None
            delta = target.metric - best_metric
            started = "" if target.parent == tip else f" (started from {target.parent[:7]}, replaces {tip[:7]})"
            intent.update(decision="keep", reason=why,
                          message=f"{self.config.metric} {target.metric:.6f} ({delta:+.6f}) experiment "
                                  f"{target.id}: {target.description}{started}")
        else:
            intent.update(decision="discard", reason=(
                f"{OBSERVE_PREFIX} {target.metric:.6f} beats the best {best_metric:.6f}; autonomy is 'observe', so "
                f"nothing is kept (`autoresearch review` proposes it); {why}" if observe_only else why))
        atomic_write_text(self.intent_path, json.dumps(intent))  # before anything moves: recovery finishes it
        decided = self._apply_intent(intent)
        assert decided is not None
        if decided.decision == "keep" and self.config.autonomy == "auto-promote":
            auto_promote(self.config, self.run, self.audit)  # within the written limits, else left for review
        return self._decision_result(decided, None, best_before=best)

    def _workspace_is_free(self: Engine, deciding: int) -> bool:
        """True when no other experiment is queued, running or undecided: only then does a decision put the best
        code back into the workspace (during a wave the agent is editing the next variant there)."""
        return not self.in_flight_all() and not [i for i in self.ledger.pending_ids() if i != deciding]

    def _apply_intent(self: Engine, intent: dict[str, object]) -> Experiment | None:
        """Carry out a written decision intent exactly once, whatever happened to an earlier attempt: the branch moves
        only if it is still where the intent found it, and the ledger line is written only if it is not there."""
        exp_id = int(intent["experiment_id"])  # type: ignore[call-overload]
        exp = self.ledger.get(exp_id)
        if exp is None:
            self.intent_path.unlink(missing_ok=True)
            return None
        if exp.decision is not None:  # done, but killed before removing the intent
            self._reseal(exp_id, "decision")
            self.intent_path.unlink(missing_ok=True)
            return exp
        mutable = list(self.config.mutable)
        from_tip = str(intent["from_tip"])
        facts = intent.get("facts") if isinstance(intent.get("facts"), dict) else None
        tip = self.repo.branch_tip(self.run.branch)
        restore = self._workspace_is_free(exp_id)
        if intent["decision"] == "keep":
            if tip == from_tip:
                extra = exp.commit if exp.parent != from_tip else None  # a wave's variant: record where it started
                kept = self.repo.advance_branch(self.run.branch, exp.commit, str(intent["message"]),
                                                second_parent=extra)
            elif self.repo.parent_and_tree(tip) == (from_tip, self.repo.parent_and_tree(exp.commit)[1]):
                kept = tip  # the branch moved before the kill; only the ledger line is missing
            else:
                raise Refusal(f"branch {self.run.branch} is at {tip[:7]}, neither where the decision on experiment "
                              f"{exp_id} found it ({from_tip[:7]}) nor that commit's child holding experiment "
                              f"{exp_id}. A person must run `git reset --hard {from_tip[:7]}` and call "
                              "commit_or_revert again.")
            if restore:
                self.repo.restore_paths(kept, mutable)
            decided = self.ledger.append_decision(exp_id, "keep", str(intent["reason"]), kept, facts)
        else:
            if restore:
                self.repo.restore_paths(tip, mutable)
            decided = self.ledger.append_decision(exp_id, "discard", str(intent["reason"]), None, facts)
            (self.run_dir / "experiments" / f"{exp_id:04d}" / "model" / "checkpoint").unlink(missing_ok=True)
        self._retry_seals()  # the intent goes only once the decision's line is sealed: else recovery reseals it
        self.intent_path.unlink(missing_ok=True)
        return decided

    def _decision_result(self: Engine, exp: Experiment, note: str | None,
                         best_before: Experiment | None = None) -> DecisionResult:
        busy = not self._workspace_is_free(exp.id)
        left = (f" The workspace's {', '.join(self.config.mutable)} was left as you have it: other experiments are "
                "outstanding (call commit_or_revert with prefer='revert' and no experiment_id to restore the best "
                "code when the wave is done).") if busy else ""
        if exp.decision == "keep":
            before = self.ledger.best_before(exp.id)
            reason = exp.decision_reason or (f"{exp.metric:.6f} beats the best {before:.6f}"
                                             if before is not None and exp.metric is not None else "kept")
            return DecisionResult(experiment_id=exp.id, decision="keep", reason=(note + ": " if note else "") + reason,
                                  commit=(exp.kept_commit or exp.commit)[:12], best=exp.metric, best_id=exp.id,
                                  next_step="Kept. Edit with the next idea, then call run_experiment." + left)
        best = best_before or self.ledger.best_kept()
        tip = self.repo.branch_tip(self.run.branch)
        return DecisionResult(experiment_id=exp.id, decision="discard",
                              reason=(note + ": " if note else "") + (exp.decision_reason or "discarded"),
                              commit=tip[:12], best=best.metric if best else None, best_id=best.id if best else None,
                              next_step=("Reverted to the best code. Try a different idea." if not busy
                                         else "Discarded." + left))
