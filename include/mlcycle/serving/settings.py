"""Settings of the prediction server, from the environment (the CLI sets the model folder).

- ``MLCYCLE_SERVING_MODEL``: the model folder to serve (required by the server itself).
- ``MLCYCLE_STORE``: the data store; the prediction log goes to ``<store>/<pipeline>/predictions/``.
- ``MLCYCLE_SERVING_LOG``: ``on`` (default when a store is set) or ``off``.
- ``MLCYCLE_SERVING_LOG_FLUSH_ROWS`` (5000) and ``MLCYCLE_SERVING_LOG_FLUSH_SECONDS`` (10): when the
  log's buffer is written; also the most a hard kill can lose per worker.
- ``MLCYCLE_SERVING_MAX_BODY_BYTES``: larger request bodies get 413 (default 8 MiB).
- ``MLCYCLE_SERVING_HEADER_TIMEOUT_SECONDS`` (10): a connection whose request headers have not all
  arrived by then is closed (granian's ``header_read_timeout``; uvicorn has no such setting).
- ``MLCYCLE_SERVING_BODY_TIMEOUT_SECONDS`` (30): a request body not complete by then gets 408.
- ``MLCYCLE_SERVING_PATH``: ``auto`` (default: ONNX when it matches the Pipeline) or ``pipeline``.
- ``MLCYCLE_SERVING_HOST``, ``MLCYCLE_SERVING_PORT``, ``MLCYCLE_SERVING_WORKERS``: defaults of ``mlcycle serve``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mlcycle.storepath import StorePath, store_root


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


@dataclass(frozen=True)
class ServingSettings:
    model_dir: Path
    store: StorePath | None
    log_enabled: bool
    flush_rows: int
    flush_seconds: float
    max_body_bytes: int
    path: str
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0

    @classmethod
    def from_env(cls) -> ServingSettings:
        env = os.environ
        model = env.get("MLCYCLE_SERVING_MODEL", "").strip()
        if not model:
            raise ValueError(
                "MLCYCLE_SERVING_MODEL is not set: start the server with `mlcycle serve --model-uri ...`"
            )
        store_raw = env.get("MLCYCLE_STORE", "").strip()
        store = store_root(store_raw) if store_raw else None  # a folder, or s3://bucket/prefix
        log_flag = env.get("MLCYCLE_SERVING_LOG", "on" if store else "off").strip().lower()
        return cls(
            model_dir=Path(model).resolve(),
            store=store,
            log_enabled=log_flag in ("on", "1", "true", "yes") and store is not None,
            flush_rows=_env_int("MLCYCLE_SERVING_LOG_FLUSH_ROWS", 5_000),
            flush_seconds=float(env.get("MLCYCLE_SERVING_LOG_FLUSH_SECONDS", "") or 10.0),
            max_body_bytes=_env_int("MLCYCLE_SERVING_MAX_BODY_BYTES", 8 * 1024 * 1024),
            path=env.get("MLCYCLE_SERVING_PATH", "auto").strip().lower() or "auto",
            header_timeout_seconds=timeout_seconds("MLCYCLE_SERVING_HEADER_TIMEOUT_SECONDS", 10.0),
            body_timeout_seconds=timeout_seconds("MLCYCLE_SERVING_BODY_TIMEOUT_SECONDS", 30.0),
        )


def timeout_seconds(name: str, default: float) -> float:
    """A positive number of seconds from ``name``; a clear error for anything else."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 86_400:
        raise ValueError(f"{name} must be a number of seconds between 0 and 86400 (got {raw!r})")
    return value
