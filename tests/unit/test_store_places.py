"""The store on both of its places, a folder and a real S3-compatible server (SeaweedFS).

The same assertions on each: versions kept and one current, a feature table published as one unit,
lineage verified byte for byte, Parquet read with row-group pruning, and the races that matter
(two validates publishing the same day, a restatement judged against the version a concurrent run
published, a writer killed in the middle). The S3 cases need ``scripts/seaweedfs.sh start``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlcycle.store import (
    LineageError,
    Store,
    atomic_path,
    file_sha256,
    fingerprint_of,
    read_parquet,
    write_json,
    write_parquet,
    write_text,
)
from mlcycle.storepath import RemotePath, parquet_source, store_root
from tests.conftest import ROOT

DAY = dt.date(2011, 3, 5)

#: A validate-like publisher: publishes its frame (``rows`` rows) as DAY's version, accepting only
#: a version that does not shrink the day by more than half (a restatement rule), and prints what it
#: judged against and whether it published.
PUBLISHER = """
import datetime as dt, hashlib, io, json, sys, time
import pandas as pd, pyarrow as pa, pyarrow.parquet as pq
from mlcycle.storepath import store_root
from mlcycle.store import Store
store, rows = Store(store_root(sys.argv[1]), "demo"), int(sys.argv[2])
buffer = io.BytesIO()
pq.write_table(pa.table({"x": list(range(rows))}), buffer)
data = buffer.getvalue()
judged = []
def accept(current):
    judged.append(current.rows if current else None)
    time.sleep(0.2)  # a judgement takes time (validate reads and compares the day): runs overlap
    return current is None or rows >= current.rows / 2
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # every publisher starts at the same moment
published = store.publish_validated(dt.date(2011, 3, 5), data, hashlib.sha256(data).hexdigest(), rows, accept)
print(json.dumps({"rows": rows, "judged": judged, "published": published is not None}))
"""


@pytest.fixture
def store(place, monkeypatch) -> Store:
    for name, value in place[1].items():
        monkeypatch.setenv(name, value)
    return Store(store_root(place[0]), "demo")


def _frame(n: int = 24) -> pd.DataFrame:
    return pd.DataFrame({"x": [i / 10 for i in range(n)], "c": ["a", "b", "c"] * (n // 3)})


def test_the_root_is_a_folder_or_a_remote_path(store, place):
    assert isinstance(store.root, RemotePath) == place[0].startswith("s3://")
    assert str(store.raw(DAY)).endswith("demo/raw/date=2011-03-05/data.parquet")
    assert store.raw(DAY).relative_to(store.base).as_posix() == "raw/date=2011-03-05/data.parquet"


def test_versions_are_kept_and_the_pointer_names_the_current(store):
    sha = write_parquet(_frame(), store.raw(DAY))
    assert write_parquet(_frame(), store.raw(DAY)) == sha  # same frame, same bytes
    published = store.publish(DAY)
    assert published == store.validated(DAY) and file_sha256(published) == sha
    assert store.current_validated(DAY).rows == 24 and store.raw(DAY).exists()
    second = write_parquet(_frame(12), store.raw(DAY))
    assert store.publish(DAY) != published and file_sha256(published) == sha  # both kept
    assert file_sha256(store.validated(DAY)) == second and store.current_validated(DAY).rows == 12
    pointer = json.loads((store.validated_dir(DAY) / "CURRENT.json").read_text())
    assert pointer["replaces"] == sha and pointer["sha256"] == second
    assert read_parquet(store.validated(DAY)).equals(_frame(12))
    folder = store.quarantine(DAY, "attempt-1", b"judged bytes")
    assert (folder / "data.parquet").read_bytes() == b"judged bytes"
    assert sorted(p.name for p in store.validated_dir(DAY).glob("*.parquet")) == sorted(
        [f"{sha[:16]}.parquet", f"{second[:16]}.parquet"]
    )


def test_a_feature_table_is_published_as_one_unit(store):
    with store.new_features(DAY) as folder:
        write_parquet(_frame(), folder / "train.parquet")
        write_json({"rows": 24}, folder / "manifest.json")
    first = store.features_dir(DAY)
    assert first.parent == store.base / "features" / "end=2011-03-05"
    with pytest.raises(RuntimeError), store.new_features(DAY) as folder:
        write_text("2", folder / "train.parquet")
        raise RuntimeError("killed between the two files")
    assert store.features_dir(DAY) == first and read_parquet(first / "train.parquet").equals(_frame())
    with store.new_features(DAY) as folder:
        write_parquet(_frame(6), folder / "train.parquet")
        write_json({"rows": 6}, folder / "manifest.json")
    assert store.features_dir(DAY) != first
    assert json.loads((store.features_dir(DAY) / "manifest.json").read_text()) == {"rows": 6}


def test_lineage_is_verified_byte_for_byte(store):
    write_parquet(_frame(), store.raw(DAY))
    store.publish(DAY)
    version = store.current_validated(DAY)
    fingerprint = fingerprint_of([version])
    store.record_lineage(fingerprint, [version])
    assert store.files_for_fingerprint(fingerprint) == [version.path]
    with pytest.raises(LineageError, match="no lineage record"):
        store.files_for_fingerprint("0" * 16)
    version.path.write_bytes(b"tampered")
    with pytest.raises(LineageError, match="no longer holds the bytes"):
        store.files_for_fingerprint(fingerprint)


def test_parquet_reads_are_row_group_pruned(store):
    frame = pd.DataFrame({"x": range(10_000), "y": [f"v{i}" for i in range(10_000)]})
    target = store.base / "t" / "data.parquet"
    with atomic_path(target) as tmp:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp, row_group_size=1_000)
    parquet = pq.ParquetFile(parquet_source(target))
    assert parquet.metadata.num_row_groups == 10
    assert parquet.read_row_group(7, columns=["x"]).column(0).to_pylist() == list(range(7_000, 8_000))


def _publisher(place, rows: int, go: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, **place[1], "PYTHONPATH": f"{ROOT / 'include'}:{ROOT}"}
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, place[0], str(rows), str(go)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_concurrent_publishers_of_one_day_make_one_history(store, place):
    """Four validate-like runs publish the same day at once, each judging the version it replaces.

    Every published version must have been judged against the version it really replaced (a chain
    from nothing to the final pointer), and every refusal against a version that really was current:
    no two runs both publish "over nothing", no judgement against a version that was already gone.
    """
    go = time.time() + 6  # after every process has imported what it needs, on a busy machine too
    runs = [_publisher(place, rows, go) for rows in (40, 30, 20, 10)]
    outcomes = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
        outcomes.append(json.loads(out.strip().splitlines()[-1]))
    published = {o["judged"][-1]: o["rows"] for o in outcomes if o["published"]}
    assert len(published) == sum(o["published"] for o in outcomes)  # no two replaced the same version
    chain, current = [], None
    while current in published:
        current = published[current]
        chain.append(current)
    assert len(chain) == len(published) >= 1  # one history, from nothing to the last
    assert store.current_validated(DAY).rows == chain[-1]
    for o in outcomes:
        if not o["published"]:
            assert o["judged"][-1] in chain and o["rows"] < o["judged"][-1] / 2


def test_a_killed_publisher_leaves_the_day_readable(store, place):
    write_parquet(_frame(), store.raw(DAY))
    store.publish(DAY)
    before = store.current_validated(DAY)
    run = _publisher(place, 24)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    current = store.current_validated(DAY)
    assert current is not None and current.path.exists()
    assert current.sha256 in (before.sha256, file_sha256(current.path))
    assert file_sha256(current.path) == current.sha256
