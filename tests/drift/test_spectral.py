import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from drift import _kernels, spectral
from drift.spectral import SpectralOptions, cache_path, spectral_drift
from drift.streams import DenseStream

K = 4
EXACT = SpectralOptions(k=K, alpha=0.05, method="exact")
RANDOMIZED = SpectralOptions(k=K, alpha=0.05, method="randomized", oversample=8)


def _orthogonal(n: int, rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _gapped(m=160, n=120, seed=0):
    """W₀ = U diag(s) Vᵀ with a clear gap after the top K singular values."""
    rng = np.random.default_rng(seed)
    u, v = _orthogonal(m, rng), _orthogonal(n, rng)
    s = np.concatenate([[20.0, 16.0, 12.0, 9.0], 2.0 * 0.97 ** np.arange(n - K)])
    return u, s, v, (u[:, :n] * s) @ v.T


def _reference_mask(w0: np.ndarray, k: int, alpha: float) -> np.ndarray:
    u, s, vt = np.linalg.svd(w0, full_matrices=False)
    recon = np.abs((u[:, :k] * s[:k]) @ vt[:k]).ravel()
    return np.sort(np.argsort(recon)[-math.ceil(alpha * w0.size) :])


@pytest.mark.parametrize("options", [EXACT, RANDOMIZED], ids=["exact", "randomized"])
def test_identical_matrices_have_zero_drift(options):
    *_, w0 = _gapped()
    r = spectral_drift(w0, w0.copy(), options=options)
    assert (r.normalized_spectral_shift, r.max_principal_angle_deg, r.principal_overlap_ratio) == (
        0.0,
        0.0,
        1.0,
    )
    assert r.principal_update_energy_ratio is None and r.k == K


@pytest.mark.parametrize("options", [EXACT, RANDOMIZED], ids=["exact", "randomized"])
def test_scaled_copy_shifts_spectrum_by_the_scale(options):
    *_, w0 = _gapped()
    r = spectral_drift(w0, 1.5 * w0, options=options)
    assert_allclose(r.normalized_spectral_shift, 0.5, rtol=1e-9)
    assert r.max_principal_angle_deg < 1e-5 and r.principal_overlap_ratio == 1.0
    mask = _reference_mask(w0, K, 0.05)
    flat = w0.ravel()
    assert_allclose(r.principal_update_energy_ratio, (flat[mask] ** 2).sum() / (flat**2).sum(), rtol=1e-9)


@pytest.mark.parametrize("options", [EXACT, RANDOMIZED], ids=["exact", "randomized"])
@pytest.mark.parametrize("degrees", [0.05, 7.0])
def test_rotating_the_top_subspace_gives_that_principal_angle(options, degrees):
    u, s, v, w0 = _gapped()
    phi = math.radians(degrees)
    rot = np.eye(u.shape[0])
    j = K + 3  # rotate u₁ toward a direction outside the top-K subspace
    rot[[0, 0, j, j], [0, j, 0, j]] = [math.cos(phi), -math.sin(phi), math.sin(phi), math.cos(phi)]
    w = ((u @ rot)[:, : v.shape[0]] * s) @ v.T
    r = spectral_drift(w0, w, options=options)
    assert_allclose(r.max_principal_angle_deg, degrees, rtol=1e-6)
    assert r.normalized_spectral_shift < 1e-10


def test_randomized_matches_exact_for_a_small_update():
    *_, w0 = _gapped()
    w = w0 + 1e-3 * np.random.default_rng(1).standard_normal(w0.shape)
    exact, rand = spectral_drift(w0, w, options=EXACT), spectral_drift(w0, w, options=RANDOMIZED)
    assert_allclose(rand.normalized_spectral_shift, exact.normalized_spectral_shift, rtol=1e-6)
    assert_allclose(rand.max_principal_angle_deg, exact.max_principal_angle_deg, rtol=1e-4)
    assert rand.principal_overlap_ratio == exact.principal_overlap_ratio


def test_update_energy_on_and_off_the_principal_weights():
    *_, w0 = _gapped()
    mask = _reference_mask(w0, K, 0.05)
    on = w0.copy().ravel()
    on[mask] += 1e-4
    r = spectral_drift(w0, on.reshape(w0.shape), options=EXACT)
    assert_allclose(r.principal_update_energy_ratio, 1.0, rtol=1e-12)
    assert r.mask_size == mask.size and r.principal_overlap_ratio == 1.0
    off = w0.copy().ravel()
    off[np.setdiff1d(np.arange(off.size), mask)[:50]] += 1e-4
    assert spectral_drift(w0, off.reshape(w0.shape), options=EXACT).principal_update_energy_ratio == 0.0


def test_base_results_are_cached_on_disk(tmp_path, monkeypatch):
    *_, w0 = _gapped()
    w = w0 + 1e-3
    calls = []
    real = spectral._top_k
    monkeypatch.setattr(spectral, "_top_k", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    file = cache_path(tmp_path, {"file": "x", "tensor": "w"}, RANDOMIZED)
    first = spectral_drift(w0, w, options=RANDOMIZED, cache_file=file)
    assert file.is_file() and len(calls) == 3  # base start + base refine + checkpoint
    second = spectral_drift(w0, w, options=RANDOMIZED, cache_file=file)
    assert len(calls) == 4 and first == second
    assert cache_path(tmp_path, {"file": "x", "tensor": "w"}, SpectralOptions(k=K + 1)) != file


def test_options_are_validated():
    with pytest.raises(ValueError, match="alpha"):
        SpectralOptions(alpha=0.0)
    with pytest.raises(ValueError, match="method"):
        SpectralOptions(method="lanczos")
    with pytest.raises(ValueError, match="2-D"):
        spectral_drift(np.ones(3), np.ones(3))


def _stored(w: np.ndarray, dtype: torch.dtype) -> DenseStream:
    """``w`` as a checkpoint stores it in ``dtype`` (raw storage, as ``Checkpoint.array`` returns it)."""
    t = torch.from_numpy(w).to(dtype)
    raw = t.view(torch.int16).numpy().view(np.uint16) if dtype == torch.bfloat16 else t.numpy()
    return DenseStream(raw, str(dtype).removeprefix("torch."))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_weights_stored_in_32_bits_or_fewer_match_the_float64_computation(dtype):
    """Their Rayleigh–Ritz step runs in float32 (exact for the stored values); the float64 one is the
    reference on the very same values."""
    rng = np.random.default_rng(2)
    w0 = 0.02 * rng.standard_normal((600, 256)) + _gapped(600, 256)[3] / 50
    w = w0 + 2e-3 * rng.standard_normal(w0.shape)
    a, b = _stored(w0, dtype), _stored(w, dtype)
    a64, b64 = (DenseStream(s.rows64(0, s.shape2d[0]), "float64") for s in (a, b))
    options = SpectralOptions(k=16, alpha=0.01, method="randomized")
    fast, reference = spectral_drift(a, b, options=options), spectral_drift(a64, b64, options=options)
    assert fast.normalized_spectral_shift > 1e-3
    assert_allclose(fast.normalized_spectral_shift, reference.normalized_spectral_shift, rtol=1e-4)
    assert_allclose(fast.max_principal_angle_deg, reference.max_principal_angle_deg, rtol=1e-4)
    assert abs(fast.mask_overlap - reference.mask_overlap) <= 2


def test_a_matrix_too_large_to_keep_converted_gives_the_kept_results(monkeypatch):
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((400, 128))
    a, b = _stored(w0, torch.bfloat16), _stored(w0 + 0.01 * rng.standard_normal(w0.shape), torch.bfloat16)
    options = SpectralOptions(k=8, method="randomized")
    kept = spectral_drift(a, b, options=options)
    monkeypatch.setattr(spectral, "_KEEP_ELEMENTS", 0)
    monkeypatch.setattr(spectral, "_BLOCK", 128 * 100)  # four row blocks per pass
    blockwise = spectral_drift(a, b, options=options)  # the same float32 sums, added in another order
    assert_allclose(blockwise.normalized_spectral_shift, kept.normalized_spectral_shift, rtol=1e-3)
    assert_allclose(blockwise.max_principal_angle_deg, kept.max_principal_angle_deg, rtol=1e-3)
    assert blockwise.mask_overlap == kept.mask_overlap


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_principal_weights_are_the_largest_entries_of_the_top_k_reconstruction(backend, monkeypatch):
    monkeypatch.setattr(_kernels, "use_numba", backend == "numba")
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((300, 200))
    options = SpectralOptions(k=6, alpha=0.02, method="exact")
    mask = spectral._base_result(DenseStream(w0, "float64"), options, 6, None)[1]
    np.testing.assert_array_equal(mask, _reference_mask(w0, 6, 0.02))
