"""TRL for real: `SFTTrainer` (a LoRA adapter through peft, conversational data rendered with the
chat template) and `GRPOTrainer` with `ForgetwatchCallback`, against a real `forgetwatch serve` and
worker. The adapter checkpoints TRL saves are what the worker probes (base + adapter)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from forgetwatch_client.hf import ForgetwatchCallback
from service.settings import Settings
from tests.conftest import worker_env
from tests.integration.helpers import start, stop, wait_for
from tests.integration.models import CORPUS, bpe_tokenizer, tiny_llama
from tests.integration.test_client import Service

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

QA = [("capital of france?", "paris"), ("capital of italy?", "rome"), ("two plus two?", "four"),
      ("capital of spain?", "madrid")]
PROBES = [{"messages": [{"role": "user", "content": q}], "reference": a, "answer": a} for q, a in QA]


def _conversations(count: int = 16) -> datasets.Dataset:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in QA * (count // len(QA))]
    return datasets.Dataset.from_list(rows)


@pytest.fixture
def service_and_base(settings: Settings, tokens: dict[str, str], checkpoint_root: Path, tmp_path: Path):
    tokenizer = bpe_tokenizer()
    model = tiny_llama(tokenizer)
    model.save_pretrained(checkpoint_root / "base")
    tokenizer.save_pretrained(checkpoint_root / "base")
    service = Service(settings, tokens["write"], tmp_path / "serve.log")
    service.start()
    worker = start(["worker"], worker_env(settings), tmp_path / "worker.log")
    try:
        with service.client(blocking=True) as setup:
            setup.probe_set("qa-chat", "ood", PROBES, format="chat")
        yield service, model, tokenizer
    finally:
        stop(worker)
        service.stop()


def _processed(service: Service, run: str, count: int) -> list[dict]:
    return wait_for(lambda: (c := service.get(f"/v1/runs/{run}/checkpoints")) and len(c) == count
                    and all(x["status"] in ("ready", "failed") for x in c) and c,
                    timeout=180, interval=0.5, what=f"{run} checkpoints processed")


def test_sft_trainer_with_a_lora_adapter_reports_checkpoints_the_worker_probes(
        service_and_base, checkpoint_root: Path, tmp_path: Path) -> None:
    from peft import LoraConfig

    service, model, tokenizer = service_and_base
    started = time.monotonic()
    client = service.client(journal_path=tmp_path / "journal.jsonl")
    client.run("trl-sft-lora", base_model=str(checkpoint_root / "base"), method="sft", probe_sets=["qa-chat"])
    args = trl.SFTConfig(output_dir=str(checkpoint_root / "sft"), max_steps=4, save_steps=2, learning_rate=5e-3,
                         per_device_train_batch_size=4, logging_steps=2, report_to=[], use_cpu=True,
                         disable_tqdm=True, dataloader_pin_memory=False, max_length=64)
    trainer = trl.SFTTrainer(
        model=model, args=args, train_dataset=_conversations(), processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        callbacks=[ForgetwatchCallback(client, sample_every=2, max_new_tokens=8)],
    )
    trainer.train()
    client.close()
    trained = time.monotonic() - started
    assert client.stats["dropped"] == 0
    checkpoints = _processed(service, "trl-sft-lora", 2)
    assert [c["step"] for c in checkpoints] == [2, 4]
    assert all((Path(c["uri"]) / "adapter_config.json").is_file() for c in checkpoints)  # TRL saved adapters
    assert [c["status"] for c in checkpoints] == ["ready", "ready"], checkpoints
    drift = service.get("/v1/runs/trl-sft-lora/response-drift")["probe_sets"]["qa-chat"]["series"]
    assert [p["step"] for p in drift] == [2, 4] and all(p["kl_forward"] > 0 for p in drift)
    metrics = service.get("/v1/runs/trl-sft-lora/metrics")["series"]
    assert [p["step"] for p in metrics["loss"]] == [2, 4] and "entropy" in metrics  # TRL's own log keys
    samples = service.get("/v1/runs/trl-sft-lora/samples")  # live greedy samples from the adapter model
    assert [s["step"] for s in samples] == [2] * 4 + [4] * 4
    assert samples[0]["prompt"] == "<|im_start|>user\ncapital of france?<|im_end|>\n<|im_start|>assistant\n"
    print(f"trl SFTTrainer + LoRA: train {trained:.1f} s, through analysis {time.monotonic() - started:.1f} s")


def test_grpo_trainer_forwards_its_reward_and_registers_checkpoints(
        service_and_base, checkpoint_root: Path, tmp_path: Path) -> None:
    service, model, tokenizer = service_and_base
    started = time.monotonic()
    client = service.client(journal_path=tmp_path / "journal.jsonl")
    client.run("trl-grpo", base_model=str(checkpoint_root / "base"), method="grpo", probe_sets=["qa-chat"])

    def short_answers(completions, **_) -> list[float]:
        return [-float(len(c)) / 10 for c in completions]

    args = trl.GRPOConfig(output_dir=str(checkpoint_root / "grpo"), max_steps=2, save_steps=2, learning_rate=1e-3,
                          per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
                          logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True,
                          dataloader_pin_memory=False)
    prompts = datasets.Dataset.from_list([{"prompt": text} for text in CORPUS[:8]])
    trainer = trl.GRPOTrainer(model=model, reward_funcs=short_answers, args=args, train_dataset=prompts,
                              processing_class=tokenizer,
                              callbacks=[ForgetwatchCallback(client)])
    trainer.train()
    client.close()
    trained = time.monotonic() - started
    assert client.stats["dropped"] == 0
    (checkpoint,) = _processed(service, "trl-grpo", 1)
    assert checkpoint["step"] == 2 and checkpoint["status"] == "ready", checkpoint
    metrics = service.get("/v1/runs/trl-grpo/metrics")["series"]
    assert "reward" in metrics and [p["step"] for p in metrics["reward"]] == [1, 2]
    print(f"trl GRPOTrainer: train {trained:.1f} s, through analysis {time.monotonic() - started:.1f} s")
