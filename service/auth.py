"""API tokens without the database: scopes, the stored hash, expiry parsing (storage: `service.db.tokens`)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

# Each scope includes the ones before it: admin can also write, write can also read.
SCOPES = ("read", "write", "admin")


def allows(scope: str, needed: str) -> bool:
    return scope in SCOPES and SCOPES.index(scope) >= SCOPES.index(needed)


def hash_token(token: str) -> str:
    # Tokens are 256 random bits, so a fast hash is enough; nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


_UNITS = {"m": 60, "h": 3600, "d": 86400}


def parse_expiry(text: str, *, now: datetime) -> datetime:
    """`30d`, `12h`, `90m` after `now`, or an ISO date/time (UTC unless it says otherwise)."""
    value = text.strip()
    if value[:-1].isdigit() and value[-1:] in _UNITS:
        return now + timedelta(seconds=int(value[:-1]) * _UNITS[value[-1]])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--expires {text!r}: give a duration (30d, 12h, 90m) or an ISO date such as "
                         "2027-01-31 or 2027-01-31T12:00+01:00") from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if moment <= now:
        raise ValueError(f"--expires {text!r} is in the past")
    return moment
