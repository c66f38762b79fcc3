"""Request and response bodies (kept apart from the ORM models)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from drift.probes import check_messages


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refuse it up front with a clear message.
    if "\x00" in value:
        raise ValueError("NUL characters (\\u0000) are not allowed in text")
    return value


def _usable_in_urls(value: str) -> str:
    # Runs are addressed as /v1/runs/{id or name}: a name must not look like an id or hold a '/'.
    if value.isdigit() or "/" in value:
        raise ValueError("a run name must not be all digits or contain '/'; e.g. 'qwen-grpo-stage2'")
    return value


NoNul = AfterValidator(_no_nul)
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+\-]*$")]
Step = Annotated[int, Field(ge=0, le=2**53, description="Training step (optimizer steps, >= 0)")]
Text = Annotated[str, StringConstraints(max_length=200_000), NoNul]
TagValue = Annotated[str, StringConstraints(max_length=10_000), NoNul] | int | float | bool | None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunCreate(Strict):
    name: Annotated[Name, AfterValidator(_usable_in_urls)]
    base_model: Annotated[str, StringConstraints(min_length=1, max_length=4096), NoNul] = Field(
        description=(
            "Where the base model is, readable by the service: an absolute path or file:// URI under "
            "FORGETWATCH_CHECKPOINT_ROOTS (a folder with config.json and weights, or one weights file), "
            "s3://bucket/key under an allowed prefix, or hf://org/name[@revision] in the service's local "
            "Hugging Face cache (nothing is downloaded; a bare Hub id such as gpt2 is refused)"),
        examples=["/models/qwen2.5-0.5b-instruct", "s3://models/base", "hf://Qwen/Qwen2.5-0.5B-Instruct@main"],
    )
    method: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_\-]{1,64}$")] = Field(
        default="unspecified", description="Training method label: sft, grpo, self_distillation, ..."
    )
    tags: Annotated[dict[Annotated[str, StringConstraints(max_length=100), NoNul], TagValue], Field(max_length=64)] = {}
    probe_sets: Annotated[list[Name], Field(max_length=32)] = []


class RunOut(BaseModel):
    id: int
    name: str
    base_model: str
    method: str
    tags: dict[str, Any]
    probe_sets: list[str]
    last_step: int | None
    created_at: datetime
    archived_at: datetime | None = None


class JobOut(BaseModel):
    id: int
    task: str
    queue: str
    status: Literal["todo", "doing", "succeeded", "failed", "cancelled", "aborted"]
    attempts: int


class CheckpointCreate(Strict):
    step: Step
    uri: Annotated[str, StringConstraints(min_length=1, max_length=4096), NoNul] | None = Field(
        default=None,
        description="Local path or file:// URI inside the allowed roots; omit after uploading files",
    )


class CheckpointOut(BaseModel):
    id: int
    run_id: int
    step: int
    uri: str
    size_bytes: int | None
    status: Literal["pending", "processing", "ready", "failed"]
    error: str | None
    received_at: datetime
    jobs: list[JobOut]


class UploadOut(BaseModel):
    run_id: int
    step: int
    filename: str
    size_bytes: int


class SampleItem(Strict):
    prompt: Text
    response: Text
    logprobs: Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(max_length=100_000)] | None = None


class SamplesCreate(Strict):
    step: Step
    probe_set: Name | None = None
    items: Annotated[list[SampleItem], Field(min_length=1, max_length=100_000)]


class SamplesAccepted(BaseModel):
    run_id: int
    step: int
    accepted: int


class SampleOut(BaseModel):
    step: int
    probe_set: str | None
    prompt: str
    response: str
    logprobs: list[float] | None


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, StringConstraints(min_length=1, max_length=200_000), NoNul]


class ProbeItemIn(Strict):
    prompt: Text | None = Field(default=None, description="The prompt (text probe sets)")
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)] | None = Field(
        default=None, description="The conversation, ending with a user turn (chat probe sets)")
    reference: Text | None = None
    answer: Annotated[str, StringConstraints(max_length=10_000), NoNul] | None = None


class ProbeSetCreate(Strict):
    name: Name
    domain: Literal["in_domain", "ood"]
    format: Literal["text", "chat"] = Field(
        default="text", description="chat: items give messages, rendered with the base tokenizer's chat template")
    description: Annotated[str, StringConstraints(max_length=10_000), NoNul] = ""
    items: Annotated[list[ProbeItemIn], Field(min_length=1, max_length=20_000)]

    @model_validator(mode="after")
    def _items_fit_format(self) -> ProbeSetCreate:
        for n, item in enumerate(self.items):
            if self.format == "text" and (item.prompt is None or item.messages is not None):
                raise ValueError(f"items[{n}]: a text probe set's items give 'prompt' and no 'messages' "
                                 "(for conversations use \"format\": \"chat\")")
            if self.format == "chat":
                if item.messages is None or item.prompt is not None:
                    raise ValueError(f"items[{n}]: a chat probe set's items give 'messages' and no 'prompt'")
                check_messages([m.model_dump() for m in item.messages], where=f"items[{n}].messages")
        return self

    def stored_items(self) -> list[dict[str, Any]]:
        """Items as stored: a chat item's prompt is its last user turn (for display)."""
        out = []
        for item in self.items:
            row = item.model_dump()
            if item.messages is not None:
                row["prompt"] = item.messages[-1].content
            out.append(row)
        return out


class ProbeSetOut(BaseModel):
    id: int
    name: str
    domain: str
    format: str = "text"
    description: str
    items: list[ProbeItemIn]


class ProbeSetSummary(BaseModel):
    id: int
    name: str
    domain: str
    description: str


class JobDetail(JobOut):
    args: dict[str, Any]


class Problem(BaseModel):
    detail: Any
