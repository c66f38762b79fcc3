"""Nothing the client is asked to send is lost silently: calls the service refuses are listed and kept
(those refused for the token are sent again once it is fixed), and the journal of a client that had
to use its own `<stem>.<pid>.jsonl` is adopted by the next client. Against a real server."""

from __future__ import annotations

from pathlib import Path

from forgetwatch_client import ForgetwatchClient
from tests.integration.service_fixture import Service, dead_url, prompts


def test_calls_refused_for_the_token_are_kept_and_sent_again_with_a_good_one(service: Service,
                                                                            tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    revoked = ForgetwatchClient(service.url, "fw_not_a_token", journal_path=journal)
    revoked.run("rotated", base_model=service.base_model)
    revoked.samples(1, [{"prompt": "kept", "response": "r"}])
    assert not revoked.flush(30)  # handled, but not delivered
    refused = revoked.failed()
    assert [(r.status_code, r.call.split()[0]) for r in refused] == [(401, "run"), (401, "samples")]
    assert revoked.stats["refused"] == 2
    revoked.close()
    refusals = journal.with_name("journal.refused.jsonl")
    assert refusals.exists() and refusals.read_text().count('"status_code":401') == 2

    fixed = service.client(journal_path=journal)  # the next start, with a valid token
    assert fixed.flush(30)
    fixed.close()
    assert fixed.failed() == [] and not refusals.exists()
    assert prompts(service, "rotated") == ["kept"]


def test_a_conflict_is_listed_kept_as_a_record_and_not_sent_again(service: Service, tmp_path: Path) -> None:
    root = Path(service.env["FORGETWATCH_CHECKPOINT_ROOTS"])
    for name in ("ours", "squatted"):
        (root / name).mkdir()
        (root / name / "model.safetensors").write_bytes(b"x")
    with service.client(blocking=True) as other:
        other.run("squat", base_model=service.base_model)
        other.checkpoint(7, root / "squatted")  # another job took step 7 first
    journal = tmp_path / "journal.jsonl"
    client = service.client(journal_path=journal)
    client.run("squat", base_model=service.base_model)
    client.checkpoint(7, root / "ours")
    client.flush(30)
    client.close()
    assert [(r.status_code, r.call.split()[0]) for r in client.failed()] == [(409, "checkpoint")]
    refusals = journal.with_name("journal.refused.jsonl")

    again = service.client(journal_path=journal)
    assert again.flush(30)
    again.close()
    assert again.stats["sent"] == 0 and refusals.exists()  # a record, not a retry
    assert [c["uri"] for c in service.get("/v1/runs/squat/checkpoints")] == [str((root / "squatted").resolve())]


def test_the_journal_of_a_client_that_found_its_journal_busy_is_adopted_later(service: Service,
                                                                             tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    holder = ForgetwatchClient(dead_url(), service.token, journal_path=journal, backoff_base=0.05)
    holder.run("adopted", base_model=service.base_model)
    second = ForgetwatchClient(dead_url(), service.token, journal_path=journal, backoff_base=0.05)
    second.run("adopted", base_model=service.base_model)
    second.samples(3, [{"prompt": "from the second client", "response": "r"}])
    second.close(timeout=0.5)
    own = list(tmp_path.glob("journal.*.jsonl"))
    assert [p.name.split(".")[1].isdigit() for p in own] == [True]  # it used journal.<pid>.jsonl
    holder.close(timeout=0.5)

    later = service.client(journal_path=journal)
    assert later.flush(30)
    later.close()
    assert prompts(service, "adopted") == ["from the second client"]
    assert not own[0].exists() and not journal.exists()
