"""The watch window's figures and its decision: no Docker, no proxy, only numbers.

``read_metrics`` reads a slot's Prometheus ``/metrics`` (answers of the prediction endpoints by
status, and their latency histogram); ``window_figures`` turns two readings into the window's
requests, 5xx share and p99; ``breach_of`` compares them with the spec's ``deploy:`` budgets.
``mlcycle.deploy.rollout.watch`` runs them against the live slot.
"""

from __future__ import annotations

import re
from typing import Any

from mlcycle.spec import DeploySpec

WATCH_MIN_REQUESTS = 20  # fewer answers than this say nothing about a rate

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
SERVED = ("/predict", "/invocations")


def read_metrics(url: str) -> dict[str, Any]:
    """Answers of the prediction endpoints by status, and their latency histogram (cumulative buckets)."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    statuses: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m["labels"] or ""))
        if labels.get("endpoint") not in SERVED:
            continue
        if m["name"] == "mlcycle_requests_total":
            statuses[labels["status"]] = statuses.get(labels["status"], 0.0) + float(m["value"])
        elif m["name"] == "mlcycle_request_latency_seconds_bucket":
            le = float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + float(m["value"])
    return {"statuses": statuses, "buckets": buckets}


def window_figures(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Requests, 5xx share and p99 (upper bucket bound, ms) between two ``read_metrics`` readings."""
    statuses = {k: v - before["statuses"].get(k, 0.0) for k, v in after["statuses"].items()}
    total = sum(statuses.values())
    errors = sum(v for k, v in statuses.items() if k.startswith("5"))
    buckets = sorted((le, v - before["buckets"].get(le, 0.0)) for le, v in after["buckets"].items())
    count = buckets[-1][1] if buckets else 0.0
    p99 = 0.0
    for le, cumulative in buckets:
        if count and cumulative >= 0.99 * count:
            p99 = le
            break
    return {
        "requests": int(total),
        "errors": int(errors),
        "error_rate": errors / total if total else 0.0,
        "p99_ms": p99 * 1000.0,
    }


def breach_of(figures: dict[str, Any], deploy: DeploySpec) -> str | None:
    """Why the window's figures break the deploy's budgets (error rate, then p99), or None: a window
    of fewer than ``WATCH_MIN_REQUESTS`` answers says nothing about a rate and breaks nothing."""
    if figures["requests"] < WATCH_MIN_REQUESTS:
        return None
    if figures["error_rate"] > deploy.watch_max_error_rate:
        return (
            f"error rate {figures['error_rate']:.2%} ({figures['errors']} of {figures['requests']}) "
            f"> {deploy.watch_max_error_rate:.2%} (deploy.watch_max_error_rate)"
        )
    if figures["p99_ms"] > deploy.watch_max_p99_ms:
        return (
            f"p99 latency {figures['p99_ms']:g} ms over {figures['requests']} requests > "
            f"{deploy.watch_max_p99_ms:g} ms (deploy.watch_max_p99_ms)"
        )
    return None
