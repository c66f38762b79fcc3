"""`GET /v1/compare`: several runs side by side (`service.compare`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from service import compare
from service.api.deps import Reader, SessionDep
from service.api.routes.training_metrics import MetricName
from service.compare import MAX_RUNS, select_runs

router = APIRouter(prefix="/v1", tags=["runs"])

RUN_REF = r"[A-Za-z0-9][A-Za-z0-9._:@+\-]*"
RUNS_PATTERN = rf"^{RUN_REF}(,{RUN_REF}){{0,{MAX_RUNS - 1}}}$"
# KEY=VALUE or KEY:VALUE; the key holds neither '=' nor ':'.
TAG_PATTERN = r"^[^=:\u0000]+[=:][^\u0000]*$"


class Point(BaseModel):
    step: float = Field(description="training step (interpolated points may lie between checkpoints)")
    gain: float = Field(description="in-domain change vs the base (accuracy, or log-likelihood nats/token)")
    gain_low: float | None
    gain_high: float | None
    loss: float = Field(description="ood drop vs the base (positive: worse than the base)")
    loss_low: float | None
    loss_high: float | None


class Ceiling(BaseModel):
    applicable: bool
    n_points: int
    reason: str | None
    a: float | None
    b: float | None
    ceiling: float | None = Field(description="b − a: in-domain accuracy once the policy entropy reaches 0")
    ceiling_low: float | None
    ceiling_high: float | None
    r2: float | None


class RunComparison(BaseModel):
    name: str
    method: str
    tags: dict[str, Any]
    gain_metric: str | None = Field(description="accuracy or loglik: what the in-domain gain is measured on")
    loss_metric: str | None
    reason: str | None = Field(description="why the run has no points yet")
    points: list[Point] = Field(
        description="per checkpoint with both domains measured, from the base (step 0)"
    )
    at_step: Point | None = Field(description="at the matched step; null when the run did not reach it")
    at_gain: Point | None = Field(description="where the in-domain gain first reached the matched gain")
    entropy_ceiling: Ceiling
    overlays: dict[str, list[list[float]]] = Field(description="overlay name -> [[step, value], ...]")


class Comparison(BaseModel):
    matched_step: float | None
    matched_gain: float | None
    runs: list[RunComparison]
    omitted: int = Field(description="runs that matched but were left out (at most 20 are compared)")
    pareto_at_step: list[str] = Field(
        description="runs no other run beats on both gain and loss at the matched step"
    )
    pareto_latest: list[str] = Field(description="the same, each run at its latest checkpoint")
    overlays: dict[str, str] = Field(description="overlay name -> what it is")


@router.get("/compare", response_model=Comparison)
def compare_runs(
    session: SessionDep,
    _: Reader,
    runs: Annotated[
        str | None,
        Query(
            pattern=RUNS_PATTERN,
            max_length=MAX_RUNS * 201,
            description=(f"comma-separated run names or ids, at most {MAX_RUNS}"),
        ),
    ] = None,
    tag: Annotated[
        list[Annotated[str, Field(pattern=TAG_PATTERN, max_length=10_200)]] | None,
        Query(
            max_length=20,
            description="KEY=VALUE or KEY:VALUE, repeatable, when `runs` is not given: runs whose "
            "tag KEY equals VALUE (`method` matches the run's method); neither: the newest active runs",
        ),
    ] = None,
    step: Annotated[
        float | None,
        Query(
            ge=0,
            le=2**53,
            allow_inf_nan=False,
            description=("the matched step (default: the last step every run reached)"),
        ),
    ] = None,
    gain: Annotated[
        float | None,
        Query(
            ge=-1e6,
            le=1e6,
            allow_inf_nan=False,
            description=("the matched in-domain gain (default: the largest gain every run reached)"),
        ),
    ] = None,
    metric: Annotated[
        list[MetricName] | None,
        Query(
            max_length=16, description=("repeatable: training metrics to overlay as well (as `metric:NAME`)")
        ),
    ] = None,
) -> dict[str, Any]:
    """In-domain gain against ood loss per run, at a matched step and at a matched in-domain gain
    (interpolated between checkpoints, intervals from the stored paired-bootstrap intervals), the
    Pareto-efficient runs, the entropy ceiling of each run and overlays by step of the stored series."""
    chosen, omitted = select_runs(session, runs=runs.split(",") if runs else [], tags=tag or [])
    return {
        **compare.compare_runs(session, runs=chosen, step=step, gain=gain, metric_names=metric or ()),
        "omitted": omitted,
    }
