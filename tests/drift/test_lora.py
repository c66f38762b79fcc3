import functools
import json

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from drift.checkpoint_io import CheckpointError
from drift.lora import LowRankDelta, lowrank_inner
from drift.params import tensor_rows
from drift.spectral import SpectralOptions
from tests.drift._models import tiny_gpt2

pytest.importorskip("peft")
FIELDS = ("sum_sq_delta", "sum_sq_base", "sum_sq", "dot_base", "l2_distance", "cosine_similarity")
SPECTRAL = SpectralOptions(k=8, alpha=0.05)


@functools.cache
def adapters():
    """Two LoRA adapters on the tiny GPT-2 (c_attn, fan_in_fan_out; wte; ln_f saved in full) and their
    merged models. The second continues from the first."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2LMHeadModel

    tiny = tiny_gpt2()
    root = tiny.base.parent
    out = []
    torch.manual_seed(3)
    lora_state = None
    for i in range(2):
        model = GPT2LMHeadModel.from_pretrained(tiny.base)
        config = LoraConfig(
            r=4, lora_alpha=8, target_modules=["c_attn", "wte"], fan_in_fan_out=True, modules_to_save=["ln_f"]
        )
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            params = dict(peft_model.named_parameters())
            if lora_state is not None:
                for name, p in params.items():
                    p.copy_(lora_state[name])
            for name, p in params.items():
                if "lora_" in name:
                    p.add_(0.05 * torch.randn_like(p))
                elif "modules_to_save" in name and name.endswith("weight"):
                    p.add_(0.01)
            lora_state = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
        peft_model.save_pretrained(root / f"adapter{i}")
        peft_model.merge_and_unload().save_pretrained(root / f"merged{i}")
        out.append((root / f"adapter{i}", root / f"merged{i}"))
    return out


def _rows(base, ckpt, **kw):
    return {r.name: r for r in tensor_rows(base, ckpt, spectral_options=SPECTRAL, **kw)}


def test_algebraic_lora_rows_equal_the_dense_merged_model():
    base = tiny_gpt2().base
    (adapter, merged), _ = adapters()
    lora, dense = _rows(base, adapter), _rows(base, merged)
    assert lora.keys() == dense.keys()
    assert {n for n, r in lora.items() if r.lora} == {
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.1.attn.c_attn.weight",
        "transformer.wte.weight",
    }
    for name, row in lora.items():
        ref = dense[name]
        assert_allclose(
            [getattr(row, f) or 0.0 for f in FIELDS],
            [getattr(ref, f) or 0.0 for f in FIELDS],
            rtol=1e-5,
            atol=1e-12,
            err_msg=name,
        )
        assert row.changed == ref.changed, name
        if row.spectral is not None:
            assert_allclose(
                row.spectral.normalized_spectral_shift, ref.spectral.normalized_spectral_shift, rtol=1e-5
            )
            assert_allclose(
                row.spectral.max_principal_angle_deg,
                ref.spectral.max_principal_angle_deg,
                rtol=1e-4,
                atol=1e-6,
            )
    assert lora["transformer.ln_f.weight"].changed == 32  # saved in full (modules_to_save)
    assert lora["transformer.h.0.mlp.c_fc.weight"].l2_distance == 0.0
    assert lora["transformer.wte.weight"].l2_distance > 0  # the embedding LoRA is applied (B A)ᵀ


def test_lora_after_lora_update_cosine_equals_dense():
    base = tiny_gpt2().base
    (a0, m0), (a1, m1) = adapters()
    lora = _rows(base, a1, previous=a0, before_previous=base, spectral=False)
    dense = _rows(base, m1, previous=m0, before_previous=base, spectral=False)
    for name in ("transformer.h.0.attn.c_attn.weight", "transformer.wte.weight"):
        for f in ("sum_sq_step", "sum_sq_prev_step", "dot_steps", "update_cosine_similarity"):
            assert_allclose(getattr(lora[name], f), getattr(dense[name], f), rtol=1e-5, err_msg=f"{name} {f}")


def test_lowrank_inner_matches_dense():
    rng = np.random.default_rng(0)
    d1 = LowRankDelta("a", rng.standard_normal((30, 3)), rng.standard_normal((20, 3)), 0.5)
    d2 = LowRankDelta("b", rng.standard_normal((30, 5)), rng.standard_normal((20, 5)), 2.0)
    dense1, dense2 = d1.rows(0, 30), d2.rows(0, 30)
    assert_allclose(lowrank_inner(d1, d2), (dense1 * dense2).sum(), rtol=1e-12)
    assert_allclose(lowrank_inner(d1, d1), (dense1**2).sum(), rtol=1e-12)


def test_dora_adapters_are_refused(tmp_path):
    (adapter, _), _ = adapters()
    folder = tmp_path / "dora"
    folder.mkdir()
    config = json.loads((adapter / "adapter_config.json").read_text()) | {"use_dora": True}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="DoRA"):
        tensor_rows(tiny_gpt2().base, folder)


def test_lora_as_base_is_rejected():
    (adapter, _), _ = adapters()
    with pytest.raises(ValueError, match="base must be a full model"):
        tensor_rows(adapter, tiny_gpt2().base)
