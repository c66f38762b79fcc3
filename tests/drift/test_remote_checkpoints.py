"""Checkpoints in object storage, against a real S3-compatible server (SeaweedFS): parameter drift
with range requests, actionable storage errors, the bounded local cache for model folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import s3fs
from numpy.testing import assert_allclose

from drift.checkpoints import list_tensors, open_checkpoint
from drift.confined import CheckpointError
from drift.params import compare
from drift.remote import RemotePath
from drift.staging import cached_bytes, stage_folder
from tests.integration.helpers import free_port
from tests.integration.models import save_tiny_gpt2_run


class CountingS3(s3fs.S3FileSystem):
    """The real s3fs client, counting the bytes its range reads return."""

    bytes_read = 0

    def cat_file(self, path, start=None, end=None, **kwargs):
        data = super().cat_file(path, start=start, end=end, **kwargs)
        CountingS3.bytes_read += len(data)
        return data


@pytest.fixture(scope="module")
def uploaded(s3_server, tmp_path_factory) -> tuple[list[Path], str]:
    """A tiny GPT-2 base and two training steps (sharded safetensors), locally and under s3://models/drift."""
    local = save_tiny_gpt2_run(tmp_path_factory.mktemp("gpt2"), steps=2)
    fs = s3_server.filesystem()
    for folder in local:
        fs.put(str(folder), f"models/drift/{folder.name}", recursive=True)
    return local, "s3://models/drift"


def _remote(s3_server, uri: str, **overrides) -> RemotePath:
    options = {"key": s3_server.access_key, "secret": s3_server.secret_key, "endpoint_url": s3_server.endpoint,
               **overrides}
    return RemotePath(uri, fs=CountingS3(skip_instance_cache=True, **options))


def test_param_drift_from_object_storage_equals_local_and_reads_headers_by_range(s3_server, uploaded):
    local, prefix = uploaded
    roots = [prefix]
    CountingS3.bytes_read = 0
    step = _remote(s3_server, f"{prefix}/step-2")
    tensors = list_tensors(step, roots=roots)
    size = sum(p.stat().st_size for p in local[2].glob("*.safetensors"))
    assert len(tensors) > 10 and 0 < CountingS3.bytes_read < 0.1 * size  # headers only, not the files
    remote = compare(_remote(s3_server, f"{prefix}/base"), _remote(s3_server, f"{prefix}/step-2"),
                     previous=_remote(s3_server, f"{prefix}/step-1"), spectral=False)
    here = compare(local[0], local[2], previous=local[1], spectral=False)
    assert [r.name for r in remote.rows] == [r.name for r in here.rows]
    assert_allclose([(r.sum_sq_delta, r.dot_base) for r in remote.rows],
                    [(r.sum_sq_delta, r.dot_base) for r in here.rows], rtol=1e-12)
    overall = remote.summary.overall
    assert overall.relative_l2_distance == pytest.approx(here.summary.overall.relative_l2_distance, rel=1e-12)
    assert overall.relative_l2_distance > 0
    assert overall.update_cosine_similarity == pytest.approx(here.summary.overall.update_cosine_similarity)


def test_object_storage_outside_the_allowed_prefixes_is_refused(s3_server, uploaded):
    _, prefix = uploaded
    with pytest.raises(CheckpointError, match="outside the allowed"):
        open_checkpoint(_remote(s3_server, f"{prefix}/step-1"), roots=["s3://models/other"])
    with pytest.raises(CheckpointError, match="outside the allowed"):
        open_checkpoint(_remote(s3_server, f"{prefix}/step-1"), roots=["s3://models/dri"])  # not a segment


def test_storage_failures_say_what_to_check(s3_server, uploaded):
    _, prefix = uploaded
    with pytest.raises(CheckpointError, match="refused access.*credentials.*expired"):
        open_checkpoint(_remote(s3_server, f"{prefix}/step-1", secret="expired-or-wrong"), roots=[prefix])
    with pytest.raises(CheckpointError, match="unreachable.*AWS_ENDPOINT_URL"):
        open_checkpoint(_remote(s3_server, f"{prefix}/step-1", endpoint_url=f"http://127.0.0.1:{free_port()}"),
                        roots=[prefix])
    with pytest.raises(CheckpointError, match="no such file or folder"):
        open_checkpoint(_remote(s3_server, f"{prefix}/step-9"), roots=[prefix])
    fs = s3_server.filesystem()
    fs.put(str(uploaded[0][1]), "models/drift/doomed", recursive=True)
    doomed = open_checkpoint(_remote(s3_server, f"{prefix}/doomed"), roots=[prefix])
    fs.rm("models/drift/doomed", recursive=True)  # deleted between listing and reading the weights
    with pytest.raises(CheckpointError, match="missing in object storage"):
        doomed.array(doomed.canonical_names()[0])


def test_local_cache_is_bounded_and_drops_the_least_recently_used(s3_server, uploaded, tmp_path):
    local, prefix = uploaded
    one = sum(p.stat().st_size for p in local[1].iterdir() if p.is_file())
    cache, limit = tmp_path / "cache", int(1.5 * one)
    first = stage_folder(_remote(s3_server, f"{prefix}/step-1"), cache, max_bytes=limit, roots=[prefix])
    assert sorted(p.name for p in first.iterdir() if p.name != ".complete") == sorted(
        p.name for p in local[1].iterdir())
    CountingS3.bytes_read = 0
    again = stage_folder(_remote(s3_server, f"{prefix}/step-1"), cache, max_bytes=limit, roots=[prefix])
    assert again == first and CountingS3.bytes_read == 0  # served from the cache
    second = stage_folder(_remote(s3_server, f"{prefix}/step-2"), cache, max_bytes=limit, roots=[prefix])
    assert second.is_dir() and not first.exists()  # the older folder made room
    assert cached_bytes(cache) <= limit
    with pytest.raises(CheckpointError, match="FORGETWATCH_CACHE_MAX_BYTES"):
        stage_folder(_remote(s3_server, f"{prefix}/base"), cache, max_bytes=one // 2, roots=[prefix])
    with pytest.raises(CheckpointError, match="outside the allowed"):
        stage_folder(_remote(s3_server, f"{prefix}/base"), tmp_path / "other", max_bytes=limit,
                     roots=["s3://models/elsewhere"])
