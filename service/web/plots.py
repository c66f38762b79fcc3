"""Server-side plots as inline SVG strings (matplotlib, no pyplot, no network).

Each function takes plain rows and returns an `<svg>` element, or None when there is nothing to
draw yet (the page then shows a short note instead). Text stays text in the SVG (`svg.fonttype:
none`), so it is small, searchable and uses the browser's fonts.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless; the figures below never touch pyplot or a GUI backend

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from service.web.data import mean_by_step

OOD = "#c8323c"
IN_DOMAIN = "#2466b0"
NEUTRAL = "#4a5260"
THRESHOLD = "#8a8f99"
_RC = {
    "svg.fonttype": "none",
    "font.family": ["DejaVu Sans", "sans-serif"],
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e8ec",
    "grid.linewidth": 0.6,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 3.5,
}
# rcParams are process-global; one plot at a time keeps concurrent requests from mixing styles.
_LOCK = threading.Lock()
HALF = (6.4, 3.0)
TALL = (6.4, 3.8)
_CACHE: OrderedDict[bytes, str | None] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 256
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.DOTALL)


def memoized(draw: Callable[..., str | None]) -> Callable[..., str | None]:
    """Drawing takes ~0.2 s a plot; a page reloaded with no new data reuses the last SVGs. The key
    is the plot's whole input, so new data always draws anew."""

    @functools.wraps(draw)
    def cached(*args: Any, **kwargs: Any) -> str | None:
        key = hashlib.sha256(json.dumps([draw.__name__, args, kwargs], default=str, sort_keys=True).encode()).digest()
        with _CACHE_LOCK:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key]
        svg = draw(*args, **kwargs)
        with _CACHE_LOCK:
            _CACHE[key] = svg
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        return svg

    return cached


@contextmanager
def new_figure(figsize: tuple[float, float], **subplots: Any) -> Iterator[tuple[Figure, Any]]:
    with _LOCK, matplotlib.rc_context(_RC):
        fig = Figure(figsize=figsize, layout="constrained")
        axes = fig.subplots(**subplots) if subplots else fig.add_subplot()
        yield fig, axes


def to_svg(fig: Figure) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    document = buffer.getvalue()
    document = document[document.index("<svg"):]  # drop the XML declaration and DOCTYPE for inlining
    return _METADATA.sub("", document, count=1)


def as_floats(values: Sequence[Any]) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=float)


def _has_data(values: Sequence[Any]) -> bool:
    return any(v is not None and math.isfinite(float(v)) for v in values)


def steps_axis(ax: Axes, stages: Sequence[tuple[str, int]] = ()) -> None:
    ax.set_xlabel("training step")
    ax.ticklabel_format(axis="x", style="plain", useOffset=False)
    low, high = ax.get_xlim()
    for name, start in stages:  # a dotted line where each stage of the run starts, named at the top
        if not low <= start <= high:
            continue
        ax.axvline(start, color=THRESHOLD, linestyle=":", linewidth=1.0, gid=f"stage-boundary-{name}")
        ax.annotate(name, (start, 1), xycoords=("data", "axes fraction"), fontsize=7, color=NEUTRAL,
                    xytext=(2, -8), textcoords="offset points")


def _threshold(ax: Axes, value: float | None, label: str) -> None:
    if value is not None and math.isfinite(value):
        ax.axhline(value, color=THRESHOLD, linestyle="--", linewidth=1.0, label=label)


@memoized
def param_drift(global_rows: Sequence[dict[str, Any]], *, threshold: float | None = None,
                stages: Sequence[tuple[str, int]] = ()) -> str | None:
    """Global relative L2 distance to the base over steps (and the spectral shift, if computed)."""
    rel = [r["relative_l2_distance"] for r in global_rows]
    if not _has_data(rel):
        return None
    steps = [r["step"] for r in global_rows]
    nss = [r.get("normalized_spectral_shift") for r in global_rows]
    with new_figure(HALF) as (fig, ax):
        ax.plot(steps, as_floats(rel), marker="o", color=NEUTRAL, label="relative L2 ‖θ−θ₀‖/‖θ₀‖")
        _threshold(ax, threshold, "forecast threshold")
        ax.set_title("Global parameter drift")
        ax.set_ylabel("relative L2")
        steps_axis(ax, stages)
        if _has_data(nss):
            twin = ax.twinx()
            twin.plot(steps, as_floats(nss), color="#7b5ea7", linestyle=":", marker=".", label="spectral shift")
            twin.set_ylabel("normalized spectral shift", color="#7b5ea7")
            twin.grid(False)
            twin.spines["right"].set_visible(True)
            lines = ax.get_legend_handles_labels()
            more = twin.get_legend_handles_labels()
            ax.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right")
        else:
            ax.legend(loc="lower right")
        return to_svg(fig)


@memoized
def block_heatmap(block_rows: Sequence[dict[str, Any]]) -> str | None:
    """Relative L2 per block (rows) and step (columns)."""
    rows = [r for r in block_rows if r.get("relative_l2_distance") is not None]
    if not rows:
        return None
    steps = sorted({int(r["step"]) for r in rows})
    blocks = sorted({r["key"] for r in rows}, key=lambda k: (not k.lstrip("-").isdigit(), int(k) if
                                                             k.lstrip("-").isdigit() else 0, k))
    grid = np.full((len(blocks), len(steps)), np.nan)
    col = {s: i for i, s in enumerate(steps)}
    row = {b: i for i, b in enumerate(blocks)}
    for r in rows:
        grid[row[r["key"]], col[int(r["step"])]] = float(r["relative_l2_distance"])
    height = min(max(2.6, 0.9 + 0.16 * len(blocks)), 7.0)
    with new_figure((HALF[0], height)) as (fig, ax):
        image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="magma_r", origin="lower")
        fig.colorbar(image, ax=ax, label="relative L2", shrink=0.9)
        ax.set_title("Per-block drift (relative L2)")
        ax.grid(False)
        ax.set_ylabel("block (layer)")
        ax.set_xlabel("training step")
        ax.set_yticks(*_ticks(blocks, 12))
        ax.set_xticks(*_ticks([str(s) for s in steps], 8))
        return to_svg(fig)


def _ticks(labels: Sequence[str], most: int) -> tuple[list[int], list[str]]:
    every = max(1, math.ceil(len(labels) / most))
    positions = list(range(0, len(labels), every))
    if positions[-1] != len(labels) - 1 and len(labels) - 1 - positions[-1] >= every / 2:
        positions.append(len(labels) - 1)
    return positions, [labels[i] for i in positions]


@memoized
def probe_kl(probe_rows: Sequence[dict[str, Any]], *, threshold: float | None = None,
             stages: Sequence[tuple[str, int]] = ()) -> str | None:
    """Forward KL(base‖checkpoint) per token, mean over probe sets per domain, with the p10–p90 band."""
    drawn = False
    with new_figure(HALF) as (fig, ax):
        for domain, color, label in (("ood", OOD, "ood"), ("in_domain", IN_DOMAIN, "in-domain")):
            steps, kl = mean_by_step(probe_rows, "kl_forward", where={"domain": domain})
            if not steps:
                continue
            drawn = True
            ax.plot(steps, kl, marker="o", color=color, label=f"{label} mean")
            low_steps, low = mean_by_step(probe_rows, "kl_forward_p10", where={"domain": domain})
            high_steps, high = mean_by_step(probe_rows, "kl_forward_p90", where={"domain": domain})
            if low_steps and low_steps == high_steps:
                ax.fill_between(low_steps, low, high, color=color, alpha=0.15, linewidth=0,
                                label=f"{label} p10–p90")
        if not drawn:
            return None
        _threshold(ax, threshold, "ood forecast threshold")
        ax.set_title("Probe KL(base ‖ checkpoint)")
        ax.set_ylabel("nats / token")
        ax.set_ylim(bottom=0)
        steps_axis(ax, stages)
        ax.legend(loc="upper left")
        return to_svg(fig)


@memoized
def forgetting(probe_rows: Sequence[dict[str, Any]], labels: dict[str, list[tuple[int, float]]], *,
               stages: Sequence[tuple[str, int]] = ()) -> str | None:
    """Measured change vs the base per probe set (accuracy, else reference log-likelihood), and
    the trainer's ground-truth labels when it posted any."""
    sets = sorted({(r["probe_set"], r["domain"]) for r in probe_rows})
    panels = forgetting_panels(probe_rows, labels)
    if not panels:
        return None
    with new_figure((HALF[0] * min(len(panels), 2), HALF[1]), ncols=len(panels), squeeze=False) as (fig, axes):
        for ax, (key, title, ylabel) in zip(axes[0], panels, strict=True):
            ax.set_title(title)
            ax.set_ylabel(ylabel)
            steps_axis(ax, stages)
            if key == "labels":
                for name, points in sorted(labels.items()):
                    ax.plot([p[0] for p in points], [p[1] for p in points], marker="s", label=name)
            else:
                ax.axhline(0, color=THRESHOLD, linewidth=0.8)
                for i, (probe_set, domain) in enumerate(sets):
                    steps, values = mean_by_step(probe_rows, key, where={"probe_set": probe_set})
                    if steps:
                        ax.plot(steps, values, marker="o", linestyle="-" if domain == "ood" else "--",
                                color=_set_color(domain, i), label=f"{probe_set} ({_domain(domain)})")
            ax.legend(loc="lower left" if key != "labels" else "best")
        return to_svg(fig)


def forgetting_panels(probe_rows: Sequence[dict[str, Any]],
                      labels: dict[str, list[tuple[int, float]]]) -> list[tuple[str, str, str]]:
    """(key, title, y label) of each panel `forgetting` draws: the wider figure needs a wide slot."""
    panels = []
    if any(r.get("accuracy_change") is not None for r in probe_rows):
        panels.append(("accuracy_change", "Accuracy change vs base", "Δ accuracy"))
    if any(r.get("loglik_change") is not None for r in probe_rows):
        panels.append(("loglik_change", "Log-likelihood change vs base", "Δ nats / token"))
    if labels:
        panels.append(("labels", "Ground-truth labels (trainer)", "value"))
    return panels


def _domain(domain: str) -> str:
    return "ood" if domain == "ood" else "in-domain"


def _set_color(domain: str, index: int) -> str:
    reds = ("#c8323c", "#e07b39", "#9e2a6b", "#d4a017")
    blues = ("#2466b0", "#2a9d8f", "#5e60ce", "#4a5260")
    return (reds if domain == "ood" else blues)[index % 4]


@memoized
def diversity(sample_rows: Sequence[dict[str, Any]], *, stages: Sequence[tuple[str, int]] = ()) -> str | None:
    """distinct-2 of the pushed samples against the base model's, and the repetition ratio."""
    steps, distinct2 = mean_by_step(sample_rows, "distinct2")
    rep_steps, repetition = mean_by_step(sample_rows, "repetition_ratio")
    if not steps and not rep_steps:
        return None
    base_steps, base = mean_by_step(sample_rows, "distinct2_base")
    with new_figure(HALF, ncols=2) as (fig, (left, right)):
        left.set_title("Sample diversity (distinct-2)")
        if steps:
            left.plot(steps, distinct2, marker="o", color=NEUTRAL, label="checkpoint")
        if base_steps:
            left.plot(base_steps, base, linestyle="--", color=THRESHOLD, label="base model")
        left.set_ylim(0, 1.02)
        left.set_ylabel("unique bigrams / bigrams")
        steps_axis(left, stages)
        left.legend(loc="lower left")
        right.set_title("Repetition ratio")
        if rep_steps:
            right.plot(rep_steps, repetition, marker="o", color=OOD)
        right.set_ylim(bottom=0)
        right.set_ylabel("repeated n-gram share")
        steps_axis(right, stages)
        return to_svg(fig)


FORECAST_LABELS = {
    "ood_kl": ("ood KL", "nats / token"),
    "param_drift": ("parameter drift", "relative L2"),
    "diversity": ("distinct-2", "ratio"),
}


@memoized
def risk(risk_rows: Sequence[dict[str, Any]], *, threshold: float,
         stages: Sequence[tuple[str, int]] = ()) -> str | None:
    """Forgetting forecast per checkpoint against the alarm threshold, checkpoints where forgetting
    was detected, where the forecast abstained, and change points."""
    if not risk_rows:
        return None
    with new_figure(TALL) as (fig, ax):
        steps = [r["step"] for r in risk_rows]
        values = [r["value"] if r["applicable"] else None for r in risk_rows]
        ax.plot(steps, as_floats(values), marker="o", color=NEUTRAL, label="forecast P(detected within horizon)")
        detected = [r["step"] for r in risk_rows if r.get("detected")]
        if detected:
            ax.plot(detected, [1.0] * len(detected), linestyle="none", marker="s", color=OOD, label="detected")
        na = [r["step"] for r, v in zip(risk_rows, values, strict=True) if v is None and not r.get("detected")]
        if na:
            ax.plot(na, [0.0] * len(na), linestyle="none", marker="x", color=THRESHOLD, label="not applicable")
        ax.axhline(threshold, color=OOD, linestyle="--", linewidth=1.0, label=f"alarm threshold {threshold:g}")
        changes = [r["step"] for r in risk_rows if r.get("changepoint")]
        for i, step in enumerate(changes):
            ax.axvline(step, color="#7b5ea7", linestyle=":", linewidth=1.0, label="change point" if i == 0 else None)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("OOD forgetting: forecast and detection")
        ax.set_ylabel("probability")
        steps_axis(ax, stages)
        ax.legend(loc="upper left")
        return to_svg(fig)


@memoized
def forecasts(forecasts: dict[str, Any], *, observed: dict[str, tuple[list[int], list[float]]]) -> str | None:
    """One small panel per forecast series of the latest assessment: what was measured, the
    Theil–Sen trend, its threshold and (a star) where the trend meets it."""
    series = [(name, forecasts[name]) for name in FORECAST_LABELS if isinstance(forecasts.get(name), dict)]
    if not series:
        return None
    ncols = 1 if len(series) == 1 else 2
    nrows = math.ceil(len(series) / ncols)
    with new_figure(TALL, nrows=nrows, ncols=ncols, squeeze=False) as (fig, axes):
        fig.suptitle("Forecasts: Theil–Sen trend to threshold", x=0.02, ha="left", fontsize=10,
                     fontweight="bold")
        flat = list(axes.flat)
        for ax, (name, forecast) in zip(flat, series, strict=False):
            _forecast_panel(ax, name, forecast, observed.get(name, ([], [])))
        for ax in flat[len(series):]:
            ax.set_visible(False)
        return to_svg(fig)


def _forecast_panel(ax: Axes, name: str, forecast: dict[str, Any], observed: tuple[list[int], list[float]]) -> None:
    title, unit = FORECAST_LABELS[name]
    steps, values = observed
    if steps:
        ax.plot(steps, values, marker="o", color=NEUTRAL, markersize=2.5, linewidth=1.2)
    slope, intercept = forecast.get("slope"), forecast.get("intercept")
    last = forecast.get("last_step", steps[-1] if steps else None)
    to_threshold = forecast.get("steps_to_threshold")
    limit = forecast.get("threshold")
    if limit is not None:
        ax.axhline(limit, color=OOD, linestyle="--", linewidth=1.0)
    if slope is not None and intercept is not None and last is not None:
        start = steps[-min(len(steps), 6)] if steps else last
        span = max(float(last) - float(start), 1.0)
        reach = to_threshold is not None and to_threshold <= 2 * span
        end = float(last) + (float(to_threshold) if reach else 0.5 * span)
        xs = np.array([float(start), end])
        ax.plot(xs, intercept + slope * xs, color=OOD if to_threshold is not None else THRESHOLD,
                linestyle="-.", linewidth=1.2)
        if reach and limit is not None and not forecast.get("crossed"):
            ax.plot([end], [limit], marker="*", markersize=9, color=OOD)
    if forecast.get("crossed"):
        note = "at threshold now"
    elif to_threshold is not None:
        note = f"threshold in ~{to_threshold:,.0f} steps"
    else:
        note = "not heading to threshold"
    threshold_text = f" → {limit:.3g}" if limit is not None else ""
    ax.set_title(f"{title}{threshold_text}\n{note}", fontsize=8.5, color=OOD if to_threshold is not None else NEUTRAL)
    ax.set_ylabel(unit, fontsize=8)
    ax.tick_params(labelsize=7.5)
    ax.ticklabel_format(axis="x", style="plain", useOffset=False)
