"""A path in object storage that behaves like the part of ``pathlib.Path`` the store uses.

The store (``mlcycle.store``) names every file by a path under its root: a ``pathlib.Path`` when
``MLCYCLE_STORE`` is a folder, a ``RemotePath`` when it is ``s3://bucket/prefix``. A ``RemotePath``
is a location in a ``pyarrow.fs`` filesystem (S3 and its compatibles; the same code serves any
filesystem pyarrow knows), so the steps join, list, read and write the store's files the same way on
either, and Parquet is read through pyarrow's own S3 client with column and row-group pruning
(``parquet_source``).

What object storage does not have is kept out of this class on purpose: there is no rename and no
lock, so whole-object writes (``mlcycle.store.atomic_path`` uploads a finished local file in one
request) and compare-and-swap pointers (``mlcycle.objects``) take their place.
"""

from __future__ import annotations

import fnmatch
import io
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.fs as pafs

from mlcycle.objects import S3Objects, objects_for


class RemotePath:
    """``s3://bucket/key`` in a pyarrow filesystem; the subset of ``pathlib.Path`` the store uses."""

    __slots__ = ("_fs", "_objects", "_path")

    def __init__(self, objects: S3Objects, path: str, fs: pafs.FileSystem | None = None):
        self._objects = objects
        self._path = path.strip("/")
        self._fs = fs if fs is not None else objects.arrow()[0]

    @classmethod
    def from_uri(cls, uri: str, env: dict[str, str] | None = None) -> RemotePath:
        objects = objects_for(uri, env=env)
        if not isinstance(objects, S3Objects):
            raise ValueError(f"{uri} is not in object storage")
        return cls(objects, objects.arrow()[1])

    # --- names --------------------------------------------------------------------------------

    def _child(self, path: str) -> RemotePath:
        return RemotePath(self._objects, path, self._fs)

    def __truediv__(self, other: str | os.PathLike[str]) -> RemotePath:
        return self._child(f"{self._path}/{os.fspath(other).strip('/')}")

    def __str__(self) -> str:
        return f"s3://{self._path}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other._path == self._path

    def __lt__(self, other: RemotePath) -> bool:
        return self._path < other._path

    def __hash__(self) -> int:
        return hash(self._path)

    def __fspath__(self) -> str:
        raise TypeError(
            f"{self} is in object storage, not on a disk: read it through mlcycle.store "
            f"(parquet_source, read_bytes) instead of opening it as a local file"
        )

    @property
    def name(self) -> str:
        return PurePosixPath(self._path).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self._path).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self._path).stem

    @property
    def parent(self) -> RemotePath:
        return self._child(str(PurePosixPath(self._path).parent))

    @property
    def parts(self) -> tuple[str, ...]:
        return ("s3://", *PurePosixPath(self._path).parts)

    @property
    def fs_path(self) -> str:
        """The path inside the pyarrow filesystem (``bucket/key``)."""
        return self._path

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self._fs

    @property
    def objects(self) -> S3Objects:
        return self._objects

    def relative_to(self, other: RemotePath) -> PurePosixPath:
        return PurePosixPath(self._path).relative_to(other._path)

    def with_name(self, name: str) -> RemotePath:
        return self._child(str(PurePosixPath(self._path).with_name(name)))

    def with_suffix(self, suffix: str) -> RemotePath:
        return self._child(str(PurePosixPath(self._path).with_suffix(suffix)))

    def as_posix(self) -> str:
        return str(self)

    def as_uri(self) -> str:
        return str(self)

    def resolve(self) -> RemotePath:
        return self

    # --- what is there --------------------------------------------------------------------------

    def _info(self) -> pafs.FileInfo:
        return self._fs.get_file_info(self._path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def stat(self) -> os.stat_result:
        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(str(self))
        mtime = info.mtime.timestamp() if info.mtime else 0.0
        return os.stat_result((0o100644, 0, 0, 1, 0, 0, info.size or 0, mtime, mtime, mtime))

    def iterdir(self) -> Iterator[RemotePath]:
        selector = pafs.FileSelector(self._path, allow_not_found=True, recursive=False)
        for info in sorted(self._fs.get_file_info(selector), key=lambda i: i.path):
            yield self._child(info.path)

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        """Paths under this one matching ``pattern`` (``*`` within a part, ``**`` any depth)."""
        recursive = "**" in pattern or "/" in pattern
        selector = pafs.FileSelector(self._path, allow_not_found=True, recursive=recursive)
        for info in sorted(self._fs.get_file_info(selector), key=lambda i: i.path):
            relative = info.path[len(self._path) + 1 :]
            if _match(relative, pattern):
                yield self._child(info.path)

    def rglob(self, pattern: str) -> Iterator[RemotePath]:
        return self.glob(f"**/{pattern}")

    # --- reading and writing whole objects ------------------------------------------------------

    def read_bytes(self) -> bytes:
        try:
            with self._fs.open_input_stream(self._path) as stream:
                return stream.read()
        except OSError as exc:
            raise _missing_or(exc, self) from None

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        with self._fs.open_output_stream(self._path) as stream:
            stream.write(data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def open(self, mode: str = "rb", encoding: str | None = None) -> Any:
        """A file object: reading streams the object; writing uploads it whole when closed."""
        if mode in ("rb", "r"):
            stream = self._fs.open_input_file(self._path)
            return stream if mode == "rb" else io.TextIOWrapper(stream, encoding=encoding or "utf-8")
        if mode in ("wb", "w"):
            stream = self._fs.open_output_stream(self._path)
            return stream if mode == "wb" else io.TextIOWrapper(stream, encoding=encoding or "utf-8")
        raise ValueError(f"mode {mode!r}: object storage files are read or written whole")

    def mkdir(self, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: object storage has no folders, a key's prefix exists once a key does."""

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self._fs.delete_file(self._path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def remove_tree(self) -> None:
        self._fs.delete_dir_contents(self._path, missing_dir_ok=True)


def _missing_or(exc: OSError, path: RemotePath) -> OSError:
    """pyarrow's error for an absent object as the FileNotFoundError a local read raises; else ``exc``."""
    if isinstance(exc, FileNotFoundError) or "does not exist" in str(exc) or "NoSuchKey" in str(exc):
        return FileNotFoundError(2, "No such object", str(path))
    return exc


def _match(relative: str, pattern: str) -> bool:
    if "**" not in pattern:
        return relative.count("/") == pattern.count("/") and fnmatch.fnmatchcase(relative, pattern)
    head, _, tail = pattern.partition("**/")
    if head and not fnmatch.fnmatchcase(relative[: len(head)], head):
        return False
    rest = relative[len(head) :]
    return any(fnmatch.fnmatchcase("/".join(rest.split("/")[i:]), tail) for i in range(rest.count("/") + 1))


StorePath = Path | RemotePath


def store_root(location: str | os.PathLike[str] | RemotePath, env: dict[str, str] | None = None) -> StorePath:
    """The store's root for ``MLCYCLE_STORE``: a resolved folder, or a ``RemotePath`` for s3://."""
    if isinstance(location, RemotePath):
        return location
    text = os.fspath(location)
    if text.startswith("s3://") or text.startswith("s3:/"):
        return RemotePath.from_uri(text, env)
    return Path(text.removeprefix("file://")).resolve()


def is_remote(path: object) -> bool:
    return isinstance(path, RemotePath)


def parquet_source(path: StorePath) -> Any:
    """What pyarrow and pandas read Parquet from: the local path, or pyarrow's own S3 file.

    pyarrow's random-access file reads only the footer and the row groups and columns asked for.
    """
    if isinstance(path, RemotePath):
        try:
            return path.filesystem.open_input_file(path.fs_path)
        except OSError as exc:
            raise _missing_or(exc, path) from None
    return path
