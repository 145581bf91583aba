"""How many threads a step's numeric libraries may use, set explicitly for every step.

Two tasks on one worker, each letting OpenMP start a thread per core, fight over cores they do not
have: a gradient-boosting search measured 4 times slower that way on a busy 2-core machine. Every
step therefore limits its thread pools (OpenMP, BLAS) to ``MLCYCLE_THREADS``, which defaults to the
cores this process may use: its CPU affinity, capped by a container's CPU quota (cgroup v2
``cpu.max`` or v1 ``cpu.cfs_quota_us``). Give each task of a busy worker fewer with MLCYCLE_THREADS
(the Docker runner's containers can also be given a CPU quota, which this reads).

OpenMP keeps its default wait policy (spin briefly, then sleep): a passive policy was measured 9 times
slower for gradient boosting on a quiet 2-core machine, its many short parallel regions paying a
wake-up each (``make bench-training``).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def available_cores() -> int:
    """Cores this process may run on: CPU affinity, capped by the cgroup's CPU quota when there is one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def _cgroup_quota() -> float | None:
    v2 = Path("/sys/fs/cgroup/cpu.max")
    try:
        if v2.is_file():
            limit, period = v2.read_text().split()[:2]
            return None if limit == "max" else int(limit) / int(period)
        v1, p1 = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        if v1.is_file() and p1.is_file():
            limit = int(v1.read_text())
            return None if limit <= 0 else limit / int(p1.read_text())
    except (OSError, ValueError):
        return None
    return None


def thread_count() -> int:
    """``MLCYCLE_THREADS`` (a whole number >= 1), else the available cores."""
    raw = os.environ.get("MLCYCLE_THREADS", "").strip()
    if raw:
        try:
            value = int(raw)
            if value >= 1:
                return value
        except ValueError:
            pass
        log.warning("MLCYCLE_THREADS=%r is not a whole number >= 1: using the %d available core(s)",
                    raw, available_cores())
    return available_cores()


def limit_threads() -> int:
    """Set the thread pools of every numeric library for this process; call before importing them.

    Environment variables reach libraries loaded later; threadpoolctl limits those already loaded.
    """
    count = thread_count()
    for name in THREAD_VARIABLES:
        os.environ[name] = str(count)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=count)
    except ImportError:  # threadpoolctl comes with scikit-learn; without it the variables still apply
        pass
    log.debug("thread pools limited to %d thread(s)", count)
    return count
