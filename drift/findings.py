"""Findings: human-readable warnings about one checkpoint, from the run's measurement history.

Each rule looks only at checkpoints up to the current one and fires on a documented threshold
(module constants below). Measurement keys are those of `drift.forecast`; two optional keys give
relative forgetting numbers when present: ``loglik_base_ood`` (base mean reference log-likelihood,
nats/token) and ``acc_base_ood`` (base ood accuracy). Without them the drops are absolute.

Codes (stable ids): ``nonfinite_tensors``, ``ood_accuracy_drop``, ``ood_loglik_drop``,
``specialization_forgetting_divergence``, ``ood_kl_rising``, ``ood_kl_change_point``,
``param_drift_accelerating``, ``diversity_drop``, ``repetition_rise``, ``entropy_collapse``,
``response_similarity_tail_drop``, ``self_distillation_collapse``.

``teacher_divergence`` (optional) is the trainer's teacher–student divergence at the checkpoint's step
(a training metric named in ``TEACHER_DIVERGENCE_METRICS``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from drift.forecast import finite_or_none, page_hinkley

#: "Recent" means the last WINDOW checkpoints before the current one.
WINDOW = 4
#: ood forward KL at least this many times its value WINDOW checkpoints ago ...
KL_GROWTH_RATIO = 2.0
#: ... and at least this large now (nats/token), so that noise around zero does not count.
KL_MIN_NATS = 1e-3
#: In-domain accuracy "rose" when acc_change_in grew by more than this over the same span.
IN_ACC_RISE = 0.01
#: Measured ood forgetting, (warning, critical): relative to the base value when the base is given,
#: else absolute accuracy points / nats per token.
RELATIVE_DROP = (0.10, 0.25)
ACC_DROP_POINTS = (0.05, 0.10)
LOGLIK_DROP_NATS = (0.10, 0.30)
#: distinct-2 relative drop vs distinct2_base (else the first checkpoint), (warning, critical).
DIVERSITY_DROP = (0.25, 0.50)
#: repetition_ratio at least REPETITION_GROWTH × its first value and at least (warning, critical).
REPETITION_GROWTH = 2.0
REPETITION_LEVEL = (0.2, 0.5)
#: Relative entropy drop since the first checkpoint, (warning, critical). RL entropy often falls
#: ~73 % early (arXiv:2505.22617), so the warning level is below that and critical above it.
ENTROPY_DROP = (0.5, 0.8)
ENTROPY_KEYS = (("sample_entropy", "sample entropy"), ("entropy_in", "in-domain entropy"),
                ("entropy_ood", "ood entropy"))
#: Parameter drift: recent Theil–Sen slope ≥ PARAM_ACCEL_RATIO × the slope before the window, and
#: the recent window adds ≥ PARAM_ACCEL_MIN_GROWTH of the current param_rel_l2.
PARAM_ACCEL_RATIO = 2.0
PARAM_ACCEL_MIN_GROWTH = 0.10
#: Page–Hinkley on ood forward KL (robust-sd units, see `drift.forecast.page_hinkley`); a "jump"
#: also needs its single-checkpoint step to carry ≥ JUMP_SHARE of the rise since before the onset
#: (a steady trend also shifts the mean, but not in one step), within the recent window.
PH_DELTA = 0.5
PH_THRESHOLD = 8.0
PH_MIN_POINTS = 5
JUMP_SHARE = 0.5
#: embed_similarity_p25 down by at least this (absolute) since the first checkpoint.
SIMILARITY_TAIL_DROP = 0.05
NONFINITE_LIST_MAX = 5
#: The collapse signature of self-distillation (arXiv:2607.01763: an EMA teacher that the student caught
#: up with, then a loop): teacher–student divergence at most COLLAPSE_DIVERGENCE_SHARE of its peak so far,
#: while distinct-2 is down at least DIVERSITY_DROP[0] and repetition up as in ``repetition_rise``
#: (REPETITION_GROWTH × its first value and at least REPETITION_LEVEL[0]).
COLLAPSE_DIVERGENCE_SHARE = 0.05
#: Training metric names read as teacher–student divergence, first found wins.
TEACHER_DIVERGENCE_METRICS = ("teacher_student_divergence", "distill/teacher_kl", "teacher_kl")

_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
History = Sequence[Mapping[str, object]]


@dataclass(frozen=True)
class Finding:
    """``value`` is the headline number of ``message`` (a ratio, share or count); ``step`` the
    checkpoint it refers to."""

    code: str
    severity: str  # "info" | "warning" | "critical"
    message: str
    step: int | None = None
    value: float | None = None


def _series(history: History, key: str) -> np.ndarray:
    return np.array([np.nan if (v := finite_or_none(h.get(key))) is None else v for h in history])


def _level(x: float, levels: tuple[float, float]) -> str | None:
    return "critical" if x >= levels[1] else "warning" if x >= levels[0] else None


def _first(col: np.ndarray) -> float | None:
    finite = col[np.isfinite(col)]
    return float(finite[0]) if len(finite) else None


def findings(
    history: Sequence[Mapping[str, object]],
    steps: Sequence[int],
    *,
    current_index: int = -1,
    nonfinite_names: Sequence[str] = (),
) -> list[Finding]:
    """Findings for checkpoint ``current_index`` (negative counts from the end), most severe first."""
    if len(history) != len(steps):
        raise ValueError(f"history and steps differ in length: {len(history)} vs {len(steps)}")
    n = len(history)
    if n == 0:
        return []
    if not -n <= current_index < n:
        raise ValueError(f"current_index {current_index} out of range for {n} checkpoints")
    if isinstance(nonfinite_names, str):
        raise TypeError(f"nonfinite_names must be a sequence of tensor names, got the string {nonfinite_names!r}")
    t = current_index % n
    hist, st = history[:t + 1], [int(s) for s in steps[:t + 1]]
    out: list[Finding] = []
    for rule in (_nonfinite, _measured_forgetting, _kl_growth, _kl_change_point, _param_acceleration,
                 _diversity, _repetition, _entropy, _similarity_tail, _self_distillation_collapse):
        out.extend(rule(hist, st, list(nonfinite_names)))
    return sorted(out, key=lambda f: _SEVERITY_RANK[f.severity])


def _nonfinite(hist: History, st: list[int], names: list[str]) -> list[Finding]:
    count = finite_or_none(hist[-1].get("nonfinite_tensors")) or 0.0
    count = max(int(count), len(names))
    if count <= 0:
        return []
    listed = ", ".join(names[:NONFINITE_LIST_MAX])
    more = f", … (+{len(names) - NONFINITE_LIST_MAX} more)" if len(names) > NONFINITE_LIST_MAX else ""
    tail = f": {listed}{more}" if names else ""
    return [Finding("nonfinite_tensors", "critical", f"NaN/Inf in {count} tensor{'s' * (count != 1)}{tail}",
                    st[-1], float(count))]


def _measured_forgetting(hist: History, st: list[int], _names: list[str]) -> list[Finding]:
    row, out = hist[-1], []
    for change_key, base_key, code, label, unit, absolute in (
        ("acc_change_ood", "acc_base_ood", "ood_accuracy_drop", "ood accuracy", "points", ACC_DROP_POINTS),
        ("loglik_change_ood", "loglik_base_ood", "ood_loglik_drop", "ood reference log-likelihood",
         "nats/token", LOGLIK_DROP_NATS),
    ):
        change = finite_or_none(row.get(change_key))
        if change is None or change >= 0:
            continue
        base = finite_or_none(row.get(base_key))
        if base is not None and base != 0:
            drop = -change / abs(base)
            severity, text = _level(drop, RELATIVE_DROP), f"{label} down {100 * drop:.0f}% vs base"
        else:
            drop = -change
            severity, text = _level(drop, absolute), f"{label} down {drop:.3g} {unit} vs base"
        if severity:
            out.append(Finding(code, severity, text, st[-1], drop))
    return out


def _kl_growth(hist: History, st: list[int], _names: list[str]) -> list[Finding]:
    kl = _series(hist, "kl_fwd_ood")
    t = len(kl) - 1
    if t < 1 or not np.isfinite(kl[t]) or kl[t] < KL_MIN_NATS:
        return []
    ref = next((i for i in range(max(0, t - WINDOW), t) if np.isfinite(kl[i]) and kl[i] > 0), None)
    if ref is None or kl[t] / kl[ref] < KL_GROWTH_RATIO:
        return []
    ratio, span = float(kl[t] / kl[ref]), t - ref
    text = f"ood forward KL up {ratio:.1f}× in {span} checkpoint{'s' * (span != 1)}"
    acc_in = _series(hist, "acc_change_in")
    if np.isfinite(acc_in[t]) and np.isfinite(acc_in[ref]) and acc_in[t] - acc_in[ref] > IN_ACC_RISE:
        return [Finding("specialization_forgetting_divergence", "warning",
                        f"{text} while in-domain accuracy rose ({acc_in[ref]:+.3f} → {acc_in[t]:+.3f} vs base):"
                        " specialization–forgetting divergence", st[-1], ratio)]
    return [Finding("ood_kl_rising", "warning", text, st[-1], ratio)]


def _kl_change_point(hist: History, st: list[int], _names: list[str]) -> list[Finding]:
    kl = _series(hist, "kl_fwd_ood")
    if np.isfinite(kl).sum() < PH_MIN_POINTS:
        return []
    cp = page_hinkley(kl.tolist(), delta=PH_DELTA, threshold=PH_THRESHOLD, direction="up")
    t = len(kl) - 1
    if cp.index is None or cp.index == 0 or cp.index < t - WINDOW + 1:
        return []
    before = kl[:cp.index][np.isfinite(kl[:cp.index])]
    if len(before) == 0:
        return []
    prev = float(before[-1])
    rise = float(kl[np.isfinite(kl)][-1]) - float(np.median(before))
    if rise < KL_MIN_NATS or kl[cp.index] - prev < JUMP_SHARE * rise:
        return []
    return [Finding("ood_kl_change_point", "warning",
                    f"sudden jump in ood KL at step {st[cp.index]} (change point): {prev:.3g} → "
                    f"{kl[cp.index]:.3g} nats/token", st[cp.index], float(kl[cp.index] - prev))]


def _param_acceleration(hist: History, st: list[int], _names: list[str]) -> list[Finding]:
    drift = _series(hist, "param_rel_l2")
    x = np.asarray(st, dtype=np.float64)
    t = len(drift) - 1
    split = t - WINDOW + 1  # first index of the recent window, shared with the earlier part
    if split < 2 or not np.isfinite(drift[t]) or drift[t] <= 0:
        return []
    slopes = []
    for lo, hi in ((0, split + 1), (split, t + 1)):
        keep = np.isfinite(drift[lo:hi])
        if keep.sum() < 2:
            return []
        i, j = np.triu_indices(int(keep.sum()), k=1)
        xs, ys = x[lo:hi][keep], drift[lo:hi][keep]
        slopes.append(float(np.median((ys[j] - ys[i]) / (xs[j] - xs[i]))))
    early, recent = slopes
    growth = recent * (x[t] - x[split]) / drift[t]
    if early <= 0 or recent < PARAM_ACCEL_RATIO * early or growth < PARAM_ACCEL_MIN_GROWTH:
        return []
    return [Finding("param_drift_accelerating", "warning",
                    f"parameter drift accelerating: slope {recent / early:.1f}× the earlier slope",
                    st[-1], recent / early)]


def _diversity(hist: History, st: list[int], _names: list[str]) -> list[Finding]:
    d2 = _series(hist, "distinct2")
    if not np.isfinite(d2[-1]):
        return []
    base = finite_or_none(hist[-1].get("distinct2_base"))
    ref, what = (base, "base") if base is not None and base > 0 else (_first(d2), "first checkpoint")
    if ref is None or ref <= 0:
        return []
    drop = 1.0 - float(d2[-1]) / ref
    severity = _level(drop, DIVERSITY_DROP)
    if severity is None:
        return []
    return [Finding("diversity_drop", severity, f"response diversity down {100 * drop:.0f}% vs {what}",
                    st[-1], drop)]


def _repetition(hist: History, st: list[int], _names: list[str]) -> list[Finding]:
    rep = _series(hist, "repetition_ratio")
    first = _first(rep)
    if first is None or not np.isfinite(rep[-1]) or rep[-1] < REPETITION_GROWTH * first:
        return []
    severity = _level(float(rep[-1]), REPETITION_LEVEL)
    if severity is None:
        return []
    return [Finding("repetition_rise", severity,
                    f"degenerate repetition: repetition ratio {first:.2f} → {rep[-1]:.2f}", st[-1], float(rep[-1]))]


def _entropy(hist: History, st: list[int], _names: list[str]) -> list[Finding]:
    worst = None
    for key, label in ENTROPY_KEYS:
        col = _series(hist, key)
        first = _first(col)
        if first is None or first <= 0 or not np.isfinite(col[-1]):
            continue
        drop = 1.0 - float(col[-1]) / first
        if worst is None or drop > worst[0]:
            worst = (drop, label)
    if worst is None or (severity := _level(worst[0], ENTROPY_DROP)) is None:
        return []
    return [Finding("entropy_collapse", severity,
                    f"entropy collapse: {worst[1]} down {100 * worst[0]:.0f}% since first checkpoint",
                    st[-1], worst[0])]


def _similarity_tail(hist: History, st: list[int], _names: list[str]) -> list[Finding]:
    sim = _series(hist, "embed_similarity_p25")
    first = _first(sim)
    if first is None or not np.isfinite(sim[-1]) or first - sim[-1] < SIMILARITY_TAIL_DROP:
        return []
    return [Finding("response_similarity_tail_drop", "warning",
                    f"lower-quartile response similarity to base fell {first:.3f} → {sim[-1]:.3f}",
                    st[-1], float(first - sim[-1]))]


def _self_distillation_collapse(hist: History, st: list[int], _names: list[str]) -> list[Finding]:
    div = _series(hist, "teacher_divergence")
    if not np.isfinite(div[-1]) or not np.any(np.isfinite(div[:-1])):
        return []
    peak = float(np.nanmax(div))
    if peak <= 0 or div[-1] > COLLAPSE_DIVERGENCE_SHARE * peak:
        return []
    diversity, repetition = _diversity(hist, st, _names), _repetition(hist, st, _names)
    if not diversity or not repetition:
        return []
    return [Finding("self_distillation_collapse", "critical",
                    f"self-distillation collapse: teacher–student divergence {peak:.3g} → {div[-1]:.3g} "
                    f"while response diversity fell {100 * (diversity[0].value or 0):.0f}% and repetition rose "
                    f"to {repetition[0].value:.2f}: the student copies a teacher that loops", st[-1],
                    float(div[-1] / peak))]
