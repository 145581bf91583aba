"""The bulk observe of predictions counts exactly what one observe per value would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram

from mlcycle.serving.metrics import observe_many


def _samples(registry: CollectorRegistry) -> dict[tuple, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_observe_many_matches_one_observe_per_value():
    rng = random.Random(7)
    buckets = (0.0, 1.0, 2.5, 10.0, 100.0)
    values = [rng.uniform(-5, 150) for _ in range(500)] + [1.0, 2.5, 0.0, 100.0]  # values on the bounds
    one, many = CollectorRegistry(), CollectorRegistry()
    h_one = Histogram("p", "x", buckets=buckets, registry=one)
    h_many = Histogram("p", "x", buckets=buckets, registry=many)
    for v in values:
        h_one.observe(v)
    observe_many(h_many, values)
    got, want = _samples(many), _samples(one)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-6 * max(1.0, abs(value)), key
