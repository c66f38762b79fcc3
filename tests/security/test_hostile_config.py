"""A hostile config.json cannot make the probe worker allocate what it describes: the config is
checked against the weights the folder stores before transformers builds the model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from drift.checkpoint_io import CheckpointError
from drift.models import check_config_fits_weights
from service.queue.probe_work import load
from tests.integration.models import char_tokenizer, save_tiny_gpt2_run


@pytest.fixture
def model_folder(checkpoint_root: Path) -> Path:
    folder = save_tiny_gpt2_run(checkpoint_root, steps=0)[0]
    char_tokenizer().save_pretrained(folder)
    return folder


def _roots(root: Path) -> tuple[Path, ...]:
    return (Path(os.path.realpath(root)),)


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def test_an_honest_folder_loads(model_folder: Path, checkpoint_root: Path) -> None:
    check_config_fits_weights(model_folder, roots=_roots(checkpoint_root))
    model, _ = load(model_folder, model_folder, "cpu", _roots(checkpoint_root))
    assert model.config.vocab_size == 64


@pytest.mark.parametrize(("changes", "expected"), [
    ({"vocab_size": 10**11}, "describes"),  # ~3e12 parameters from a 100 kB folder
    ({"n_positions": 10**9}, "describes"),
    ({"n_embd": 2**20}, "describes|loadable"),
    ({"n_layer": 10**7}, "layer count"),
    ({"n_layer": 2.5}, "layer count"),
    ({"model_type": "no-such-model"}, "loadable causal LM"),
], ids=["vocab", "positions", "width", "layers", "float-layers", "unknown-type"])
def test_a_config_that_does_not_fit_the_weights_is_refused_before_loading(
        model_folder: Path, checkpoint_root: Path, changes: dict, expected: str) -> None:
    _edit_config(model_folder, **changes)
    with pytest.raises(CheckpointError, match=expected):
        load(model_folder, model_folder, "cpu", _roots(checkpoint_root))


def test_an_oversized_config_is_not_parsed(model_folder: Path, checkpoint_root: Path) -> None:
    _edit_config(model_folder, padding="x" * (17 * 2**20))
    with pytest.raises(CheckpointError, match="larger than"):
        load(model_folder, model_folder, "cpu", _roots(checkpoint_root))
