"""A two-process DDP training job (run by torchrun on CPU, gloo) whose callback alarms on rank 0 from
step 4 on. Each rank writes the step it stopped at to OUT/rank<R>.json."""

import json
import os
import sys
from pathlib import Path

import torch
from transformers import Trainer, TrainerState, TrainingArguments

from forgetwatch_client import ForgetwatchClient
from forgetwatch_client.hf import ForgetwatchCallback
from tests.integration.models import char_tokenizer, tiny_gpt2


class AlarmFromStep4(ForgetwatchCallback):
    """The service's answer on rank 0 (the only rank that asks): an alarm from step 4 on."""

    def _check_risk(self, state: TrainerState) -> bool:
        return state.global_step >= 4


def main(out: Path) -> None:
    rank = int(os.environ["RANK"])
    tokenizer = char_tokenizer()
    model = tiny_gpt2(tokenizer)
    rows = [tokenizer(f"{a}+{b}={a + b}")["input_ids"] for a in range(10) for b in range(10)]
    data = [{"input_ids": torch.tensor(r), "labels": torch.tensor(r)} for r in rows if len(r) == 6]
    client = ForgetwatchClient("http://127.0.0.1:9", "fw_unused", journal_path=out / f"journal-{rank}.jsonl")
    client.run("ddp-stop", base_model="/base", method="sft")
    args = TrainingArguments(output_dir=str(out / "train"), max_steps=40, save_steps=2, per_device_train_batch_size=2,
                             use_cpu=True, report_to=[], logging_steps=1000, ddp_backend="gloo")
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[AlarmFromStep4(client, on_risk="stop")])
    trainer.train()
    (out / f"rank{rank}.json").write_text(json.dumps({"step": trainer.state.global_step,
                                                      "world_size": torch.distributed.get_world_size()}))
    client.close(timeout=1)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
