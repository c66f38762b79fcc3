"""What `GET /v1/runs/{run}/status` says, as typed values: detection, forecast and the rollback point."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Forecast:
    """The forgetting forecast at the latest assessed checkpoint: `probability` that ood forgetting is
    detected within `horizon_checkpoints`, None when it abstains (`reason_code`, `reason`) or once
    forgetting is detected. `predicted` is True at or above the service's alarm `threshold`."""

    probability: float | None
    threshold: float | None
    predicted: bool
    model: str
    step: int | None = None
    horizon_checkpoints: int | None = None
    reason_code: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Detection:
    """Measured ood forgetting at the latest assessed checkpoint: `detected` when the interval of the
    relative drop vs base (`drop_low`..`drop_high`) lies at or above `threshold`."""

    detected: bool
    measured: bool
    threshold: float | None
    step: int | None = None
    drop: float | None = None
    drop_low: float | None = None
    drop_high: float | None = None
    first_detected_step: int | None = None
    reason: str | None = None


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class RunStatus:
    """GET /v1/runs/{run}/status: measured and predicted forgetting and where it is safe to roll back to.
    `findings` are the service's (dicts with code, severity, message, ...); `raw` is the whole answer."""

    run: str
    last_step: int | None
    forecast: Forecast | None
    detection: Detection | None
    findings: tuple[Any, ...]
    last_safe_step: int | None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def alarm(self) -> str | None:
        """"detected", "predicted" or None."""
        if self.detection is not None and self.detection.detected:
            return "detected"
        if self.forecast is not None and self.forecast.predicted:
            return "predicted"
        return None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RunStatus:
        f, d = body.get("forecast"), body.get("detection")
        return cls(
            run=str(body.get("run", "")),
            last_step=body.get("last_step"),
            forecast=None
            if not f
            else Forecast(
                probability=_optional_float(f.get("probability")),
                threshold=_optional_float(f.get("threshold")),
                predicted=bool(f.get("predicted", False)),
                model=str(f.get("model") or ""),
                step=f.get("step"),
                horizon_checkpoints=f.get("horizon_checkpoints"),
                reason_code=f.get("reason_code"),
                reason=f.get("reason"),
            ),
            detection=None
            if not d
            else Detection(
                detected=bool(d.get("detected", False)),
                measured=bool(d.get("measured", False)),
                threshold=_optional_float(d.get("threshold")),
                step=d.get("step"),
                drop=_optional_float(d.get("drop")),
                drop_low=_optional_float(d.get("drop_low")),
                drop_high=_optional_float(d.get("drop_high")),
                first_detected_step=d.get("first_detected_step"),
                reason=d.get("reason"),
            ),
            findings=tuple(body.get("findings") or ()),
            last_safe_step=body.get("last_safe_step"),
            raw=dict(body),
        )

    def finding_messages(self) -> list[str]:
        return [str(f.get("message", f)) if isinstance(f, Mapping) else str(f) for f in self.findings]
