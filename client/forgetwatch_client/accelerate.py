"""Report an `accelerate` training loop to forgetwatch (`pip install forgetwatch-client[accelerate]`).

    accelerator = Accelerator()
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    fw = ForgetwatchAccelerate(client, accelerator, on_risk="stop")
    for step, batch in enumerate(loader, start=1):
        ...
        fw.on_step(step, {"loss": loss.item()})
        if step % 500 == 0:
            folder = fw.save_model(step, model, f"/ckpts/step-{step}")  # every rank
            if fw.on_save(step, folder):                                # every rank: all stop here
                break
    fw.finish()

The main process (`accelerator.is_main_process`, global rank 0) alone talks to the service; the stop
decision is broadcast as in `ForgetwatchLoop`, whose behaviour this is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from forgetwatch_client._client import ForgetwatchClient
from forgetwatch_client.loop import ForgetwatchLoop


class ForgetwatchAccelerate(ForgetwatchLoop):
    """`ForgetwatchLoop` with the accelerator's view of the job: its main process reports, its
    `wait_for_everyone` is the barrier before a checkpoint is registered."""

    def __init__(self, client: ForgetwatchClient, accelerator: Accelerator, **options: Any) -> None:
        super().__init__(client, is_main_process=accelerator.is_main_process, **options)
        self.accelerator = accelerator

    def wait_for_everyone(self) -> None:
        self.accelerator.wait_for_everyone()

    def save_model(self, step: int, model: Any, folder: str | os.PathLike[str]) -> Path:
        """Save the unwrapped model to `folder` as a model folder the service reads (`save_pretrained`
        for a transformers or peft model, so an adapter is saved as an adapter; else safetensors
        weights via `accelerator.save_model`). Called on every rank; returns the folder."""
        path = Path(folder)
        self.accelerator.wait_for_everyone()
        unwrapped = self.accelerator.unwrap_model(model)
        if hasattr(unwrapped, "save_pretrained"):
            unwrapped.save_pretrained(path, is_main_process=self.accelerator.is_main_process,
                                      save_function=self.accelerator.save,
                                      state_dict=self.accelerator.get_state_dict(model))
        else:
            self.accelerator.save_model(model, path)
        return path
