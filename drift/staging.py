"""A bounded local cache of model folders from object storage, for libraries that load from disk.

transformers and peft read a model folder by file name, so a probe job copies the folder's
top-level files (what ``from_pretrained`` reads) from object storage into
``cache_dir/<digest>/`` and loads that. The digest covers the URI and each file's name, size and
version (S3's ETag, GCS's generation), so a replaced object is fetched again. Every file is read through ``drift.confined``
(``open_reader``: the URI must lie under an allowed prefix). The cache holds at most ``max_bytes``:
before a new folder is copied, the least recently used complete folders are removed until it fits;
a folder larger than ``max_bytes`` is refused with the setting to raise. Staging is serialised per
cache folder (a file lock), so concurrent jobs never copy the same folder twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import time
from pathlib import Path

from drift.confined import CheckpointError, Roots, open_reader
from drift.remote import RemotePath

__all__ = ["cached_bytes", "stage_folder"]

_DONE = ".complete"


def _entries(cache_dir: Path, *, clean: bool = False) -> list[tuple[float, Path]]:
    """Complete cached folders, least recently used first; with ``clean`` (under the lock), folders
    a killed job left half-copied are removed."""
    out = []
    for folder in cache_dir.iterdir() if cache_dir.is_dir() else ():
        if not folder.is_dir():
            continue
        if (folder / _DONE).is_file():
            out.append(((folder / _DONE).stat().st_mtime, folder))
        elif clean:
            shutil.rmtree(folder, ignore_errors=True)
    return sorted(out)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def cached_bytes(cache_dir: Path) -> int:
    """Bytes held by complete cached folders."""
    return sum(_size(folder) for _, folder in _entries(cache_dir))


@contextlib.contextmanager
def _locked(cache_dir: Path):
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def stage_folder(location: RemotePath, cache_dir: Path, *, max_bytes: int, roots: Roots) -> Path:
    """A local copy of the top-level files of the object storage folder ``location``."""
    files = location.glob("*")
    if not files:
        raise CheckpointError(f"{location.name}: no files under this prefix in object storage (deleted, or not "
                              "uploaded yet?)")
    if any(f.name in ("", ".", "..") or "\x00" in f.name for f in files):
        raise CheckpointError(f"{location.name}: holds an object named '.' or '..'; not a model folder")
    described = [(f, f.info()) for f in files]
    total = sum(int(info.get("size") or 0) for _, info in described)
    if total > max_bytes:
        raise CheckpointError(f"{location.name}: {total} bytes, more than the local cache may hold ({max_bytes}); "
                              "raise FORGETWATCH_CACHE_MAX_BYTES on the probe workers")
    blob = repr([str(location)] + [(f.name, info.get("size"), f.version(info)) for f, info in described])
    target = cache_dir / hashlib.sha256(blob.encode()).hexdigest()[:32]
    with _locked(cache_dir):
        if (target / _DONE).is_file():
            os.utime(target / _DONE)  # most recently used
            return target
        entries = _entries(cache_dir, clean=True)
        used = sum(_size(folder) for _, folder in entries)
        for _, folder in entries:
            if used + total <= max_bytes:
                break
            used -= _size(folder)
            shutil.rmtree(folder, ignore_errors=True)
        partial = cache_dir / f".partial-{os.getpid()}-{time.monotonic_ns()}"
        partial.mkdir()
        try:
            for file, _ in described:
                with open_reader(file, roots) as reader:
                    reader.copy_to(partial / file.name)
            (partial / _DONE).touch()
            os.replace(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return target
