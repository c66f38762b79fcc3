"""The per-prompt similarity plot: each checkpoint's prompts stacked by how close their responses
stay to the base's (the lower tail widening is the signal)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np

from service.web.plots import HALF, memoized, new_figure, to_svg


@memoized
def similarity(sample_rows: Sequence[dict[str, Any]], *, edges: Sequence[float]) -> str | None:
    """Per-prompt similarity to the base's response: each checkpoint's prompts stacked by bin, lowest
    bin at the bottom (red), so a widening lower tail shows as a growing red base."""
    steps = sorted({r["step"] for r in sample_rows if r.get("similarity_histogram")})
    if not steps:
        return None
    counts = np.array([np.sum([r["similarity_histogram"] for r in sample_rows
                               if r["step"] == s and r.get("similarity_histogram")], axis=0) for s in steps], float)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)  # (steps, bins)
    colors = matplotlib.colormaps["RdYlGn"](np.linspace(0.05, 0.95, shares.shape[1]))
    with new_figure(HALF) as (fig, ax):
        ax.set_title("Per-prompt similarity to the base's response")
        x, bottom = np.arange(len(steps)), np.zeros(len(steps))
        for i in range(shares.shape[1]):
            ax.bar(x, shares[:, i], bottom=bottom, color=colors[i], label=f"{edges[i]:g}–{edges[i + 1]:g}")
            bottom += shares[:, i]
        ax.set_xticks(x, [str(s) for s in steps])
        ax.set_xlabel("training step")
        ax.set_ylabel("share of prompts")
        ax.legend(loc="center left", bbox_to_anchor=(1, 0.5), fontsize="x-small", title="cosine", reverse=True)
        return to_svg(fig)
