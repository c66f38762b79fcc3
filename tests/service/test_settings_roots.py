"""FORGETWATCH_CHECKPOINT_ROOTS: folders and object storage prefixes in one variable."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_folders_and_object_storage_prefixes_are_split_and_normalised(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FORGETWATCH_CHECKPOINT_ROOTS",
                       f"{tmp_path}/a:{tmp_path}/b, s3://models/team/ ,s3://other,gs://ckpts//team/")
    settings = Settings(data_dir=tmp_path / "data")
    assert settings.remote_prefixes == ["s3://models/team", "s3://other", "gs://ckpts/team"]
    assert settings.allowed_roots[1:] == [tmp_path / "a", tmp_path / "b"]
    assert settings.confinement_roots[-3:] == ("s3://models/team", "s3://other", "gs://ckpts/team")


@pytest.mark.parametrize("value", ["az://bucket/x", "s3://", "gs://", "s3://bucket/../x", "s3://bucket/./x",
                                   "gs://bucket/../x"])
def test_unusable_prefixes_are_refused_naming_the_variable(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValidationError, match="FORGETWATCH_CHECKPOINT_ROOTS"):
        Settings(data_dir=tmp_path, checkpoint_roots=value)
