"""Small real checkpoints for the parameter-drift tests, built once per test process."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


@dataclass(frozen=True)
class TinyGPT2:
    base: Path  # sharded safetensors folder
    steps: tuple[Path, ...]  # after 1, 2, 3 optimizer steps (sharded safetensors)
    base_bin: Path  # torch.save(state_dict) folder: lm_head shares storage with wte
    step_bin: Path
    n_params: int  # unique parameters (tied weights once)


def _config():
    from transformers import GPT2Config

    return GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0
    )


@functools.cache
def tiny_gpt2() -> TinyGPT2:
    from transformers import GPT2LMHeadModel

    root = Path(tempfile.mkdtemp(prefix="fw-drift-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(_config())
    model.save_pretrained(root / "base", max_shard_size="20KB")
    (root / "base_bin").mkdir()
    torch.save(model.state_dict(), root / "base_bin" / "pytorch_model.bin")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    steps = []
    for i in range(3):
        ids = torch.randint(0, 64, (4, 16))
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        model.save_pretrained(root / f"step{i + 1}", max_shard_size="20KB")
        steps.append(root / f"step{i + 1}")
    (root / "step_bin").mkdir()
    torch.save(model.state_dict(), root / "step_bin" / "pytorch_model.bin")
    n_params = sum(p.numel() for p in model.parameters())
    return TinyGPT2(root / "base", tuple(steps), root / "base_bin", root / "step_bin", n_params)


def save(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def reference(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Float64 reference for one tensor pair."""
    x, y = a.double().numpy().ravel(), b.double().numpy().ravel()
    d = y - x
    return {
        "sum_sq_delta": float(d @ d),
        "sum_sq_base": float(x @ x),
        "sum_sq": float(y @ y),
        "dot_base": float(x @ y),
        "changed": int(np.count_nonzero(d)),
    }
