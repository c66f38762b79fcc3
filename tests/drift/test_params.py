import dataclasses
import json
import math
import subprocess
import sys
from itertools import chain

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from drift import _kernels
from drift.aggregate import aggregate, block_index, module_kind
from drift.params import compare, list_tensors, shard_groups, tensor_rows
from drift.spectral import SpectralOptions
from tests.drift._models import reference, save, tiny_gpt2

SUMS = ("sum_sq_delta", "sum_sq_base", "sum_sq", "dot_base")


@pytest.fixture(params=["numba", "numpy"])
def backend(request, monkeypatch):
    """Run a test on the JIT kernels and on the numpy float64 path."""
    if request.param == "numba":
        pytest.importorskip("numba")
    monkeypatch.setattr(_kernels, "use_numba", request.param == "numba")
    return request.param


def _pair(tmp_path, base: dict, ckpt: dict):
    return save(tmp_path / "base.safetensors", base), save(tmp_path / "ckpt.safetensors", ckpt)


def _one(tmp_path, a, b, **kw):
    (row,) = tensor_rows(*_pair(tmp_path, {"w": a}, {"w": b}), **kw)
    return row


def test_identical_tensors_have_zero_distance(tmp_path, backend):
    w = torch.randn(64, 48)
    row = _one(tmp_path, w, w.clone(), spectral_options=SpectralOptions(k=8))
    assert (row.l2_distance, row.relative_l2_distance, row.changed) == (0.0, 0.0, 0)
    assert row.cosine_similarity == 1.0
    assert row.spectral.normalized_spectral_shift == 0.0 and row.spectral.max_principal_angle_deg == 0.0


def test_scaled_copy(tmp_path, backend):
    w = torch.randn(50, 40, dtype=torch.float64)
    row = _one(tmp_path, w, 1.25 * w, spectral_options=SpectralOptions(k=8))
    assert_allclose([row.relative_l2_distance, row.cosine_similarity], [0.25, 1.0], rtol=1e-12)
    assert_allclose(row.spectral.normalized_spectral_shift, 0.25, rtol=1e-9)
    assert row.changed == w.numel()


def test_orthogonal_perturbation_of_known_norm(tmp_path, backend):
    w = torch.randn(1000, dtype=torch.float64)
    e = torch.randn(1000, dtype=torch.float64)
    e -= (e @ w) / (w @ w) * w
    e *= 0.3 / e.norm()
    row = _one(tmp_path, w, w + e, spectral=False)
    n0 = w.norm().item()
    assert_allclose(row.l2_distance, 0.3, rtol=1e-12)
    assert_allclose(row.cosine_similarity, n0 / math.sqrt(n0**2 + 0.09), rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_matches_float64_reference_when_nearly_identical(tmp_path, backend, dtype):
    torch.manual_seed(0)
    a = torch.randn(3_000_017).to(dtype)  # > 2 chunks, odd length
    b = (a.double() + 1e-4 * torch.randn(a.numel(), dtype=torch.float64)).to(dtype)
    row = _one(tmp_path, a, b, spectral=False, threads=2)
    ref = reference(a, b)
    assert_allclose([getattr(row, k) for k in SUMS], [ref[k] for k in SUMS], rtol=1e-10)
    assert row.changed == ref["changed"]
    assert_allclose(row.l2_distance, math.sqrt(ref["sum_sq_delta"]), rtol=1e-10)


def test_update_cosine_between_consecutive_steps(tmp_path, backend):
    torch.manual_seed(1)
    t0 = torch.randn(10_000, dtype=torch.float64)
    u1, u2 = 1e-3 * torch.randn(10_000, dtype=torch.float64), 1e-3 * torch.randn(10_000, dtype=torch.float64)
    u2 = 0.6 * u1 + u2  # correlated consecutive updates
    f = [save(tmp_path / f"{i}.safetensors", {"w": t}) for i, t in enumerate([t0, t0 + u1, t0 + u1 + u2])]
    (row,) = tensor_rows(f[0], f[2], previous=f[1], before_previous=f[0], spectral=False)
    step, prev = u2.numpy(), u1.numpy()
    assert_allclose(row.sum_sq_step, step @ step, rtol=1e-9)
    assert_allclose(
        row.update_cosine_similarity, step @ prev / np.linalg.norm(step) / np.linalg.norm(prev), rtol=1e-9
    )
    (only_prev,) = tensor_rows(f[0], f[2], previous=f[1], spectral=False)
    assert only_prev.sum_sq_step == row.sum_sq_step and only_prev.update_cosine_similarity is None


def test_changed_share_is_reported_per_dtype(tmp_path):
    torch.manual_seed(2)
    a16, a32 = torch.randn(4096).to(torch.bfloat16), torch.randn(4096)
    b16 = (a16.float() * (1 + 1e-5)).to(torch.bfloat16)  # below bf16 resolution: nothing changes
    rows = tensor_rows(
        *_pair(tmp_path, {"x": a16, "y": a32}, {"x": b16, "y": a32 * (1 + 1e-5)}), spectral=False
    )
    by_dtype = aggregate(rows).overall.changed_ratio_by_dtype
    assert by_dtype == {"bfloat16": 0.0, "float32": 1.0}


def test_nan_and_inf_are_counted_not_fatal(tmp_path, backend):
    a = torch.randn(40, 30)
    b = a + 0.01
    b[0, 0], b[1, 1], b[2, 2] = float("nan"), float("inf"), -float("inf")
    row = _one(tmp_path, a, b)
    assert (row.nan_count, row.inf_count) == (1, 2)
    keep = torch.isfinite(b)
    ref = reference(a[keep], b[keep])
    assert_allclose([getattr(row, k) for k in SUMS], [ref[k] for k in SUMS], rtol=1e-9)
    assert row.spectral_status == "nonfinite"
    assert aggregate([row]).nonfinite_tensors == ("w",)


def test_missing_extra_and_mismatched_tensors_are_reported(tmp_path):
    base = {"keep": torch.ones(3), "gone": torch.ones(2), "resized": torch.ones(4, 4), "cast": torch.ones(5)}
    ckpt = {
        "keep": torch.ones(3),
        "new": torch.ones(2),
        "resized": torch.ones(4, 5),
        "cast": torch.ones(5, dtype=torch.bfloat16),
    }
    rows = {r.name: r for r in tensor_rows(*_pair(tmp_path, base, ckpt))}
    assert {n: r.status for n, r in rows.items()} == {
        "keep": "ok",
        "gone": "missing",
        "resized": "shape_mismatch",
        "cast": "ok",
        "new": "extra",
    }
    s = aggregate(rows.values())
    assert (s.n_missing, s.missing, s.n_extra, s.extra) == (1, ("gone",), 1, ("new",))
    assert s.shape_mismatch == ("resized: [4, 4] -> [4, 5]",) and s.dtype_changed == (
        "cast: float32 -> bfloat16",
    )
    assert s.overall.n_tensors == 2 and rows["cast"].changed == 0


def test_tiny_gpt2_blocks_modules_and_tied_weights():
    tiny = tiny_gpt2()
    report = compare(tiny.base, tiny.steps[0], spectral_options=SpectralOptions(k=8))
    s = report.summary
    assert set(s.blocks) == {0, 1} and s.overall.numel == tiny.n_params
    assert set(s.modules) == {"attention", "embedding", "mlp", "norm"}
    assert s.blocks[0].n_tensors == 12 and s.n_missing == s.n_extra == 0
    names = {r.name for r in report.rows}
    assert "transformer.h.1.mlp.c_fc.weight" in names and "lm_head.weight" not in names
    assert 0 < s.overall.relative_l2_distance < 1 and s.overall.n_spectral > 0
    json.dumps(dataclasses.asdict(s))  # serializable as is
    # the same weights saved by torch.save, where lm_head shares wte's storage: counted once
    binary = compare(tiny.base_bin, tiny.step_bin, spectral=False).summary
    assert binary.aliases == ("lm_head.weight -> transformer.wte.weight",)
    assert binary.overall.numel == tiny.n_params


def test_rows_split_by_shard_aggregate_like_a_single_pass():
    tiny = tiny_gpt2()
    kw = {
        "previous": tiny.steps[1],
        "before_previous": tiny.steps[0],
        "spectral_options": SpectralOptions(k=8),
    }
    single = aggregate(tensor_rows(tiny.base, tiny.steps[2], **kw))
    groups = shard_groups(tiny.base, tiny.steps[2])
    assert len(groups) > 2 and sorted(chain.from_iterable(groups)) == sorted(
        i.name for i in list_tensors(tiny.base)
    )
    halves = [groups[: len(groups) // 2], groups[len(groups) // 2 :]]
    rows = [
        tensor_rows(tiny.base, tiny.steps[2], names=chain.from_iterable(h), threads=1, **kw) for h in halves
    ]
    assert aggregate(rows[1] + rows[0]) == single
    assert single.overall.update_cosine_similarity is not None


def test_unknown_names_raise_and_progress_is_reported(tmp_path):
    base, ckpt = _pair(
        tmp_path, {"a": torch.ones(2), "b": torch.ones(2)}, {"a": torch.ones(2), "b": torch.ones(2)}
    )
    with pytest.raises(ValueError, match="zzz"):
        tensor_rows(base, ckpt, names=["a", "zzz"])
    seen = []
    tensor_rows(base, ckpt, progress=lambda done, total, name: seen.append((done, total, name)))
    assert seen == [(1, 2, "a"), (2, 2, "b")]


def test_spectral_size_cap_skips_and_reports(tmp_path):
    w = torch.randn(30, 20)
    row = _one(tmp_path, w, w + 1, spectral_options=SpectralOptions(max_elements=100))
    assert row.spectral_status == "skipped_size" and row.spectral is None
    assert aggregate([row]).spectral_skipped == ("w (skipped_size)",)


def test_block_and_module_patterns():
    assert block_index("model.layers.12.self_attn.q_proj.weight") == 12
    assert block_index("gpt_neox.layers.3.mlp.dense_h_to_4h.weight") == 3
    assert block_index("model.decoder.layers.7.fc1.weight") == 7
    assert block_index("transformer.wte.weight") is None
    assert block_index("enc.stage5.w", [r"stage(\d+)\."]) == 5
    kinds = {
        n: module_kind(n)
        for n in [
            "model.layers.0.post_attention_layernorm.weight",
            "model.layers.0.self_attn.o_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
            "gpt_neox.embed_in.weight",
            "embed_out.weight",
            "lm_head.weight",
            "model.decoder.layers.0.fc2.bias",
            "transformer.h.0.ln_2.bias",
            "rotary.inv_freq",
        ]
    }
    assert list(kinds.values()) == [
        "norm",
        "attention",
        "mlp",
        "embedding",
        "head",
        "head",
        "mlp",
        "norm",
        "other",
    ]


def test_importing_drift_params_pulls_in_no_service_stack():
    code = (
        "import sys, drift.params; bad = [m for m in ('fastapi', 'sqlalchemy', 'procrastinate', "
        "'prometheus_client', 'alembic', 'psycopg', 'service') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_prepared_base_leaves_the_checkpoint_only_its_own_half(tmp_path, monkeypatch):
    from drift import spectral
    from drift.params import prepare_spectral_base

    gen = torch.Generator().manual_seed(3)
    base = {"big": torch.randn(600, 500, generator=gen), "small": torch.randn(20, 10, generator=gen),
            "bias": torch.randn(500, generator=gen), "bad": torch.full((30, 30), float("nan"))}
    ckpt = {name: w + 0.01 * torch.randn(w.shape, generator=gen) for name, w in base.items()}
    files = _pair(tmp_path, base, ckpt)
    options = SpectralOptions(k=8, max_elements=250_000)  # "big" (300 000 elements) is skipped by size
    cold = tensor_rows(*files, spectral_options=options, cache_dir=tmp_path / "cold", threads=1)
    calls = []
    real = spectral._top_k
    monkeypatch.setattr(spectral, "_top_k", lambda *a, **kw: calls.append(a[0].shape2d) or real(*a, **kw))
    assert prepare_spectral_base(files[0], options=options, cache_dir=tmp_path / "warm") == 1  # "small" only
    assert prepare_spectral_base(files[0], options=options, cache_dir=tmp_path / "warm") == 0  # cached
    assert calls == [(20, 10)]
    warm = tensor_rows(*files, spectral_options=options, cache_dir=tmp_path / "warm", threads=1)
    assert calls == [(20, 10), (20, 10)]  # the checkpoint's own top-k only
    assert warm == cold
    assert {r.name: r.spectral_status for r in warm} == {"big": "skipped_size", "bad": "nonfinite", "small": "ok",
                                                        "bias": "not_matrix"}


def test_the_base_preparation_splits_into_parts_by_name(tmp_path):
    from drift.params import prepare_spectral_base, spectral_base_groups

    gen = torch.Generator().manual_seed(4)
    base = {f"w{i}": torch.randn(30, 20, generator=gen) for i in range(3)}
    base["bias"] = torch.randn(20, generator=gen)
    files = _pair(tmp_path, base, base)
    options = SpectralOptions(k=4)
    [group] = spectral_base_groups(files[0], options=options)
    assert sorted(info.name for info in group) == ["w0", "w1", "w2"]  # matrices only
    cache = tmp_path / "cache"
    assert prepare_spectral_base(files[0], options=options, cache_dir=cache, names=["w1"]) == 1
    assert prepare_spectral_base(files[0], options=options, cache_dir=cache, names=["w0", "w1", "w2"]) == 2
    assert prepare_spectral_base(files[0], options=options, cache_dir=cache) == 0  # all parts done
