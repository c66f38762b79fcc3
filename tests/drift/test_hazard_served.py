"""The served forecast model (`drift.hazard`, hazard/3): scoring from shipped numbers, abstention
beyond the fitted range, the forecast at a checkpoint, and the no-change ceiling."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from drift.alarms import RelativeDrop, drop_sd, forecast_detection
from drift.evaluation import RunTrace
from drift.hazard import FittedHazard, HazardModel, hazard_forecast, hazard_rows, no_change_ceiling

SHIPPED = json.loads((Path(__file__).resolve().parents[2] / "service" / "shipped_calibration.json").read_text())
MODEL = FittedHazard.from_dict(SHIPPED["forecast_model"])


def drop(value: float, half_width: float = 0.0, n_items: int = 256, base: float = 1.0) -> RelativeDrop:
    return RelativeDrop("ood", "accuracy", value, value - half_width, value + half_width, base, n_items)


def forecast(drops: list[RelativeDrop | None], model: FittedHazard = MODEL):
    steps = [10.0 * (i + 1) for i in range(len(drops))]
    trend = forecast_detection(steps, drops, threshold=0.1, horizon=3)
    return hazard_forecast(trend, drops, model, horizon=3)


def test_the_shipped_numbers_score_as_the_fitted_pipeline_does():
    runs = []
    for k in range(12):  # six runs falling 1-3 points a checkpoint toward an onset, six flat
        forgets = k < 6
        n = 10
        drops = [0.012 * (1 + k % 3) * i if forgets else 0.004 * ((i + k) % 3) for i in range(n)]
        onset = next((i for i, d in enumerate(drops) if d >= 0.1), None) if forgets else None
        runs.append(RunTrace(f"r{k}", "f", "m", tuple(None if i < 2 else 0.1 for i in range(n)), (False,) * n,
                             tuple(drops), (0.0,) * n, onset, tuple([0.01] * n)))
    fitted = HazardModel(inputs="hazard/3").fit(runs)
    again = HazardModel.of(FittedHazard.from_dict(json.loads(json.dumps(fitted.model.to_dict()))))
    assert again.within(runs[0], horizon=3) == fitted.within(runs[0], horizon=3)
    assert fitted.model.n_events == sum(t.onset is not None for t in runs)
    with pytest.raises(ValueError, match="not a hazard model"):
        FittedHazard.from_dict({"inputs": "hazard/3"})
    with pytest.raises(ValueError, match="3 numbers"):
        FittedHazard.from_dict({**fitted.model.to_dict(), "coef": [1.0]})


def test_beyond_the_fitted_range_inputs_are_clamped_and_a_lower_bound_says_so():
    log_n = math.log(5)
    inside, _ = MODEL.probability([MODEL.high[0], 0.0, log_n], horizon=3)
    far, note = MODEL.probability([MODEL.high[0] + 100, 0.0, log_n], horizon=3)
    assert MODEL.coef[0] < 0 and note is None and far == inside  # further from the threshold: an upper bound
    edge, _ = MODEL.probability([5.0, MODEL.high[1], log_n], horizon=3)
    sure, note = MODEL.probability([5.0, MODEL.high[1] + 10, log_n], horizon=3)
    assert MODEL.coef[1] > 0 and sure == edge and "lower bound" in note and "drop_slope_t" in note
    p, why = MODEL.probability([5.0, math.nan, log_n], horizon=3)
    assert p is None and "not finite" in why


def test_the_served_forecast_keeps_the_trends_abstentions_and_time_to_crossing():
    steady = [drop(0.02 * i, 0.04) for i in range(5)]
    served = forecast(steady)
    trend = forecast_detection([10.0 * (i + 1) for i in range(5)], steady, threshold=0.1, horizon=3)
    assert served.applicable and served.model == "hazard/3" and 0 < served.probability < 1
    assert served.probability != trend.probability
    assert served.checkpoints_to_crossing == trend.checkpoints_to_crossing
    few = forecast(steady[:2])
    assert not few.applicable and few.reason_code == "too_few_checkpoints" and few.model == "hazard/3"
    detected = forecast([*steady, drop(0.2, 0.01)])
    assert detected.reason_code == "detected" and detected.probability is None
    # A decline surer than any fitted one: the score at the range's edge, said to be a lower bound.
    sure = forecast([drop(0.015 * i, 0.002) for i in range(6)])
    assert sure.applicable and sure.probability > SHIPPED["alarm_probability"] and "lower bound" in sure.reason


def test_a_run_that_has_not_moved_stays_under_the_ceiling_and_the_ceiling_under_the_threshold():
    ceiling = no_change_ceiling(MODEL, horizon=3)
    assert 0 < ceiling < SHIPPED["alarm_probability"]
    for n_items in (20, 21, 64, 256, 10_000):
        for k in (3, 6, 30, 300):
            still = forecast([drop(0.0, 0.0, n_items=n_items)] * k)
            assert still.applicable and still.probability <= ceiling, (n_items, k)
    coarsest = drop(0.0, 0.0, n_items=20)
    assert drop_sd(coarsest) == pytest.approx(0.025)


def test_a_refit_shrunk_toward_a_model_starts_from_it_and_moves_with_the_evidence():
    """`HazardModel(toward=...)`: no rows give the prior back; a few runs move it a little, the whole corpus
    much further toward the corpus's own fit; the fitted ranges widen to cover the new rows."""
    from dataclasses import replace

    from drift.replay import load_records, replay

    corpus = [replay(r, relative_drop=0.1, horizon=3)
              for r in load_records(Path(__file__).resolve().parents[2] / "bench" / "corpus" / "records.json.gz")]
    assert HazardModel(inputs="hazard/3", toward=MODEL).fit_rows([]).model == MODEL
    blank = replace(MODEL, coef=(0.0, 0.0, 0.0), low=(0.0, 0.0, 1.5), high=(1.0, 1.0, 2.0))
    own = np.array(HazardModel(inputs="hazard/3").fit(corpus).model.coef)
    few = HazardModel(inputs="hazard/3", toward=blank).fit(corpus[:3]).model
    every = HazardModel(inputs="hazard/3", toward=blank).fit(corpus).model
    distance = lambda m: float(np.linalg.norm(np.array(m.coef) - own))
    assert distance(every) < 0.6 * distance(few) and distance(few) > 0.8 * float(np.linalg.norm(own))
    loose = HazardModel(inputs="hazard/3", toward=blank, precision=1.0).fit(corpus).model
    assert distance(loose) < distance(every)  # a weaker prior lets the same evidence move it further
    assert every.n_rows == blank.n_rows + sum(len(hazard_rows(t, inputs="hazard/3")) for t in corpus)
    assert every.low[0] < 0.0 and every.high[0] > 1.0 and every.low[2] == pytest.approx(math.log(3))
    with pytest.raises(ValueError, match="cannot be shrunk toward"):
        HazardModel(inputs="hazard/1", toward=MODEL)
