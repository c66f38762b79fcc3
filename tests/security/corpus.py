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


def _entry(dtype: str = "U8", shape: list | None = None, offsets: list | None = None) -> dict:
    return {"dtype": dtype, "shape": [4] if shape is None else shape,
            "data_offsets": [0, 4] if offsets is None else offsets}


def _deep(path: Path) -> Path:
    depth = 200_000
    return raw(path, b'{"t": ' + b"[" * depth + b"]" * depth + b"}")


def _huge_header(path: Path) -> Path:
    """Claims a 95 MB header (the size that once cost 1.3 GB and 35 s per open); stored sparse."""
    with open(path, "wb") as out:
        out.write((95 * 2**20).to_bytes(8, "little"))
        out.write(b"{")
        out.truncate(8 + 95 * 2**20 + 64)
    return path


def _length_past_the_end(path: Path) -> Path:
    path.write_bytes((2**64 - 1).to_bytes(8, "little") + b"{}")
    return path


def _many_tensors(path: Path) -> Path:
    header = {f"t{i}": _entry(shape=[0], offsets=[0, 0]) for i in range(131_073)}
    return raw(path, header)


# name -> builder of one hostile file; each must end as a clear CheckpointError, nothing else.
HOSTILE = {
    "int64_overflow_dimension": lambda p: raw(p, {"t": _entry(shape=[2**64], offsets=[0, 4])}, b"\0" * 4),
    "int64_wrapping_product": lambda p: raw(p, {"t": _entry(shape=[2**32, 2**32], offsets=[0, 0])}),
    "negative_dimension": lambda p: raw(p, {"t": _entry(shape=[-4], offsets=[0, 4])}, b"\0" * 4),
    "string_dimension": lambda p: raw(p, {"t": _entry(shape=["4"])}, b"\0" * 4),
    "bool_dimension": lambda p: raw(p, {"t": _entry(shape=[True, 4])}, b"\0" * 4),
    "too_many_dimensions": lambda p: raw(p, {"t": _entry(shape=[1] * 100, offsets=[0, 1])}, b"\0"),
    "float_data_offsets": lambda p: raw(p, {"t": _entry(offsets=[0.0, 4.0])}, b"\0" * 4),
    "three_data_offsets": lambda p: raw(p, {"t": _entry(offsets=[0, 2, 4])}, b"\0" * 4),
    "unhashable_dtype": lambda p: raw(p, {"t": _entry(dtype=["F32"])}, b"\0" * 4),
    "entry_not_an_object": lambda p: raw(p, {"t": [1, 2, 3]}),
    "deeply_nested_header": _deep,
    "header_not_an_object": lambda p: raw(p, [1, 2, 3]),
    "header_not_json": lambda p: raw(p, b"\xff\xfe not json at all"),
    "zero_header_length": lambda p: raw(p, b""),
    "header_length_past_the_end": _length_past_the_end,
    "huge_header": _huge_header,
    "too_many_tensors": _many_tensors,
    "tensor_past_the_end": lambda p: raw(p, {"t": _entry(offsets=[0, 4])}, b"\0" * 2),
    "neighbour_overlap": lambda p: raw(p, {"a": _entry(shape=[8], offsets=[0, 8]),
                                           "b": _entry(shape=[8], offsets=[4, 12])}, b"\0" * 12),
    "zero_length_tensor_hiding_an_overlap": lambda p: raw(p, {
        "a": _entry(shape=[16], offsets=[0, 16]), "z": _entry(shape=[0], offsets=[8, 8]),
        "b": _entry(shape=[16], offsets=[12, 28])}, b"\0" * 28),
    "text_file": secret_text,
}
