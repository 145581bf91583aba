"""``mlcycle serve``: resolve the model, then run the app under an ASGI server.

granian (one process per worker, default one per core) when installed, else uvicorn. Each worker
loads the model folder itself; OpenMP and BLAS get one thread per worker. With more than one
worker, Prometheus metrics are aggregated across workers through a fresh multiprocess folder.

Slow clients: granian closes a connection whose request headers have not all arrived within
``MLCYCLE_SERVING_HEADER_TIMEOUT_SECONDS`` (10; its ``header_read_timeout``), and the app answers
408 to a body not complete within ``MLCYCLE_SERVING_BODY_TIMEOUT_SECONDS`` (30). uvicorn, the
fallback, has no header timeout: the serving image runs granian.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from mlcycle.errors import StepError
from mlcycle.serving.model import limit_threads

log = logging.getLogger(__name__)

APP_FACTORY = "mlcycle.serving.app:app_from_env"


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def run(model_dir: Path, host: str, port: int, workers: int) -> int:
    from mlcycle.serving.settings import timeout_seconds

    limit_threads()
    try:  # a typo in a setting fails here, with its name, not in each worker
        header_timeout = timeout_seconds("MLCYCLE_SERVING_HEADER_TIMEOUT_SECONDS", 10.0)
        timeout_seconds("MLCYCLE_SERVING_BODY_TIMEOUT_SECONDS", 30.0)
    except ValueError as exc:
        raise StepError(str(exc)) from None
    os.environ["MLCYCLE_SERVING_MODEL"] = str(model_dir)
    multiproc = None
    if workers > 1:
        multiproc = tempfile.mkdtemp(prefix="mlcycle-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc
    else:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log.info(
        "serving %s on http://%s:%d with %d worker(s): docs /docs, metrics /metrics",
        model_dir,
        host,
        port,
        workers,
    )
    try:
        try:
            from granian import Granian
            from granian.constants import Interfaces
            from granian.http import HTTP1Settings
        except ImportError:
            import uvicorn

            log.warning("granian is not installed: uvicorn serves, without a header timeout for slow clients")
            uvicorn.run(
                APP_FACTORY,
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_level="warning",
                access_log=False,
            )
            return 0
        Granian(
            APP_FACTORY,
            address=host,
            port=port,
            interface=Interfaces.ASGI,
            workers=workers,
            factory=True,
            log_access=False,
            respawn_failed_workers=True,
            workers_kill_timeout=30,
            http1_settings=HTTP1Settings(header_read_timeout=int(header_timeout * 1000)),
        ).serve()
        return 0
    finally:
        if multiproc:
            shutil.rmtree(multiproc, ignore_errors=True)
