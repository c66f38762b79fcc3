"""Checkpoint URIs -> local paths or object storage locations, confined to the allow-list."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from drift.remote import RemotePath
from service.errors import Forbidden, Unprocessable

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
    local Hugging Face cache `hf_cache`; for `s3://bucket/key`, a `RemotePath` that lies under one of
    the allowed `prefixes` (segment-wise; no `.` or `..` segments, no query). Raises Forbidden (never
    saying anything about what the URI points at) or Unprocessable."""
    if uri.startswith("hf://"):
        return resolve_hf_uri(uri, roots, cache_dir=hf_cache)
    if not uri.startswith("s3://"):
        return resolve_checkpoint_uri(uri, roots)
    if "\x00" in uri or "?" in uri or "#" in uri:
        raise Unprocessable(f"object storage URI {uri[:300]!r} holds '?', '#' or NUL; give s3://bucket/key")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    parts = [p for p in key.split("/") if p]
    if not bucket or any(p in (".", "..") for p in parts):
        raise Unprocessable(f"object storage URI {uri[:300]!r} needs a bucket and no '.' or '..' segments")
    normal = "s3://" + "/".join([bucket, *parts])
    if not any(normal == prefix or normal.startswith(prefix + "/") for prefix in prefixes):
        raise Forbidden(f"{uri[:300]!r} is outside the allowed checkpoint prefixes; add its prefix "
                        "(s3://bucket/prefix) to FORGETWATCH_CHECKPOINT_ROOTS on the service")
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
            f"unsupported URI {uri[:300]!r}: give an absolute local path, a file:// URI, s3://bucket/key, hf://org/name@revision, "
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


def directory_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
