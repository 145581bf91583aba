"""A bounded load generator at a steady rate: what the smoke test, the watch, the benchmark and the
tests send through the proxy or to a slot.

Requests are scheduled at fixed times (``rate`` per second), sent by a pool of threads, one new
connection each (as independent clients would); a request that cannot be sent on time is sent late,
never dropped. Every answer is kept: status, latency, and the model version the body names.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_VERSION_KEY = b'"model_version":"'


@dataclass(frozen=True)
class Sample:
    sent: float  # when the request was sent (Unix time, comparable with other processes' clocks)
    latency: float  # seconds, until the whole answer was read
    status: int  # 0 when no HTTP answer came (connection refused, reset, timeout)
    version: str | None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == 0 or self.status >= 500


def request(
    port: int, path: str, body: bytes, timeout: float = 10.0, content_type: str = "application/json"
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"content-type": content_type})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _version(payload: bytes) -> str | None:
    at = payload.find(_VERSION_KEY)
    if at < 0:
        return None
    start = at + len(_VERSION_KEY)
    return payload[start : payload.find(b'"', start)].decode()


class Load:
    """Send ``rate`` requests per second to ``127.0.0.1:port/predict`` until ``stop()`` or ``seconds``.

    ``rows`` are sent in turn, one row per request. Use as a context manager or start/stop.
    """

    def __init__(
        self,
        port: int,
        rows: Sequence[dict[str, Any]],
        rate: float,
        seconds: float | None = None,
        threads: int = 16,
        path: str = "/predict",
        timeout: float = 10.0,
    ):
        if rate <= 0 or not rows:
            raise ValueError("a load needs a positive rate and at least one row")
        self.port, self.rate, self.seconds, self.path, self.timeout = port, rate, seconds, path, timeout
        self.bodies = [json.dumps(r, separators=(",", ":")).encode() for r in rows]
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._next = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(threads)]
        self._t0 = 0.0
        #: How many requests a bounded load sends: ``rate`` per second for ``seconds``.
        self.limit = None if seconds is None else round(seconds * rate)

    def start(self) -> Load:
        self._t0 = time.monotonic() + 0.05
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        with self._lock:
            return sorted(self.samples, key=lambda s: s.sent)

    def wait(self) -> list[Sample]:
        """Block until the bounded load (``seconds``) is over."""
        for t in self._threads:
            t.join()
        return self.stop()

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                i = self._next
                self._next += 1
            if self.limit is not None and i >= self.limit:
                return
            due = self._t0 + i / self.rate
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            sent, began = time.time(), time.perf_counter()
            try:
                status, payload = request(
                    self.port, self.path, self.bodies[i % len(self.bodies)], self.timeout
                )
                sample = Sample(sent, time.perf_counter() - began, status, _version(payload))
            except (OSError, http.client.HTTPException) as exc:
                sample = Sample(sent, time.perf_counter() - began, 0, None, f"{type(exc).__name__}: {exc}")
            with self._lock:
                self.samples.append(sample)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank method; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


def summary(samples: Sequence[Sample]) -> dict[str, Any]:
    latencies = [s.latency for s in samples if not s.failed]
    span = (samples[-1].sent - samples[0].sent) if len(samples) > 1 else 0.0
    return {
        "requests": len(samples),
        "failed": sum(s.failed for s in samples),
        "rate": round((len(samples) - 1) / span, 1) if span > 0 else None,
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "versions": sorted({s.version for s in samples if s.version}),
        "errors": sorted({s.error for s in samples if s.error})[:5],
    }
