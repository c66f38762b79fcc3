"""Lazy, validated access to model checkpoints: the `Checkpoint` that `drift.checkpoints.open_checkpoint`
returns, and the parsing of the files it reads.

Supported sources:

* a Hugging Face model folder with ``*.safetensors`` (one file, or shards listed in
  ``model.safetensors.index.json``), or with ``pytorch_model.bin`` (optionally sharded);
* a single ``.safetensors`` file;
* a single ``.bin`` / ``.pt`` / ``.pth`` file, read only through ``torch.load(weights_only=True, mmap=True)``;
* a PEFT LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``), see ``drift.lora``.

safetensors files are parsed here (8-byte little-endian header length, JSON header, raw data) and
memory-mapped: ``Checkpoint.array(name)`` returns a read-only numpy view on the page cache, so a
checkpoint is never loaded into anonymous memory. bfloat16 data is returned as ``uint16`` bit
patterns and fp8 as ``uint8`` (numpy has neither type); ``TensorInfo.dtype`` carries the real type.

Tied tensors: two names are aliases when they share storage (same byte range of the same
safetensors file, or the same torch storage, offset, shape and stride), or when ``config.json`` says
``tie_word_embeddings: true`` and the folder holds both an output head and the input embedding.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from drift.confined import CheckpointError, Roots, open_confined, open_reader
from drift.remote import is_remote

__all__ = ["Checkpoint", "CheckpointError", "TensorInfo", "to_float64"]


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor: ``name``, ``shape``, torch-style ``dtype`` name, the ``file`` holding it and,
    for a tied tensor, the canonical name it aliases (``alias_of``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: str
    alias_of: str | None = None

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


# safetensors dtype -> (torch-style name, numpy storage dtype)
_ST_DTYPES = {
    "F64": ("float64", np.float64),
    "F32": ("float32", np.float32),
    "F16": ("float16", np.float16),
    "BF16": ("bfloat16", np.uint16),
    "F8_E4M3": ("float8_e4m3fn", np.uint8),
    "F8_E5M2": ("float8_e5m2", np.uint8),
    "I64": ("int64", np.int64),
    "I32": ("int32", np.int32),
    "I16": ("int16", np.int16),
    "I8": ("int8", np.int8),
    "U8": ("uint8", np.uint8),
    "U16": ("uint16", np.uint16),
    "U32": ("uint32", np.uint32),
    "U64": ("uint64", np.uint64),
    "BOOL": ("bool", np.bool_),
}
_STORAGE = {name: np_dtype for name, np_dtype in _ST_DTYPES.values()}
# Caps on what a safetensors header may claim: real checkpoints stay far below all of them (a shard
# of a 671 B-parameter MoE holds ~1k tensors and a header of ~100 kB).
MAX_HEADER_BYTES = 16 * 2**20
MAX_TENSORS = 131_072
MAX_NDIM = 16
_HEAD_NAMES = ("lm_head.weight", "embed_out.weight", "output.weight")
_EMBED_RE = re.compile(r"(^|\.)(wte|embed_tokens|embed_in|word_embeddings|tok_embeddings)\.weight$")


def to_float64(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Convert raw storage (as returned by ``Checkpoint.array``) to float64, exactly."""
    if dtype in ("bfloat16", "float16"):  # torch converts these ~4x faster than numpy (same values)
        import torch

        bits = np.ascontiguousarray(raw).view(np.int16)
        with warnings.catch_warnings():  # a read-only memory map is fine: torch only reads it here
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(bits).view(getattr(torch, dtype))
        return t.to(torch.float64).numpy()
    if dtype.startswith("float8"):
        import torch

        t = torch.from_numpy(np.array(raw, dtype=np.uint8)).view(getattr(torch, dtype))
        return t.to(torch.float64).numpy()
    return raw.astype(np.float64)


def _entry(name: str, meta: object) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry; ValueError when any field is malformed."""
    if not isinstance(meta, dict) or not isinstance(meta.get("dtype"), str) or meta["dtype"] not in _ST_DTYPES:
        raise ValueError("dtype")
    shape, offsets = meta.get("shape"), meta.get("data_offsets")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise ValueError("shape")
    if not all(type(d) is int and 0 <= d < 2**63 for d in shape):
        raise ValueError("shape")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
        raise ValueError("data_offsets")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise ValueError("data_offsets")
    return _ST_DTYPES[meta["dtype"]][0], tuple(shape), begin, end


def _check_overlaps(file: str, ranges: set[tuple[int, int]]) -> None:
    """Byte ranges either coincide (tied tensors) or are disjoint; empty ranges occupy nothing."""
    reach = 0
    for begin, end in sorted(r for r in ranges if r[1] > r[0]):
        if begin < reach:
            raise CheckpointError(f"{file}: tensors overlap at bytes {begin}..{min(end, reach)}; the file is corrupt")
        reach = end


def _safetensors_header(path: Path, roots: Roots = None) -> tuple[dict[str, tuple[str, tuple[int, ...], int, int]], int]:
    """Parse and validate a safetensors header -> ({name: (dtype, shape, begin, end)}, data start).

    Every claim is checked before it is used: header length, tensor count, dtype, shape (ints below
    2**63, at most MAX_NDIM of them), integer offsets inside the file, size = shape x itemsize, and
    no two byte ranges overlapping unless identical. Messages never quote the file's bytes."""
    with open_reader(path, roots) as f:
        size = f.size
        head = f.read_at(0, 8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: file is shorter than a safetensors header; re-save or re-download it")
        n = int.from_bytes(head, "little")
        if n <= 0 or 8 + n > size:
            raise CheckpointError(
                f"{path}: the header length does not fit the file ({size} bytes): truncated or not a "
                "safetensors file; re-save or re-download it"
            )
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: header over {MAX_HEADER_BYTES} bytes; not a checkpoint forgetwatch reads")
        raw = f.read_at(8, n)
        if len(raw) < n:
            raise CheckpointError(f"{path}: the file ended inside its header (truncated); re-download it")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: header is not valid JSON; the file is corrupt") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object; the file is corrupt")
    if len(header) - ("__metadata__" in header) > MAX_TENSORS:
        raise CheckpointError(f"{path}: header lists over {MAX_TENSORS} tensors; not a checkpoint forgetwatch reads")
    entries, ranges = {}, set()
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, begin, end = _entry(name, meta)
        except ValueError as bad:
            raise CheckpointError(f"{path}: tensor {name[:200]!r} has a malformed {bad}; the file is corrupt") from None
        nbytes = math.prod(shape) * np.dtype(_STORAGE[dtype]).itemsize
        if end - begin != nbytes:
            raise CheckpointError(
                f"{path}: header says tensor {name[:200]!r} {dtype}{list(shape)} spans {end - begin} bytes, "
                f"but that shape needs {nbytes}; the file is corrupt, re-save it"
            )
        if 8 + n + end > size:
            raise CheckpointError(
                f"{path}: tensor {name[:200]!r} ends at byte {8 + n + end} but the file has {size} bytes "
                "(truncated); re-download or re-save it"
            )
        entries[name] = (dtype, shape, begin, end)
        ranges.add((begin, end))
    _check_overlaps(str(path), ranges)
    return entries, 8 + n


class Checkpoint:
    """An opened checkpoint: ``infos`` (name -> TensorInfo, aliases included) and lazy ``array(name)``.

    Use as a context manager or call ``close()``; arrays handed out stay valid while referenced.
    """

    def __init__(self, path: str | os.PathLike, kind: str, config: dict | None = None, *,
                 roots: Roots = None) -> None:
        self.path = path if is_remote(path) else Path(path)
        self.kind = kind  # "safetensors" | "torch" | "lora"
        self.config = config or {}
        self.roots = roots  # every file is opened confined to these folders (None: anywhere)
        self.infos: dict[str, TensorInfo] = {}
        self._loc: dict[str, tuple] = {}
        self._maps: dict[str, mmap.mmap] = {}

    # -- loading ---------------------------------------------------------------------------------
    def add_safetensors(self, file: Path, keep: set[str] | None = None) -> None:
        entries, start = _safetensors_header(file, self.roots)
        first_at: dict[tuple[int, int], str] = {}
        for name, (dtype, shape, begin, end) in entries.items():
            if keep is not None and name not in keep:
                continue  # a sharded index maps this name to another shard
            if name in self.infos:
                raise CheckpointError(f"{file}: tensor {name!r} is also stored in {self.infos[name].file}")
            alias = first_at.setdefault((begin, end), name) if end > begin else name
            self.infos[name] = TensorInfo(name, shape, dtype, str(file), None if alias == name else alias)
            self._loc[name] = ("st", file, start + begin, end - begin)

    def add_torch(self, file: Path, keep: set[str] | None = None) -> None:
        import pickle

        import torch

        if is_remote(file):
            raise CheckpointError(f"{file.name}: torch pickles are read from local disk only; save checkpoints in "
                                  "object storage as safetensors (save_pretrained does by default)")
        fd = open_confined(file, self.roots)
        try:
            # Loaded through the confined descriptor itself where /proc is there (no second lookup by name).
            source = f"/proc/self/fd/{fd}" if os.path.exists(f"/proc/self/fd/{fd}") else file
            obj = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"{file}: refused to unpickle non-tensor objects ({str(exc).splitlines()[0]}); "
                "export the weights with safetensors (model.save_pretrained(dir)) and point forgetwatch at that"
            ) from None
        except (RuntimeError, OSError, EOFError, ValueError):
            raise CheckpointError(
                f"{file}: not a readable torch checkpoint; re-save it with "
                "torch.save (zip format) or, better, as safetensors"
            ) from None
        finally:
            os.close(fd)
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            nested = [v for v in obj.values() if isinstance(v, dict)]
            obj = nested[0] if len(nested) == 1 else obj
        if not isinstance(obj, dict):
            raise CheckpointError(f"{file}: holds a {type(obj).__name__}, not a state dict of tensors")
        seen: dict[tuple, str] = {}
        for name, t in obj.items():
            if not isinstance(t, torch.Tensor) or (keep is not None and name not in keep):
                continue
            if name in self.infos:
                raise CheckpointError(f"{file}: tensor {name!r} is also stored in {self.infos[name].file}")
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
            alias = seen.setdefault(key, name) if t.numel() else name
            dtype = str(t.dtype).removeprefix("torch.")
            self.infos[name] = TensorInfo(
                name, tuple(t.shape), dtype, str(file), None if alias == name else alias
            )
            self._loc[name] = ("pt", t)

    def tie_embeddings(self) -> None:
        if self.config.get("tie_word_embeddings") is not True:
            return
        embeds = [n for n, i in self.infos.items() if _EMBED_RE.search(n) and i.alias_of is None]
        for head in _HEAD_NAMES:
            info = self.infos.get(head)
            if info is None or info.alias_of is not None or len(embeds) != 1:
                continue
            if self.infos[embeds[0]].shape == info.shape:
                self.infos[head] = TensorInfo(head, info.shape, info.dtype, info.file, embeds[0])

    # -- access ----------------------------------------------------------------------------------
    def array(self, name: str) -> np.ndarray:
        """Raw data of ``name`` (aliases resolved), shaped, read-only, memory-mapped where possible."""
        info = self.infos[name]
        loc = self._loc[info.alias_of or name]
        if loc[0] == "st":
            _, file, offset, nbytes = loc
            np_dtype = np.dtype(_STORAGE[info.dtype])
            if is_remote(file):  # one range request for this tensor's bytes
                with open_reader(file, self.roots) as reader:
                    data = reader.read_at(offset, nbytes)
                if len(data) != nbytes:
                    raise CheckpointError(f"{file.name}: tensor {name!r} was cut short in object storage; "
                                          "re-upload the file")
                return np.frombuffer(data, dtype=np_dtype).reshape(info.shape)
            key = str(file)
            mm = self._maps.get(key)
            if mm is None:
                with os.fdopen(open_confined(Path(file), self.roots), "rb") as f:
                    mm = self._maps[key] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            flat = np.frombuffer(mm, dtype=np_dtype, count=nbytes // np_dtype.itemsize, offset=offset)
            return flat.reshape(info.shape)
        import torch

        t = loc[1].contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16)
        if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            return t.view(torch.uint8).numpy()
        return t.numpy()

    def prefetch(self, name: str) -> None:
        """Ask the kernel to start reading ``name``'s bytes from a local file (asynchronously), so that a
        tensor computed on meanwhile hides the disk's latency; a no-op for what is not mapped from disk."""
        info = self.infos.get(name)
        loc = self._loc.get(info.alias_of or name) if info is not None else None
        if loc is None or loc[0] != "st" or is_remote(loc[1]) or not hasattr(mmap, "MADV_WILLNEED"):
            return
        _, file, offset, nbytes = loc
        mm = self._maps.get(str(file))
        if mm is not None and nbytes:
            start = offset - offset % mmap.PAGESIZE
            mm.madvise(mmap.MADV_WILLNEED, start, offset + nbytes - start)

    def canonical_names(self) -> list[str]:
        return [n for n, i in self.infos.items() if i.alias_of is None]

    def close(self) -> None:
        self._maps.clear()  # mmaps close once no array views remain
        self._loc.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
