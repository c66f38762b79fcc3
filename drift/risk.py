"""Forgetting risk: per-checkpoint features, the training target, a calibrated logistic model.

Inputs are one flat dict of measurements per checkpoint (keys in `drift.forecast`; absent keys and
None are allowed everywhere). `feature_rows` (defined in `drift.forecast`) adds trends;
`label_future_forgetting` builds the target; `RiskModel` predicts
``P(ood metric ≥ 10 % below base within the next few checkpoints)``; `heuristic_risk` is the fallback without a fitted model. Following the project's replication
("Measured on a tiny model" in REFERENCES.md): ood probe KL is the primary signal, parameter drift
the probe-free fallback, and every estimate lists the signals it had.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from sklearn.base import clone
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from drift.forecast import META_KEYS, PARAM_FEATURES, PROBE_FEATURES, feature_rows, finite_or_none

__all__ = ["Evaluation", "RiskEstimate", "RiskModel", "evaluate_leave_one_run_out", "feature_rows",
           "heuristic_risk", "label_future_forgetting", "last_safe_step"]

#: Fallback heuristic: logit = Σ w_k · log2(x_k / ref_k), one unit of logit per doubling. The
#: references are order-of-magnitude placeholders (risk 0.5 at 0.05 nats/token of ood forward KL,
#: 2 % relative parameter change, 0.5 nats/token of new-task KL), not fitted values; weights follow
#: the replication's ranking of predictors (ood KL R² ≈ 0.99, parameter drift ≈ 0.79).
HEURISTIC_REFS = {"kl_fwd_ood": 0.05, "param_rel_l2": 0.02, "kl_fwd_in": 0.5}
HEURISTIC_WEIGHTS = {"kl_fwd_ood": 0.75, "param_rel_l2": 0.25}
HEURISTIC_VERSION = "1"

#: Calibrate (Platt) only with at least this many runs and this many rows of each class.
CALIBRATION_MIN_GROUPS = 5
CALIBRATION_MIN_PER_CLASS = 10
#: A feature is used only if finite in at least this share of the training rows.
MIN_FEATURE_COVERAGE = 0.2
MODEL_NAME = "logistic"
FORMAT = "forgetwatch.risk_model/1"


@dataclass(frozen=True)
class RiskEstimate:
    """``value`` is a probability in [0, 1], None when ``applicable`` is False (``reason`` says
    why). ``features_used`` were present in the row; ``features_missing`` were imputed."""

    value: float | None
    model: str
    model_version: str
    features_used: tuple[str, ...]
    features_missing: tuple[str, ...]
    applicable: bool
    reason: str | None = None


@dataclass(frozen=True)
class Evaluation:
    """Leave-one-run-out result; see `evaluate_leave_one_run_out` for the lead-time definition."""

    roc_auc: float | None
    n_runs: int
    n_checkpoints: int
    n_scored: int
    positive_rate: float
    n_forgetting_runs: int
    n_detected_runs: int
    median_lead_time_checkpoints: float | None
    median_lead_time_steps: float | None


def label_future_forgetting(
    ood_metric_series: Sequence[float | None],
    *,
    base: float,
    horizon: int = 3,
    relative_drop: float = 0.10,
) -> list[int]:
    """Target for the risk model: ``label[t] = 1`` if any of checkpoints ``t .. t + horizon``
    (inclusive, truncated at the end of the run) has ``base − value ≥ relative_drop · |base|``.

    ``ood_metric_series[t]`` is a higher-is-better ood metric at checkpoint t (accuracy, or mean
    reference log-likelihood in nats/token); ``base`` is the base model's value, passed separately
    (it is not element 0). None/NaN means unmeasured and never counts as a drop. ``horizon=0``
    marks the checkpoints that have already dropped. The last ``horizon`` labels see fewer future
    checkpoints (right-censored).
    """
    if horizon < 0 or not 0 < relative_drop < 1:
        raise ValueError(f"need horizon >= 0 and 0 < relative_drop < 1, got {horizon}, {relative_drop}")
    if finite_or_none(base) is None or base == 0:
        raise ValueError(f"base must be finite and nonzero for a relative drop, got {base}")
    margin = relative_drop * abs(base) * (1 - 1e-9)  # tolerance: 0.5 → 0.45 is a 10 % drop
    dropped = [(v := finite_or_none(x)) is not None and base - v >= margin for x in ood_metric_series]
    n = len(dropped)
    return [int(any(dropped[t:min(n, t + horizon + 1)])) for t in range(n)]


def _applicability(row: Mapping[str, float | None]) -> str | None:
    n = finite_or_none(row.get("n_checkpoints"))
    if n is not None and n < 2:
        return "fewer than 2 checkpoints: no trend yet"
    if not any(finite_or_none(row.get(k)) is not None for k in PROBE_FEATURES + PARAM_FEATURES):
        return "no probe or parameter measurements for this checkpoint"
    return None


def _sigmoid(x: float) -> float:
    return float(0.5 * (1.0 + math.tanh(0.5 * x)))


def heuristic_risk(row: Mapping[str, float | None]) -> RiskEstimate:
    """Rule-based risk without a fitted model (constants `HEURISTIC_REFS`/`HEURISTIC_WEIGHTS`):
    ``sigmoid(Σ w_k log2(x_k / ref_k))`` over ood forward KL and relative L2 drift, weights
    renormalized over those present; new-task forward KL alone (weight 1) when neither is."""
    reason = _applicability(row)
    present = {k: finite_or_none(row.get(k)) for k in HEURISTIC_REFS}
    present = {k: v for k, v in present.items() if v is not None}
    weights = {k: w for k, w in HEURISTIC_WEIGHTS.items() if k in present}
    if not weights and "kl_fwd_in" in present:
        weights = {"kl_fwd_in": 1.0}
    if reason is None and not weights:
        reason = "none of kl_fwd_ood, param_rel_l2, kl_fwd_in measured"
    used = tuple(sorted(weights))
    missing = tuple(k for k in sorted(HEURISTIC_REFS) if k not in weights)
    if reason is not None:
        return RiskEstimate(None, "heuristic", HEURISTIC_VERSION, used, missing, False, reason)
    total = sum(weights.values())
    logit = sum(w / total * math.log2(max(present[k], 1e-12) / HEURISTIC_REFS[k]) for k, w in weights.items())
    return RiskEstimate(_sigmoid(logit), "heuristic", HEURISTIC_VERSION, used, missing, True)


def _platt(f: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt (1999) scaling ``P = 1 / (1 + exp(a·f + b))`` with his smoothed targets."""
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def nll(ab: np.ndarray) -> float:
        z = ab[0] * f + ab[1]  # log-odds of the negative class
        return float(np.sum(t * np.logaddexp(0, z) + (1 - t) * np.logaddexp(0, -z)))

    res = optimize.minimize(nll, np.array([0.0, math.log((n_neg + 1) / (n_pos + 1))]), method="BFGS")
    return float(res.x[0]), float(res.x[1])


class RiskModel:
    """Standardized logistic regression (median imputer → StandardScaler → L2 logistic regression,
    ``class_weight="balanced"``), Platt-calibrated on grouped out-of-fold decision values.

    Why not `CalibratedClassifierCV`: its fitted calibrators keep their parameters in private
    objects, and its default ensemble averages k models; fitting one sigmoid to the out-of-fold
    decision values of `GroupKFold` (runs never split across folds) is its ``ensemble=False`` mode
    with two plain numbers to store. Calibration is skipped with fewer than
    `CALIBRATION_MIN_GROUPS` runs or `CALIBRATION_MIN_PER_CLASS` rows of a class.
    Missing values: a feature absent, None or non-finite in a row is replaced by its training
    median (``impute_values``, stored with the model) and listed in ``features_missing``. The
    model uses the non-meta features finite in ≥ `MIN_FEATURE_COVERAGE` of the training rows
    (``features``, stored). Prediction uses only the stored arrays, so `to_dict`/`from_dict`
    reproduce it exactly; `to_dict` holds no code or pickled objects.
    """

    def __init__(self, *, C: float = 0.3) -> None:
        self.C = C
        self.params: dict | None = None
        self.pipeline_: Pipeline | None = None

    def _pipeline(self) -> Pipeline:
        return Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler()),
                         ("logit", LogisticRegression(C=self.C, class_weight="balanced", solver="newton-cholesky",
                                                       max_iter=200))])

    def fit(self, rows: Sequence[Mapping[str, float | None]], labels: Sequence[int],
            groups: Sequence[object]) -> RiskModel:
        """``rows`` from `feature_rows`, ``labels`` from `label_future_forgetting`, ``groups`` the
        run of each row. Uses the non-meta features finite in ≥ `MIN_FEATURE_COVERAGE` of rows."""
        y = np.asarray(labels, dtype=int)
        if not len(rows) == len(y) == len(groups):
            raise ValueError(f"rows, labels, groups differ in length: {len(rows)}, {len(y)}, {len(groups)}")
        if set(np.unique(y)) != {0, 1}:
            raise ValueError(f"labels must contain both 0 and 1, got {sorted(set(y.tolist()))}")
        counts: dict[str, int] = {}
        for r in rows:
            for k, v in r.items():
                if k not in META_KEYS and finite_or_none(v) is not None:
                    counts[k] = counts.get(k, 0) + 1
        features = sorted(k for k, c in counts.items() if c >= MIN_FEATURE_COVERAGE * len(rows))
        if not features:
            raise ValueError("no feature is present in enough training rows")
        X = _matrix(rows, features)
        g = np.asarray([str(x) for x in groups])
        pipe = self._pipeline().fit(X, y)
        self.pipeline_ = pipe
        calibration = None
        n_groups = len(set(g.tolist()))
        if n_groups >= CALIBRATION_MIN_GROUPS and min(y.sum(), len(y) - y.sum()) >= CALIBRATION_MIN_PER_CLASS:
            oof = np.empty(len(y))
            for train, test in GroupKFold(n_splits=min(5, n_groups)).split(X, y, g):
                if len(np.unique(y[train])) < 2:
                    break
                oof[test] = clone(pipe).fit(X[train], y[train]).decision_function(X[test])
            else:
                a, b = _platt(oof, y)
                calibration = {"method": "platt", "a": a, "b": b}
        imputer, scaler, logit = pipe.named_steps.values()
        params = {"format": FORMAT, "model": MODEL_NAME, "features": features,
                  "impute_values": imputer.statistics_.tolist(), "scaler_mean": scaler.mean_.tolist(),
                  "scaler_scale": scaler.scale_.tolist(), "coef": logit.coef_[0].tolist(),
                  "intercept": float(logit.intercept_[0]), "calibration": calibration,
                  "training": {"n_rows": len(y), "n_groups": n_groups, "positive_rate": float(y.mean()),
                               "C": self.C}}
        params["version"] = _fingerprint(params)
        self.params = params
        return self

    @property
    def version(self) -> str:
        return self._fitted()["version"]

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self._fitted()["features"])

    def _fitted(self) -> dict:
        if self.params is None:
            raise ValueError("RiskModel is not fitted; call fit() or from_dict()")
        return self.params

    def decision_function(self, rows: Sequence[Mapping[str, float | None]]) -> np.ndarray:
        """Uncalibrated log-odds, computed from the stored parameters only."""
        p = self._fitted()
        X = _matrix(rows, p["features"])
        X = np.where(np.isnan(X), np.asarray(p["impute_values"]), X)
        z = (X - np.asarray(p["scaler_mean"])) / np.asarray(p["scaler_scale"])
        return z @ np.asarray(p["coef"]) + p["intercept"]

    def predict_proba(self, rows: Sequence[Mapping[str, float | None]]) -> np.ndarray:
        """Calibrated risk per row, without applicability checks."""
        f = self.decision_function(rows)
        cal = self._fitted()["calibration"]
        z = -f if cal is None else cal["a"] * f + cal["b"]
        return 0.5 * (1.0 - np.tanh(0.5 * z))  # = 1 / (1 + exp(z))

    def predict(self, row: Mapping[str, float | None]) -> RiskEstimate:
        p = self._fitted()
        used = tuple(k for k in p["features"] if finite_or_none(row.get(k)) is not None)
        missing = tuple(k for k in p["features"] if k not in used)
        reason = _applicability(row)
        if reason is None and not used:
            reason = "none of the model's features are present"
        if reason is not None:
            return RiskEstimate(None, MODEL_NAME, p["version"], used, missing, False, reason)
        return RiskEstimate(float(self.predict_proba([row])[0]), MODEL_NAME, p["version"], used, missing, True)

    def to_dict(self) -> dict:
        """Plain JSON-able parameters (lists, floats, strings)."""
        return json.loads(json.dumps(self._fitted()))

    @classmethod
    def from_dict(cls, data: Mapping) -> RiskModel:
        """Inverse of `to_dict`; checks shapes, finiteness and the version fingerprint."""
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document (format={data.get('format')!r})")
        params = json.loads(json.dumps(dict(data)))
        try:
            n = len(params["features"])
            for key in ("impute_values", "scaler_mean", "scaler_scale", "coef"):
                arr = np.asarray(params[key], dtype=np.float64)
                if arr.shape != (n,) or not np.all(np.isfinite(arr)):
                    raise ValueError(f"{key} must be {n} finite numbers")
            cal = params["calibration"]
            numbers = [params["intercept"]] + ([] if cal is None else [cal["a"], cal["b"]])
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
                raise ValueError("intercept and calibration parameters must be finite numbers")
            C = float(params["training"]["C"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed risk model document: {exc!r}") from None
        if _fingerprint(params) != params.get("version"):
            raise ValueError("risk model parameters do not match their version fingerprint")
        model = cls(C=C)
        model.params = params
        return model


def _matrix(rows: Sequence[Mapping[str, float | None]], features: Sequence[str]) -> np.ndarray:
    out = np.full((len(rows), len(features)), np.nan)  # (rows, features)
    for i, r in enumerate(rows):
        for j, k in enumerate(features):
            v = finite_or_none(r.get(k))
            if v is not None:
                out[i, j] = v
    return out


def _fingerprint(params: Mapping) -> str:
    body = {k: v for k, v in params.items() if k != "version"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def evaluate_leave_one_run_out(
    rows: Sequence[Mapping[str, float | None]],
    labels: Sequence[int],
    groups: Sequence[object],
    steps: Sequence[int],
    *,
    dropped: Sequence[int] | None = None,
    horizon: int = 3,
    threshold: float = 0.5,
    C: float = 0.3,
) -> Evaluation:
    """Fit on all runs but one, predict that run (`RiskModel.predict`), for every run.

    ``roc_auc`` pools the held-out estimates that are applicable (None with one class). A
    held-out run whose training runs hold a single class gets no estimates.

    Lead time, per run that forgets: ``onset`` is its first checkpoint whose ood metric has
    dropped (``dropped[i] == 1``, i.e. ``label_future_forgetting(..., horizon=0)``); without
    ``dropped`` it is the first positive label + ``horizon``, which is exact unless that label
    is the run's first checkpoint. ``alarm`` is the first checkpoint with risk ≥ ``threshold``.
    Lead = onset − alarm in checkpoints (0: same checkpoint; negative: late) and
    ``step[onset] − step[alarm]`` in steps; medians over forgetting runs with an alarm, None if none.
    """
    y = np.asarray(labels, dtype=int)
    n = len(y)
    if not len(rows) == n == len(groups) == len(steps) or (dropped is not None and len(dropped) != n):
        raise ValueError("rows, labels, groups, steps (and dropped) must have equal lengths")
    g = np.asarray([str(x) for x in groups])
    risk = np.full(n, np.nan)
    for run in dict.fromkeys(g.tolist()):
        test = np.flatnonzero(g == run)
        train = np.flatnonzero(g != run)
        if len(np.unique(y[train])) < 2:
            continue
        model = RiskModel(C=C).fit([rows[i] for i in train], y[train], g[train])
        for i in test:
            est = model.predict(rows[i])
            risk[i] = np.nan if est.value is None else est.value
    scored = np.isfinite(risk)
    auc = float(roc_auc_score(y[scored], risk[scored])) if len(np.unique(y[scored])) == 2 else None
    leads, lead_steps, n_forgetting = _lead_times(risk, y, g, steps, dropped, horizon, threshold)
    return Evaluation(roc_auc=auc, n_runs=len(set(g.tolist())), n_checkpoints=n, n_scored=int(scored.sum()),
                      positive_rate=float(y.mean()) if n else 0.0, n_forgetting_runs=n_forgetting,
                      n_detected_runs=len(leads),
                      median_lead_time_checkpoints=float(np.median(leads)) if leads else None,
                      median_lead_time_steps=float(np.median(lead_steps)) if lead_steps else None)


def _lead_times(risk: np.ndarray, y: np.ndarray, g: np.ndarray, steps: Sequence[float],
                dropped: Sequence[int] | None, horizon: int, threshold: float) -> tuple[list[int], list[float], int]:
    """Per forgetting run with an alarm: (onset − alarm) in checkpoints and in steps; and the number
    of forgetting runs. Definitions in `evaluate_leave_one_run_out`."""
    x = np.asarray(steps, dtype=np.float64)
    leads, lead_steps, n_forgetting = [], [], 0
    for run in dict.fromkeys(g.tolist()):
        idx = np.flatnonzero(g == run)
        idx = idx[np.argsort(x[idx], kind="stable")]
        if dropped is not None:
            hits = np.flatnonzero(np.asarray(dropped)[idx] == 1)
            onset = int(hits[0]) if len(hits) else None
        else:
            hits = np.flatnonzero(y[idx] == 1)
            onset = min(int(hits[0]) + horizon, len(idx) - 1) if len(hits) else None
        if onset is None:
            continue
        n_forgetting += 1
        alarms = np.flatnonzero(np.nan_to_num(risk[idx], nan=-np.inf) >= threshold)
        if len(alarms):
            leads.append(onset - int(alarms[0]))
            lead_steps.append(float(x[idx[onset]] - x[idx[alarms[0]]]))
    return leads, lead_steps, n_forgetting


def last_safe_step(steps: Sequence[int], risks: Sequence[float | None], threshold: float) -> int | None:
    """Where to roll back: the step of the last checkpoint with risk < ``threshold`` before the
    first one with risk ≥ ``threshold``. None risks (not applicable) are skipped. Without any
    risky checkpoint, the last checkpoint below threshold; None if no checkpoint qualifies
    (e.g. the first scored checkpoint is already risky: roll back to the base)."""
    if len(steps) != len(risks):
        raise ValueError(f"steps and risks differ in length: {len(steps)} vs {len(risks)}")
    safe = None
    for s, r in zip(steps, risks):
        v = finite_or_none(r)
        if v is None:
            continue
        if v >= threshold:
            return safe
        safe = int(s)
    return safe
