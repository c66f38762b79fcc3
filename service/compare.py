"""Several runs side by side: in-domain gain against ood loss (the Pareto view), read at a matched step
and at a matched in-domain gain, the Pareto-efficient runs, and overlays by step of stored series.

Gain and loss come from the stored probe results (`service.db.response_drift`): per checkpoint, the
in-domain probe sets' change vs the base and the ood probe sets' drop, each with its paired-bootstrap
interval, on accuracy where the run's probe sets of that domain have answers, else on reference
log-likelihood per token. Several probe sets of one domain are averaged (`drift.compare.combine`). The
base itself is the point (step 0, gain 0, loss 0) when no checkpoint was registered at step 0. The API
(`GET /v1/compare`) and the page (`/compare`) both show what `compare_runs` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from sqlalchemy.orm import Session

from drift.compare import Estimate, Matched, at_gain, at_step, combine, pareto_efficient
from service.db import param_drift, queries, response_drift, status, training_metrics
from service.db.models import Run
from service.entropy_ceiling import entropy_ceiling
from service.errors import Unprocessable

#: The most runs one comparison shows.
MAX_RUNS = 20
#: The fixed overlays: name -> what it is (training metrics are added as `metric:NAME`).
OVERLAYS = {
    "kl_forward_ood": "forward KL(base ‖ checkpoint) on the ood probes, nats/token",
    "kl_forward_in_domain": "forward KL(base ‖ checkpoint) on the in-domain probes, nats/token",
    "accuracy_ood": "accuracy on the ood probes",
    "accuracy_in_domain": "accuracy on the in-domain probes",
    "param_relative_l2": "global relative L2 distance to the base weights",
    "risk": "forgetting forecast probability (absent where it abstained)",
}
DOMAINS = {"in_domain": "gain", "ood": "loss"}


def tag_filter(text: str) -> tuple[str, str]:
    """KEY=VALUE or KEY:VALUE (the key holds neither '=' nor ':') as (KEY, VALUE)."""
    cuts = [i for i in (text.find("="), text.find(":")) if i > 0]
    if not cuts:
        raise Unprocessable(f"tag filter {text!r} is not KEY=VALUE or KEY:VALUE (e.g. ?tag=method:sft)")
    return text[: min(cuts)], text[min(cuts) + 1 :]


def select_runs(session: Session, *, runs: Sequence[str], tags: Sequence[str]) -> tuple[list[Run], int]:
    """The runs named (ids or names, in the order given), else those matching every tag (`method` also
    matches the run's method), else all active runs; at most the newest MAX_RUNS, and how many matched
    beyond those."""
    if runs:
        found: dict[int, Run] = {}
        for ref in runs:
            run = queries.get_run(session, ref=ref)
            found.setdefault(run.id, run)
        chosen = list(found.values())
        return chosen[:MAX_RUNS], max(0, len(chosen) - MAX_RUNS)
    wanted = dict(tag_filter(t) for t in tags)
    method = wanted.pop("method", None)
    matched = list(queries.list_runs(session, method=method, tags=wanted))
    return matched[-MAX_RUNS:], max(0, len(matched) - MAX_RUNS)


def _metric(rows: list[dict[str, Any]]) -> str | None:
    if any(r["accuracy_change"] is not None for r in rows):
        return "accuracy"
    if any(r["loglik_change"] is not None for r in rows):
        return "loglik"
    return None


def _estimate(row: dict[str, Any], metric: str, *, sign: float) -> Estimate | None:
    change = row[f"{metric}_change"]
    if change is None:
        return None
    low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
    if low is None or high is None:
        return Estimate(sign * change)
    bounds = sorted((sign * low, sign * high))
    return Estimate(sign * change, bounds[0], bounds[1])


def trajectory(
    probe_rows: list[dict[str, Any]],
) -> tuple[dict[str, str | None], list[tuple[int, Estimate, Estimate]]]:
    """The run's (step, gain, loss) per checkpoint where both domains were measured, with the base as
    step 0, and the metric each domain was read on."""
    by_domain = {d: [r for r in probe_rows if (r["domain"] == "ood") == (d == "ood")] for d in DOMAINS}
    metrics = {d: _metric(rows) for d, rows in by_domain.items()}
    per_step: dict[int, dict[str, list[Estimate]]] = {}
    for domain, rows in by_domain.items():
        metric = metrics[domain]
        if metric is None:
            continue
        for r in rows:
            e = _estimate(r, metric, sign=1.0 if domain == "in_domain" else -1.0)
            if e is not None:
                per_step.setdefault(int(r["step"]), {}).setdefault(domain, []).append(e)
    points = []
    for step in sorted(per_step):
        gain, loss = combine(per_step[step].get("in_domain", [])), combine(per_step[step].get("ood", []))
        if gain is not None and loss is not None:
            points.append((step, gain, loss))
    if points and points[0][0] > 0:
        points.insert(0, (0, Estimate(0.0, 0.0, 0.0), Estimate(0.0, 0.0, 0.0)))
    return {DOMAINS[d]: m for d, m in metrics.items()}, points


def _point(step: float, gain: Estimate, loss: Estimate) -> dict[str, Any]:
    return {
        "step": step,
        "gain": gain.value,
        "gain_low": gain.low,
        "gain_high": gain.high,
        "loss": loss.value,
        "loss_low": loss.low,
        "loss_high": loss.high,
    }


def _matched(m: Matched | None) -> dict[str, Any] | None:
    return None if m is None else _point(m.step, m.gain, m.loss)


def _mean_by_step(rows: list[dict[str, Any]], key: str, domain: str) -> list[list[float]]:
    sums: dict[int, list[float]] = {}
    for r in rows:
        if (r["domain"] == "ood") == (domain == "ood") and r[key] is not None:
            sums.setdefault(int(r["step"]), []).append(float(r[key]))
    return [[s, sum(v) / len(v)] for s, v in sorted(sums.items())]


def overlays(
    session: Session,
    *,
    run: Run,
    probe_rows: list[dict[str, Any]],
    metrics: dict[str, list[dict[str, float]]],
) -> dict[str, list[list[float]]]:
    """Each overlay of one run as [[step, value], ...] in step order (empty when nothing is stored)."""
    params = [r for r in param_drift.run_series(session, run_id=run.id) if r["scope"] == "global"]
    risk = status.risk_series(session, run_id=run.id)
    out = {
        "kl_forward_ood": _mean_by_step(probe_rows, "kl_forward", "ood"),
        "kl_forward_in_domain": _mean_by_step(probe_rows, "kl_forward", "in_domain"),
        "accuracy_ood": _mean_by_step(probe_rows, "accuracy", "ood"),
        "accuracy_in_domain": _mean_by_step(probe_rows, "accuracy", "in_domain"),
        "param_relative_l2": [
            [r["step"], r["relative_l2_distance"]] for r in params if r["relative_l2_distance"] is not None
        ],
        "risk": [[r["step"], r["value"]] for r in risk if r["applicable"] and r["value"] is not None],
    }
    for name, points in metrics.items():
        out[f"metric:{name}"] = [[p["step"], p["value"]] for p in points]
    return out


def _default_step(trajectories: Sequence[list[tuple[int, Estimate, Estimate]]]) -> float | None:
    ends = [t[-1][0] for t in trajectories if t]
    return float(min(ends)) if ends and len(ends) == len(trajectories) else None


def _default_gain(trajectories: Sequence[list[tuple[int, Estimate, Estimate]]]) -> float | None:
    peaks = [max(g.value for _, g, _ in t) for t in trajectories if t]
    if not peaks or len(peaks) < len(trajectories) or min(peaks) <= 0:
        return None
    return min(peaks)


def compare_runs(
    session: Session,
    *,
    runs: Sequence[Run],
    step: float | None = None,
    gain: float | None = None,
    metric_names: Sequence[str] = (),
) -> dict[str, Any]:
    """The comparison of `runs` (see the module docstring). `step` and `gain` default to the last step
    every run reached and the largest in-domain gain every run reached."""
    loaded = []
    for run in runs:
        probe_rows = response_drift.run_probe_series(session, run_id=run.id)
        metrics, points = trajectory(probe_rows)
        series = training_metrics.series(session, run_id=run.id, names=metric_names) if metric_names else {}
        loaded.append((run, probe_rows, metrics, points, series))
    trajectories = [points for *_, points, _ in loaded]
    step = _default_step(trajectories) if step is None else step
    gain = _default_gain(trajectories) if gain is None else gain
    out_runs: list[dict[str, Any]] = []
    at_steps: list[Matched | None] = []
    latest: list[tuple[int, Estimate, Estimate] | None] = []
    for run, probe_rows, metrics, points, series in loaded:
        steps, gains, losses = [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]
        by_step = at_step(steps, gains, losses, step=step) if step is not None and points else None
        by_gain = at_gain(steps, gains, losses, gain=gain) if gain is not None and points else None
        at_steps.append(by_step)
        latest.append(points[-1] if points else None)
        out_runs.append(
            {
                "name": run.name,
                "method": run.method,
                "tags": run.tags,
                "gain_metric": metrics["gain"],
                "loss_metric": metrics["loss"],
                "reason": None
                if points
                else (
                    "no checkpoint has both in-domain and ood probe results yet: "
                    "attach probe sets of both domains to the run"
                ),
                "points": [_point(*p) for p in points],
                "at_step": _matched(by_step),
                "at_gain": _matched(by_gain),
                "entropy_ceiling": asdict(entropy_ceiling(session, run_id=run.id, probe_rows=probe_rows)),
                "overlays": overlays(session, run=run, probe_rows=probe_rows, metrics=series),
            }
        )

    def front(found: Sequence[Any], get: Any) -> list[str]:
        gains = [float("nan") if f is None else get(f)[0] for f in found]
        losses = [float("nan") if f is None else get(f)[1] for f in found]
        return [str(r["name"]) for r, ok in zip(out_runs, pareto_efficient(gains, losses), strict=True) if ok]

    return {
        "matched_step": step,
        "matched_gain": gain,
        "runs": out_runs,
        "pareto_at_step": front(at_steps, lambda m: (m.gain.value, m.loss.value)),
        "pareto_latest": front(latest, lambda p: (p[1].value, p[2].value)),
        "overlays": {**OVERLAYS, **{f"metric:{n}": f"training metric {n}" for n in metric_names}},
    }
