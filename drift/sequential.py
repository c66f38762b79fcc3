"""An anytime-valid test of response shift over a run's checkpoints: an e-process built by betting.

A trainer sends 16–64 responses per checkpoint; at that size a two-sample test per checkpoint is
nearly blind to a 10–20 % shift (`drift.shift`). Here evidence accumulates over the checkpoints
while the probability of *ever* raising a false alarm during the run stays ≤ alpha.

Data: a sequence of batches, one per checkpoint, each a pair of embedding matrices ``reference``
(n, d) and ``current`` (n, d) whose rows i answer the same prompt (the base's response and the
checkpoint's). Pairs are taken in order, (x_1, y_1), (x_2, y_2), ... across batches.

Null hypothesis: within every pair the two responses are exchangeable given the earlier batches
(swapping any subset of a batch's pairs leaves the batch's joint law unchanged) — the checkpoint
answers as the base does.

Betting (Shekhar & Ramdas 2023, "Nonparametric two-sample testing by betting", IEEE Trans. Inf.
Theory; Podkopaev et al. 2023, "Sequential kernelized independence testing", ICML, whose pairs are
symmetric under the null as here). Each pair t gets an antisymmetric score z_t — swapping x_t and
y_t turns z_t into −z_t and changes nothing else the score depends on — so under the null z_t is
symmetric about 0 given the past and |z_t|, and a bet on its sign with stake tanh(η z_t) (the
likelihood ratio of mean +η against −η) pays ``1 + tanh(η z_t)``, of conditional expectation
exactly 1. Two scores are bet on:

1. Typicality (the leading term; a mixture shift puts a minority of current responses where the
   references have little mass, `drift.shift`'s third component). Over the pool P_b = (the
   window's earlier references, then all 2n responses of batch b), the leave-one-out RBF density
   at the median bandwidth ρ(u) = Σ_{v∈P_b, v≠u} k(u, v) / (|P_b| − 1) is taken in two
   geometries: whitened (ridge 0.3; in 384 whitened dimensions distances concentrate and log ρ(u)
   is close to minus the regularised Mahalanobis norm of u over the pool: a global, style-aware
   measure) and raw (the unit-norm embeddings as they come: local, a response far from the others
   on its topic). With g_t = log ρ(x_t) − log ρ(y_t) in each geometry scaled to unit rms over the
   batch (ĝ),

       u_t = ĝ_t(whitened) + ĝ_t(raw),   v_t = u_t |u_t|,   z_t = v_t / sqrt(mean_{batch} v²)
       (> 0: current less typical).

   The signed square lets the stake rise faster on the few pairs far out than on the bulk: under a
   mixture most pairs carry no signal and each costs ≈ stake²/2 nats, while the minority that
   does sits in the tail of |u|.

   P_b holds the batch only as a set of unordered pairs and earlier references are past data, so
   both kernels, ρ and the batch's rms scales are unchanged by swapping any of the batch's pairs,
   while each g_t flips sign; so does u_t, and v_t = u_t |u_t| (an odd function of u_t):
   z_t = ε_t |z_t| with ε_t fair independent signs under the null, and the stake tanh(η z_t) is an
   odd function of ε_t given everything else, so E[1 + tanh(η z_t) | past, |z|] = 1. The whole
   batch contributes, the first one included (no past witness needed).
2. The learned MMD witness of the earlier pairs in a window S_t (the last ``window`` pairs,
   earlier pairs of the same batch included), which catches shifts of any shape:

       D_t = Σ_{s∈S_t} h(t, s),   h(t, s) = k(y_t, y_s) − k(y_t, x_s) − k(x_t, y_s) + k(x_t, x_s),
       z'_t = D_t / sqrt(Σ_s h(t, s)²).

The e-process is a fixed convex combination of three test martingales,

    E_T = 0.8 Π_{t≤T} (1 + tanh(η z_t)) + 0.1 Π_{t≤T} (1 − tanh(η z_t))
          + 0.1 mean_{η'∈etas} Π_{t≤T} (1 + tanh(η' z'_t)),

(the second bets that the current responses are *more* typical: a collapse), each a nonnegative
martingale from 1 at batch ends under the null, so E_T is one too, and by Ville's inequality
P(∃T: E_T ≥ 1/alpha) ≤ alpha: the e-process can be watched after every checkpoint and the
run-level false-alarm probability stays ≤ alpha however long the run. Validity needs only the null
(swapping any subset of a batch's pairs leaves the joint law unchanged given the earlier batches),
not the tuning. Tuned on `bench.embedding_shift`'s seed-0 corpus (``python -m
bench.embedding_sequential --tuning``); the default bench holds that text out. Earlier (log
density, whitened only): η = 0.25, the 0.8/0.1/0.1 weights and the whitening ridge 0.3, chosen by
the mean log-payoff per batch on that corpus's 20 % shift. Then, on the same corpus (typicality
bet alone, power by the 5th checkpoint against the 20 % shift, 240 runs): whitened 0.63, raw 0.70,
their sum 0.83, its signed square 0.89 (flat for powers 1.5–2.5 and η 0.2–0.25); η = 0.2 over 0.25
for the 10 % shift (power by the 10th checkpoint 0.90 against 0.84, 80 runs). Tried there and
dropped: partial whitening (ridge 0.03, 1, 3, 10: 0.49–0.70 alone, 80 runs; lower in the sum), a kNN
distance instead of the density (whitened 0.33–0.62, raw 0.07; 40 runs), raw bandwidth ×0.5 or ×2 (no gain), adding the
learned witness, a kernel or linear classifier of earlier references against earlier currents or
a shrinkage-LDA direction to u (+0.00–0.03, within noise), clipped linear or cubic stakes and a
median instead of an rms scale (lower). A single η rather than a grid: the grid's mixture costs
log(grid size) nats of the log(1/alpha) ≈ 3 needed (plain-density typicality bet alone, tuning
corpus, 40 runs: power by the 5th checkpoint 0.75 at η = 0.2 against 0.5–0.6 for the grid
0.1/0.2/0.4); online Newton step stakes (Cutkosky & Orabona 2018) and a follow-the-leader η
learned too slowly here (0.35, 0.6). Adding the learned witness to the typicality score added
~0.02 nats per batch, so the witness keeps its own small share instead.
Measured (400 null runs, 80 per shift, 20 checkpoints of 32 pairs): held-out run_fpr 0.040,
power by the 5th checkpoint against a 20 % shift 0.91, by the 10th against a 10 % shift
0.94 (whitened log density alone, before: 0.033, 0.57, 0.68; the witness alone: 0.24 by
the 5th); tuning corpus 0.020, 0.91, 0.90 (before: 0.018, 0.70, 0.62).

The witness's kernel and the first typicality density are RBF on whitened embeddings (as in
`drift.shift`: style directions of low variance count as much as topic directions); whitening and
bandwidths are computed on pooled responses that enter only as unordered pairs, which the null
leaves invariant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from threadpoolctl import threadpool_limits

from drift.gram import gram_to_squared_distances, median_bandwidth, rbf_kernel, whitened_gram

# chosen on bench.embedding_shift's corpus; bench.embedding_sequential holds out its text
ETAS = (0.1, 0.2, 0.4)  # grid of the learned-witness martingale
TYPICALITY_ETA = 0.2
TYPICALITY_WHITENING = 0.3
WEIGHTS = (0.8, 0.1, 0.1)  # current less typical, current more typical, learned witness
DEFAULT_ALPHA = 0.05  # alarm once the e-process reaches 1 / alpha = 20
MAX_PAIRS_PER_BATCH = 128  # the pairs of a batch that are bet on (the first ones)


@dataclass(frozen=True)
class SequentialShiftResult:
    """The e-process after each batch (``evalues``, starting from 1 before any data); ``max_evalue``
    is its running maximum over batch ends and ``detected = max_evalue >= 1 / alpha``, first at
    batch ``first_detection`` (0-based; None when not detected). ``n_pairs`` were bet on."""

    evalues: tuple[float, ...]
    max_evalue: float
    alpha: float
    detected: bool
    first_detection: int | None
    n_pairs: int

    @property
    def evalue(self) -> float:
        """The e-process after the last batch (1.0 with no batches)."""
        return self.evalues[-1] if self.evalues else 1.0


def _check_batches(
    batches: Sequence[tuple[ArrayLike, ArrayLike]], max_pairs_per_batch: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    out: list[tuple[np.ndarray, np.ndarray]] = []
    dim = None
    for i, batch in enumerate(batches):
        if len(batch) != 2:
            raise ValueError(f"batches[{i}] must be a (reference, current) pair, got {len(batch)} items")
        x = np.asarray(batch[0], dtype=np.float64)
        y = np.asarray(batch[1], dtype=np.float64)
        if x.ndim != 2 or x.shape != y.shape:
            raise ValueError(
                f"batches[{i}]: reference and current must be 2-D of equal shape (paired rows), "
                f"got {x.shape} and {y.shape}"
            )
        if dim is not None and x.shape[1] != dim and len(x):
            raise ValueError(f"batches[{i}] has embedding dim {x.shape[1]}, earlier batches {dim}")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError(f"batches[{i}] contains NaN or inf")
        if len(x):
            dim = x.shape[1]
        out.append((x[:max_pairs_per_batch], y[:max_pairs_per_batch]))
    return out


def _pair_scores(
    past_x: np.ndarray, past_y: np.ndarray, x: np.ndarray, y: np.ndarray, whitening: float
) -> np.ndarray:
    """z_t for each pair of the batch (x, y), given the window's earlier pairs; shape (n,)."""
    px, py = np.vstack([past_x, x]), np.vstack([past_y, y])  # (m, d): window then batch
    m, n = len(px), len(x)
    d2 = gram_to_squared_distances(whitened_gram(np.vstack([px, py]), ridge=whitening).astype(np.float64))
    bandwidth = median_bandwidth(d2)
    if bandwidth == 0.0:  # every response identical: no evidence either way
        return np.zeros(n)
    k = rbf_kernel(d2, bandwidth)  # (2m, 2m)
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    h = (kyy - kxy.T - kxy + kxx)[m - n :]  # (n, m): h(t, s) for batch pairs t against all pairs s
    earlier = np.arange(m)[None, :] < np.arange(m - n, m)[:, None]  # s before t
    h = np.where(earlier, h, 0.0)
    norm = np.sqrt((h * h).sum(1))
    return np.where(norm > 0, h.sum(1) / np.where(norm > 0, norm, 1.0), 0.0)


def _log_density_gaps(d2: np.ndarray, first: int, n: int) -> np.ndarray:
    """log ρ(x_t) − log ρ(y_t) for the batch's pairs, ρ the leave-one-out RBF density (median
    bandwidth) over the pool behind the squared distances d2 (rows: earlier references, x, y)."""
    bandwidth = median_bandwidth(d2)
    if bandwidth == 0.0:
        return np.zeros(n)
    density = (rbf_kernel(d2, bandwidth).sum(1) - 1.0) / (len(d2) - 1)  # leave-one-out
    log_density = np.log(np.maximum(density, np.finfo(np.float64).tiny))
    gaps: np.ndarray = log_density[first : first + n] - log_density[first + n :]
    return gaps


def _unit_rms(s: np.ndarray) -> np.ndarray:
    scale = float(np.sqrt(np.mean(s * s)))
    return s / scale if scale > 0 else np.zeros_like(s)


def _typicality_scores(past_x: np.ndarray, x: np.ndarray, y: np.ndarray, whitening: float) -> np.ndarray:
    """z_t of the typicality bet for each pair of the batch; shape (n,). The gaps of the whitened
    and of the raw geometry, each scaled to unit rms, summed and scaled to unit rms again."""
    pool = np.vstack([past_x, x, y])
    first, n = len(past_x), len(x)
    white = gram_to_squared_distances(whitened_gram(pool, ridge=whitening).astype(np.float64))
    raw = gram_to_squared_distances(pool @ pool.T)
    z = _unit_rms(_unit_rms(_log_density_gaps(white, first, n)) + _unit_rms(_log_density_gaps(raw, first, n)))
    return _unit_rms(z * np.abs(z))  # signed square: stakes rise faster on the few outlying pairs


def _log_stakes(eta: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Σ_t log(1 + tanh(η z_t)) for each η (rows): log 2 − log(1 + e^(−2ηz)), finite for any ηz."""
    out: np.ndarray = (np.log(2.0) - np.logaddexp(0.0, -2.0 * np.outer(eta, z))).sum(1)
    return out


def sequential_shift_test(
    batches: Sequence[tuple[ArrayLike, ArrayLike]],
    *,
    alpha: float = DEFAULT_ALPHA,
    window: int = 256,
    max_pairs_per_batch: int = MAX_PAIRS_PER_BATCH,
    whitening: float = 0.3,
    etas: Sequence[float] = ETAS,
    typicality_eta: float = TYPICALITY_ETA,
    typicality_whitening: float = TYPICALITY_WHITENING,
) -> SequentialShiftResult:
    """The e-process of the module docstring over ``batches`` (one (reference, current) pair of
    (n, d) arrays per checkpoint, rows paired by prompt, in checkpoint order). Each batch's first
    ``max_pairs_per_batch`` pairs are used; the witness and the typicality pool look back
    ``window`` pairs; ``whitening`` and ``etas`` set the witness, ``typicality_*`` the typicality
    bet. Deterministic: the same batches give the same e-values. An empty batch leaves the e-process unchanged."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if window < 1 or max_pairs_per_batch < 1:
        raise ValueError(
            f"window and max_pairs_per_batch must be >= 1, got {window} and {max_pairs_per_batch}"
        )
    if not (whitening > 0 and typicality_whitening > 0):
        raise ValueError(f"whitening must be > 0, got {whitening} and {typicality_whitening}")
    if not (np.isfinite(typicality_eta) and 0 < typicality_eta <= 1):
        raise ValueError(f"typicality_eta must be in (0, 1], got {typicality_eta}")
    grid = np.asarray(etas, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or not (np.isfinite(grid).all() and (grid > 0).all()):
        raise ValueError(f"etas must be a non-empty sequence of positive numbers, got {etas!r}")
    checked = _check_batches(batches, max_pairs_per_batch)
    log_wealth = np.zeros(grid.size)  # log K(η) of the learned witness, per η
    log_typical = np.zeros(2)  # log K of the typicality bets: current less / more typical
    signed = np.array([typicality_eta, -typicality_eta])
    log_weights = np.log(np.r_[WEIGHTS[:2], np.full(grid.size, WEIGHTS[2] / grid.size)])
    evalues: list[float] = []
    past_x: np.ndarray | None = None
    past_y: np.ndarray | None = None
    n_pairs = 0
    with threadpool_limits(limits=1, user_api="blas"):  # small matrices: threads only spin
        for x, y in checked:
            if len(x):
                if past_x is None or past_y is None:
                    past_x, past_y = x[:0], y[:0]
                z = _pair_scores(past_x[-window:], past_y[-window:], x, y, whitening)  # (n,)
                log_wealth += _log_stakes(grid, z)
                log_typical += _log_stakes(signed, _typicality_scores(past_x[-window:], x, y, typicality_whitening))
                past_x, past_y = np.vstack([past_x, x])[-window:], np.vstack([past_y, y])[-window:]
                n_pairs += len(x)
            terms = log_weights + np.r_[log_typical, log_wealth]
            top = terms.max()
            evalues.append(float(np.exp(top) * np.exp(terms - top).sum()))
    running = np.maximum.accumulate(evalues) if evalues else np.ones(1)
    crossed = np.flatnonzero(running >= 1.0 / alpha)
    return SequentialShiftResult(
        evalues=tuple(evalues),
        max_evalue=float(running[-1]),
        alpha=alpha,
        detected=bool(crossed.size),
        first_detection=int(crossed[0]) if crossed.size else None,
        n_pairs=n_pairs,
    )
