"""`forgetwatch token create --expires|list|revoke`: an expired token is refused from its next
request on, a revoked one once the token cache's TTL has passed, reads and writes alike, and listing
never shows a token or its hash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.api.token_cache import TokenCache
from service.auth import parse_expiry
from service.cli import main
from service.db.session import make_sessionmaker
from service.db.tokens import create_token


@pytest.fixture
def cli(settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    monkeypatch.setenv("FORGETWATCH_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("FORGETWATCH_DATA_DIR", str(settings.data_dir))

    def run(*argv: str) -> str:
        main(["token", *argv])
        return capsys.readouterr().out

    return run


def test_list_shows_every_token_but_never_the_secret(cli, tokens: dict[str, str]) -> None:
    listing = cli("list")
    assert "test-read" in listing and "test-write" in listing
    assert all(token not in listing for token in tokens.values())
    assert "fw_" not in listing


def test_revoked_token_is_refused_once_the_cache_ttl_has_passed(cli, client: TestClient, base_model: str, tokens: dict[str, str],
                                                               settings) -> None:
    now = [0.0]
    client.app.state.token_cache = TokenCache(settings.token_cache_seconds, clock=lambda: now[0])
    assert client.post("/v1/runs", json={"name": "r", "base_model": base_model}).status_code == 201
    assert "revoked at" in cli("revoke", "test-write")
    now[0] += settings.token_cache_seconds
    write = client.post("/v1/runs", json={"name": "s", "base_model": base_model})
    assert write.status_code == 401
    assert client.get("/v1/runs").status_code == 401  # the same token, read route
    reader = {"Authorization": f"Bearer {tokens['read']}"}
    assert client.get("/v1/runs", headers=reader).status_code == 200  # other tokens are untouched
    listing = [line for line in cli("list").splitlines() if "test-write" in line]
    assert len(listing) == 1 and not listing[0].endswith("-")


def test_revoke_by_id_twice_keeps_the_first_time(cli, tokens: dict[str, str]) -> None:
    first = cli("revoke", "1")
    assert cli("revoke", "1") == first


@pytest.mark.parametrize("ref", ["nobody", "999"])
def test_revoking_an_unknown_token_says_what_to_do(cli, tokens: dict[str, str], ref: str) -> None:
    with pytest.raises(SystemExit, match="forgetwatch token list"):
        cli("revoke", ref)


def test_an_expired_token_is_refused_for_reads_and_writes(client: TestClient, base_model: str, engine: Engine) -> None:
    with make_sessionmaker(engine)() as session:
        expired = create_token(session, name="old", scope="write", expires_at=datetime(2020, 1, 1, tzinfo=UTC))
        session.commit()
    headers = {"Authorization": f"Bearer {expired}"}
    assert client.get("/v1/runs", headers=headers).status_code == 401
    refused = client.post("/v1/runs", json={"name": "r", "base_model": base_model}, headers=headers)
    assert refused.status_code == 401
    assert "expired" in refused.json()["detail"]


def test_create_with_expires_gives_a_working_token_with_its_expiry_listed(cli, client: TestClient,
                                                                          tokens: dict[str, str]) -> None:
    token = cli("create", "--name", "ci", "--scope", "read", "--expires", "30d").strip()
    assert client.get("/v1/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    (line,) = [line for line in cli("list").splitlines() if " ci " in line]
    assert line.split()[5] != "-" and line.split()[-1] == "-"  # an expiry, not revoked


NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("30d", NOW + timedelta(days=30)), ("12h", NOW + timedelta(hours=12)), ("90m", NOW + timedelta(minutes=90)),
    ("2027-01-31", datetime(2027, 1, 31, tzinfo=UTC)),
    ("2027-01-31T12:00+01:00", datetime(2027, 1, 31, 11, 0, tzinfo=UTC)),
])
def test_expiry_is_a_duration_or_a_date(text: str, expected: datetime) -> None:
    assert parse_expiry(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["soon", "30x", "-5d", "2020-01-01"])
def test_a_bad_or_past_expiry_says_what_to_give(text: str) -> None:
    with pytest.raises(ValueError, match="--expires"):
        parse_expiry(text, now=NOW)


def test_the_command_refuses_a_bad_expiry_without_a_traceback(cli) -> None:
    with pytest.raises(SystemExit, match="give a duration"):
        cli("create", "--name", "x", "--expires", "soon")
