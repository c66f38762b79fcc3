"""Checkpoint URIs -> local paths, confined to the allow-list."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from service.errors import Forbidden, Unprocessable


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
            f"unsupported URI {uri!r}: give an absolute local path or a file:// URI, "
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
