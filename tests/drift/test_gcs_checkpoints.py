"""Checkpoints in Google Cloud Storage through the same object storage code as S3, against a real
GCS JSON API server (gcp-storage-emulator): parameter drift by range requests equal to the local
result, confinement to the allowed prefixes, actionable errors, a replaced object staged again."""

from __future__ import annotations

from pathlib import Path

import pytest
from gcsfs.core import GCSFileSystem
from numpy.testing import assert_allclose

from drift.checkpoints import list_tensors, open_checkpoint
from drift.confined import CheckpointError
from drift.params import compare
from drift.remote import STORES, RemotePath
from drift.staging import stage_folder
from tests.integration.helpers import free_port
from tests.integration.models import save_tiny_gpt2_run


class CountingGCS(GCSFileSystem):
    """The real gcsfs client, counting the bytes its range reads return."""

    bytes_read = 0

    def cat_file(self, path, start=None, end=None, **kwargs):
        data = super().cat_file(path, start=start, end=end, **kwargs)
        CountingGCS.bytes_read += len(data)
        return data


@pytest.fixture(scope="module")
def uploaded(gcs_server, tmp_path_factory) -> tuple[list[Path], str]:
    """A tiny GPT-2 base and two training steps (sharded safetensors), locally and under gs://models/drift."""
    local = save_tiny_gpt2_run(tmp_path_factory.mktemp("gpt2"), steps=2)
    fs = gcs_server.filesystem()
    for folder in local:
        fs.put(str(folder), f"models/drift/{folder.name}", recursive=True)
    return local, "gs://models/drift"


def _remote(gcs_server, uri: str) -> RemotePath:
    return RemotePath(
        uri, fs=CountingGCS(skip_instance_cache=True, endpoint_url=gcs_server.endpoint, token="anon")
    )


def test_gs_uris_use_the_gcs_entry_of_the_one_store_table(gcs_server):
    path = RemotePath("gs://models/drift/base/")
    assert path.store is STORES["gs"] and str(path) == "gs://models/drift/base" and path.name == "base"
    assert str(path / "model.safetensors") == "gs://models/drift/base/model.safetensors"


def test_param_drift_from_gcs_equals_local_and_reads_headers_by_range(gcs_server, uploaded):
    local, prefix = uploaded
    CountingGCS.bytes_read = 0
    tensors = list_tensors(_remote(gcs_server, f"{prefix}/step-2"), roots=[prefix])
    size = sum(p.stat().st_size for p in local[2].glob("*.safetensors"))
    assert len(tensors) > 10 and 0 < CountingGCS.bytes_read < 0.1 * size  # headers only, not the files
    remote = compare(
        _remote(gcs_server, f"{prefix}/base"),
        _remote(gcs_server, f"{prefix}/step-2"),
        previous=_remote(gcs_server, f"{prefix}/step-1"),
        spectral=False,
    )
    here = compare(local[0], local[2], previous=local[1], spectral=False)
    assert [r.name for r in remote.rows] == [r.name for r in here.rows]
    assert_allclose(
        [(r.sum_sq_delta, r.dot_base) for r in remote.rows],
        [(r.sum_sq_delta, r.dot_base) for r in here.rows],
        rtol=1e-12,
    )
    assert remote.summary.overall.relative_l2_distance == pytest.approx(
        here.summary.overall.relative_l2_distance, rel=1e-12
    )


def test_gcs_outside_the_allowed_prefixes_is_refused(gcs_server, uploaded):
    _, prefix = uploaded
    for roots in (["gs://models/other"], ["gs://models/dri"], ["s3://models/drift"]):  # not a segment; not gs
        with pytest.raises(CheckpointError, match="outside the allowed"):
            open_checkpoint(_remote(gcs_server, f"{prefix}/step-1"), roots=roots)


def test_gcs_failures_say_what_to_check(gcs_server, uploaded):
    _, prefix = uploaded
    with pytest.raises(CheckpointError, match="no such file or folder"):
        open_checkpoint(_remote(gcs_server, f"{prefix}/step-9"), roots=[prefix])
    with pytest.raises(CheckpointError, match="missing in object storage.*no such bucket"):
        _remote(gcs_server, "gs://absent-bucket/team/step-1/config.json").info()
    fs = gcs_server.filesystem()
    fs.put(str(uploaded[0][1]), "models/drift/doomed", recursive=True)
    doomed = open_checkpoint(_remote(gcs_server, f"{prefix}/doomed"), roots=[prefix])
    fs.rm("models/drift/doomed", recursive=True)  # deleted between listing and reading the weights
    with pytest.raises(CheckpointError, match="missing in object storage"):
        doomed.array(doomed.canonical_names()[0])


def test_an_unreachable_gcs_endpoint_names_the_variable_to_check() -> None:
    # gcsfs retries a refused connection six times with backoff (about 30 s) before giving up
    unreachable = GCSFileSystem(
        skip_instance_cache=True, endpoint_url=f"http://127.0.0.1:{free_port()}", token="anon"
    )
    with pytest.raises(CheckpointError, match="Google Cloud Storage is unreachable.*STORAGE_EMULATOR_HOST"):
        RemotePath("gs://models/drift/step-1/config.json", fs=unreachable).info()


def test_a_replaced_gcs_object_is_staged_again(gcs_server, uploaded, tmp_path):
    local, prefix = uploaded
    fs = gcs_server.filesystem()
    fs.put(str(local[1]), "models/drift/replaced", recursive=True)
    cache = tmp_path / "cache"
    first = stage_folder(_remote(gcs_server, f"{prefix}/replaced"), cache, max_bytes=2**30, roots=[prefix])
    assert (first / "config.json").read_bytes() == (local[1] / "config.json").read_bytes()
    changed = (local[1] / "config.json").read_bytes().replace(b'"vocab_size": 64', b'"vocab_size": 65')
    assert changed != (local[1] / "config.json").read_bytes()
    fs.pipe("models/drift/replaced/config.json", changed)  # same size: only its generation tells
    second = stage_folder(_remote(gcs_server, f"{prefix}/replaced"), cache, max_bytes=2**30, roots=[prefix])
    assert second != first and (second / "config.json").read_bytes() == changed
