"""Local-disk primitives of the store: temporary names a sweeper can tell from a live writer's,
whole-file replacement by rename, and folder locks (``flock``). Nothing here knows about object
storage or the store's layout; ``mlcycle.store`` and ``mlcycle.objects`` build on it.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Suffix of every temporary name the store writes; nothing else in the store ends with it.
TEMP_SUFFIX = ".mlcycle-tmp"


def locked_temp(target: Path, directory: bool = False) -> tuple[Path, int]:
    """Create a temporary file (or folder) next to ``target`` and hold an exclusive flock on it.

    The lock tells a sweeper that a live writer owns the name; it is released when the writer's
    descriptor closes, also when the writer is killed. Created with mode 0o666 (0o777 for a folder)
    so the process umask decides the permissions, not mkstemp's 0600.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
        try:
            if directory:
                os.mkdir(tmp, 0o777)
                fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
            else:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # a sweeper may have removed the name between its creation and the lock
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return tmp, fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def local_atomic_path(target: Path) -> Iterator[Path]:
    """Yield a locked temporary path next to ``target``; rename it into place only if the block succeeds."""
    tmp_path, fd = locked_temp(target)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)
        os.close(fd)


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``folder`` (created if missing) for the block."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
