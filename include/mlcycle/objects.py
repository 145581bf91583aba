"""Where the store's bytes live: a local folder or an S3-compatible bucket, behind one small interface.

``MLCYCLE_STORE`` names the place: a folder (``/data/store``, ``file:///data/store``; the default) or
``s3://bucket/prefix`` (AWS S3, SeaweedFS, MinIO, Ceph). ``objects_for`` returns the matching
``Objects``. Keys are ``/``-separated paths relative to that root.

Everything the store publishes goes through three operations that every backend implements with
the same guarantees:

- ``put``: a whole object appears at once (a reader sees the old bytes or the new ones);
- ``get``: the bytes and a *version token* (the content's sha256 on disk, the ETag on S3);
- ``put_if``: compare and swap. The write happens only if the object is still at the token the
  writer read (``None``: only if it does not exist); otherwise it returns False and nothing changes.
  On disk the compare and the rename run under an ``flock`` of the folder; on S3 the server checks
  the condition (``If-Match`` / ``If-None-Match: *``, standard on AWS S3 since 2024 and on
  SeaweedFS), because object stores have no locks.

``update_document`` builds the pointer protocol on ``put_if``: read, decide, write if unchanged,
else read again and decide again. A concurrent writer therefore loses cleanly and retries with what
the winner wrote, on a laptop folder and on a bucket shared by workers that share no disk.

Credentials for S3 come from the environment, the way every AWS client reads them
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``), and the
endpoint of a compatible server from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``; never from a
spec. Parquet is read through ``arrow()`` (a ``pyarrow.fs`` filesystem), so a window's reads stay
column- and row-group-pruned on either backend.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import pyarrow.fs as pafs

from mlcycle.errors import SpecError
from mlcycle.localfs import TEMP_SUFFIX, folder_lock, local_atomic_path

log = logging.getLogger(__name__)

#: How many times ``update_document`` reads and decides again after losing a race, and the longest
#: pause between tries (seconds; jittered, doubling from 50 ms).
UPDATE_ATTEMPTS = 30
MAX_PAUSE_S = 2.0


class StoreLocationError(SpecError):
    """``MLCYCLE_STORE`` names a place the store cannot use."""


class Objects(Protocol):
    """The operations the store needs from the place its bytes live."""

    uri: str

    def get(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and version token, or None when it does not exist."""

    def put(self, key: str, data: bytes) -> None:
        """Write the whole object at once."""

    def put_if(self, key: str, data: bytes, token: str | None) -> bool:
        """Write only if the object is still at ``token`` (None: absent); False when it was not."""

    def exists(self, key: str) -> bool: ...

    def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (a folder), sorted."""

    def delete(self, key: str) -> None: ...

    def arrow(self) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem and the root's path in it, for Parquet reads and writes."""


def _token(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class LocalObjects:
    """A folder on a disk every writer shares (one host, or a mounted volume)."""

    root: Path

    @property
    def uri(self) -> str:
        return self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return data, _token(data)

    def put(self, key: str, data: bytes) -> None:
        with local_atomic_path(self._path(key)) as tmp:  # the store's temporary-name-and-rename write
            tmp.write_bytes(data)

    def put_if(self, key: str, data: bytes, token: str | None) -> bool:
        path = self._path(key)
        with folder_lock(path.parent):  # every put_if of the folder compares and renames under this lock
            current = self.get(key)
            if (current[1] if current else None) != token:
                return False
            self.put(key, data)
        return True

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def keys(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.endswith(TEMP_SUFFIX) and TEMP_SUFFIX not in p.parent.name
        )

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def arrow(self) -> tuple[pafs.FileSystem, str]:
        return pafs.LocalFileSystem(), str(self.root)


def _s3_settings(env: Mapping[str, str]) -> dict[str, Any]:
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    return {
        "endpoint": endpoint,
        "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        "access_key": env.get("AWS_ACCESS_KEY_ID"),
        "secret_key": env.get("AWS_SECRET_ACCESS_KEY"),
        "session_token": env.get("AWS_SESSION_TOKEN"),
    }


@dataclass(frozen=True)
class S3Objects:
    """A prefix of an S3 bucket (AWS, or a compatible server at ``AWS_ENDPOINT_URL_S3``)."""

    bucket: str
    prefix: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def client(self) -> Any:
        """A boto3 S3 client; one per process and settings (boto3 clients are thread-safe)."""
        return _client(tuple(sorted(self.settings.items())))

    def get(self, key: str) -> tuple[bytes, str] | None:
        client = self.client()
        try:
            answer = client.get_object(Bucket=self.bucket, Key=self._key(key))
        except client.exceptions.NoSuchKey:
            return None
        return answer["Body"].read(), answer["ETag"]

    def put(self, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_if(self, key: str, data: bytes, token: str | None) -> bool:
        from botocore.exceptions import ClientError

        condition = {"IfNoneMatch": "*"} if token is None else {"IfMatch": token}
        try:
            self.client().put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
        except ClientError as exc:
            answer = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code")
            # 412: the condition failed; 409: another conditional write to the key is in flight
            # (AWS answers ConditionalRequestConflict); either way the writer lost the race.
            if answer in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def exists(self, key: str) -> bool:
        return self.get_size(key) is not None

    def get_size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self.client().head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise

    def keys(self, prefix: str) -> list[str]:
        folder = self._key(prefix.rstrip("/") + "/")
        strip = len(self._key(""))
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder)
        return sorted(
            item["Key"][strip:]
            for page in pages
            for item in page.get("Contents", [])
            if not item["Key"].endswith("/")
        )  # folder markers (pyarrow's create_dir)

    def delete(self, key: str) -> None:
        self.client().delete_object(Bucket=self.bucket, Key=self._key(key))

    def arrow(self) -> tuple[pafs.FileSystem, str]:
        s = self.settings
        options: dict[str, Any] = {"region": s.get("region")}
        if s.get("access_key"):
            options.update(
                access_key=s["access_key"],
                secret_key=s.get("secret_key"),
                session_token=s.get("session_token"),
            )
        if s.get("endpoint"):
            endpoint = urlparse(s["endpoint"])
            options.update(
                endpoint_override=endpoint.netloc or endpoint.path, scheme=endpoint.scheme or "https"
            )
        return pafs.S3FileSystem(**options), f"{self.bucket}/{self.prefix}".rstrip("/")


_CLIENTS: dict[tuple[tuple[str, Any], ...], Any] = {}


def _client(settings: tuple[tuple[str, Any], ...]) -> Any:
    if settings not in _CLIENTS:
        import boto3
        from botocore.config import Config

        s = dict(settings)
        _CLIENTS[settings] = boto3.client(
            "s3",
            endpoint_url=s.get("endpoint"),
            region_name=s.get("region"),
            aws_access_key_id=s.get("access_key"),
            aws_secret_access_key=s.get("secret_key"),
            aws_session_token=s.get("session_token"),
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}),
        )
    return _CLIENTS[settings]


def objects_for(location: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Objects:
    """The ``Objects`` of a store location: a folder, ``file://...`` or ``s3://bucket[/prefix]``."""
    text = os.fspath(location)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file"):
        return LocalObjects(Path(parsed.path if parsed.scheme else text).resolve())
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreLocationError(f"MLCYCLE_STORE={text!r} names no bucket: write s3://<bucket>/<prefix>")
        return S3Objects(
            parsed.netloc, parsed.path.strip("/"), _s3_settings(os.environ if env is None else env)
        )
    raise StoreLocationError(
        f"MLCYCLE_STORE={text!r}: the store is a folder, file://<folder> or s3://<bucket>/<prefix> "
        f"(any S3-compatible server through AWS_ENDPOINT_URL_S3); {parsed.scheme}:// is not supported"
    )


class UpdateConflict(RuntimeError):
    """``update_document`` lost the race every time it tried."""


def read_document(objects: Objects, key: str) -> tuple[dict[str, Any] | None, str | None]:
    """A JSON document and its version token; (None, None) when it does not exist."""
    found = objects.get(key)
    if found is None:
        return None, None
    return json.loads(found[0]), found[1]


def encode_document(document: Mapping[str, Any]) -> bytes:
    """The bytes the store writes for a JSON document: sorted keys, so equal documents are equal bytes."""
    return (json.dumps(document, indent=2, sort_keys=True, default=str) + "\n").encode()


def update_document(
    objects: Objects,
    key: str,
    change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
    attempts: int = UPDATE_ATTEMPTS,
) -> dict[str, Any] | None:
    """Apply ``change`` to the JSON document at ``key`` as one atomic step among concurrent writers.

    ``change`` receives the current document (None when absent) and returns the new one, or None to
    leave it as it is. When another writer changed the document between the read and the write,
    ``change`` runs again on what that writer wrote: it must decide from its argument alone. Returns
    the document as this call left it.
    """
    pause = 0.05
    for attempt in range(1, attempts + 1):
        current, token = read_document(objects, key)
        wanted = change(current)
        if wanted is None or wanted == current:
            return current
        if objects.put_if(key, encode_document(wanted), token):
            return wanted
        log.info("%s/%s changed while this run decided (try %d): reading it again", objects.uri, key, attempt)
        time.sleep(random.uniform(0, pause))  # noqa: S311  (jitter between writers, not a secret)
        pause = min(pause * 2, MAX_PAUSE_S)
    raise UpdateConflict(
        f"{objects.uri}/{key} kept changing under this run: {attempts} tries each lost to another writer; "
        f"re-run the task (the store is consistent: every try either wrote nothing or a whole document)"
    )
