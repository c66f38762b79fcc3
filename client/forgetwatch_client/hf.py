"""A `transformers.TrainerCallback` that reports a training run to forgetwatch: every saved checkpoint,
greedy samples of the live model on the probe prompts, and (optionally) acting on the service's
forgetting detection and forecast. Works with every Trainer subclass (TRL's SFT/GRPO/DPO trainers included).

    client = ForgetwatchClient(url, token)
    client.run("qwen-sft-stage3", base_model="/ckpts/base", method="sft", probe_sets=["arith"])
    trainer = Trainer(..., callbacks=[ForgetwatchCallback(client, sample_every=50, on_risk="warn")])

Only the world's main process reports. With `on_risk="stop"` its decision is broadcast, so every rank
of a distributed job stops at the same step (no rank is left waiting in a collective). What is reported
at each save and log goes through `forgetwatch_client.loop.ForgetwatchLoop`, the object a plain
PyTorch or accelerate loop uses. Sampling calls
`model.generate` on the main process alone, so it suits single-device and DDP training, not FSDP or
DeepSpeed ZeRO-3 (whose sharded weights need every rank in the forward pass): there, leave
`sample_every=None` and push samples from your own loop.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from forgetwatch_client import ForgetwatchClient
from forgetwatch_client.loop import ForgetwatchLoop

log = logging.getLogger("forgetwatch.client")

# Trainer files the service does not need to measure drift; left out of uploads (by-reference
# registration points at the whole folder).
TRAINER_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "training_args.bin")


def generate_responses(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
) -> list[str]:
    """Greedy completions of `prompts` by `model` (eval mode, no grad; its train/eval mode is restored).
    Prompts are left-padded by hand, so the tokenizer is not modified."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    responses: list[str] = []
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                rows = [tokenizer(p)["input_ids"] or [pad_id] for p in prompts[start : start + batch_size]]
                width = max(len(r) for r in rows)
                input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (batch, width)
                attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
                for i, row in enumerate(rows):
                    input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
                    attention_mask[i, width - len(row) :] = 1
                generated = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                )
                # (batch, width + new): keep the new tokens only
                responses.extend(tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True))
    finally:
        if was_training:
            model.train()
    return responses


class ForgetwatchCallback(TrainerCallback):
    """Push each saved checkpoint (`<output_dir>/checkpoint-<step>`, by reference or uploaded) and, every
    `sample_every` optimizer steps, greedy responses of the live model to the probe prompts.

    probe_prompts: a list of prompts (pushed without a probe set), a {probe set name: prompts} mapping,
    or None for the prompts of the probe sets the client's run was registered with (a chat probe set's
    conversations rendered with the tokenizer's chat template, as the service renders them).
    on_risk: after each save, read the run's status; when ood forgetting is detected, or predicted
    (the service's forecast at or above its alarm threshold, or at or above `risk_threshold` when that
    is set), "warn" logs a warning with the step to roll back to, "stop" also stops training. A
    forecast that abstains ("not applicable") never acts. The client is flushed (up to `flush_timeout` seconds) when training ends.
    forward_logs: send what the trainer logs (`on_log`: loss, reward, entropy, KL, ...) as training metrics.
    checkpoint_uri: where the service reads each saved checkpoint instead of `output_dir`, with `{step}`
    replaced (`s3://models/team/run/checkpoint-{step}`): copy it there from a callback placed before
    this one in `callbacks`.
    """

    def __init__(
        self,
        client: ForgetwatchClient,
        *,
        sample_every: int | None = None,
        probe_prompts: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
        max_new_tokens: int = 32,
        on_risk: Literal["warn", "stop"] | None = None,
        risk_threshold: float | None = None,
        upload: bool = False,
        sample_batch_size: int = 16,
        flush_timeout: float = 30.0,
        forward_logs: bool = True,
        checkpoint_uri: str | None = None,
    ) -> None:
        if sample_every is not None and sample_every < 1:
            raise ValueError(f"sample_every must be a positive number of steps or None, got {sample_every}")
        if isinstance(probe_prompts, str):
            raise TypeError("probe_prompts must be a list of prompts, not one string")
        self.client = client
        self.sample_every = sample_every
        self.max_new_tokens = max_new_tokens
        self.on_risk = on_risk
        self.upload = upload
        self.checkpoint_uri = checkpoint_uri
        self.sample_batch_size = sample_batch_size
        # What is reported at each save and log, and the stop decision: the same object a plain loop uses.
        self.reporter = ForgetwatchLoop(client, on_risk=on_risk, risk_threshold=risk_threshold, upload=upload,
                                        skip=TRAINER_STATE_FILES, forward_logs=forward_logs,
                                        flush_timeout=flush_timeout)
        self._prompts: dict[str | None, list[str | list[dict[str, str]]]] | None
        if probe_prompts is None:
            self._prompts = None
        elif isinstance(probe_prompts, Mapping):
            self._prompts = {name: list(prompts) for name, prompts in probe_prompts.items()}
        else:
            self._prompts = {None: list(probe_prompts)}
        self._warned: set[str] = set()

    # ---- Trainer events ----------------------------------------------------------------------

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero and args.save_total_limit and not self.upload and not self.checkpoint_uri:
            log.warning(
                "action=checkpoint_rotation_risk run=%s save_total_limit=%s: the Trainer deletes older "
                "checkpoints that forgetwatch, registering them by path, may not have read yet (their "
                "analyses then fail with the reason). Choose one: ForgetwatchCallback(upload=True), which "
                "copies each checkpoint to the service; or a save_total_limit that outlasts the analyses; "
                "or none.",
                self.client.run_name,
                args.save_total_limit,
            )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.sample_every and state.is_world_process_zero and state.global_step % self.sample_every == 0:
            try:
                self._push_samples(state.global_step, kwargs)
            except Exception:  # a failed sample (OOM, odd model) must not end the training run
                log.exception(
                    "action=sampling_failed run=%s step=%s", self.client.run_name, state.global_step
                )

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
        logs: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """Forward the numbers the trainer logs (loss, learning rate, and TRL's reward, entropy, KL to the
        reference, ...) to the run's training metrics."""
        if state.is_world_process_zero and logs:
            self.reporter.forward(state.global_step, logs)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        alarm = False
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if self.checkpoint_uri is not None:
                self.reporter.register(state.global_step, self.checkpoint_uri.format(step=state.global_step))
            elif folder.is_dir():
                self.reporter.register(state.global_step, folder)
            else:
                log.warning(
                    "action=checkpoint_not_found run=%s step=%s folder=%s",
                    self.client.run_name,
                    state.global_step,
                    folder,
                )
            if self.on_risk is not None:
                alarm = self._check_risk(state)
            self.reporter.warn_refusals()
        # Every rank reaches on_save at the same step; all follow rank 0's decision together.
        if self.reporter.decide_stop(alarm):
            control.should_training_stop = True
        return control

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            self.reporter.flush()

    # ---- helpers -----------------------------------------------------------------------------

    def _probe_prompts(self) -> dict[str | None, list[str | list[dict[str, str]]]]:
        if self._prompts is not None:
            return self._prompts
        found: dict[str | None, list[str]] = {}
        for name in self.client.run_probe_sets:
            items = self.client.probe_set_items(name)
            if items is None:  # the service is unreachable: try again at the next sampling step
                return {}
            found[name] = [item.get("messages") or item["prompt"] for item in items]  # chat sets: messages
        if not found:
            self._warn_once(
                "no_prompts",
                "action=sampling_disabled run=%s (no probe_prompts given and the run has no probe sets)",
                self.client.run_name,
            )
        self._prompts = found
        return found

    def _push_samples(self, step: int, kwargs: dict[str, Any]) -> None:
        model = kwargs.get("model")
        tokenizer = kwargs.get("processing_class") or kwargs.get("tokenizer")
        if tokenizer is not None and not isinstance(tokenizer, PreTrainedTokenizerBase):
            tokenizer = getattr(tokenizer, "tokenizer", None)  # a multimodal processor wraps one
        if model is None or tokenizer is None:
            self._warn_once(
                "no_tokenizer",
                "action=sampling_skipped run=%s (the Trainer was given no model or "
                "tokenizer: pass processing_class=tokenizer)",
                self.client.run_name,
            )
            return
        for probe_set, items in self._probe_prompts().items():
            prompts = [self._prompt_text(tokenizer, item) for item in items]
            if not prompts:
                continue
            responses = generate_responses(
                model,
                tokenizer,
                prompts,
                max_new_tokens=self.max_new_tokens,
                batch_size=self.sample_batch_size,
            )
            self.client.samples(
                step, [{"prompt": p, "response": r} for p, r in zip(prompts, responses)], probe_set=probe_set
            )

    def _prompt_text(self, tokenizer: PreTrainedTokenizerBase, item: str | list[dict[str, str]]) -> str:
        """A prompt as text; a conversation rendered with the chat template and the generation prompt
        (without a template: its last user turn, with a warning)."""
        if isinstance(item, str):
            return item
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(item, add_generation_prompt=True, tokenize=False)
        self._warn_once("no_chat_template", "action=chat_probes_as_text run=%s (the tokenizer has no chat "
                        "template: chat probes are sampled as their last user turn)", self.client.run_name)
        return item[-1]["content"]

    def _check_risk(self, state: TrainerState) -> bool:
        """True when the run's status shows an alarm (logged with the step to roll back to)."""
        return self.reporter.check_risk(state.global_step)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)
