"""The partitioned data store: one folder per data set, one partition per day.

Layout under ``$MLCYCLE_STORE/<pipeline>/``::

    landing/date=YYYY-MM-DD/data.csv            a PostgreSQL source's day, as the extract task streamed it
    raw/date=YYYY-MM-DD/data.parquet            what ingest read for that day (its latest run)
    validated/date=YYYY-MM-DD/<sha16>.parquet   every version of the day that passed the suite, named by
                                                the first 16 hex digits of its sha256; never overwritten
    validated/date=YYYY-MM-DD/CURRENT.json      which version is current (its sha256 and rows)
    quarantine/date=YYYY-MM-DD/<attempt>/       a rejected batch (the exact bytes judged), failures, report
    features/end=YYYY-MM-DD/<version>/          one feature table: train.parquet, eval.parquet, manifest.json
    features/end=YYYY-MM-DD/CURRENT.json        which feature folder is current
    lineage/<fingerprint>.json                  the exact validated versions behind a data fingerprint
    scores/date=YYYY-MM-DD/                     batch predictions of the day (``mlcycle.steps.score``)
    reports/ingest/end=YYYY-MM-DD.json          the rows ingest read and the rows it dropped, by reason
    reports/validation/end=YYYY-MM-DD/report.html
    reports/validation/data_docs/               Great Expectations Data Docs: a page per validation

Every write goes to a temporary name in the same folder (``.<name>.<random>.mlcycle-tmp``, locked
with ``flock`` while its writer lives) and is renamed into place, so a killed step leaves no
half-written partition, the next step run removes what a killed one left, and the same input gives
the same bytes. Multi-file outputs (a feature table) are written as one folder and published by
replacing a pointer file. Files get the process umask (a store shared by a container user and the
host stays readable).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlcycle.localfs import TEMP_SUFFIX, folder_lock, local_atomic_path, locked_temp
from mlcycle.objects import LocalObjects, Objects, encode_document, update_document
from mlcycle.storepath import RemotePath, StorePath, parquet_source

log = logging.getLogger(__name__)

PARTITION_FILE = "data.parquet"
POINTER_FILE = "CURRENT.json"
#: Suffix of every temporary name the store writes; nothing else in the store ends with it.
#: Folders the steps write; the landing folder belongs to the DAG's extract task.
_STEP_FOLDERS = ("raw", "validated", "quarantine", "features", "lineage", "reports", "scores", "history")


def days(start: dt.date, end: dt.date) -> list[dt.date]:
    """The days of the half-open range [start, end)."""
    return [start + dt.timedelta(days=i) for i in range((end - start).days)]


def objects_at(folder: StorePath) -> Objects:
    """The ``Objects`` of a folder of the store, for compare-and-swap of the documents in it."""
    if isinstance(folder, RemotePath):
        bucket, _, prefix = folder.fs_path.partition("/")
        return type(folder.objects)(bucket, prefix, folder.objects.settings)
    return LocalObjects(folder)


@contextmanager
def atomic_path(target: StorePath) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it into place only if the block succeeds.

    In object storage the temporary file is local and is uploaded in one request once the block
    succeeds: a reader sees the whole old object or the whole new one, never a part.
    """
    if isinstance(target, RemotePath):
        with tempfile.TemporaryDirectory(prefix="mlcycle-upload-") as folder:
            tmp = Path(folder) / target.name
            yield tmp
            pafs.copy_files(
                str(tmp),
                target.fs_path,
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=target.filesystem,
            )
        return
    with local_atomic_path(target) as tmp:
        yield tmp


def remove_stale_temporaries(root: StorePath) -> int:
    """Remove temporaries under ``root`` that no live writer holds (a killed step's); return how many.

    Object storage holds none: its writes are single uploads of finished files.
    """
    removed = 0
    if isinstance(root, RemotePath) or not root.is_dir():
        return removed
    for folder, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            if not name.endswith(TEMP_SUFFIX):
                continue
            path = Path(folder) / name
            try:
                fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if name in dirnames else 0))
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a live writer holds it
            try:
                if name in dirnames:
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed += 1
                log.info("removed %s, left by a step that was killed while writing", path)
            finally:
                os.close(fd)
        dirnames[:] = [d for d in dirnames if not d.endswith(TEMP_SUFFIX)]
    return removed


@contextmanager
def locked(folder: StorePath) -> Iterator[None]:
    """Hold an exclusive flock on ``folder`` (created if missing) for the block."""
    if isinstance(folder, RemotePath):
        raise TypeError(
            f"{folder} is in object storage, which has no locks: publish through "
            f"mlcycle.objects.update_document (compare-and-swap) instead"
        )
    with folder_lock(folder):
        yield


def write_parquet(df: pd.DataFrame, target: StorePath) -> str:
    """Write ``df`` deterministically (same frame, same bytes) and return its sha256."""
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)
        return file_sha256(tmp)


def write_bytes(data: bytes, target: StorePath) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json(payload: dict[str, Any], target: StorePath) -> None:
    write_bytes(encode_document(payload), target)


def write_text(text: str, target: StorePath) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def read_parquet(path: StorePath, **options: Any) -> pd.DataFrame:
    """``pandas.read_parquet`` of a file of the store, on disk or in object storage (pruned reads)."""
    return pd.read_parquet(parquet_source(path), **options)


@contextmanager
def local_file(path: StorePath) -> Iterator[Path]:
    """A local path holding ``path``'s bytes, for a library that opens files itself (MLflow)."""
    if not isinstance(path, RemotePath):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mlcycle-download-") as folder:
        local = Path(folder) / path.name
        local.write_bytes(path.read_bytes())
        yield local


def upload_tree(local: Path, target: StorePath, keep_existing: bool = False) -> int:
    """Copy every file under the folder ``local`` to the same place under ``target``; return how many.

    With ``keep_existing``, files already at ``target`` are not copied again (a site's static
    assets, the same on every run).
    """
    present = {str(p) for p in target.rglob("*")} if keep_existing else set()
    count = 0
    for file in sorted(f for f in local.rglob("*") if f.is_file()):
        destination = target / file.relative_to(local).as_posix()
        if str(destination) in present:
            continue
        with atomic_path(destination) as tmp:
            shutil.copyfile(file, tmp)
        count += 1
    return count


def file_sha256(path: StorePath) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_digest(folder: Path) -> str:
    """The name of a feature folder: the first 16 hex digits of the hash of its files' names and bytes."""
    digest = hashlib.sha256()
    for name in sorted(p.name for p in folder.iterdir()):
        digest.update(f"{name}:{file_sha256(folder / name)}\n".encode())
    return digest.hexdigest()[:16]


def fingerprint_of(versions: list[ValidatedVersion]) -> str:
    """The data fingerprint of a set of validated versions: it names exactly which bytes were used."""
    lines = [f"{v.day}:{v.sha256}" for v in versions]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ValidatedVersion:
    """One validated version of a day: its content hash, rows and file."""

    day: dt.date
    sha256: str
    rows: int
    path: StorePath

    def to_dict(self, base: StorePath) -> dict[str, Any]:
        return {
            "date": self.day.isoformat(),
            "sha256": self.sha256,
            "rows": self.rows,
            "file": str(self.path.relative_to(base)),
        }


class LineageError(LookupError):
    """A data fingerprint that the store cannot map back to its validated files."""


@dataclass(frozen=True)
class Store:
    root: StorePath
    pipeline: str

    @property
    def base(self) -> StorePath:
        return self.root / self.pipeline

    def landing(self, day: dt.date) -> StorePath:
        return self.base / "landing" / f"date={day.isoformat()}" / "data.csv"

    def raw(self, day: dt.date) -> StorePath:
        return self.base / "raw" / f"date={day.isoformat()}" / PARTITION_FILE

    def quarantine_dir(self, day: dt.date, attempt: str) -> StorePath:
        return self.base / "quarantine" / f"date={day.isoformat()}" / attempt

    def validation_report(self, end: dt.date) -> StorePath:
        return self.base / "reports" / "validation" / f"end={end.isoformat()}" / "report.html"

    def validation_docs(self) -> StorePath:
        """The pipeline's Great Expectations Data Docs site: a page per validation of every run."""
        return self.base / "reports" / "validation" / "data_docs"

    def ingest_record(self, end: dt.date) -> StorePath:
        return self.base / "reports" / "ingest" / f"end={end.isoformat()}.json"

    def remove_stale_temporaries(self) -> int:
        """Remove what killed step runs left in the folders the steps write."""
        return sum(remove_stale_temporaries(self.base / folder) for folder in _STEP_FOLDERS)

    # --- validated partitions: every version kept, one current --------------------------------

    def validated_dir(self, day: dt.date) -> StorePath:
        return self.base / "validated" / f"date={day.isoformat()}"

    def validated_version_path(self, day: dt.date, sha256: str) -> StorePath:
        return self.validated_dir(day) / f"{sha256[:16]}.parquet"

    def current_validated(self, day: dt.date) -> ValidatedVersion | None:
        pointer = self.validated_dir(day) / POINTER_FILE
        try:
            return self._version(day, json.loads(pointer.read_text()))
        except FileNotFoundError:
            return None

    def validated(self, day: dt.date) -> StorePath:
        """The current validated file of ``day``; a path that does not exist when there is none."""
        current = self.current_validated(day)
        return current.path if current else self.validated_dir(day) / PARTITION_FILE

    def publish_validated(
        self,
        day: dt.date,
        data: bytes,
        sha256: str,
        rows: int,
        accept: Callable[[ValidatedVersion | None], bool] = lambda current: True,
    ) -> ValidatedVersion | None:
        """Keep ``data`` (bytes that passed the suite) as a version of ``day`` and make it current.

        ``accept`` sees the current version (None when there is none) and says whether these bytes
        may replace it; the decision and the pointer's replacement are one compare-and-swap
        (``mlcycle.objects.update_document``), so of two runs publishing the same day one wins and
        the other decides again against the winner's version. The version file is content-addressed
        and written once, only when accepted; a reader sees the old version or the new one. Returns
        the published version, or None when ``accept`` refused or these bytes are current already.
        """
        path = self.validated_version_path(day, sha256)
        published: list[ValidatedVersion] = []

        def change(pointer: dict[str, Any] | None) -> dict[str, Any] | None:
            published.clear()
            current = self._version(day, pointer)
            if (current is not None and current.sha256 == sha256) or not accept(current):
                return None
            if not path.exists():
                write_bytes(data, path)
            published.append(ValidatedVersion(day=day, sha256=sha256, rows=rows, path=path))
            return {
                "sha256": sha256,
                "rows": rows,
                "file": path.name,
                "replaces": current.sha256 if current else None,
            }

        update_document(objects_at(self.validated_dir(day)), POINTER_FILE, change)
        return published[0] if published else None

    def _version(self, day: dt.date, pointer: dict[str, Any] | None) -> ValidatedVersion | None:
        if pointer is None:
            return None
        return ValidatedVersion(
            day=day,
            sha256=pointer["sha256"],
            rows=int(pointer["rows"]),
            path=self.validated_version_path(day, pointer["sha256"]),
        )

    def publish(self, day: dt.date) -> StorePath:
        """Publish the raw partition of ``day`` as it is (no checks): for tests and repairs."""
        data = self.raw(day).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        self.publish_validated(day, data, sha, pq.read_metadata(parquet_source(self.raw(day))).num_rows)
        return self.validated_version_path(day, sha)

    def quarantine(self, day: dt.date, attempt: str, data: bytes | None = None) -> StorePath:
        """A folder for a rejected batch, holding the exact bytes that were judged; return it."""
        folder = self.quarantine_dir(day, attempt)
        folder.mkdir(parents=True, exist_ok=True)
        if data is not None:
            write_bytes(data, folder / PARTITION_FILE)
        return folder

    # --- feature tables: one folder per build, one current --------------------------------------

    def _features_base(self, end: dt.date) -> StorePath:
        return self.base / "features" / f"end={end.isoformat()}"

    def features_dir(self, end: dt.date) -> StorePath:
        """The current feature folder of the window ending ``end`` (one that may not exist yet)."""
        base = self._features_base(end)
        try:
            return base / json.loads((base / POINTER_FILE).read_text())["folder"]
        except FileNotFoundError:
            return base

    @contextmanager
    def new_features(self, end: dt.date) -> Iterator[Path]:
        """Yield an empty folder; once the block succeeds, publish all its files as one unit.

        The folder is named by the hash of its files, renamed into place (uploaded file by file in
        object storage, where nothing reads it before the pointer names it) and made current by
        replacing the pointer: readers see the whole previous table or the whole new one.
        """
        base = self._features_base(end)
        if isinstance(base, RemotePath):
            with tempfile.TemporaryDirectory(prefix="mlcycle-features-") as folder:
                yield Path(folder)
                version = _folder_digest(Path(folder))
                for file in sorted(Path(folder).iterdir()):
                    with atomic_path(base / version / file.name) as tmp:
                        shutil.copyfile(file, tmp)
            write_json({"folder": version}, base / POINTER_FILE)
            return
        tmp, fd = locked_temp(base / "build", directory=True)
        try:
            yield tmp
            version = _folder_digest(tmp)
            try:
                os.rename(tmp, base / version)
            except OSError as exc:  # the same table exists already: keep it
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            os.close(fd)
        write_json({"folder": version}, base / POINTER_FILE)

    # --- lineage: a data fingerprint back to its exact files ------------------------------------

    def record_lineage(self, fingerprint: str, versions: list[ValidatedVersion]) -> StorePath:
        target = self.base / "lineage" / f"{fingerprint}.json"
        if not target.exists():
            write_json(
                {"fingerprint": fingerprint, "partitions": [v.to_dict(self.base) for v in versions]}, target
            )
        return target

    def files_for_fingerprint(self, fingerprint: str, verify: bool = True) -> list[StorePath]:
        """The validated files a data fingerprint (a model's ``mlcycle.data_fingerprint``) names.

        With ``verify``, each file's bytes are hashed and checked against the recorded sha256.
        """
        record = self.base / "lineage" / f"{fingerprint}.json"
        try:
            partitions = json.loads(record.read_text())["partitions"]
        except FileNotFoundError:
            raise LineageError(
                f"no lineage record {record} for fingerprint {fingerprint!r} of {self.pipeline}: "
                f"it was not built by build_features on this store"
            ) from None
        files = []
        for part in partitions:
            path = self.base / part["file"]
            if not path.is_file() or (verify and file_sha256(path) != part["sha256"]):
                raise LineageError(
                    f"fingerprint {fingerprint}: {path} is missing or no longer holds the bytes "
                    f"with sha256 {part['sha256']}"
                )
            files.append(path)
        return files
