"""What the three tools return. Compact on purpose: Claude Code hands `structuredContent` to the model verbatim.

Deltas are differences of two floats and carry binary noise (0.96 - 1.0 is -0.040000000000000036); they are rounded
to 12 significant digits, far below any metric's precision, so the agent and the person read -0.04.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

Status = Literal["ok", "crash", "timeout", "invalid"]
RunStatus = Literal["ok", "crash", "timeout", "invalid", "queued", "running"]


def round_delta(value: float | None) -> float | None:
    """`value` to 12 significant digits (None stays None)."""
    return None if value is None else float(f"{value:.12g}")


Delta = Annotated[float | None, AfterValidator(round_delta)]


class RunExperimentResult(BaseModel):
    id: int
    status: RunStatus = Field(description="queued | running only with wait=false: the experiment goes on in the "
                              "background; read_results(wait_s=...) returns when one finishes.")
    metric_name: str
    metric: float | None = Field(description="The verified metric of this run (None when it failed).")
    verified: bool = Field(description="False only in compatibility mode, where train.py printed the metric itself.")
    best: float | None = Field(description="The best kept metric before this run (None before the baseline).")
    delta: Delta = Field(description="metric - best; negative is better when the direction is minimize.")
    would_keep: bool = Field(description="True when commit_or_revert will keep this change.")
    decision: Literal["keep", "discard", "pending"]
    duration_s: float
    train_s: float | None = None
    peak_memory_mb: float | None = None
    failure: str | None = None
    log_tail: str | None = Field(default=None, description="Last lines of the run's log, for failures only.")
    slot: int | None = Field(default=None, description="The slot it runs or ran in (None while queued).")
    queue_position: int | None = Field(default=None, description="With wait=false: 0 = next to get a free slot.")
    next_step: str


class InFlightRow(BaseModel):
    id: int
    state: Literal["queued", "running"]
    description: str
    slot: int | None = None
    device: str | None = None
    remaining_s: float | None = Field(default=None, description="Seconds until its hard limit (running only).")
    repeat_of: int | None = None


class ExperimentRow(BaseModel):
    id: int
    status: Status
    metric: float | None
    delta: Delta = Field(description="metric minus the best kept metric before this experiment.")
    decision: Literal["keep", "discard", "pending"]
    description: str
    verified: bool = True
    repeat_of: int | None = Field(default=None, description="A re-run of that experiment with a fresh seed (a noise "
                                  "run of the baseline, or a confirmation run of a candidate); never a candidate.")


class ExperimentDetail(BaseModel):
    id: int
    description: str
    hypothesis: str | None
    status: Status
    failure: str | None
    metrics: dict[str, float | str]
    decision: Literal["keep", "discard", "pending"]
    decision_reason: str | None
    commit: str
    parent: str
    diff: str = Field(description="Unified diff of the mutable files against the commit the experiment started from.")
    log_tail: str


class Reference(BaseModel):
    id: int
    metric: float
    commit: str


class ReadResultsResult(BaseModel):
    tag: str
    metric_name: str
    direction: Literal["minimize", "maximize"]
    baseline: Reference | None
    best: Reference | None
    counts: dict[str, int] = Field(description="Experiments by status, plus kept/discarded/pending.")
    pending_id: int | None
    in_flight_id: int | None
    violations: int
    pending_ids: list[int] = Field(default_factory=list, description="Every finished, undecided experiment "
                                  "(decide each with commit_or_revert(experiment_id=...)).")
    in_flight: list[InFlightRow] = Field(default_factory=list, description="Queued and running experiments.")
    slots: int = Field(default=1, description="How many experiments this run executes at once.")
    noise_floor: float | None = Field(default=None, description="Sample standard deviation of the baseline's runs "
                                      "(same code, fresh seeds). A change is kept only when it beats the best's mean "
                                      "by more than max(min_improvement, noise_k x noise_floor), confirmed by re-runs.")
    experiments: list[ExperimentRow]
    detail: ExperimentDetail | None = None


class DecisionResult(BaseModel):
    experiment_id: int | None
    decision: Literal["keep", "discard", "restored"]
    reason: str
    commit: str = Field(description="Commit now at the tip of the run branch (the best code).")
    best: float | None
    best_id: int | None
    next_step: str
