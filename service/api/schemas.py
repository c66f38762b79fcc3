"""Request and response bodies (kept apart from the ORM models)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from drift.probes import check_messages

# The OpenAPI document states every rule the API enforces, so that generated clients and fuzzers agree
# with the server. Where a validator below gives the readable message, `Documented` puts the same rule
# in the schema as a pattern (ECMA-262, as JSON Schema reads it).
NO_NUL_PATTERN = r"^[^\u0000]*$"
# A run name: a Name that is not all digits (those are ids in /v1/runs/{id or name}) and holds no '/'.
RUN_NAME_PATTERN = r"^(?:[A-Za-z][A-Za-z0-9._:@+\-]*|[0-9]+[A-Za-z._:@+\-][A-Za-z0-9._:@+\-]*)$"
# Python's str.isspace() characters: chat contents need one character outside them.
_SPACE = r"\t\n\u000b\u000c\r\u001c-\u001f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# For dicts whose keys follow a pattern: a key that does not is refused, not ignored.
ONLY_DECLARED_KEYS: dict[str, Any] = {"additionalProperties": False}
NOT_BLANK_PATTERN = rf"^[^\u0000]*[^\u0000{_SPACE}][^\u0000]*$"


class Documented:
    """Adds `pattern` to a string's JSON schema (the rule itself is enforced by a validator beside it)."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {**handler(schema), "pattern": self.pattern}


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


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must hold a character other than white space")
    return value


NoNul = AfterValidator(_no_nul)
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+\-]*$")]
RunName = Annotated[Name, AfterValidator(_usable_in_urls), Documented(RUN_NAME_PATTERN)]
Step = Annotated[int, Field(ge=0, le=2**53, description="Training step (optimizer steps, >= 0)")]
Location = Annotated[str, StringConstraints(min_length=1, max_length=4096), NoNul, Documented(NO_NUL_PATTERN)]
Text = Annotated[str, StringConstraints(max_length=200_000), NoNul, Documented(NO_NUL_PATTERN)]
ShortText = Annotated[str, StringConstraints(max_length=10_000), NoNul, Documented(NO_NUL_PATTERN)]
TagValue = ShortText | int | float | bool | None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


TagKey = Annotated[str, StringConstraints(max_length=100), NoNul, Documented(NO_NUL_PATTERN)]
Tags = Annotated[dict[TagKey, TagValue], Field(max_length=64, json_schema_extra=ONLY_DECLARED_KEYS)]


class RunCreate(Strict):
    name: RunName
    base_model: Location = Field(
        description=(
            "Where the base model is, readable by the service: an absolute path or file:// URI under "
            "FORGETWATCH_CHECKPOINT_ROOTS (a folder that will hold config.json and weights, or one weights file), "
            "s3://bucket/key or gs://bucket/key under an allowed prefix, or hf://org/name[@revision] in the service's local "
            "Hugging Face cache (nothing is downloaded; a bare Hub id such as gpt2 is refused)"),
        examples=["/models/qwen2.5-0.5b-instruct", "s3://models/base", "hf://Qwen/Qwen2.5-0.5B-Instruct@main"],
    )
    method: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_\-]{1,64}$")] = Field(
        default="unspecified", description="Training method label: sft, grpo, self_distillation, ..."
    )
    tags: Tags = {}
    probe_sets: Annotated[list[Name], Field(max_length=32)] = []


class RunPatch(Strict):
    """Tags to set (merged over the run's tags) and tag keys to remove."""

    tags: Tags = {}
    remove_tags: Annotated[list[TagKey], Field(max_length=64)] = []


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


StageName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@+\-]*$")]


class StageCreate(Strict):
    name: StageName = Field(description="The stage's name, unique in the run: math, chemistry, tools, code, ...")
    start_step: Step = Field(description="The training step the stage starts at; after the previous stage's")
    probe_sets: Annotated[list[Name], Field(min_length=1, max_length=32)] = Field(
        description="The probe sets this stage trains for (created beforehand); earlier stages' and ood sets "
                    "become its retention sets by themselves")


class StageOut(BaseModel):
    name: str
    position: int = Field(description="1 for the first stage")
    start_step: int
    end_step: int | None = Field(description="The next stage's start step (exclusive); None for the last stage")
    probe_sets: list[str]
    retention_sets: list[str]


MIN_PREVIEW_PROMPTS = 8
MAX_PREVIEW_PROMPTS = 2000


def _enough_prompts(value: list[str]) -> list[str]:
    if len(value) < MIN_PREVIEW_PROMPTS:
        raise ValueError(
            f"a preview needs at least {MIN_PREVIEW_PROMPTS} prompts to measure a domain distance, got {len(value)}; "
            "sample more of the stage's training prompts (64 or more give a steadier distance)"
        )
    return value


PreviewPrompt = Annotated[str, StringConstraints(min_length=1, max_length=20_000), NoNul, Documented(NO_NUL_PATTERN)]


class PreviewCreate(Strict):
    prompts: Annotated[
        list[PreviewPrompt],
        Field(max_length=MAX_PREVIEW_PROMPTS, json_schema_extra={"minItems": MIN_PREVIEW_PROMPTS}),
        AfterValidator(_enough_prompts),
    ] = Field(description=f"A sample of the stage's training prompts, {MIN_PREVIEW_PROMPTS} to "
                          f"{MAX_PREVIEW_PROMPTS}; posting again replaces the stage's preview and its forecast")


class PreviewOut(BaseModel):
    stage: str
    status: Literal["pending", "done", "failed"] = Field(
        description="pending until the worker has embedded the prompts and stored the forecast")
    n_prompts: int
    forecast: dict[str, Any] | None = Field(
        description="Per retention set: the RBF-MMD distance to the preview, the predicted loss (relative drop "
                    "of its score across the stage, positive = forgotten) with its interval; the fitted curve "
                    "and the history it was fitted on")
    error: str | None = Field(description="Why the forecast failed, and what to do")


JobStatus = Literal["todo", "doing", "succeeded", "failed", "cancelled", "aborted"]
JobKind = Literal["plan_param_drift", "param_drift_part", "aggregate_param_drift", "prepare_spectral_base",
                  "probe_drift", "measure_base", "sample_drift", "compute_risk", "stage_preview"]
"""The tasks a job may run (`GET /v1/jobs?kind=`); tests/service/test_api_jobs.py keeps it equal to
the worker's registered tasks."""


class JobOut(BaseModel):
    id: int
    task: str
    queue: str
    status: JobStatus
    attempts: int


class CheckpointCreate(Strict):
    step: Step
    uri: Location | None = Field(
        default=None,
        description=("Local path or file:// URI inside the allowed roots, s3://bucket/key or gs://bucket/key under an "
                     "allowed prefix, or hf://org/name[@revision]; omit after uploading files"),
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
    content: Annotated[str, StringConstraints(min_length=1, max_length=200_000), NoNul, AfterValidator(_not_blank),
                       Documented(NOT_BLANK_PATTERN)]


class ProbeItemIn(Strict):
    """A probe item as stored and served: `prompt` (text probe sets) or `messages` (chat)."""

    prompt: Text | None = Field(default=None, description="The prompt (text probe sets)")
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)] | None = Field(
        default=None, description="The conversation, ending with a user turn (chat probe sets)")
    reference: Text | None = None
    answer: ShortText | None = None


class TextProbeItem(Strict):
    prompt: Text = Field(description="The prompt")
    reference: Text | None = None
    answer: ShortText | None = None


class ChatProbeItem(Strict):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)] = Field(
        description="The conversation; the last message must be the user's (the reply scored is the assistant's)")
    reference: Text | None = None
    answer: ShortText | None = None


class _ProbeSetCreate(Strict):
    name: Name
    domain: Literal["in_domain", "ood"]
    description: ShortText = ""


class TextProbeSetCreate(_ProbeSetCreate):
    format: Literal["text"] = Field(default="text", description="text: items give prompts")
    items: Annotated[list[TextProbeItem], Field(min_length=1, max_length=20_000)]

    def stored_items(self) -> list[dict[str, Any]]:
        return [{"prompt": i.prompt, "messages": None, "reference": i.reference, "answer": i.answer}
                for i in self.items]


class ChatProbeSetCreate(_ProbeSetCreate):
    format: Literal["chat"] = Field(
        description="chat: items give messages, rendered with the base tokenizer's chat template")
    items: Annotated[list[ChatProbeItem], Field(min_length=1, max_length=20_000)]

    def stored_items(self) -> list[dict[str, Any]]:
        """Items as stored: a chat item's prompt is its last user turn (for display)."""
        return [{"prompt": i.messages[-1].content, "messages": [m.model_dump() for m in i.messages],
                 "reference": i.reference, "answer": i.answer} for i in self.items]

    @model_validator(mode="after")
    def _conversations_end_with_the_user(self) -> ChatProbeSetCreate:
        # The one rule JSON Schema cannot state (a condition on the last array element); the schema says it in words.
        for n, item in enumerate(self.items):
            check_messages([m.model_dump() for m in item.messages], where=f"items[{n}].messages")
        return self


# A text probe set (the default format) or a chat probe set: the items' shape follows `format`.
ProbeSetCreate = TextProbeSetCreate | ChatProbeSetCreate


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


class JobListed(JobDetail):
    kind: str = Field(description="the task without its namespace (`probe_drift`, ...)")
    run: str | None = Field(description="the run the job works for")
    step: int | None = Field(description="the step of the checkpoint the job works on, if any")
    error: str | None = Field(description=(
        "why the checkpoint's analysis of this kind failed (what to do), when it did"))


class Problem(BaseModel):
    detail: Any
