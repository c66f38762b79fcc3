"""The comparison page's plots (inline SVG, drawn as `service.web.plots` draws the run page's): the
Pareto scatter of in-domain gain against ood loss, and one overlay by step per stored series."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.web.plots import HALF, TALL, memoized, new_figure, steps_axis, to_svg

#: One colour per run, in the order the runs are given (cycled past ten).
COLORS = (
    "#2466b0",
    "#c8323c",
    "#2e8b57",
    "#7b5ea7",
    "#d08a1c",
    "#1b9aaa",
    "#8a5a44",
    "#d14f9c",
    "#4a5260",
    "#6b8e23",
)


def color(index: int) -> str:
    return COLORS[index % len(COLORS)]


def _errors(point: dict[str, Any], key: str) -> list[list[float]] | None:
    low, high = point.get(f"{key}_low"), point.get(f"{key}_high")
    if low is None or high is None:
        return None
    return [[max(0.0, point[key] - low)], [max(0.0, high - point[key])]]


@memoized
def pareto(runs: Sequence[dict[str, Any]], *, efficient: Sequence[str]) -> str | None:
    """Each run's trajectory (base → latest checkpoint) in the (ood loss, in-domain gain) plane, its
    point at the matched step with the interval bars, Pareto-efficient runs' points filled."""
    if not any(r["points"] for r in runs):
        return None
    with new_figure(TALL) as (fig, ax):
        for i, run in enumerate(runs):
            points = run["points"]
            if not points:
                continue
            ax.plot(
                [p["loss"] for p in points],
                [p["gain"] for p in points],
                color=color(i),
                alpha=0.45,
                marker=".",
                linewidth=1.0,
            )
            at = run["at_step"] or points[-1]
            filled = run["name"] in efficient
            ax.errorbar(
                [at["loss"]],
                [at["gain"]],
                xerr=_errors(at, "loss"),
                yerr=_errors(at, "gain"),
                color=color(i),
                marker="o",
                markersize=7,
                capsize=2,
                markerfacecolor=color(i) if filled else "white",
                label=f"{run['name']}{' (Pareto-efficient)' if filled else ''}",
            )
        ax.axhline(0, color="#8a8f99", linewidth=0.8)
        ax.axvline(0, color="#8a8f99", linewidth=0.8)
        ax.set_title("In-domain gain against ood loss (circles: the matched step)")
        ax.set_xlabel("ood loss vs base (right: forgets more)")
        ax.set_ylabel("in-domain gain vs base")
        ax.legend(loc="best")
        return to_svg(fig)


@memoized
def overlay(runs: Sequence[dict[str, Any]], *, series: str, title: str) -> str | None:
    """`series` of every run by step, one line per run."""
    if not any(r["overlays"].get(series) for r in runs):
        return None
    with new_figure(HALF) as (fig, ax):
        for i, run in enumerate(runs):
            points = run["overlays"].get(series) or []
            if points:
                ax.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    marker="o",
                    color=color(i),
                    label=run["name"],
                )
        ax.set_title(title)
        steps_axis(ax)
        ax.legend(loc="best")
        return to_svg(fig)
