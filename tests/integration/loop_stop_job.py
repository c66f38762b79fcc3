"""A two-process training job (run by torchrun on CPU, gloo) written as a plain PyTorch DDP loop or an
accelerate loop (argv[2]: "plain" or "accelerate"), reporting through forgetwatch_client's loop helpers.
Rank 0's alarm comes from step 4 on. Each rank writes the step it stopped at to OUT/rank<R>.json."""

import json
import os
import sys
from pathlib import Path

import torch

from forgetwatch_client import ForgetwatchClient
from forgetwatch_client.loop import ForgetwatchLoop
from tests.integration.models import char_tokenizer, tiny_gpt2

MAX_STEPS, SAVE_EVERY = 40, 2


def alarm_from_step_4(step: int) -> bool:
    """The service's answer on rank 0 (the only rank that asks)."""
    assert int(os.environ["RANK"]) == 0, "only rank 0 reads the run's status"
    return step >= 4


def batches(tokenizer, rank: int):
    rows = [tokenizer(f"{a}+{b}={a + b}")["input_ids"] for a in range(10) for b in range(10)]
    rows = [r for r in rows if len(r) == 6][rank::2]
    while True:
        for start in range(0, len(rows) - 1, 2):
            yield torch.tensor(rows[start:start + 2])  # (batch, seq)


def main(out: Path, kind: str) -> None:
    rank = int(os.environ["RANK"])
    tokenizer = char_tokenizer()
    client = ForgetwatchClient("http://127.0.0.1:9", "fw_unused", journal_path=out / f"journal-{rank}.jsonl")
    client.run(f"{kind}-stop", base_model="/base", method="sft")
    model = tiny_gpt2(tokenizer)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    if kind == "accelerate":
        from accelerate import Accelerator

        from forgetwatch_client.accelerate import ForgetwatchAccelerate

        accelerator = Accelerator(cpu=True)
        model, optimizer = accelerator.prepare(model, optimizer)
        fw: ForgetwatchLoop = ForgetwatchAccelerate(client, accelerator, on_risk="stop")
        backward, world = accelerator.backward, accelerator.num_processes
    else:
        torch.distributed.init_process_group("gloo")
        model = torch.nn.parallel.DistributedDataParallel(model)
        fw = ForgetwatchLoop(client, on_risk="stop")
        backward, world = (lambda loss: loss.backward()), torch.distributed.get_world_size()
    fw.check_risk = alarm_from_step_4  # type: ignore[method-assign]
    step = 0
    for step, batch in enumerate(batches(tokenizer, rank), start=1):
        loss = model(input_ids=batch, labels=batch).loss
        backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        fw.on_step(step, {"loss": loss.item()})
        if step % SAVE_EVERY == 0:
            if kind == "accelerate":
                folder = fw.save_model(step, model, out / f"step-{step}")  # type: ignore[attr-defined]
            else:
                folder = out / f"step-{step}"
                if rank == 0:
                    model.module.save_pretrained(folder)
            if fw.on_save(step, folder):
                break
        if step == MAX_STEPS:
            break
    fw.finish()
    (out / f"rank{rank}.json").write_text(json.dumps({"step": step, "world_size": world}))
    client.close(timeout=1)
    if kind == "plain":
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
