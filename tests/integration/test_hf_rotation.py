"""Checkpoint rotation: with `save_total_limit` the Trainer deletes checkpoints that were registered by
path and may not have been read yet; the callback tells the user which way out to choose (uploading,
or registering the copy each checkpoint was given elsewhere with `checkpoint_uri`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from transformers import Trainer, TrainingArguments

from forgetwatch_client import ForgetwatchClient
from forgetwatch_client.hf import ForgetwatchCallback
from tests.integration.helpers import free_port
from tests.integration.models import char_tokenizer, tiny_gpt2
from tests.integration.test_hf_callback import arithmetic_examples


@pytest.mark.parametrize("way", ["by path", "upload", "checkpoint_uri"])
def test_save_total_limit_by_reference_is_called_out(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                     way: str) -> None:
    tokenizer = char_tokenizer()
    client = ForgetwatchClient(f"http://127.0.0.1:{free_port()}", "fw_unused", journal_path=tmp_path / "j.jsonl")
    client.run("rotating", base_model="/base")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, save_steps=1, save_total_limit=1,
                             per_device_train_batch_size=4, report_to=[], use_cpu=True, disable_tqdm=True)
    options = {"upload": {"upload": True}, "checkpoint_uri": {
        "checkpoint_uri": "s3://models/team/rotating/checkpoint-{step}"}}.get(way, {})
    trainer = Trainer(model=tiny_gpt2(tokenizer), args=args, train_dataset=arithmetic_examples(tokenizer),
                      callbacks=[ForgetwatchCallback(client, **options)])
    with caplog.at_level(logging.WARNING, logger="forgetwatch.client"):
        trainer.train()
    client.close(timeout=0.5)
    warned = [r.getMessage() for r in caplog.records if "checkpoint_rotation_risk" in r.getMessage()]
    assert len(warned) == (1 if way == "by path" else 0)
    if way == "by path":
        assert "upload=True" in warned[0] and "save_total_limit=1" in warned[0]
    if way == "checkpoint_uri":  # registered where the user's own callback copied them (the service is away)
        journal = (tmp_path / "j.jsonl").read_text()
        assert all(f'"uri":"s3://models/team/rotating/checkpoint-{step}"' in journal for step in (1, 2)), journal
