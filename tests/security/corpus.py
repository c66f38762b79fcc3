"""Builders for checkpoint files, well-formed and hostile."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

SECRET = b"SECRETxyTOPSECRET-do-not-leak\n"  # the bytes of a file no checkpoint may read


def valid(path: Path, seed: int = 0) -> Path:
    """A small well-formed safetensors file with two float32 tensors."""
    rng = np.random.default_rng(seed)
    save_file({"w": rng.standard_normal((8, 4)).astype(np.float32),
               "b": rng.standard_normal(4).astype(np.float32)}, str(path))
    return path


def raw(path: Path, header: bytes | dict, data: bytes = b"") -> Path:
    """A file with any header at all: the 8-byte length, the header bytes, then `data`."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def index(folder: Path, weight_map: dict[str, str]) -> Path:
    """A `model.safetensors.index.json` in `folder`."""
    path = folder / "model.safetensors.index.json"
    path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def secret_text(path: Path) -> Path:
    """A text file whose bytes must never appear anywhere a client can read."""
    path.write_bytes(SECRET * 4)
    return path


def leaked(text: str | None) -> list[str]:
    """Which forms of SECRET (bytes as text, or its first 8 bytes as the header length) occur in `text`."""
    text = text or ""
    forms = {"text": SECRET[:8].decode(), "length": str(int.from_bytes(SECRET[:8], "little"))}
    return [name for name, form in forms.items() if form in text]
