"""The token cache: a token the database accepted is trusted for at most the TTL, never past its
expiry, and a cached token costs the request no token lookup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from service.api.token_cache import TokenCache
from service.db.session import make_sessionmaker
from service.db.tokens import revoke_token
from service.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_served_until_the_ttl_and_not_after() -> None:
    clock = Clock()
    cache: TokenCache[str] = TokenCache(5, clock=clock)
    cache.put("h", "alice", expires_at=None)
    clock.now += 4.9
    assert cache.get("h") == "alice"
    clock.now += 0.1
    assert cache.get("h") is None
    assert len(cache) == 0


def test_an_entry_is_never_served_at_or_past_the_token_expiry() -> None:
    wall = datetime(2030, 1, 1, tzinfo=UTC)
    cache: TokenCache[str] = TokenCache(300, clock=Clock(), wall_clock=lambda: wall)
    cache.put("soon", "bob", expires_at=wall + timedelta(seconds=1))
    cache.put("now", "carol", expires_at=wall)
    assert cache.get("soon") == "bob"
    assert cache.get("now") is None


def test_ttl_zero_caches_nothing_and_the_oldest_entry_goes_first() -> None:
    off: TokenCache[str] = TokenCache(0)
    off.put("h", "x", expires_at=None)
    assert off.get("h") is None
    small: TokenCache[str] = TokenCache(60, max_entries=2)
    for key in ("a", "b", "c"):
        small.put(key, key, expires_at=None)
    assert (small.get("a"), small.get("b"), small.get("c")) == (None, "b", "c")


@pytest.mark.parametrize("bad", [{"ttl_seconds": -1}, {"ttl_seconds": 1, "max_entries": 0}])
def test_invalid_cache_bounds_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad)) if len(bad) == 1 else "max_entries"):
        TokenCache(**bad)


def _token_lookups(engine: Engine) -> list[str]:
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        if "api_tokens" in statement:
            seen.append(statement)

    return seen


def test_a_cached_token_costs_no_lookup_on_reads_and_writes(client: TestClient, base_model: str, engine: Engine) -> None:
    assert client.post("/v1/runs", json={"name": "r", "base_model": base_model}).status_code == 201
    lookups = _token_lookups(engine)
    assert client.post("/v1/runs/r/labels", json={"step": 1, "labels": {"acc": 0.5}}).status_code == 202
    assert client.get("/v1/runs/r/labels").json()["labels"] == [{"step": 1, "acc": 0.5}]
    assert lookups == []


def test_a_revoked_token_is_refused_once_the_ttl_has_passed(client: TestClient, base_model: str, engine: Engine,
                                                             settings: Settings) -> None:
    clock = Clock()
    client.app.state.token_cache = TokenCache(settings.token_cache_seconds, clock=clock)
    assert client.post("/v1/runs", json={"name": "r", "base_model": base_model}).status_code == 201
    with make_sessionmaker(engine).begin() as session:
        revoke_token(session, ref="test-write")
    clock.now += settings.token_cache_seconds
    refused = client.post("/v1/runs", json={"name": "s", "base_model": base_model})
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    assert client.get("/v1/runs").status_code == 401


def test_an_unknown_token_is_looked_up_every_time(client: TestClient, engine: Engine) -> None:
    lookups = _token_lookups(engine)
    for _ in range(2):
        assert client.get("/v1/runs", headers={"Authorization": "Bearer fw_nobody"}).status_code == 401
    assert len(lookups) == 2


def test_the_cache_setting_is_bounded_and_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGETWATCH_TOKEN_CACHE_SECONDS", "3600")
    with pytest.raises(ValueError, match="token_cache_seconds"):
        Settings()


def test_pages_and_metrics_authenticate_through_the_same_cached_lookup(client: TestClient, engine: Engine,
                                                                       tokens: dict[str, str]) -> None:
    client.app.state.settings = client.app.state.settings.model_copy(
        update={"public_pages": False, "protect_metrics": True})
    reader = {"Authorization": f"Bearer {tokens['read']}"}
    lookups = _token_lookups(engine)
    for path in ("/", "/metrics", "/", "/metrics"):
        assert client.get(path, headers=reader).status_code == 200
    assert len(lookups) == 1  # the first request looked the token up; the rest were served from the cache
    refused = client.get("/", headers={"Authorization": "Bearer fw_nobody"})
    assert refused.status_code == 401 and "FORGETWATCH_PUBLIC_PAGES" in refused.text
    assert client.get("/metrics", headers={"Authorization": ""}).status_code == 401


def test_requests_that_miss_one_token_together_share_one_lookup() -> None:
    """When an entry ends, every request carrying the token misses at once: one lookup serves them all
    (its answer or its error), and the next miss after it looks up again."""
    import asyncio

    cache: TokenCache[str] = TokenCache(5)
    calls = 0

    async def main() -> None:
        nonlocal calls
        release = asyncio.Event()

        async def lookup() -> str:
            nonlocal calls
            calls += 1
            await release.wait()
            return "alice"

        waiting = [asyncio.create_task(cache.look_up_once("h", lookup)) for _ in range(20)]
        await asyncio.sleep(0)  # every task runs up to its wait
        release.set()
        assert await asyncio.gather(*waiting) == ["alice"] * 20
        assert calls == 1

        async def refused() -> str:
            nonlocal calls
            calls += 1
            raise PermissionError("revoked")

        results = await asyncio.gather(*[cache.look_up_once("h", refused) for _ in range(5)], return_exceptions=True)
        assert all(isinstance(r, PermissionError) for r in results) and calls == 2
        assert await cache.look_up_once("h", lookup) == "alice" and calls == 3

    asyncio.run(main())
