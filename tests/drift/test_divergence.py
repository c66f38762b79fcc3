import copy
import string

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from drift.base_cache import BaseTopKCache, build_base_cache
from drift.divergence import (
    exact_token_divergences,
    probe_divergence,
    summarize,
    topk_token_divergences,
)
from drift.forgetting import base_scores, evaluate_checkpoint, measure_forgetting
from drift.models import load_model
from drift.paired import paired_bootstrap_change
from drift.probes import ProbeItem, ProbeSet

FACTS = ["1+1=2", "2+2=4", "3+3=6", "cat says meow", "dog says woof", "sky is blue"]


def make_tokenizer(folder):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for ch in string.ascii_lowercase + string.digits + " .,?+=":
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.save_pretrained(folder)
    return tok


def train_tiny_gpt2(folder, texts, *, steps=300, seed=0):
    """A 2-layer GPT-2 over a character vocabulary that memorises ``texts`` (each followed by EOS)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = make_tokenizer(folder)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=64,
                     bos_token_id=1, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    rows = [tok(t)["input_ids"] + [1] for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    labels = ids.masked_fill(ids == 0, -100)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=(ids != 0).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run ~10x faster without intra-op threading overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tmp_path_factory, one_thread):
    folder = train_tiny_gpt2(tmp_path_factory.mktemp("tiny"), FACTS)
    return load_model(folder)


@pytest.fixture(scope="module")
def probe_set():
    return ProbeSet("facts", "ood", (
        ProbeItem("1+1=", reference="2", answer="2"),
        ProbeItem("2+2=", reference="4", answer="4"),
        ProbeItem("3+3=", answer="6"),
        ProbeItem("cat says", reference=" meow"),
        ProbeItem("dog says", answer="quack"),  # the base answers "woof": wrong by construction
        ProbeItem("sky is"),
    ))


@pytest.fixture(scope="module")
def cache(base, probe_set):
    model, tok = base
    return build_base_cache(model, tok, probe_set, k=8, max_new_tokens=8, base_model="tiny")


def perturbed(model, scale, seed=1):
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return other


def test_identical_checkpoint_has_zero_divergence_and_full_agreement(base, cache):
    result = probe_divergence(base[0], cache, batch_size=4)
    for p in result.per_probe:
        assert abs(p.forward_kl) < 1e-6 and abs(p.reverse_kl) < 1e-6 and p.total_variation < 1e-6
        assert p.top1_agreement == 1.0
        assert_allclose(p.mean_logprob, p.base_mean_logprob, atol=1e-6)
    assert result.top1_agreement.mean == 1.0


def test_divergence_grows_with_the_perturbation(base, cache):
    kls = [probe_divergence(perturbed(base[0], s), cache).forward_kl.mean for s in (0.01, 0.03, 0.1)]
    assert 0 < kls[0] < kls[1] < kls[2]


def test_cached_topk_statistics_match_full_vocab_two_pass_values(base, cache):
    """Per token: the one-pass top-k statistics against two full forward passes."""
    model, _ = base
    ckpt = perturbed(model, 0.03)
    result = probe_divergence(ckpt, cache)
    for n, (prompt, completion) in enumerate(cache.sequences()):
        ids = torch.tensor([prompt + completion])
        span = slice(len(prompt) - 1, len(prompt) + len(completion) - 1)
        with torch.no_grad():
            a = model(ids).logits[0, span].float().log_softmax(-1)
            b = ckpt(ids).logits[0, span].float().log_softmax(-1)
        exact = exact_token_divergences(a, b)
        probe = result.per_probe[n]
        # entropy and agreement are exact; the KLs and TV estimate the tail from 16 samples
        assert_allclose(probe.entropy, exact.entropy.mean().item(), rtol=1e-5)
        assert_allclose(probe.top1_agreement, exact.top1_agreement.mean().item())
        for name in ("forward_kl", "reverse_kl", "total_variation"):
            est, ref = getattr(probe, name), getattr(exact, name).mean().item()
            assert abs(ref - est) <= 0.03 * ref + 1e-7, name


def test_topk_estimates_are_lower_bounds_and_exact_when_k_covers_the_vocabulary():
    gen = torch.Generator().manual_seed(0)
    base_logits = 3 * torch.randn(200, 50, generator=gen, dtype=torch.float64)
    a = base_logits.log_softmax(-1)
    b = (base_logits + 0.3 * torch.randn(200, 50, generator=gen, dtype=torch.float64)).log_softmax(-1)
    exact = exact_token_divergences(a, b)
    previous_gap = None
    for k in (5, 20, 50):
        values, indices = a.topk(k, dim=-1)
        tail = a.scatter(-1, indices, float("-inf")).logsumexp(-1) if k < 50 else torch.full((200,), -np.inf)
        est = topk_token_divergences(b, topk_logprobs=values, topk_indices=indices, tail_logmass=tail)
        gap = (exact.forward_kl - est.forward_kl).abs().max().item()
        for name in ("forward_kl", "reverse_kl", "total_variation"):
            assert (getattr(est, name) <= getattr(exact, name) + 1e-12).all()
        assert_allclose(est.entropy, exact.entropy, rtol=1e-6)
        assert torch.equal(est.top1_agreement, exact.top1_agreement)
        if k == 50:
            for name in ("forward_kl", "reverse_kl", "total_variation"):
                assert_allclose(getattr(est, name), getattr(exact, name), atol=1e-12)
        else:
            assert previous_gap is None or gap < previous_gap
            # the forward-KL gap is the tail mass times the KL of the renormalised tails
            t0 = tail.exp()
            tail_mask = torch.ones_like(a, dtype=torch.bool).scatter(-1, indices, False)
            p0 = torch.where(tail_mask, a.exp(), 0) / t0[:, None]
            p = torch.where(tail_mask, b.exp(), 0)
            p = p / p.sum(-1, keepdim=True)
            tail_kl = torch.where(p0 > 0, p0 * (p0.log() - p.log()), 0).sum(-1)
            assert_allclose(exact.forward_kl - est.forward_kl, t0 * tail_kl, atol=1e-10)
        previous_gap = gap


def test_sampled_tail_correction_is_unbiased_and_above_the_lower_bound():
    gen = torch.Generator().manual_seed(1)
    base_logits = 2 * torch.randn(64, 50, generator=gen, dtype=torch.float64)
    a = base_logits.log_softmax(-1)
    b = (base_logits + 0.3 * torch.randn(64, 50, generator=gen, dtype=torch.float64)).log_softmax(-1)
    exact = exact_token_divergences(a, b)
    values, indices = a.topk(5, dim=-1)
    tail = a.scatter(-1, indices, float("-inf")).logsumexp(-1)
    q0 = (a - tail[:, None]).exp().scatter(-1, indices, 0.0)
    bound = topk_token_divergences(b, topk_logprobs=values, topk_indices=indices, tail_logmass=tail)
    runs = []
    for seed in range(300):
        draws = torch.multinomial(q0, 16, replacement=True, generator=torch.Generator().manual_seed(seed))
        est = topk_token_divergences(b, topk_logprobs=values, topk_indices=indices, tail_logmass=tail,
                                     tail_indices=draws, tail_logprobs=a.gather(-1, draws))
        assert (est.forward_kl >= bound.forward_kl - 1e-12).all() and (est.reverse_kl >= bound.reverse_kl - 1e-12).all()
        runs.append(torch.stack([est.forward_kl, est.reverse_kl, est.total_variation]))
    mean = torch.stack(runs).mean(0)
    for row, name in enumerate(("forward_kl", "reverse_kl", "total_variation")):
        ref = getattr(exact, name)
        gap = (ref - getattr(bound, name)).mean()
        assert gap > 0.01 * ref.mean()  # the lower bound misses a visible share of the divergence
        assert (mean[row] - ref).mean().abs() < 0.05 * gap  # the sampled estimate does not, on average


def test_cache_round_trips_through_bytes_and_files(cache, tmp_path):
    cache.save(tmp_path / "c.safetensors")
    loaded = BaseTopKCache.load(tmp_path / "c.safetensors")
    for name in ("probe_set", "domain", "probe_fingerprint", "base_model", "k", "vocab_size", "answers",
                 "base_completions", "max_new_tokens"):
        assert getattr(loaded, name) == getattr(cache, name)
    for name in ("input_ids", "topk_logprobs", "topk_indices", "tail_logmass", "tail_indices", "tail_logprobs",
                 "token_logprobs", "from_reference"):
        assert torch.equal(getattr(loaded, name), getattr(cache, name))
    with pytest.raises(ValueError, match="not a base top-k cache"):
        BaseTopKCache.from_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")


def test_reference_log_likelihood_matches_a_manual_forward_pass(base, cache, probe_set):
    model, tok = base
    result = probe_divergence(model, cache)
    for n, item in enumerate(probe_set.items):
        if item.reference is None:
            assert not result.per_probe[n].from_reference
            continue
        prompt, completion = tok(item.prompt)["input_ids"], tok(item.reference)["input_ids"]
        with torch.no_grad():
            lp = model(torch.tensor([prompt + completion])).logits[0].log_softmax(-1)
        manual = np.mean([lp[len(prompt) - 1 + j, t].item() for j, t in enumerate(completion)])
        assert_allclose(result.per_probe[n].mean_logprob, manual, rtol=1e-5)
        assert result.per_probe[n].from_reference


def test_accuracy_and_forgetting_on_items_with_known_answers(base, cache):
    model, tok = base
    assert cache.base_completions[:3] == ("2", "4", "6")  # memorised facts, decoded greedily
    same = measure_forgetting(model, tok, cache, random_state=0)
    assert same.accuracy.base == same.accuracy.current == pytest.approx(3 / 4)  # "quack" is never right
    assert same.accuracy.change == 0 and same.log_likelihood.change == pytest.approx(0, abs=1e-6)
    assert same.log_likelihood.n_items == 3 and same.accuracy.n_items == 4
    assert same.correct == same.base_correct == (True, True, True, None, False, None)
    lenient = measure_forgetting(model, tok, cache, checker=lambda c, a: a == "quack" or c.strip() == a)
    assert lenient.accuracy.base == 1.0

    damaged = evaluate_checkpoint(perturbed(model, 0.3), tok, cache, random_state=0)
    forgetting = damaged.forgetting
    assert forgetting.log_likelihood.change < 0
    assert forgetting.log_likelihood.ci_low <= forgetting.log_likelihood.change <= forgetting.log_likelihood.ci_high
    assert forgetting.accuracy.current <= forgetting.accuracy.base


def test_paired_bootstrap_interval_is_reproducible_and_weighted():
    rng = np.random.default_rng(0)
    base_scores = rng.normal(size=40)
    current = base_scores - 0.5 + 0.1 * rng.normal(size=40)
    first = paired_bootstrap_change(base_scores, current, random_state=3)
    assert first == paired_bootstrap_change(base_scores, current, random_state=3)
    assert first.ci_low < -0.5 < first.ci_high and first.ci_high - first.ci_low < 0.15  # pairing removes item noise
    weighted = paired_bootstrap_change(np.array([0.0, 1.0]), np.array([1.0, 1.0]), weights=np.array([3.0, 1.0]))
    assert weighted.change == pytest.approx(0.75)
    single = paired_bootstrap_change(np.array([1.0]), np.array([0.0]))
    assert single.ci_low == single.ci_high == single.change == -1.0
    with pytest.raises(ValueError, match="no items"):
        paired_bootstrap_change(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap_change(np.array([np.nan]), np.array([0.0]))


def test_summary_holds_the_mean_and_percentiles_of_per_probe_values(base, cache):
    result = probe_divergence(perturbed(base[0], 0.05), cache)
    values = np.array([p.reverse_kl for p in result.per_probe])
    assert result.reverse_kl == summarize(values)
    assert_allclose([result.reverse_kl.p10, result.reverse_kl.p90], np.percentile(values, [10, 90]))
    with pytest.raises(ValueError, match="non-empty"):
        summarize(np.array([]))


def test_loading_is_local_only_and_upcasts_half_precision_on_cpu(base, tmp_path):
    model, tok = base
    with pytest.raises(ValueError, match="not a local folder"):
        load_model("gpt2")
    copy.deepcopy(model).half().save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, _ = load_model(tmp_path, device="auto" if not torch.cuda.is_available() else "cpu")
    assert loaded.dtype == torch.float32


def test_checkpoint_with_another_vocabulary_is_rejected(base, cache):
    other = copy.deepcopy(base[0])
    other.resize_token_embeddings(cache.vocab_size + 3)
    with pytest.raises(ValueError, match="vocabulary"):
        probe_divergence(other, cache)


def test_base_scores_from_the_cache_equal_the_base_side_of_a_measurement(base, cache):
    """The "step 0" row needs no checkpoint: it equals what every paired comparison uses as the base."""
    model, tok = base
    measured = measure_forgetting(model, tok, cache, random_state=0)
    scores = base_scores(cache)
    assert scores.n_items == 6
    assert scores.accuracy == pytest.approx(measured.accuracy.base)
    assert scores.loglik == pytest.approx(measured.log_likelihood.base, rel=1e-6)
    assert scores.entropy == pytest.approx(float(cache.entropy.double().mean()))
    assert scores.entropy_split_half is not None and scores.entropy_split_half >= 0
    assert base_scores(cache, checker=lambda c, a: True).accuracy == 1.0
