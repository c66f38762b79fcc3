"""Report a training run from your own loop (plain PyTorch; `forgetwatch_client.accelerate` for
accelerate): training metrics, each saved checkpoint, and acting on the service's forgetting alarms.

    fw = ForgetwatchLoop(client, on_risk="stop")
    for step, batch in enumerate(loader, start=1):
        loss = train_step(batch)
        fw.on_step(step, {"loss": loss.item()})
        if step % 500 == 0:
            save(model, folder := f"/ckpts/step-{step}")  # your own save, finished before on_save
            if fw.on_save(step, folder):                   # on every rank: they all stop at this step
                break
    fw.finish()

Only global rank 0 talks to the service. `on_save` is called by every rank at the same step (it waits
for them all, so a checkpoint written by several ranks is complete before it is registered), and
with `on_risk="stop"` rank 0's decision is broadcast, so no rank is left waiting in a collective.
The Hugging Face `ForgetwatchCallback` reports through the same object.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from forgetwatch_client._client import ForgetwatchClient
from forgetwatch_client.distributed import rank_zero_decides

log = logging.getLogger("forgetwatch.client")


def global_rank() -> int:
    """This process's rank in the whole job: torch.distributed's when a process group is up, else the
    launcher's RANK variable (torchrun, accelerate launch, deepspeed), else 0."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:
        pass
    return int(os.environ.get("RANK", "0"))


class ForgetwatchLoop:
    """What a training loop reports, and the stop decision every rank follows.

    on_risk: after each save, rank 0 reads the run's status; when ood forgetting is detected, or
    predicted (the service's forecast at or above its alarm threshold, or at or above `risk_threshold`
    when that is set), "warn" logs a warning with the step to roll back to and "stop" also makes
    `on_save` return True on every rank. A forecast that abstains never acts.
    upload: copy each checkpoint to the service (leaving out the files named by `skip`) instead of
    registering its path; choose it when the service cannot read the trainer's disk or when the
    loop deletes old checkpoints.
    is_main_process: whether this process reports; default: global rank 0 (`global_rank`).
    """

    def __init__(
        self,
        client: ForgetwatchClient,
        *,
        on_risk: Literal["warn", "stop"] | None = None,
        risk_threshold: float | None = None,
        upload: bool = False,
        skip: Sequence[str] = (),
        forward_logs: bool = True,
        flush_timeout: float = 30.0,
        is_main_process: bool | None = None,
    ) -> None:
        if on_risk not in (None, "warn", "stop"):
            raise ValueError(f"on_risk must be None, 'warn' or 'stop', got {on_risk!r}")
        self.client = client
        self.on_risk = on_risk
        self.risk_threshold = risk_threshold
        self.upload = upload
        self.skip = tuple(skip)
        self.forward_logs = forward_logs
        self.flush_timeout = flush_timeout
        self._main = is_main_process
        self._refusals_seen = 0

    @property
    def is_main_process(self) -> bool:
        """Read when needed, not at construction: the process group may start after this object."""
        return global_rank() == 0 if self._main is None else self._main

    # ---- what a loop calls (on every rank) --------------------------------------------------

    def on_step(self, step: int, logs: Mapping[str, Any] | None = None) -> None:
        """Forward the numbers of `logs` (loss, reward, KL, ...) as the run's training metrics at `step`."""
        if self.is_main_process and logs:
            self.forward(step, logs)

    def on_save(self, step: int, folder: str | os.PathLike[str]) -> bool:
        """Register the checkpoint just saved at `folder` (a local folder, or the s3:// URI it was copied
        to) for `step`; True when training must stop now. Every rank calls it at the same step (a
        collective in a distributed job)."""
        self.wait_for_everyone()
        alarm = False
        if self.is_main_process:
            path = os.fspath(folder)
            if "://" in path or Path(path).exists():
                self.register(step, path)
            else:
                log.warning("action=checkpoint_not_found run=%s step=%s folder=%s",
                            self.client.run_name, step, path)
            if self.on_risk is not None:
                alarm = self.check_risk(step)
            self.warn_refusals()
        return self.decide_stop(alarm)

    def finish(self) -> None:
        """At the end of training: wait (up to `flush_timeout` seconds) for what is queued to reach
        the service."""
        if self.is_main_process:
            self.flush()

    # ---- the parts, also used by the Hugging Face callback ----------------------------------

    def forward(self, step: int, logs: Mapping[str, Any]) -> None:
        values = {k: float(v) for k, v in logs.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if self.forward_logs and values:
            self.client.metrics(step, values)

    def register(self, step: int, folder: str | Path) -> None:
        """Register the checkpoint of `step`: a local folder, or a URI (s3://, gs://, hf://) the service reads."""
        self.client.checkpoint(step, folder, upload=self.upload, skip=self.skip if self.upload else ())

    def decide_stop(self, alarm: bool) -> bool:
        """Rank 0's `alarm` on every rank when stopping is asked for (a collective then), else False."""
        return self.on_risk == "stop" and rank_zero_decides(alarm)

    def wait_for_everyone(self) -> None:
        """A barrier across the job's ranks (none without a process group)."""
        try:
            import torch.distributed as dist
        except ImportError:
            return
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()

    def check_risk(self, step: int) -> bool:
        """True when the run's status shows an alarm (logged with the step to roll back to)."""
        status = self.client.status()
        if status is None:
            return False  # unreachable: nothing to act on
        alarm = status.alarm
        forecast = status.forecast
        if alarm is None and self.risk_threshold is not None and forecast is not None \
                and forecast.probability is not None and forecast.probability >= self.risk_threshold:
            alarm = "predicted"
        if alarm is None:
            return False  # nothing detected, no forecast at or above the threshold (or the forecast abstains)
        action = "stopping training" if self.on_risk == "stop" else "training continues"
        what = (f"ood forgetting detected (drop {status.detection.drop_low:.3g}..{status.detection.drop_high:.3g} "
                f"of the base)" if alarm == "detected" and status.detection and status.detection.drop_low is not None
                else f"ood forgetting predicted (probability {forecast.probability:.3f} within "
                     f"{forecast.horizon_checkpoints} checkpoints)" if forecast and forecast.probability is not None
                else f"ood forgetting {alarm}")
        log.warning(
            "action=forgetting_%s run=%s step=%s %s last_safe_step=%s findings=%s (%s; roll back to checkpoint %s)",
            alarm, status.run or self.client.run_name, step, what, status.last_safe_step,
            status.finding_messages(), action, status.last_safe_step,
        )
        return True

    def warn_refusals(self) -> None:
        """Say so, once per new batch, when the service refused calls (a revoked token, a step already
        registered with another checkpoint, ...): they are kept, not silently lost."""
        total = self.client.stats.get("refused", 0)
        if total > self._refusals_seen:
            latest = self.client.failed()[-1]
            log.warning("action=calls_refused run=%s new=%d latest=%r status=%s detail=%s (kept in the journal's "
                        "refusals file; 401/403 ones are sent again when the client next starts)",
                        self.client.run_name, total - self._refusals_seen, latest.call, latest.status_code,
                        latest.detail)
            self._refusals_seen = total

    def flush(self) -> None:
        if not self.client.flush(self.flush_timeout):
            log.warning(
                "action=flush_incomplete run=%s stats=%s (undelivered calls stay queued and "
                "journaled; close the client to keep them for the next start)",
                self.client.run_name, self.client.stats,
            )
