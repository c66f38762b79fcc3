"""Domain errors. Each carries the HTTP status it maps to and a message that says what to do."""

from __future__ import annotations


class ForgetwatchError(Exception):
    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthorized(ForgetwatchError):
    status_code = 401


class Forbidden(ForgetwatchError):
    status_code = 403


class NotFound(ForgetwatchError):
    status_code = 404


class Conflict(ForgetwatchError):
    status_code = 409


class PayloadTooLarge(ForgetwatchError):
    status_code = 413


class Unprocessable(ForgetwatchError):
    status_code = 422


class ServiceUnavailable(ForgetwatchError):
    status_code = 503


class InsufficientStorage(ForgetwatchError):
    status_code = 507


class PermanentJobError(Exception):
    """A job failure that retrying cannot fix (bad file, bad input); the message is shown to users."""
