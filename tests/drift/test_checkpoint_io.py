import json
import struct

import numpy as np
import pytest
import torch

from drift.checkpoint_io import CheckpointError, to_float64
from drift.checkpoints import list_tensors, open_checkpoint
from tests.drift._models import save, tiny_gpt2


def _raw_safetensors(path, header: dict, data: bytes) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def test_single_file_lists_names_shapes_dtypes(tmp_path):
    f = save(tmp_path / "m.safetensors", {"a": torch.zeros(3, 4, dtype=torch.bfloat16), "b": torch.ones(5)})
    infos = {i.name: i for i in list_tensors(f)}
    assert infos["a"].shape == (3, 4) and infos["a"].dtype == "bfloat16" and infos["a"].numel == 12
    assert infos["b"].dtype == "float32" and infos["b"].file == str(f)


def test_arrays_are_read_only_memory_maps_with_exact_values(tmp_path):
    t = torch.randn(64, 8).to(torch.bfloat16)
    f = save(tmp_path / "m.safetensors", {"w": t})
    with open_checkpoint(f) as ckpt:
        raw = ckpt.array("w")
        assert not raw.flags.owndata and not raw.flags.writeable
        np.testing.assert_array_equal(to_float64(raw, "bfloat16"), t.double().numpy())


def test_prefetching_is_a_hint_that_changes_no_value(tmp_path):
    tensors = {"a": torch.randn(300, 7).to(torch.bfloat16), "b": torch.randn(5)}
    f = save(tmp_path / "m.safetensors", tensors)
    with open_checkpoint(f) as ckpt:
        ckpt.prefetch("a")  # before the file is mapped: nothing to advise yet
        first = ckpt.array("a").copy()
        for name in ("a", "b", "not-a-tensor"):
            ckpt.prefetch(name)
        np.testing.assert_array_equal(ckpt.array("a"), first)
        np.testing.assert_array_equal(to_float64(ckpt.array("b"), "float32"), tensors["b"].double().numpy())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_converts_exactly_even_the_special_values(dtype):
    t = (torch.randn(50, 7) * 300).to(dtype)
    t.view(-1)[:5] = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0, 1e-7]).to(dtype)
    bits = t.view(torch.int16).numpy()
    raw = bits.view(np.uint16) if dtype == torch.bfloat16 else bits.view(np.float16)
    raw.setflags(write=False)
    name = str(dtype).removeprefix("torch.")
    want = t.double().numpy()
    np.testing.assert_array_equal(to_float64(raw, name), want)  # NaN == NaN for this assert
    assert np.signbit(to_float64(raw, name).reshape(-1)[3])  # -0.0 keeps its sign
    np.testing.assert_array_equal(to_float64(raw[::3, 1:], name), want[::3, 1:])  # a strided view


def test_sharded_folder_covers_every_indexed_tensor():
    tiny = tiny_gpt2()
    index = json.loads((tiny.base / "model.safetensors.index.json").read_text())["weight_map"]
    infos = list_tensors(tiny.base)
    assert {i.name for i in infos} == set(index)
    assert len({i.file for i in infos}) > 1  # really sharded


def test_truncated_file_raises_naming_the_file(tmp_path):
    f = save(tmp_path / "m.safetensors", {"w": torch.randn(100, 100)})
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="m.safetensors.*truncated"):
        open_checkpoint(f)


def test_garbage_header_raises(tmp_path):
    f = tmp_path / "bad.safetensors"
    f.write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\0" * 16)
    with pytest.raises(CheckpointError, match="bad.safetensors.*JSON"):
        open_checkpoint(f)


def test_header_length_beyond_file_raises(tmp_path):
    f = tmp_path / "short.safetensors"
    f.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(CheckpointError, match="short.safetensors"):
        open_checkpoint(f)


def test_header_that_lies_about_sizes_raises(tmp_path):
    f = tmp_path / "lie.safetensors"
    _raw_safetensors(f, {"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 32]}}, b"\0" * 32)
    with pytest.raises(CheckpointError, match="lie.safetensors.*'w'.*needs 64"):
        open_checkpoint(f)


def test_overlapping_tensors_raise(tmp_path):
    f = tmp_path / "overlap.safetensors"
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    _raw_safetensors(f, header, b"\0" * 24)
    with pytest.raises(CheckpointError, match="overlap"):
        open_checkpoint(f)


def test_missing_shard_raises(tmp_path):
    folder = tmp_path / "m"
    save(folder / "model-00001-of-00002.safetensors", {"a": torch.ones(2)})
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        open_checkpoint(folder)


class Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickle_with_non_tensor_object_is_refused(tmp_path, capsys):
    f = tmp_path / "evil.bin"
    torch.save({"w": torch.ones(3), "obj": Payload()}, f)
    with pytest.raises(CheckpointError, match="evil.bin.*safetensors"):
        open_checkpoint(f)
    assert "unpickled!" not in capsys.readouterr().out


def test_corrupt_bin_raises(tmp_path):
    f = tmp_path / "junk.pt"
    f.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="junk.pt"):
        open_checkpoint(f)


def test_unknown_suffix_and_missing_path_raise(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        open_checkpoint(tmp_path / "x.npz")
    with pytest.raises(CheckpointError, match="no such file"):
        open_checkpoint(tmp_path / "nope.safetensors")


def test_torch_bin_tied_storage_is_an_alias():
    infos = {i.name: i for i in list_tensors(tiny_gpt2().base_bin)}
    assert infos["lm_head.weight"].alias_of == "transformer.wte.weight"
    assert infos["transformer.wte.weight"].alias_of is None


def test_tie_word_embeddings_config_makes_the_head_an_alias(tmp_path):
    folder = tmp_path / "m"
    w = torch.randn(8, 4)
    save(folder / "model.safetensors", {"model.embed_tokens.weight": w, "lm_head.weight": w.clone()})
    (folder / "config.json").write_text(json.dumps({"tie_word_embeddings": True}))
    infos = {i.name: i for i in list_tensors(folder)}
    assert infos["lm_head.weight"].alias_of == "model.embed_tokens.weight"
    (folder / "config.json").write_text(json.dumps({"tie_word_embeddings": False}))
    assert all(i.alias_of is None for i in list_tensors(folder))


def test_index_that_does_not_match_its_shards_raises(tmp_path):
    folder = tmp_path / "m"
    save(folder / "model-00001-of-00001.safetensors", {"a": torch.ones(2)})
    index = {"weight_map": {"a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"\['b'\].*re-download"):
        open_checkpoint(folder)
