"""A stage's pre-flight forecast: the fitted forgetting curve against domain distance with its interval,
the (distance, loss) pairs it was fitted on, and the predicted loss of each retention set."""

from __future__ import annotations

from typing import Any

import numpy as np

from drift.preflight import ForgettingCurve, predict_forgetting
from service.web.plots import HALF, memoized, new_figure, to_svg


def _curve(stored: dict[str, Any]) -> ForgettingCurve:
    return ForgettingCurve(**{**stored, "coefficients": tuple(stored["coefficients"]),
                              "covariance": tuple(tuple(row) for row in stored["covariance"]),
                              "distance_range": tuple(stored["distance_range"]) if stored["distance_range"] else None})


@memoized
def forgetting_curve(forecast: dict[str, Any]) -> str | None:
    """Loss (relative drop of a retention set's score across the stage) against the RBF-MMD distance of
    the stage's prompts to the set: curve and band, history points, forecasts with their intervals."""
    entries = [e for e in forecast["retention_sets"] if e["distance"] is not None]
    if not entries:
        return None
    curve = _curve(forecast["curve"])
    known = [e["distance"] for e in entries] + [h["distance"] for h in forecast["history"]]
    grid = np.linspace(0.0, max(1.0, 1.1 * max(known)), 120)
    band = predict_forgetting(curve, grid, confidence=forecast["confidence"])
    with new_figure(HALF) as (fig, ax):
        ax.fill_between(grid, [b.ci_low for b in band], [b.ci_high for b in band], color="#9ecae1", alpha=0.4,
                        label=f"{forecast['confidence']:.0%} interval")
        ax.plot(grid, [b.loss for b in band], color="#3182bd",
                label="prior" if curve.source == "prior" else f"fitted on {curve.n_pairs} pairs")
        if forecast["history"]:
            ax.scatter([h["distance"] for h in forecast["history"]], [h["loss"] for h in forecast["history"]],
                       color="#636363", marker="x", label="earlier stages (measured)")
        for e in entries:
            ax.errorbar(e["distance"], e["loss"], yerr=[[e["loss"] - e["ci_low"]], [e["ci_high"] - e["loss"]]],
                        fmt="o", color="#e6550d", capsize=3)
            ax.annotate(e["probe_set"], (e["distance"], e["loss"]), textcoords="offset points", xytext=(5, 5),
                        fontsize="x-small")
        ax.axhline(0.0, color="#bbbbbb", linewidth=0.8)
        ax.set_xlabel("RBF-MMD of the stage's prompts to the retention set")
        ax.set_ylabel("predicted loss (relative drop)")
        shape = "an inverted U" if curve.inverted_u else "no inverted U"
        ax.set_title(f"Pre-flight forecast for stage {forecast['stage']} ({shape})")
        ax.legend(loc="center left", bbox_to_anchor=(1, 0.5), fontsize="x-small")
        return to_svg(fig)
