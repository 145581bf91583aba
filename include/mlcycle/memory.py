"""How much memory a step process may take, set by the process itself before it does any work.

A step that runs away (a spec, a source or a bug that asks for gigabytes) must fail on its own, with a
message, instead of having the kernel's OOM killer end the Airflow worker or a neighbour. Every step
the ``mlcycle`` command runs therefore caps its own address space (``RLIMIT_AS``) at
``MLCYCLE_STEP_MEMORY_LIMIT``: a size such as ``6G``, ``512M`` or a number of bytes, ``off`` for no
limit. The default is three quarters of the memory this process may use (the machine's, capped by
a container's cgroup limit), and at least 4 GiB. An allocation past the limit raises MemoryError in
the step, which fails with a message naming the limit and the setting (``StepOutOfMemory``).

The limit counts address space, not resident memory: libraries reserve more than they touch, so
keep it well above what a step really uses (ingest, validate and train of a small data set reserve
1.4, 2.1 and 2.3 GiB: VmPeak). The server (``mlcycle serve``) is not a step and sets no limit.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mlcycle.errors import StepError

log = logging.getLogger(__name__)

LIMIT_ENV = "MLCYCLE_STEP_MEMORY_LIMIT"
MIN_DEFAULT = 4 << 30
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

F = TypeVar("F", bound=Callable[..., Any])


class StepOutOfMemory(StepError):
    """The step asked for more memory than its limit allows."""


def parse_size(text: str) -> int | None:
    """``6G``, ``512M``, ``1.5g``, ``123456`` (bytes) as bytes; ``off``/``none``/``0`` as None."""
    value = text.strip().lower()
    if value in ("off", "none", "0", "unlimited"):
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", value)
    if not match:
        raise ValueError(f"{LIMIT_ENV}={text!r}: a size like 6G, 512M or a number of bytes, or off")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _cgroup_limit() -> int | None:
    for path in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:  # v1 says "no limit" with a huge number
            return int(raw)
    return None


def available_memory() -> int | None:
    """The memory this process may use: the machine's, capped by the container's cgroup limit."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    cgroup = _cgroup_limit()
    known = [v for v in (total, cgroup) if v]
    return min(known) if known else None


def default_limit() -> int | None:
    memory = available_memory()
    return None if memory is None else max(MIN_DEFAULT, memory * 3 // 4)


def configured_limit() -> int | None:
    """The limit in bytes from ``MLCYCLE_STEP_MEMORY_LIMIT`` (default: see the module), None for none."""
    raw = os.environ.get(LIMIT_ENV, "").strip()
    if not raw:
        return default_limit()
    try:
        return parse_size(raw)
    except ValueError as exc:
        log.warning("%s: using the default limit", exc)
        return default_limit()


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def limit_memory() -> int | None:
    """Cap this process's address space; returns the limit in bytes (None: no limit set)."""
    limit = configured_limit()
    if limit is None:
        return None
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        if soft != resource.RLIM_INFINITY and soft < limit:
            limit = soft  # a stricter limit set from outside stays
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError) as exc:  # not Linux/macOS, or not allowed: run without
        log.warning("cannot set the step's memory limit (%s): running without one", exc)
        return None
    log.debug("address space limited to %s (%s)", _gib(limit), LIMIT_ENV)
    return limit


def memory_limited(run: F) -> F:
    """Run a step under its memory limit; a MemoryError becomes a StepOutOfMemory that says what to do."""

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        limit = limit_memory()
        try:
            return run(*args, **kwargs)
        except MemoryError as exc:
            cap = f"its limit of {_gib(limit)}" if limit else "the memory the machine has"
            detail = f" ({exc})" if str(exc) else ""
            raise StepOutOfMemory(
                f"the step ran out of memory: it asked for more than {cap}{detail}. A runaway input or spec "
                f"is the usual cause; if the step really needs more, raise {LIMIT_ENV} (e.g. {LIMIT_ENV}=8G)"
            ) from exc

    return wrapper  # type: ignore[return-value]
