"""Checkpoints in object storage (``s3://bucket/key``) read through fsspec/s3fs.

``RemotePath`` offers the few ``pathlib`` operations opening a checkpoint needs (``/``, ``name``,
``suffix``, ``exists``, ``is_dir``, ``is_file``, ``glob`` of one folder level) and two reads:
``read_range(offset, nbytes)`` (one HTTP range request: safetensors headers and single tensors are
read this way, a checkpoint is never downloaded whole) and ``download(target)``. Credentials and the
endpoint come from the standard environment of the filesystem (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, instance
roles). Every storage error becomes a ``CheckpointError`` that says what to check; none echoes
credentials. Opening files is confined by ``drift.confined`` like local files.
"""

from __future__ import annotations

import fnmatch
import posixpath
from pathlib import Path

from drift.confined import CheckpointError

__all__ = ["SCHEMES", "RemotePath", "as_location", "is_remote", "storage_error"]

SCHEMES = ("s3://",)


def is_remote(path: object) -> bool:
    return isinstance(path, RemotePath) or (isinstance(path, str) and path.startswith(SCHEMES))


def as_location(path) -> Path | RemotePath:
    """A ``RemotePath`` for an object storage URI, else a local ``Path``."""
    if isinstance(path, RemotePath):
        return path
    return RemotePath(path) if is_remote(path) else Path(path)


def storage_error(error: BaseException, what: str) -> CheckpointError:
    """A storage failure as a message a user can act on (never the credentials, never a traceback)."""
    if isinstance(error, CheckpointError):
        return error
    if isinstance(error, FileNotFoundError):
        return CheckpointError(f"{what}: missing in object storage (deleted or not uploaded yet?); "
                               "register checkpoints only once every file is uploaded, and keep them until analysed")
    if isinstance(error, PermissionError):
        return CheckpointError(f"{what}: object storage refused access ({type(error).__name__}); check that the "
                               "worker's credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE / session token) are valid, "
                               "not expired, and may read this prefix")
    name = type(error).__name__
    if isinstance(error, (OSError, ConnectionError, TimeoutError)) or "Connect" in name or "Endpoint" in name:
        return CheckpointError(f"{what}: object storage is unreachable ({name}); check AWS_ENDPOINT_URL, the "
                               "bucket name and the worker's network")
    if "Credential" in name or "NoSuchBucket" in str(error):
        return CheckpointError(f"{what}: object storage refused the request ({name}); check the bucket and the "
                               "worker's credentials")
    return CheckpointError(f"{what}: object storage error ({name}); check the bucket, credentials and endpoint")


def _filesystem():
    import fsspec

    # retries stay few: an unreachable bucket fails the analysis with the reason instead of stalling it
    return fsspec.filesystem("s3", skip_instance_cache=True,
                             config_kwargs={"connect_timeout": 5, "read_timeout": 60,
                                            "retries": {"max_attempts": 2}})


class RemotePath:
    """``s3://bucket/key`` as a read-only path (folders are key prefixes)."""

    def __init__(self, uri: str, *, fs=None) -> None:
        if not uri.startswith(SCHEMES):
            raise ValueError(f"not an object storage URI: {uri[:200]!r} (supported: {', '.join(SCHEMES)})")
        scheme, _, key = uri.partition("://")
        self.scheme, self.key = scheme, key.rstrip("/")
        self._fs = fs

    @property
    def fs(self):
        if self._fs is None:
            self._fs = _filesystem()
        return self._fs

    def __str__(self) -> str:
        return f"{self.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: RemotePath) -> bool:
        return str(self) < str(other)

    def __truediv__(self, name: object) -> RemotePath:
        return RemotePath(f"{self}/{name}", fs=self._fs)

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    def _call(self, method: str, *args, **kwargs):
        try:
            return getattr(self.fs, method)(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - every storage error becomes an actionable message
            raise storage_error(error, self.name or str(self)) from None

    def info(self) -> dict:
        return self._call("info", self.key)

    def exists(self) -> bool:
        return bool(self._call("exists", self.key))

    def _kind(self) -> str | None:
        """"file", "directory", or None when nothing is there."""
        try:
            return self.fs.info(self.key).get("type")
        except FileNotFoundError:
            return None
        except Exception as error:  # noqa: BLE001 - every storage error becomes an actionable message
            raise storage_error(error, self.name or str(self)) from None

    def is_dir(self) -> bool:
        return self._kind() == "directory"

    def is_file(self) -> bool:
        return self._kind() == "file"

    def size(self) -> int:
        return int(self.info().get("size") or 0)

    def glob(self, pattern: str) -> list[RemotePath]:
        """Files directly in this folder whose name matches ``pattern``."""
        entries = self._call("ls", self.key, detail=True, refresh=True)
        return sorted(self / posixpath.basename(e["name"].rstrip("/")) for e in entries
                      if e.get("type") == "file" and fnmatch.fnmatch(posixpath.basename(e["name"]), pattern))

    def iterdir(self) -> list[RemotePath]:
        return self.glob("*")

    def read_range(self, offset: int, nbytes: int) -> bytes:
        """``nbytes`` bytes from ``offset`` (one range request); short only at the end of the object."""
        if nbytes <= 0:
            return b""
        return self._call("cat_file", self.key, start=offset, end=offset + nbytes)

    def download(self, target: Path) -> None:
        self._call("get_file", self.key, str(target))
