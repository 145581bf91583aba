"""Prometheus metrics of the prediction server.

With several worker processes, ``mlcycle serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
folder, so ``/metrics`` of any worker reports the sum over all of them.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

ENDPOINTS = {"/predict", "/invocations", "/health", "/ready", "/metadata", "/metrics"}
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter(
    "mlcycle_requests_total", "HTTP requests by endpoint and status code", ["endpoint", "status"]
)
LATENCY = Histogram(
    "mlcycle_request_latency_seconds",
    "request latency in the server, by endpoint",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
REJECTED = Counter(
    "mlcycle_rejected_requests_total", "requests rejected before the model, by reason", ["reason"]
)
ROWS = Counter("mlcycle_predicted_rows_total", "rows predicted")
MODEL_INFO = Gauge(
    "mlcycle_model_info",
    "the served model (value 1)",
    ["name", "version", "run_id", "inference_path"],
    multiprocess_mode="max",
)
PREDICTION_LABELS = Counter(
    "mlcycle_predictions_by_label_total", "classification: predicted rows by label", ["label"]
)
HISTORY_AGE = Gauge(
    "mlcycle_history_feature_age_seconds",
    "history features: age of the online store's newest snapshot, by feature view (at the last scrape)",
    ["view"],
    multiprocess_mode="max",
)
_prediction_hist: Histogram | None = None


def observe_history_age(online: Any) -> None:
    """Set the age gauge of every feature view the server reads (called when /metrics is scraped)."""
    for view, state in online.freshness().items():
        if state["age_seconds"] is not None:
            HISTORY_AGE.labels(view).set(state["age_seconds"])


def model_loaded(model: Any) -> None:
    """Register the model's info metric and, for regression, a prediction histogram scaled to it."""
    global _prediction_hist
    info = model.info
    MODEL_INFO.labels(info.name, info.version, info.run_id or "", model.path).set(1)
    if not model.classification and _prediction_hist is None:
        from mlcycle.serving.model import sample_rows

        values = sorted(model.predict(model.example + sample_rows(model.schema, 64)).predictions)
        lo, hi = values[0], values[-1]
        step = (hi - lo) / 10 or 1.0
        buckets = sorted({round(lo + i * step, 6) for i in range(11)})
        _prediction_hist = Histogram(
            "mlcycle_prediction", "regression: distribution of predicted values", buckets=buckets
        )


def observe_predictions(model: Any, predictions: list[Any]) -> None:
    ROWS.inc(len(predictions))
    if model.classification:
        for label in predictions:
            PREDICTION_LABELS.labels(str(label)).inc()
    elif _prediction_hist is not None:
        observe_many(_prediction_hist, predictions)


def observe_many(hist: Histogram, values: list[float]) -> None:
    """``hist.observe`` for each value, in one pass: a count per bucket and one sum.

    A 1,000-row request spent several milliseconds observing its predictions one by one (a lock and
    a shared-memory write each). prometheus_client has no public bulk observe; this writes the
    histogram's own bucket and sum values (the pinned version's; tests/unit/serving/test_metrics.py
    compares the result with ``observe``).
    """
    if len(values) < 8:  # below this, numpy costs more than it saves
        for value in values:
            hist.observe(value)
        return
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    # observe() counts a value in the first bucket whose upper bound is >= the value.
    counts = np.bincount(np.searchsorted(hist._upper_bounds, arr, side="left"), minlength=len(hist._buckets))
    hist._sum.inc(float(arr.sum()))
    for bucket, count in zip(hist._buckets, counts.tolist(), strict=False):
        if count:
            bucket.inc(count)


def exposition() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP request by endpoint and status, and times it."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def capture(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in ENDPOINTS else "other"
            REQUESTS.labels(endpoint, str(status[0])).inc()
            LATENCY.labels(endpoint).observe(time.perf_counter() - started)
