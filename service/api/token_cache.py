"""A short in-process cache of authenticated tokens, so a request does not cost a database lookup.

What it promises, and what it does not:
- Only tokens the database accepted are cached (by their SHA-256 hash, never the token itself); an
  unknown, revoked or expired token is looked up every time, so a new token works at once.
- An entry lives at most `FORGETWATCH_TOKEN_CACHE_SECONDS` (default 5 s; 0 turns the cache off).
  A revocation is therefore honoured by every API process within that many seconds.
- A token's expiry is honoured exactly: an entry is never used at or past the token's `expires_at`
  (by this process's clock; the database's clock decides on every lookup).
- At most `max_entries` tokens are held; the oldest entry goes first.
- A miss is looked up once: requests that miss the same token together (its entry ends for all of
  them at the same moment) wait for one lookup (`look_up_once`) instead of each taking a connection.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Generic, TypeVar

T = TypeVar("T")


class TokenCache(Generic[T]):
    """token hash -> principal, each entry kept `ttl_seconds` at most and never past its expiry."""

    def __init__(self, ttl_seconds: float, *, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        if ttl_seconds < 0:
            raise ValueError(f"ttl_seconds must be >= 0, got {ttl_seconds}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._wall_clock = wall_clock
        self._entries: OrderedDict[str, tuple[T, float, datetime | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._lookups: dict[str, asyncio.Future[T]] = {}

    def get(self, token_hash: str) -> T | None:
        """The cached principal, or None when absent, older than the TTL or past the token's expiry."""
        if self.ttl_seconds == 0:
            return None
        with self._lock:
            entry = self._entries.get(token_hash)
            if entry is None:
                return None
            principal, stored_at, expires_at = entry
            if self._clock() - stored_at >= self.ttl_seconds or (
                    expires_at is not None and self._wall_clock() >= expires_at):
                del self._entries[token_hash]
                return None
            return principal

    def put(self, token_hash: str, principal: T, *, expires_at: datetime | None) -> None:
        """Remember a token the database has just accepted."""
        if self.ttl_seconds == 0:
            return
        with self._lock:
            self._entries[token_hash] = (principal, self._clock(), expires_at)
            self._entries.move_to_end(token_hash)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    async def look_up_once(self, token_hash: str, lookup: Callable[[], Awaitable[T]]) -> T:
        """The cached principal, else the result of `lookup()`, which runs once however many requests
        of this event loop miss the token meanwhile (each waits for it; its error is theirs)."""
        known = self.get(token_hash)
        if known is not None:
            return known
        pending = self._lookups.get(token_hash)
        if pending is None:
            pending = asyncio.ensure_future(lookup())
            self._lookups[token_hash] = pending
            pending.add_done_callback(lambda _: self._lookups.pop(token_hash, None))
        return await asyncio.shield(pending)  # a caller that goes away does not cancel the others' lookup

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
