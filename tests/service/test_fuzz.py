"""The OpenAPI document is the contract: schemathesis, with every check (`schemathesis run --checks all`)
and every phase (examples, coverage, fuzzing, stateful), finds no request where the server and its
schema disagree: no 5xx, every response documented and shaped as documented, schema-valid requests
accepted (a 404 for an absent run is fine), schema-invalid ones refused, 405 answers with `Allow`."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema
from schemathesis.generation import GenerationMode

MAX_EXAMPLES = 6  # per operation and phase: about a minute of CPU on 2 cores
CHAT_ROLES = ("system", "user", "assistant")
# Explained: a new run's base must exist on the service's disk, which no schema can state. The fuzzing
# phase's bodies get a base that exists (`_on_the_services_disk`); the examples and coverage phases do
# not pass through that hook, and their bases (the schema's hf:// example, a 4096-character string) are
# rightly refused with 422.
THE_DISK_RULE = {
    ("examples", "POST /v1/runs", "positive_data_acceptance", "Schema-valid request rejected"),
    ("coverage", "POST /v1/runs", "positive_data_acceptance", "Schema-valid request rejected"),
}


def _chat_ends_with_the_user(context: Any, body: Any) -> Any:
    """The one rule JSON Schema cannot state (the schema says it in words): a chat probe item's last
    message is the user's. Generated chat items get a user turn last; other bodies are left as they are."""
    if not isinstance(body, dict):
        return body
    for item in body.get("items") or []:
        messages = item.get("messages") if isinstance(item, dict) else None
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict) \
                and messages[-1].get("role") in CHAT_ROLES:
            messages[-1]["role"] = "user"
    return body


def _on_the_services_disk(base_model: str) -> Any:
    """The other rule no schema can state: a new run's base must exist on the service's disk (checked at
    POST /v1/runs). A generated base that is a schema-valid string is swapped for one that exists, so
    the body stays exactly as valid or invalid as generated; other bodies are left as they are."""

    def swap(context: Any, body: Any) -> Any:
        value = body.get("base_model") if isinstance(body, dict) else None
        if isinstance(value, str) and 1 <= len(value) <= 4096 and "\x00" not in value:
            body["base_model"] = base_model
        return body

    return swap


def _mislabelled_positive(recorder: Any, case_id: str, check: Any) -> bool:
    """The coverage phase builds a header scenario (say, a null `authorization`) on top of a body it
    generated as *negative* (the JSON `0`), yet labels the case positive: `positive_data_acceptance`
    then calls the right 422 for that body a rejection of valid data. Such a case is not valid data."""
    if check.name != "positive_data_acceptance":
        return False
    node = recorder.cases.get(case_id)
    components = node.value.meta.components if node is not None and node.value.meta is not None else {}
    return any(info.mode == GenerationMode.NEGATIVE for info in components.values())


def failures_of(schema: Any) -> dict[tuple[str, str, str, str], str]:
    """(phase, operation, check, title) -> a curl command that reproduces it, for every failed check."""
    found: dict[tuple[str, str, str, str], str] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None \
                            and not _mislabelled_positive(event.recorder, case_id, check):
                        key = (event.phase.value, str(event.label), check.name, check.failure_info.failure.title)
                        found.setdefault(key, check.failure_info.code_sample)
        elif isinstance(event, events.NonFatalError):
            found.setdefault((event.phase.value, str(event.label), "error", type(event.value).__name__),
                             str(event.value)[:500])
        elif isinstance(event, events.EngineFinished):
            for failure in event.failures:
                found.setdefault(("run", "", "after_run", failure.title), failure.message)
    return found


@pytest.mark.timeout(900)  # every phase of every operation; minutes on a loaded machine
def test_server_and_schema_agree_under_every_check(client: TestClient, base_model: str) -> None:
    client.post("/v1/probe-sets", json={"name": "p", "domain": "ood", "items": [{"prompt": "1+1="}]})
    client.post("/v1/runs", json={"name": "r", "base_model": base_model, "probe_sets": ["p"]})
    config = SchemathesisConfig()
    config.cache.enabled = False  # no replay of an earlier run's failures: each run is the same run
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app, config=config)
    assert len(list(schema.get_all_operations())) >= 15
    schema.config.update(headers={"Authorization": client.headers["Authorization"]})  # a write token
    schema.config.checks.update(included_check_names=["all"])
    schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True)
    schema.hook("map_body").apply_to(method="POST", path="/v1/probe-sets")(_chat_ends_with_the_user)
    schema.hook("map_body").apply_to(method="POST", path="/v1/runs")(_on_the_services_disk(base_model))

    found = failures_of(schema)
    new = {key: sample for key, sample in found.items() if key not in THE_DISK_RULE}
    assert not new, "\n".join(f"{' '.join(key)}:\n    {sample}" for key, sample in sorted(new.items()))
    stale = (THE_DISK_RULE) - set(found)
    assert not stale, f"no longer found, drop them from THE_DISK_RULE: {sorted(stale)}"
