"""The transfer matrix of a staged run as a heat map (inline SVG, drawn like `service.web.plots`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from service.web.plots import memoized, new_figure, to_svg

METRIC_TITLES = {"accuracy": "accuracy", "loglik": "reference log-likelihood, nats/token"}


@memoized
def transfer_heatmap(rows: Sequence[dict[str, Any]], metric: str, found: dict[str, Any]) -> str | None:
    """R[i][j]: rows are the base and the end of each stage, columns the probe sets (with the stage
    that trains for each); unmeasured cells are left blank and marked with a dot."""
    matrix = np.array(
        [[np.nan if c["value"] is None else c["value"] for c in row] for row in found["matrix"]], dtype=float
    )
    if not np.isfinite(matrix).any():
        return None
    row_labels = ["base"] + [
        f"end of {r['stage']}"
        + ("" if r["complete"] else " (so far)" if r["checkpoint_step"] is not None else " (not yet)")
        for r in rows[1:]
    ]
    col_labels = [
        p["name"] + (f"\n({p['stage']})" if p["stage"] else f"\n({p['domain'] or 'retention'})")
        for p in found["probe_sets"]
    ]
    n_rows, n_cols = matrix.shape
    with new_figure((1.6 + 1.1 * n_cols, 1.2 + 0.45 * n_rows)) as (fig, ax):
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", aspect="auto")
        ax.grid(False)
        ax.set_xticks(range(n_cols), col_labels)
        ax.set_yticks(range(n_rows), row_labels)
        for i in range(n_rows):
            for j in range(n_cols):
                text = "·" if np.isnan(matrix[i, j]) else f"{matrix[i, j]:.2f}"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="#ffffff"
                    if np.isfinite(matrix[i, j]) and matrix[i, j] < np.nanmean(matrix)
                    else "#111111",
                )
        parts = [
            f"{name.upper()} {found[name]['value']:+.3f} [{found[name]['ci_low']:+.3f}, "
            f"{found[name]['ci_high']:+.3f}]"
            for name in ("bwt", "fwt")
            if found[name]
        ]
        ax.set_title(
            f"Transfer matrix: {METRIC_TITLES.get(metric, metric)}"
            + ("\n" + ", ".join(parts) if parts else "")
        )
        fig.colorbar(image, ax=ax, shrink=0.8)
        return to_svg(fig)
