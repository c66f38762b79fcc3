"""Per-checkpoint probe pass: forgetwatch's cached-top-k pass against the straightforward one.

    python -m bench.probe_kl [--probes 256] [--vocab 16384]

Model: a GPT-2 (4 layers, 256 wide, 16k vocabulary) built from a config. Training one from
scratch is too slow for 2 CPU cores, so its embeddings are set to make it a peaked bigram-like
language model (each token favours 16 successors with a Zipf profile of random steepness, over a
Gaussian bulk of the whole vocabulary): base entropy ~1.2 nats/token on its own samples and a
mean base mass of ~0.1 outside the top 64, a harder tail than a trained LM's. The checkpoint is
the base after three Adam steps (lr 1e-4) on text from a different chain. Probes: 256 texts
drawn from the chain the base follows, 32-token prompts with 64-token references.

Timed, same batches, best of three interleaved rounds:
- forgetwatch: ``probe_divergence`` (checkpoint forward on the needed positions, statistics from
  the cached base top-k + tail samples);
- naive: base and checkpoint forward passes with full-vocabulary log-softmax, exact statistics.
The error of the cached estimate is measured against exact float64 full-vocabulary values,
per probe (mean over completion tokens, what forgetwatch reports) and per token.
Last line: ``probe_kl speedup_vs_naive=X.XX tokens_per_s=N topk_kl_max_abs_err=E`` where
tokens are scored completion tokens and the error is the per-probe forward-KL maximum.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from drift.base_cache import build_base_cache
from drift.divergence import exact_token_divergences, probe_divergence, topk_token_divergences
from drift.probes import ProbeItem, ProbeSet

PROMPT, COMPLETION, BATCH = 32, 64, 16


def make_tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<eos>": 1} | {f"w{i}": i for i in range(2, vocab)}
    tk = Tokenizer(models.WordLevel(vocab=words, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<pad>", pad_token="<pad>", eos_token="<eos>"
    )


def make_chain(out_dirs: torch.Tensor, gen: torch.Generator, n_succ: int = 16):
    """A successor chain over tokens 2.. and token embeddings pointing at a Zipf mix of each
    token's successors' output directions; returns (embeddings, successors, weights)."""
    vocab = out_dirs.shape[0]
    succ = torch.randint(2, vocab, (vocab, n_succ), generator=gen)
    steepness = 0.5 + 2.5 * torch.rand(vocab, 1, generator=gen)
    weights = torch.arange(1, n_succ + 1).float()[None, :] ** (-steepness)  # (vocab, n_succ)
    emb = (weights[..., None] * out_dirs[succ]).sum(1)  # (vocab, d)
    return 4 * emb / emb.norm(dim=1, keepdim=True), succ, weights


def sample_chain(chain, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """Token sequences drawn from the chain the model was built to follow."""
    _, succ, weights = chain
    ids = torch.empty((n, length), dtype=torch.long)
    ids[:, 0] = torch.randint(2, succ.shape[0], (n,), generator=gen)
    for t in range(1, length):
        pick = torch.multinomial(weights[ids[:, t - 1]], 1, generator=gen).squeeze(1)
        ids[:, t] = succ[ids[:, t - 1], pick]
    return ids


def build_models(vocab: int, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    cfg = GPT2Config(
        n_layer=4,
        n_embd=256,
        n_head=4,
        vocab_size=vocab,
        n_positions=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    base = GPT2LMHeadModel(cfg)
    out_dirs = torch.randn(vocab, cfg.n_embd, generator=gen)
    out_dirs /= out_dirs.norm(dim=1, keepdim=True)
    chain, new_task = make_chain(out_dirs, gen), make_chain(out_dirs, gen)
    with torch.no_grad():
        base.transformer.wte.weight.copy_(chain[0])
        base.lm_head.weight.copy_(out_dirs)
        base.transformer.wpe.weight.mul_(0.2)
    return base.eval(), chain, new_task


def fine_tune(base, data: torch.Tensor, *, steps: int = 3, lr: float = 1e-4):
    ckpt = copy.deepcopy(base).train()
    opt = torch.optim.Adam(ckpt.parameters(), lr=lr)
    for _ in range(steps):
        loss = ckpt(input_ids=data, labels=data).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ckpt.eval()


@torch.no_grad()
def naive_pass(base, ckpt, ids: torch.Tensor) -> dict[str, np.ndarray]:
    """Two full forward passes and full-vocabulary float32 statistics; per-probe means."""
    span = slice(PROMPT - 1, PROMPT + COMPLETION - 1)
    out = {name: [] for name in ("forward_kl", "reverse_kl", "total_variation", "entropy", "top1_agreement")}
    for i in range(0, len(ids), BATCH):
        batch = ids[i : i + BATCH]
        a = base(batch).logits[:, span].float().log_softmax(-1)  # (batch, completion, vocab)
        b = ckpt(batch).logits[:, span].float().log_softmax(-1)
        p0, p = a.exp(), b.exp()
        out["forward_kl"].append((p0 * (a - b)).sum(-1).mean(1))
        out["reverse_kl"].append((p * (b - a)).sum(-1).mean(1))
        out["total_variation"].append(0.5 * (p0 - p).abs().sum(-1).mean(1))
        out["entropy"].append(-(p * b).sum(-1).mean(1))
        out["top1_agreement"].append((a.argmax(-1) == b.argmax(-1)).float().mean(1))
    return {name: torch.cat(v).numpy() for name, v in out.items()}


@torch.no_grad()
def token_errors(base, ckpt, ids: torch.Tensor, cache) -> dict[str, float]:
    """Exact float64 per-token values against the cached estimates, with and without tail samples."""
    span = slice(PROMPT - 1, PROMPT + COMPLETION - 1)
    err = {"sampled_token": 0.0, "bound_token": 0.0}
    sampled_probe, bound_probe, exact_probe = [], [], []
    for i in range(0, len(ids), BATCH):
        batch = ids[i : i + BATCH]
        a = base(batch).logits[:, span].float().log_softmax(-1).flatten(0, 1)
        b = ckpt(batch).logits[:, span].float().log_softmax(-1).flatten(0, 1)
        rows = slice(i * COMPLETION, (i + len(batch)) * COMPLETION)
        exact = exact_token_divergences(a, b).forward_kl
        cached = {
            "topk_logprobs": cache.topk_logprobs[rows],
            "topk_indices": cache.topk_indices[rows],
            "tail_logmass": cache.tail_logmass[rows],
        }
        sampled = topk_token_divergences(
            b, **cached, tail_indices=cache.tail_indices[rows], tail_logprobs=cache.tail_logprobs[rows]
        ).forward_kl
        bound = topk_token_divergences(b, **cached).forward_kl
        err["sampled_token"] = max(err["sampled_token"], (sampled - exact).abs().max().item())
        err["bound_token"] = max(err["bound_token"], (bound - exact).abs().max().item())
        for store, values in ((exact_probe, exact), (sampled_probe, sampled), (bound_probe, bound)):
            store.append(values.view(len(batch), COMPLETION).mean(1))
    exact_probe = torch.cat(exact_probe)
    err["sampled_probe"] = (torch.cat(sampled_probe) - exact_probe).abs().max().item()
    err["bound_probe"] = (torch.cat(bound_probe) - exact_probe).abs().max().item()
    err["kl_mean"], err["kl_probe_max"] = exact_probe.mean().item(), exact_probe.max().item()
    return err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probes", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=16384)
    args = parser.parse_args()

    base, chain, new_task = build_models(args.vocab)
    gen = torch.Generator().manual_seed(2)
    ids = sample_chain(chain, args.probes, PROMPT + COMPLETION, gen)
    ckpt = fine_tune(base, sample_chain(new_task, 8, 64, gen))
    tok = make_tokenizer(args.vocab)

    def text(row):
        return " ".join(f"w{t}" for t in row)

    rows = ids.tolist()
    probes = ProbeSet(
        "bench", "ood", tuple(ProbeItem(text(r[:PROMPT]), reference=" " + text(r[PROMPT:])) for r in rows)
    )
    t0 = time.perf_counter()
    cache = build_base_cache(base, tok, probes, k=64, tail_samples=16, batch_size=BATCH)
    build_s = time.perf_counter() - t0
    assert cache.input_ids.tolist() == ids.flatten().tolist(), "tokenizer round trip changed the probes"
    print(
        f"probes={args.probes} vocab={args.vocab} completion_tokens={cache.n_tokens} "
        f"base_tail_mass_mean={cache.tail_logmass.double().exp().mean():.3f} cache_build_s={build_s:.1f} "
        f"cache_bytes={len(cache.to_bytes())}",
        flush=True,
    )

    probe_divergence(ckpt, cache, batch_size=BATCH)  # warm-up
    fast_s, naive_s = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        result = probe_divergence(ckpt, cache, batch_size=BATCH)
        fast_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        naive = naive_pass(base, ckpt, ids)
        naive_s.append(time.perf_counter() - t0)
        print(f"round forgetwatch_s={fast_s[-1]:.2f} naive_s={naive_s[-1]:.2f}", flush=True)
    fast, slow = min(fast_s), min(naive_s)

    for name in ("entropy", "top1_agreement"):
        values = np.array([getattr(p, name) for p in result.per_probe])
        print(f"{name}: max |forgetwatch - naive| per probe = {np.abs(values - naive[name]).max():.2e}")
    err = token_errors(base, ckpt, ids, cache)
    print(f"forward KL exact: mean {err['kl_mean']:.2e}, per-probe max {err['kl_probe_max']:.2e} nats")
    print(
        f"forward KL max abs error, k=64 + 16 tail samples: per probe {err['sampled_probe']:.2e}, "
        f"per token {err['sampled_token']:.2e}"
    )
    print(
        f"forward KL max abs error, k=64 lower bound (no samples): per probe {err['bound_probe']:.2e}, "
        f"per token {err['bound_token']:.2e}"
    )
    print(
        f"probe_kl speedup_vs_naive={slow / fast:.2f} tokens_per_s={cache.n_tokens / fast:.0f} "
        f"topk_kl_max_abs_err={err['sampled_probe']:.2e}"
    )


if __name__ == "__main__":
    main()
