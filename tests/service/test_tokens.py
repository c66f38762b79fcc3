"""`forgetwatch token list|revoke`: a revoked token is refused from its next request on, reads and
writes alike, and listing never shows a token or its hash."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.cli import main


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


def test_revoked_token_is_refused_on_its_next_request(cli, client: TestClient, tokens: dict[str, str]) -> None:
    assert client.post("/v1/runs", json={"name": "r", "base_model": "/m"}).status_code == 201
    assert "revoked at" in cli("revoke", "test-write")
    write = client.post("/v1/runs", json={"name": "s", "base_model": "/m"})
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
