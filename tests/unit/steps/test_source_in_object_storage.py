"""A file source in object storage (``source.path: s3://bucket/key``), on a real SeaweedFS.

Where workers share no disk, the source file cannot be "beside the spec" either: it is read from the
bucket with the store's keys. Ingest gives the same bytes as from the same file on a disk (CSV and
Parquet, the Parquet one through byte-range reads of its row groups); a missing object and an
unreadable one are rejected like a missing or unreadable local file, the latter's bytes kept in
the quarantine.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pandas as pd
import pytest
import yaml

from mlcycle.errors import ValidationFailed
from mlcycle.spec import load_spec
from mlcycle.steps.ingest import ingest
from mlcycle.store import Store, file_sha256
from tests.conftest import s3_client
from tests.datasets import make_classification_dataset
from tests.unit.conftest import day_interval

DAY = dt.date(2011, 3, 10)


@pytest.fixture
def bucket(s3_env, monkeypatch):
    """A fresh prefix of the test bucket, the client environment set, and a boto3 client."""
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    client = s3_client(s3_env)
    return client, s3_env["MLCYCLE_TEST_S3_BUCKET"], f"tests/{uuid.uuid4().hex}"


def _in_bucket(spec_path, bucket, fmt: str):
    """The spec at ``spec_path`` with its source uploaded (as ``fmt``) and named by its s3:// URI."""
    client, name, prefix = bucket
    local = spec_path.parent / "synthclass.csv"
    key = f"{prefix}/source/synthclass.{fmt}"
    if fmt == "parquet":
        pd.read_csv(local).to_parquet(spec_path.parent / "synthclass.parquet", row_group_size=24)
        local = spec_path.parent / "synthclass.parquet"
    client.put_object(Bucket=name, Key=key, Body=local.read_bytes())
    document = yaml.safe_load(spec_path.read_text())
    document["source"] = {"kind": "file", "path": f"s3://{name}/{key}", "format": fmt}
    remote = spec_path.parent / f"remote-{fmt}.yaml"
    remote.write_text(yaml.safe_dump(document))
    return load_spec(remote), local


def _partitions(store: Store) -> dict[str, str]:
    return {p.parent.name: file_sha256(p) for p in sorted((store.base / "raw").glob("date=*/data.parquet"))}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_source_in_a_bucket_gives_the_partitions_of_the_same_file_on_a_disk(
    tmp_path, settings, bucket, fmt
):
    spec_path = make_classification_dataset(tmp_path / "d", days=20)
    remote_spec, local_file = _in_bucket(spec_path, bucket, fmt)
    assert str(remote_spec.source.path()).startswith("s3://")
    document = yaml.safe_load(spec_path.read_text())
    document["source"] = {"kind": "file", "path": str(local_file), "format": fmt}
    (tmp_path / "d" / "local.yaml").write_text(yaml.safe_dump(document))
    local_spec = load_spec(tmp_path / "d" / "local.yaml")

    remote = ingest(remote_spec, settings, day_interval(DAY), window_days=4)
    from_bucket = _partitions(Store(settings.store, remote_spec.name))
    local_settings = settings.__class__(**{**settings.__dict__, "store": settings.home / "local-store"})
    local = ingest(local_spec, local_settings, day_interval(DAY), window_days=4)
    assert (remote.partitions, remote.rows) == (local.partitions, local.rows) == (4, 96)
    assert from_bucket == _partitions(Store(local_settings.store, local_spec.name)) and len(from_bucket) == 4


def test_a_missing_object_is_rejected_with_its_uri(tmp_path, settings, bucket):
    client, name, prefix = bucket
    remote_spec, _ = _in_bucket(make_classification_dataset(tmp_path / "d", days=10), bucket, "csv")
    client.delete_object(Bucket=name, Key=f"{prefix}/source/synthclass.csv")
    with pytest.raises(ValidationFailed, match=f"s3://{name}/{prefix}/source/synthclass.csv does not exist"):
        ingest(remote_spec, settings, day_interval(dt.date(2011, 3, 5)), window_days=2)


def test_an_unreadable_object_is_quarantined_with_its_bytes(tmp_path, settings, bucket):
    client, name, prefix = bucket
    spec_path = make_classification_dataset(
        tmp_path / "d", days=10, bad={"day": "2011-03-05", "kind": "unreadable"}
    )
    remote_spec, local_file = _in_bucket(spec_path, bucket, "csv")
    with pytest.raises(ValidationFailed, match="source is readable"):
        ingest(remote_spec, settings, day_interval(dt.date(2011, 3, 5)), window_days=3, attempt="try-1")
    folder = Store(settings.store, remote_spec.name).quarantine_dir(dt.date(2011, 3, 5), "try-1")
    assert (
        "unreadable as csv" in json.loads((folder / "failures.json").read_text())["failures"][0]["observed"]
    )
    assert file_sha256(folder / "synthclass.csv") == file_sha256(local_file)  # the evidence, from the bucket
