"""Checkpoint and base model URIs -> local paths or object storage locations, confined to the allow-list."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from drift.remote import SCHEMES, RemotePath, normal_uri
from service.errors import Forbidden, ForgetwatchError, Unprocessable

_HF_URI = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?)(?:@(?P<revision>[A-Za-z0-9][\w.-]*))?/?$")


def resolve_hf_uri(uri: str, roots: list[Path], *, cache_dir: Path | None = None) -> Path:
    """`hf://org/name[@revision]` (revision: a branch, tag or commit; default main) as the snapshot
    folder in the local Hugging Face cache (nothing is downloaded), which must lie inside `roots`."""
    match = _HF_URI.match(uri)
    if match is None or ".." in uri:
        raise Unprocessable(f"{uri[:300]!r} is not hf://org/name or hf://org/name@revision")
    repo, revision = match["repo"], match["revision"] or "main"
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or a corrupt cache entry): the same advice either way
        raise Unprocessable(
            f"{uri[:300]!r} is not in the service's local Hugging Face cache; download it there first "
            f"(huggingface-cli download {repo} --revision {revision}) or give a path"
        ) from None
    try:
        return resolve_checkpoint_uri(str(folder), roots)
    except Forbidden:
        raise Forbidden(f"{uri[:300]!r} lies in a Hugging Face cache outside the allowed checkpoint roots; add the "
                        "cache folder to FORGETWATCH_CHECKPOINT_ROOTS on the service") from None


def resolve_location(uri: str, roots: list[Path], prefixes: list[str], *,
                     hf_cache: Path | None = None) -> Path | RemotePath:
    """A local path (`resolve_checkpoint_uri`); for `hf://org/name@revision` the snapshot folder in the
    local Hugging Face cache `hf_cache`; for object storage (`s3://bucket/key`, `gs://bucket/key`), a
    `RemotePath` that lies under one of the allowed `prefixes` (segment-wise; no `.` or `..` segments,
    no query). Raises Forbidden (never saying anything about what the URI points at) or Unprocessable."""
    if uri.startswith("hf://"):
        return resolve_hf_uri(uri, roots, cache_dir=hf_cache)
    if not uri.startswith(SCHEMES):
        return resolve_checkpoint_uri(uri, roots)
    scheme = uri.partition("://")[0]
    if "\x00" in uri or "?" in uri or "#" in uri:
        raise Unprocessable(f"object storage URI {uri[:300]!r} holds '?', '#' or NUL; give {scheme}://bucket/key")
    try:
        normal = normal_uri(uri)
    except ValueError:
        raise Unprocessable(f"object storage URI {uri[:300]!r} needs a bucket and no '.' or '..' segments") from None
    if not any(normal == prefix or normal.startswith(prefix + "/") for prefix in prefixes):
        raise Forbidden(f"{uri[:300]!r} is outside the allowed checkpoint prefixes; add its prefix "
                        f"({scheme}://bucket/prefix) to FORGETWATCH_CHECKPOINT_ROOTS on the service")
    return RemotePath(normal)


def resolve_checkpoint_uri(uri: str, roots: list[Path]) -> Path:
    """Resolve `uri` (absolute path or file:// URI), following symlinks and `..`, and check that the
    result lies inside one of `roots` (already resolved). Raises Forbidden or Unprocessable."""
    if "\x00" in uri:
        raise Unprocessable("uri contains a NUL byte")
    if uri.startswith("file:"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise Forbidden(f"file URI {uri!r} names a remote host; give a path on the service's own disk")
        raw = unquote(parsed.path)
    elif "://" in uri:
        raise Unprocessable(
            f"unsupported URI {uri[:300]!r}: give an absolute local path, a file:// URI, s3:// or gs://bucket/key, hf://org/name@revision, "
            "or upload the files with PUT /v1/runs/{run}/checkpoints/{step}/files/{filename}"
        )
    else:
        raw = uri
    if not os.path.isabs(raw):
        raise Unprocessable(f"checkpoint path {raw!r} is relative; give an absolute path")
    real = Path(os.path.realpath(raw))
    if not any(real == root or real.is_relative_to(root) for root in roots):
        # Never say where it resolved to: that would map the service's disk for any caller.
        raise Forbidden(
            f"{uri[:300]!r} is outside the allowed checkpoint roots (after following symlinks); "
            "add its folder to FORGETWATCH_CHECKPOINT_ROOTS on the service"
        )
    return real


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def check_base_model(uri: str, roots: list[Path], prefixes: list[str], *, hf_cache: Path | None = None) -> None:
    """Refuse, when a run is registered, a base model its jobs could never read: Forbidden (403) outside
    the allowed roots and prefixes, Unprocessable (422) for a local path that is missing or unreadable, or
    a file that is not a weights file. A folder's contents are not judged here: a trainer may register
    its run before the base is written there, and the jobs that load it fail with the reason.

    Object storage bases (`s3://`, `gs://`) are checked against the allowed prefixes only (the workers read them and fail the
    analysis with the storage's reason). A bare Hugging Face Hub id (`gpt2`, `org/name`) is refused:
    the service never downloads, so it must be written `hf://org/name[@revision]` and be in the
    service's local Hugging Face cache, which is checked here."""
    if "://" not in uri and not uri.startswith("file:") and not os.path.isabs(uri):
        raise Unprocessable(
            f"base_model {uri[:300]!r} is neither an absolute path nor a URI. A Hugging Face Hub id is written "
            f"hf://{uri[:300]} and read from the service's local Hugging Face cache (nothing is downloaded: "
            f"put it there first with huggingface-cli download {uri[:300]}); a folder is given by its absolute path"
        )
    try:
        location = resolve_location(uri, roots, prefixes, hf_cache=hf_cache)
    except ForgetwatchError as error:
        raise type(error)(f"base_model: {error.detail}") from None
    if isinstance(location, RemotePath):
        return
    if not location.exists():
        raise Unprocessable(f"base_model {uri[:300]!r} does not exist on the service's disk; give the folder "
                            "holding the base model's config.json and weights")
    if not os.access(location, os.R_OK | (os.X_OK if location.is_dir() else 0)):
        raise Unprocessable(f"base_model {uri[:300]!r} cannot be read by the service's user; make it readable "
                            "(the workers load it for every checkpoint)")
    if location.is_file():
        if location.suffix not in _WEIGHT_SUFFIXES:
            raise Unprocessable(f"base_model {uri[:300]!r} is a file but not a weights file "
                                "(.safetensors, .bin, .pt, .pth); give the model folder")
        return


def directory_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
