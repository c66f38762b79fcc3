"""ForgetwatchCallback inside a real `transformers.Trainer.train()` on a tiny GPT-2, against a real
`forgetwatch serve` and `forgetwatch worker` on the test's database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedTokenizerFast,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from forgetwatch_client.hf import ForgetwatchCallback, generate_responses
from service.settings import Settings
from tests.conftest import worker_env
from tests.integration.helpers import start, stop, wait_for
from tests.integration.models import char_tokenizer, tiny_gpt2
from tests.integration.service_fixture import Service

PROMPTS = ["1+1=", "2+3=", "4*4="]


def arithmetic_examples(tokenizer: PreTrainedTokenizerFast, count: int = 32, width: int = 16) -> list[dict]:
    examples = []
    for i in range(count):
        a, b = i % 7, i // 7
        ids = tokenizer(f"{a}+{b}={a + b}")["input_ids"] + [tokenizer.eos_token_id]
        padding = width - len(ids)
        examples.append(
            {
                "input_ids": torch.tensor(ids + [tokenizer.pad_token_id] * padding),
                "attention_mask": torch.tensor([1] * len(ids) + [0] * padding),
                "labels": torch.tensor(ids + [-100] * padding),
            }
        )
    return examples


class ModeRecorder(TrainerCallback):
    """Runs after ForgetwatchCallback: was the model back in train mode?"""

    def __init__(self) -> None:
        self.training: list[bool] = []
        self.logged: list[tuple[int, dict]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training.append(kwargs["model"].training)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        self.logged.append((state.global_step, dict(logs or {})))


def test_generate_responses_matches_one_prompt_at_a_time() -> None:
    tokenizer = char_tokenizer()
    model = tiny_gpt2(tokenizer)
    model.train()
    batched = generate_responses(model, tokenizer, ["1+1=", "12+34=", "7="], max_new_tokens=6)
    single = [
        generate_responses(model, tokenizer, [p], max_new_tokens=6)[0] for p in ["1+1=", "12+34=", "7="]
    ]
    assert batched == single
    assert model.training


def test_trainer_pushes_checkpoints_and_samples_that_workers_process(
    settings: Settings, tokens: dict[str, str], checkpoint_root: Path, tmp_path: Path
) -> None:
    tokenizer = char_tokenizer()
    model = tiny_gpt2(tokenizer)
    model.save_pretrained(checkpoint_root / "base")  # the base the service measures drift against
    tokenizer.save_pretrained(checkpoint_root / "base")
    service = Service(settings, tokens["write"], tmp_path / "serve.log")
    service.start()
    worker = start(["worker"], worker_env(settings), tmp_path / "worker.log")
    try:
        with service.client(blocking=True) as setup:  # the probe set exists before the trainer starts
            setup.probe_set("arith", "ood", PROMPTS)
        client = service.client(journal_path=tmp_path / "journal.jsonl")
        client.run("tiny-sft", base_model=str(checkpoint_root / "base"), method="sft", probe_sets=["arith"])
        recorder = ModeRecorder()
        args = TrainingArguments(
            output_dir=str(checkpoint_root / "trainer"),
            max_steps=6,
            save_steps=3,
            per_device_train_batch_size=4,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            logging_steps=3,
            dataloader_pin_memory=False,
        )
        callback = ForgetwatchCallback(client, sample_every=2, max_new_tokens=8)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=arithmetic_examples(tokenizer),
            processing_class=tokenizer,
            callbacks=[callback, recorder],
        )
        trainer.train()
        client.close()
        # the run, 2 checkpoints, 3 sample batches, and one metrics call per trainer log
        assert client.stats["sent"] == 1 + 2 + 3 + len(recorder.logged) and client.stats["dropped"] == 0
        assert recorder.training == [True] * 6

        metrics = service.get("/v1/runs/tiny-sft/metrics")["series"]
        logged_losses = [(step, logs["loss"]) for step, logs in recorder.logged if "loss" in logs]
        assert [step for step, _ in logged_losses] == [3, 6]
        assert [(p["step"], p["value"]) for p in metrics["loss"]] == logged_losses
        assert metrics["train_runtime"][0]["step"] == 6  # the trainer's closing summary, at the last step

        samples = service.get("/v1/runs/tiny-sft/samples")
        assert [(s["step"], s["prompt"]) for s in samples] == [
            (step, p) for step in (2, 4, 6) for p in PROMPTS
        ]
        checkpoints = service.get("/v1/runs/tiny-sft/checkpoints")
        trainer_dir = (checkpoint_root / "trainer").resolve()
        assert [(c["step"], c["uri"]) for c in checkpoints] == [
            (3, str(trainer_dir / "checkpoint-3")),
            (6, str(trainer_dir / "checkpoint-6")),
        ]
        ready = wait_for(
            lambda: (
                (c := service.get("/v1/runs/tiny-sft/checkpoints"))
                and all(x["status"] in ("ready", "failed") for x in c)
                and c
            ),
            timeout=90,
            interval=0.5,
            what="checkpoints processed by the worker",
        )
        assert [c["status"] for c in ready] == ["ready", "ready"], ready
    finally:
        stop(worker)
        service.stop()


PROBE_ITEMS = [{"prompt": f"{a}+{b}=", "reference": str(a + b), "answer": str(a + b)} for a in range(4) for b in range(4)]


class WaitForAssessment(TrainerCallback):
    """Runs after ForgetwatchCallback: holds the trainer until the service has assessed the checkpoint
    just pushed, so the callback's next status read sees it (a bounded wait on a condition)."""

    def __init__(self, service: Service, run: str) -> None:
        self.service = service
        self.run = run
        self.statuses: list[dict] = []

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step
        status = wait_for(
            lambda: (s := self.service.get(f"/v1/runs/{self.run}/status"))["forecast"]
            and s["forecast"]["step"] == step and s["detection"].get("measured") and s,
            timeout=120, interval=0.5, what=f"assessment of step {step}")
        self.statuses.append(status)


def test_training_that_has_not_measurably_moved_is_never_stopped(
    settings: Settings, tokens: dict[str, str], checkpoint_root: Path, tmp_path: Path
) -> None:
    """Fine-tuning on the model's own skill at a negligible learning rate, with on_risk="stop": the
    service measures every checkpoint, forecasts from the third on, and the run finishes."""
    tokenizer = char_tokenizer()
    model = tiny_gpt2(tokenizer)
    model.save_pretrained(checkpoint_root / "base")
    tokenizer.save_pretrained(checkpoint_root / "base")
    service = Service(settings, tokens["write"], tmp_path / "serve.log")
    service.start()
    worker = start(["worker"], worker_env(settings), tmp_path / "worker.log")
    try:
        with service.client(blocking=True) as setup:
            setup.probe_set("arith", "ood", PROBE_ITEMS)
        client = service.client(journal_path=tmp_path / "journal.jsonl")
        client.run("still", base_model=str(checkpoint_root / "base"), method="sft", probe_sets=["arith"])
        waiter = WaitForAssessment(service, "still")
        args = TrainingArguments(
            output_dir=str(checkpoint_root / "trainer"), max_steps=10, save_steps=2, learning_rate=1e-7,
            per_device_train_batch_size=4, report_to=[], use_cpu=True, disable_tqdm=True, logging_steps=100,
            dataloader_pin_memory=False,
        )
        callback = ForgetwatchCallback(client, on_risk="stop")
        trainer = Trainer(model=model, args=args, train_dataset=arithmetic_examples(tokenizer),
                          processing_class=tokenizer, callbacks=[callback, waiter])
        trainer.train()
        client.close()
    finally:
        stop(worker)
        service.stop()
    assert trainer.state.global_step == 10  # not stopped
    steps = [s["forecast"]["step"] for s in waiter.statuses]
    assert steps == [2, 4, 6, 8, 10]
    # The callback read statuses with applicable forecasts (from the third checkpoint on), all low.
    applicable = [s["forecast"] for s in waiter.statuses if s["forecast"]["applicable"]]
    assert [f["step"] for f in applicable] == [6, 8, 10]
    assert all(f["probability"] < 0.05 and not f["predicted"] for f in applicable), applicable
    assert not any(s["detection"]["detected"] for s in waiter.statuses)
    assert all(abs(s["detection"]["drop"]) < 1e-3 for s in waiter.statuses)
    assert waiter.statuses[-1]["last_safe_step"] == 10
