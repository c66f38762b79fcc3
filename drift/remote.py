"""Checkpoints in object storage (``s3://bucket/key``, ``gs://bucket/key``) read through fsspec.

One implementation for every object store: ``STORES`` is a table of schemes, each naming its fsspec
filesystem (s3fs, gcsfs), the info field that changes whenever an object is replaced, and the
standard environment its credentials and endpoint come from (named in error messages).

``RemotePath`` offers the few ``pathlib`` operations opening a checkpoint needs (``/``, ``name``,
``suffix``, ``exists``, ``is_dir``, ``is_file``, ``glob`` of one folder level) and two reads:
``read_range(offset, nbytes)`` (one HTTP range request: safetensors headers and single tensors are
read this way, a checkpoint is never downloaded whole) and ``download(target)``. Credentials and the
endpoint come from the standard environment of the filesystem: for S3 ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, instance
roles; for Google Cloud Storage ``GOOGLE_APPLICATION_CREDENTIALS`` or the metadata server,
``STORAGE_EMULATOR_HOST`` for another endpoint and fsspec's ``FSSPEC_GS_TOKEN=anon`` for anonymous
access. Every storage error becomes a ``CheckpointError`` that says what to check; none echoes
credentials. Opening files is confined by ``drift.confined`` like local files.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drift.confined import CheckpointError

__all__ = ["SCHEMES", "STORES", "ObjectStore", "RemotePath", "as_location", "is_remote", "normal_uri",
           "storage_error"]


def _s3_filesystem() -> Any:
    import fsspec

    # retries stay few: an unreachable bucket fails the analysis with the reason instead of stalling it
    return fsspec.filesystem("s3", skip_instance_cache=True,
                             config_kwargs={"connect_timeout": 5, "read_timeout": 60,
                                            "retries": {"max_attempts": 2}})


def _gcs_filesystem() -> Any:
    # gcsfs's JSON API client, not the default class that first asks the Storage Control gRPC API for
    # each bucket's layout (zonal and hierarchical buckets): a checkpoint is read with range requests
    # on the JSON API alone, which needs no extra permission and answers at once from an emulator.
    from gcsfs.core import GCSFileSystem

    return GCSFileSystem(skip_instance_cache=True, requests_timeout=60)


@dataclass(frozen=True)
class ObjectStore:
    """One object storage scheme: how to reach it and what to tell the user when it fails."""

    scheme: str  # "s3"
    title: str  # what messages call it
    filesystem: Callable[[], Any]  # an fsspec filesystem reading from the standard environment
    version_field: str  # the info field that changes whenever an object is replaced
    credentials: str  # where the worker's credentials come from
    endpoint: str  # where its endpoint comes from


STORES: dict[str, ObjectStore] = {store.scheme: store for store in (
    ObjectStore("s3", "S3", _s3_filesystem, "ETag",
                "AWS_ACCESS_KEY_ID / AWS_PROFILE / session token", "AWS_ENDPOINT_URL"),
    ObjectStore("gs", "Google Cloud Storage", _gcs_filesystem, "generation",
                "GOOGLE_APPLICATION_CREDENTIALS / the metadata server's service account", "STORAGE_EMULATOR_HOST"),
)}
SCHEMES = tuple(f"{scheme}://" for scheme in STORES)


def is_remote(path: object) -> bool:
    return isinstance(path, RemotePath) or (isinstance(path, str) and path.startswith(SCHEMES))


def as_location(path) -> Path | RemotePath:
    """A ``RemotePath`` for an object storage URI, else a local ``Path``."""
    if isinstance(path, RemotePath):
        return path
    return RemotePath(path) if is_remote(path) else Path(path)


def normal_uri(uri: str) -> str:
    """``scheme://bucket/key`` without empty segments or a trailing slash; ValueError (quoting what was
    wrong) for another scheme, no bucket, or ``.``/``..`` segments."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in STORES:
        raise ValueError(f"{uri[:200]!r} is not an object storage URI ({', '.join(f'{s}bucket/key' for s in SCHEMES)})")
    bucket, _, key = rest.partition("/")
    parts = [p for p in key.split("/") if p]
    if not bucket or any(p in (".", "..") for p in parts):
        raise ValueError(f"{uri[:200]!r} needs a bucket and no '.' or '..' segments")
    return f"{scheme}://" + "/".join([bucket, *parts])


def storage_error(error: BaseException, what: str, *, store: ObjectStore) -> CheckpointError:
    """A failure of `store` as a message a user can act on (never the credentials, never a traceback)."""
    if isinstance(error, CheckpointError):
        return error
    if isinstance(error, FileNotFoundError):
        return CheckpointError(f"{what}: missing in object storage (deleted, not uploaded yet, or no such bucket?); "
                               "register checkpoints only once every file is uploaded, and keep them until analysed")
    refused = getattr(error, "code", None) in (401, 403) or str(error).startswith("Forbidden")
    if isinstance(error, PermissionError) or refused:
        return CheckpointError(f"{what}: {store.title} refused access ({type(error).__name__}); check that the "
                               f"worker's credentials ({store.credentials}) are valid, not expired, and may read "
                               "this prefix")
    name = type(error).__name__
    if isinstance(error, (OSError, ConnectionError, TimeoutError)) or "Connect" in name or "Endpoint" in name:
        return CheckpointError(f"{what}: {store.title} is unreachable ({name}); check {store.endpoint}, the "
                               "bucket name and the worker's network")
    if "Credential" in name or "NoSuchBucket" in str(error):
        return CheckpointError(f"{what}: {store.title} refused the request ({name}); check the bucket and the "
                               f"worker's credentials ({store.credentials})")
    return CheckpointError(f"{what}: {store.title} error ({name}); check the bucket, credentials and {store.endpoint}")


class RemotePath:
    """``scheme://bucket/key`` as a read-only path (folders are key prefixes)."""

    def __init__(self, uri: str, *, fs=None) -> None:
        if not uri.startswith(SCHEMES):
            raise ValueError(f"not an object storage URI: {uri[:200]!r} (supported: {', '.join(SCHEMES)})")
        scheme, _, key = uri.partition("://")
        self.scheme, self.key = scheme, key.rstrip("/")
        self.store = STORES[scheme]
        self._fs = fs

    @property
    def fs(self):
        if self._fs is None:
            self._fs = self.store.filesystem()
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
            raise storage_error(error, self.name or str(self), store=self.store) from None

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
            raise storage_error(error, self.name or str(self), store=self.store) from None

    def is_dir(self) -> bool:
        return self._kind() == "directory"

    def is_file(self) -> bool:
        return self._kind() == "file"

    def size(self) -> int:
        return int(self.info().get("size") or 0)

    def version(self, info: dict | None = None) -> str:
        """What changes whenever the object is replaced (S3's ETag, GCS's generation)."""
        return str((self.info() if info is None else info).get(self.store.version_field, ""))

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
