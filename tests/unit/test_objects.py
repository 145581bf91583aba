"""The store's places: a local folder and a real S3-compatible server (SeaweedFS), same guarantees.

Every test runs on both backends. The S3 one needs a server: ``scripts/seaweedfs.sh start`` (what
`.ci/run` does); without one it skips on a laptop and fails in CI (MLCYCLE_REQUIRE_S3=1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlcycle.objects import (
    LocalObjects,
    S3Objects,
    StoreLocationError,
    UpdateConflict,
    objects_for,
    read_document,
    update_document,
)
from tests.conftest import ROOT

#: A writer process: adds its name to the document's list ``count`` times through update_document.
WRITER = """
import sys
from mlcycle.objects import objects_for, update_document
objects, name, count = objects_for(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(count):
    update_document(objects, "counter.json",
                    lambda doc: {"writes": [*(doc or {}).get("writes", []), f"{name}-{i}"]})
    print(i, flush=True)
"""


def _objects(place):
    uri, env = place
    return objects_for(uri, env=env or None)


def test_locations_are_parsed_and_a_typo_is_an_error(tmp_path):
    assert objects_for(tmp_path) == LocalObjects(tmp_path.resolve())
    assert objects_for(f"file://{tmp_path}") == LocalObjects(tmp_path.resolve())
    s3 = objects_for("s3://bucket/some/prefix/", env={"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"})
    assert isinstance(s3, S3Objects) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    assert s3.settings["endpoint"] == "http://127.0.0.1:9" and s3.uri == "s3://bucket/some/prefix"
    with pytest.raises(StoreLocationError, match="names no bucket"):
        objects_for("s3:///prefix", env={})
    with pytest.raises(StoreLocationError, match="gs:// is not supported"):
        objects_for("gs://bucket/x", env={})


def test_put_get_and_compare_and_swap(place):
    objects = _objects(place)
    assert objects.get("a/doc.json") is None and not objects.exists("a/doc.json")
    assert objects.put_if("a/doc.json", b"one", None)  # absent: created
    assert not objects.put_if("a/doc.json", b"two", None)  # exists now: refused
    data, token = objects.get("a/doc.json")
    assert data == b"one"
    assert objects.put_if("a/doc.json", b"two", token)  # unchanged since read: replaced
    assert not objects.put_if("a/doc.json", b"three", token)  # stale token: refused
    assert objects.get("a/doc.json")[0] == b"two"
    objects.put("a/b/data.bin", b"\x00" * 10)
    assert objects.keys("a") == ["a/b/data.bin", "a/doc.json"]
    assert objects.keys("missing") == []
    objects.delete("a/b/data.bin")
    assert objects.keys("a") == ["a/doc.json"]


def test_parquet_goes_through_arrow_with_row_group_pruning(place):
    objects = _objects(place)
    filesystem, base = objects.arrow()
    filesystem.create_dir(f"{base}/t")  # a folder on disk; nothing (or a marker) on S3
    table = pa.table({"x": list(range(1000)), "y": [str(i) for i in range(1000)]})
    pq.write_table(table, f"{base}/t/data.parquet", filesystem=filesystem, row_group_size=100)
    assert objects.keys("t") == ["t/data.parquet"]
    parquet = pq.ParquetFile(f"{base}/t/data.parquet", filesystem=filesystem)
    assert parquet.metadata.num_row_groups == 10
    assert parquet.read_row_group(3, columns=["x"]).column(0).to_pylist() == list(range(300, 400))


def test_update_document_decides_again_after_losing_a_race(place):
    objects = _objects(place)
    seen = []

    def change(doc):
        seen.append(doc)
        if len(seen) == 1:  # another writer slips in between this call's read and its write
            objects.put_if("d.json", json.dumps({"n": 10}).encode(), None)
        return {"n": (doc or {"n": 0})["n"] + 1}

    assert update_document(objects, "d.json", change) == {"n": 11}
    assert seen == [None, {"n": 10}]
    assert read_document(objects, "d.json")[0] == {"n": 11}
    assert update_document(objects, "d.json", lambda doc: None) == {"n": 11}  # None: left as it is


def test_a_writer_that_always_loses_stops_with_a_clear_error(place, monkeypatch):
    objects = _objects(place)
    monkeypatch.setattr("mlcycle.objects.time.sleep", lambda s: None)
    monkeypatch.setattr(type(objects), "put_if", lambda self, key, data, token: False)
    with pytest.raises(UpdateConflict, match="3 tries each lost to another writer; re-run the task"):
        update_document(objects, "d.json", lambda doc: {"n": 1}, attempts=3)


def _writer(place, name: str, count: int) -> subprocess.Popen:
    env = {**os.environ, **place[1], "PYTHONPATH": f"{ROOT / 'include'}:{ROOT}"}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, place[0], name, str(count)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_concurrent_writers_lose_no_update(place):
    """Three processes append to one document at once: every append is there, none twice."""
    count = 15
    writers = [_writer(place, name, count) for name in ("a", "b", "c")]
    for w in writers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-3000:]
    writes = read_document(_objects(place), "counter.json")[0]["writes"]
    assert sorted(writes) == sorted(f"{n}-{i}" for n in ("a", "b", "c") for i in range(count))


def test_a_killed_writer_leaves_a_whole_document(place):
    """SIGKILL in the middle of a stream of updates: the document is the old one or the new one."""
    writer = _writer(place, "k", 10_000)
    for _ in range(5):  # wait for a few updates, so the kill lands in a busy writer
        assert writer.stdout.readline(), writer.stderr.read()[-3000:]
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    objects = _objects(place)
    writes = read_document(objects, "counter.json")[0]["writes"]
    assert writes == [f"k-{i}" for i in range(len(writes))] and len(writes) >= 5
    # and the next writer carries on from it
    assert update_document(objects, "counter.json", lambda doc: {"writes": [*doc["writes"], "next"]})
    time.sleep(0)
    assert read_document(objects, "counter.json")[0]["writes"][-1] == "next"
