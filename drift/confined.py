"""Opening the files of a checkpoint, confined to a set of root folders.

A checkpoint folder is untrusted input: its ``*.index.json`` may name shards anywhere and any file in
it may be a symlink. Every file read from a checkpoint goes through ``open_confined``, which, when
given ``roots``:

* resolves the path (symlinks, ``..``) and refuses it unless it lies inside one of ``roots``;
* opens the resolved path with ``O_NOFOLLOW`` (a symlink swapped in after the check fails to open);
* checks the opened descriptor's own path (``/proc/self/fd``) against ``roots`` again, which also
  catches a parent folder swapped for a symlink between the check and the open;
* refuses anything but a regular file (devices, FIFOs, sockets).

Names a checkpoint gives for its own files (shards in an index) must be relative and free of ``..``
(``member``). Messages name files as the checkpoint names them and never say where a path resolved
to, nor quote a file's bytes. ``roots=None`` means "no confinement" (the offline ``forgetwatch diff``).

Checkpoints in object storage (``drift.remote.RemotePath``) are confined the same way: ``roots`` may
hold URI prefixes (``"s3://bucket/prefix"``, ``"gs://bucket/prefix"``), and a remote file is read (``open_reader``) only when
its URI lies under one of them; keys never hold ``..`` (``member`` refuses it in index entries).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Self

__all__ = ["CheckpointError", "Reader", "Roots", "check_model_folder", "member", "open_confined", "open_reader",
           "read_json"]

Roots = Sequence[Path | str] | None  # local folders, and URI prefixes for object storage

MAX_JSON_BYTES = 16 * 2**20  # config.json, *.index.json, adapter_config.json
_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


class CheckpointError(ValueError):
    """A checkpoint could not be read safely; the message names the file and what to do."""


def _inside(path: str, roots: Sequence[Path | str]) -> bool:
    real = Path(path)
    return any(isinstance(root, Path) and (real == root or real.is_relative_to(root)) for root in roots)


def remote_inside(uri: str, roots: Roots) -> bool:
    """An object storage URI under one of the URI prefixes in ``roots`` (segment-wise, no ``..``)."""
    if roots is None:
        return True
    if "/../" in f"{uri}/" or "/./" in f"{uri}/":
        return False
    prefixes = [str(r).rstrip("/") for r in roots if not isinstance(r, Path)]
    return any(uri == prefix or uri.startswith(prefix + "/") for prefix in prefixes)


def _fd_path(fd: int) -> str | None:
    """Where an open descriptor really points (Linux); None where /proc is not available."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def member(folder: Path, name: object, *, listed_in: str) -> Path:
    """``folder / name`` for a file name taken from the checkpoint's own metadata (``listed_in``)."""
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise CheckpointError(f"{listed_in}: a file name in it is not a plain relative path; the index is corrupt")
    parts = PurePosixPath(name)
    if parts.is_absolute() or ".." in parts.parts:
        raise CheckpointError(
            f"{listed_in}: names a file that is not inside the checkpoint folder (an absolute path or "
            "'..'); shard names must be relative to the folder"
        )
    return folder / parts


def open_confined(path: Path, roots: Roots) -> int:
    """A read-only descriptor of the regular file ``path``, which must lie inside ``roots``."""
    label = path.name
    if roots is None:
        real = str(path)
        flags = _FLAGS
    else:
        real = os.path.realpath(path)
        if not _inside(real, roots):
            raise CheckpointError(
                f"{label}: lies outside the allowed checkpoint roots (a symlink or index entry pointing "
                "elsewhere); copy the file itself into the checkpoint folder"
            )
        flags = _FLAGS | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise CheckpointError(f"{label}: missing; download or copy every file of the checkpoint") from None
    except OSError as error:
        raise CheckpointError(f"{label}: cannot be opened ({error.strerror}); check the file") from None
    try:
        opened = _fd_path(fd) if roots is not None else None
        if opened is not None and roots is not None and not _inside(opened, roots):
            raise CheckpointError(f"{label}: changed to point outside the allowed checkpoint roots while opening")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError(f"{label}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


class Reader:
    """Positional reads of one confined file, local (a descriptor from ``open_confined``) or remote
    (range requests). ``size`` is the file's length. Close it, or use it as a context manager."""

    def __init__(self, path: Any, roots: Roots) -> None:
        self._remote = hasattr(path, "read_range")  # a drift.remote.RemotePath
        self.path: Any = path if self._remote else Path(path)
        self._fd: int | None = None
        self._size: int | None = None
        if self._remote:
            if not remote_inside(str(path), roots):
                raise CheckpointError(f"{path.name}: lies outside the allowed checkpoint prefixes; keep every file "
                                      "of the checkpoint under its own prefix")
        else:
            self._fd = open_confined(path, roots)
            self._size = os.fstat(self._fd).st_size

    @property
    def size(self) -> int:
        """The file's length (for an object: one metadata request, made only when asked)."""
        if self._size is None:
            info = self.path.info()
            if info.get("type") != "file":
                raise CheckpointError(f"{self.path.name}: not a file in object storage")
            self._size = int(info.get("size") or 0)
        return self._size

    def read_at(self, offset: int, nbytes: int) -> bytes:
        if self._remote:
            return bytes(self.path.read_range(offset, nbytes))
        assert self._fd is not None
        chunks, done = [], 0
        while done < nbytes:
            chunk = os.pread(self._fd, nbytes - done, offset + done)
            if not chunk:
                break
            chunks.append(chunk)
            done += len(chunk)
        return b"".join(chunks)

    def copy_to(self, target: Path, *, chunk_bytes: int = 8 * 2**20) -> int:
        """Write the whole file to ``target`` in chunks (range requests for a remote file); its size."""
        done = 0
        with open(target, "wb") as out:
            while done < self.size:
                chunk = self.read_at(done, min(chunk_bytes, self.size - done))
                if not chunk:
                    raise CheckpointError(f"{self.path.name}: ended after {done} of {self.size} bytes; re-upload it")
                out.write(chunk)
                done += len(chunk)
        return done

    def fileno(self) -> int:
        if self._fd is None:
            raise CheckpointError(f"{self.path.name}: an object storage file cannot be memory-mapped")
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_reader(path: Any, roots: Roots) -> Reader:
    """A ``Reader`` of ``path`` (a local ``Path`` or a ``RemotePath``), confined to ``roots``."""
    return Reader(path, roots)


def read_json(path: Any, roots: Roots, *, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """A JSON object from a checkpoint's metadata file, at most ``max_bytes`` long."""
    with open_reader(path, roots) as reader:
        raw = reader.read_at(0, min(reader.size, max_bytes + 1)) if reader.size else b""
    if len(raw) > max_bytes:
        raise CheckpointError(f"{path.name}: larger than {max_bytes} bytes; not a model metadata file")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path.name}: not valid JSON; re-save or re-download it") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path.name}: not a JSON object; re-save or re-download it")
    return value


def check_model_folder(folder: Path, roots: Roots) -> None:
    """Before a library that opens files by name (transformers) reads ``folder``: every file in it,
    and every shard its indexes list, lies inside ``roots`` and is a regular file; ``config.json``
    and the indexes are valid JSON within ``MAX_JSON_BYTES``."""
    if roots is None:
        return
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():
            continue  # transformers reads the files at the top level only
        os.close(open_confined(Path(entry.path), roots))
        if entry.name == "config.json" or entry.name.endswith(".index.json"):
            # Other JSON (tokenizer.json reaches 30 MB for large vocabularies) is left to its reader.
            data = read_json(Path(entry.path), roots)
            if entry.name.endswith(".index.json"):
                weight_map = data.get("weight_map")
                if not isinstance(weight_map, dict):
                    raise CheckpointError(f"{entry.name}: no 'weight_map' object; the index is corrupt")
                shards = {member(folder, shard, listed_in=entry.name) for shard in weight_map.values()}
                for shard in sorted(shards):
                    os.close(open_confined(shard, roots))
