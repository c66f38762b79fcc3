"""Open any checkpoint: a model folder (safetensors or torch, sharded or not), a single weights
file, or a PEFT LoRA adapter folder (see ``drift.checkpoint_io`` for the formats, ``drift.lora`` for
adapters). With ``roots``, the checkpoint and every file read from it must lie inside them."""

from __future__ import annotations

import os
from pathlib import Path

from drift.checkpoint_io import Checkpoint, TensorInfo
from drift.confined import CheckpointError, Roots, member, read_json, remote_inside
from drift.lora import open_adapter
from drift.remote import RemotePath, as_location

__all__ = ["check_adapter_fits", "is_adapter_folder", "list_tensors", "open_checkpoint"]


def _index(folder: Path, index: Path, roots: Roots) -> dict[Path, set[str]]:
    """Shard file -> tensor names, from a ``*.index.json`` weight map (shard names confined to ``folder``)."""
    weight_map = read_json(index, roots).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: no 'weight_map' object; the index is corrupt")
    shards: dict[Path, set[str]] = {}
    for name, f in weight_map.items():
        shards.setdefault(member(folder, f, listed_in=str(index)), set()).add(name)
    return dict(sorted(shards.items()))


def _inside_roots(path: Path | RemotePath, roots: Roots) -> bool:
    if roots is None:
        return True
    if isinstance(path, RemotePath):
        return remote_inside(str(path), roots)
    real = Path(os.path.realpath(path))
    return any(isinstance(root, Path) and (real == root or real.is_relative_to(root)) for root in roots)


def open_checkpoint(path: str | os.PathLike, *, roots: Roots = None) -> Checkpoint:
    """Open a checkpoint folder or file (see the module docstring); raises CheckpointError.

    With ``roots`` (resolved folders), the checkpoint and every file read from it, shards named by
    an index included, must lie inside them (``drift.confined``). ``s3://`` and ``gs://`` URIs are read with range
    requests (``drift.remote``; ``roots`` then holds their allowed prefixes)."""
    path = as_location(path)
    if not _inside_roots(path, roots):
        raise CheckpointError(f"{path}: lies outside the allowed checkpoint roots")
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    config: dict = {}
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return open_adapter(path, roots=roots)
        if (path / "config.json").is_file():
            config = read_json(path / "config.json", roots)
        if (path / "model.safetensors.index.json").is_file():
            kind, files = "safetensors", _index(path, path / "model.safetensors.index.json", roots)
        elif sorted(path.glob("*.safetensors")):
            kind, files = "safetensors", dict.fromkeys(sorted(path.glob("*.safetensors")))
        elif (path / "pytorch_model.bin.index.json").is_file():
            kind, files = "torch", _index(path, path / "pytorch_model.bin.index.json", roots)
        elif torch_files := sorted(p for ext in ("bin", "pt", "pth") for p in path.glob(f"*.{ext}")):
            kind, files = "torch", dict.fromkeys(torch_files)
        else:
            raise CheckpointError(f"{path}: no *.safetensors, *.bin or adapter_config.json in this folder")
    elif path.suffix == ".safetensors":
        kind, files = "safetensors", {path: None}
    elif path.suffix in (".bin", ".pt", ".pth"):
        kind, files = "torch", {path: None}
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint type; expected .safetensors, .bin, .pt or a model folder"
        )
    ckpt = Checkpoint(path, kind, config, roots=roots)
    for file, keep in files.items():
        ckpt.add_safetensors(file, keep) if kind == "safetensors" else ckpt.add_torch(file, keep)
        absent = sorted((keep or set()) - ckpt.infos.keys())
        if absent:
            raise CheckpointError(
                f"{file}: the index maps {absent[:5]} to this shard but it does not hold them; "
                "the shards do not match their index, re-download them"
            )
    ckpt.tie_embeddings()
    return ckpt


def list_tensors(source: str | os.PathLike | Checkpoint, *, roots: Roots = None) -> list[TensorInfo]:
    """All tensors of a checkpoint (aliases included, with ``alias_of`` set), in storage order."""
    if isinstance(source, Checkpoint):
        return list(source.infos.values())
    with open_checkpoint(source, roots=roots) as ckpt:
        return list(ckpt.infos.values())


def is_adapter_folder(path: str | os.PathLike) -> bool:
    """A folder peft saved an adapter into (``adapter_config.json``)."""
    location = as_location(path)
    return location.is_dir() and (location / "adapter_config.json").is_file()


def check_adapter_fits(adapter: str | os.PathLike, base: str | os.PathLike, *, roots: Roots = None) -> None:
    """Refuse a LoRA adapter that was not trained on ``base``: every adapter tensor must land on a base
    tensor of a fitting shape (peft would otherwise skip the strays with a warning and the probes would
    score the bare base). Reads the adapter's tensors and the base's headers. Raises CheckpointError."""
    with open_adapter(adapter, roots=roots) as lora, open_checkpoint(base, roots=roots) as model:
        try:
            _, _, unmatched = lora.resolve(model)
        except CheckpointError as error:
            raise CheckpointError(
                f"{as_location(adapter).name}: this LoRA adapter does not fit the run's base model "
                f"({str(error).replace(str(lora.path), 'adapter')}); register "
                "adapters on a run whose base_model is the model they were trained from"
            ) from None
        if unmatched:
            raise CheckpointError(
                f"{as_location(adapter).name}: {len(unmatched)} of the adapter's {len(lora.infos)} tensors (e.g. "
                f"{unmatched[0][:120]}) have no counterpart in the run's base model; it was trained on another "
                "model: register adapters on a run whose base_model is the model they were trained from"
            )
