"""`service.preflight.make_forecast` on a plan with history: the curve is fitted on the run's own pairs."""

from __future__ import annotations

import numpy as np
import pytest

from service.preflight import ForecastPlan, HistoryPair, make_forecast


def _cloud(rng: np.random.Generator, centre: float, n: int = 24) -> np.ndarray:
    return rng.normal(centre, 1.0, size=(n, 6))


def test_history_pairs_are_measured_and_fitted_and_every_retention_set_is_forecast() -> None:
    rng = np.random.default_rng(0)
    embeddings = {"preview": _cloud(rng, 0.0), "probe:a": _cloud(rng, 0.2), "probe:b": _cloud(rng, 1.5),
                  "stage:first": _cloud(rng, 0.1), "probe:tiny": _cloud(rng, 0.0, n=1)}
    history = tuple(HistoryPair("first", "preview", ("stage:first",), name, "accuracy", loss)
                    for name, loss in (("a", 0.3), ("b", 0.05)))
    plan = ForecastPlan("second", 2, tuple(f"p{i}" for i in range(24)), ("a", "b", "tiny"), {}, history)
    found = make_forecast(plan, embedder="test", embeddings=embeddings)
    assert found["curve"]["source"] == "history" and found["curve"]["n_pairs"] == 2
    assert [h["probe_set"] for h in found["history"]] == ["a", "b"]
    assert all(0 < h["distance"] < 2**0.5 for h in found["history"])
    entries = {e["probe_set"]: e for e in found["retention_sets"]}
    assert entries["tiny"]["loss"] is None and "fewer than 2 items" in entries["tiny"]["reason"]
    assert entries["a"]["distance"] < entries["b"]["distance"]
    assert entries["a"]["ci_low"] < entries["a"]["loss"] < entries["a"]["ci_high"]
    assert found["n_prompts"] == 24 and "fitted on 2" in found["note"]


def test_a_stage_without_retention_sets_says_there_is_nothing_to_forecast() -> None:
    plan = ForecastPlan("first", 1, ("x",) * 8, (), {}, ())
    found = make_forecast(plan, embedder="test", embeddings={"preview": np.eye(8)})
    assert found["retention_sets"] == [] and "nothing to forecast" in found["note"]
    assert found["curve"]["source"] == "prior"


@pytest.mark.parametrize("keys", [("probe:missing",), ()])
def test_history_without_embeddings_is_left_out_of_the_fit(keys: tuple[str, ...]) -> None:
    rng = np.random.default_rng(1)
    plan = ForecastPlan("s", 2, ("x",) * 8, ("a",), {},
                        (HistoryPair("first", "probe_sets", keys, "a", "loglik", 0.2),))
    found = make_forecast(plan, embedder="t", embeddings={"preview": _cloud(rng, 0), "probe:a": _cloud(rng, 1)})
    assert found["history"] == [] and found["curve"]["source"] == "prior"
