"""The staging smoke test: is the container the model the registry holds, safe, and fast enough?

1. Predictions for the pipeline's latest evaluation slice (up to ``deploy.smoke_rows`` rows) equal
   the registry model's own (``mlflow.pyfunc``, same rows) within ``serving.tolerance``; class
   labels must be equal.
2. Each bad-input probe gets a 4xx, none a 5xx.
3. The p99 latency of a short bounded load of one-row requests stays under ``deploy.latency_budget_ms``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlcycle.deploy.load import Load, request, summary
from mlcycle.deploy.slots import DeployError
from mlcycle.spec import PipelineSpec
from mlcycle.steps._common import Result
from mlcycle.storepath import StorePath

log = logging.getLogger(__name__)


class SmokeFailed(DeployError):
    """The staging container does not pass the smoke test."""


@dataclass(frozen=True)
class SmokeResult(Result):
    rows_compared: int
    max_abs_diff: float | None
    mismatches: int
    probes: dict[str, int]
    load: dict[str, Any]
    latency_budget_ms: float


def latest_eval_slice(store: StorePath, pipeline: str) -> StorePath:
    """``eval.parquet`` of the newest feature table the pipeline built."""
    base = store / pipeline / "features"
    for end in sorted((p for p in base.glob("end=*") if p.is_dir()), reverse=True):
        pointer = end / "CURRENT.json"
        folder = end / json.loads(pointer.read_text())["folder"] if pointer.is_file() else end
        if (folder / "eval.parquet").is_file():
            return folder / "eval.parquet"
    raise SmokeFailed(
        f"no evaluation slice under {base}: run the training DAG first (its build_features step)"
    )


def eval_rows(path: StorePath, features: Sequence[str], limit: int):
    """The first ``limit`` rows of the slice: as a DataFrame (for pyfunc) and as JSON records."""
    from mlcycle.store import read_parquet

    frame = read_parquet(path, columns=list(features)).head(limit)
    records = json.loads(frame.to_json(orient="records", date_format="iso"))
    rows = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in records
    ]
    return frame, rows


def compare(
    expected: Sequence[Any], got: Sequence[Any], classification: bool, tolerance: float
) -> tuple[int, float | None]:
    """(rows that differ, largest absolute difference): labels must be equal, numbers within ``tolerance``."""
    if len(expected) != len(got):
        return max(len(expected), len(got)), None
    if classification:
        return sum(str(a) != str(b) for a, b in zip(expected, got, strict=True)), None
    diffs = [abs(float(a) - float(b)) for a, b in zip(expected, got, strict=True)]
    return sum(d > tolerance or math.isnan(d) for d in diffs), max(diffs, default=0.0)


def bad_inputs(row: dict[str, Any], spec: PipelineSpec) -> dict[str, tuple[bytes, str]]:
    """Probes every server must refuse with a 4xx: (body, content type) by name."""
    first = spec.feature_names[0]
    numeric = next((c.name for c in spec.feature_columns if c.type in ("numeric", "integer")), first)
    return {
        "invalid_json": (b"{not json", "application/json"),
        "not_json": (b"a=1", "text/plain"),
        "empty_list": (b"[]", "application/json"),
        "missing_field": (
            json.dumps({k: v for k, v in row.items() if k != first}).encode(),
            "application/json",
        ),
        "unknown_field": (json.dumps({**row, "no_such_feature": 1}).encode(), "application/json"),
        "wrong_type": (json.dumps({**row, numeric: "not a number"}).encode(), "application/json"),
        "a_string": (b'"hello"', "application/json"),
    }


def with_online_history(spec: PipelineSpec, rows: list[dict[str, Any]], store: str | None):
    """The rows with the history features the server fetches, read from the same online store: the
    reference pyfunc predicts from exactly what the server gets (the smoke test checks the model and
    the server, not the day's values)."""
    import pandas as pd

    from mlcycle.feature_store import serving_history
    from mlcycle.serving.online import locate, open_online

    history = serving_history(spec)
    full = open_online(history, locate(history, store)).add(rows)
    return pd.DataFrame(full)[spec.feature_names]


def smoke_test(
    spec: PipelineSpec,
    model_uri: str,
    port: int,
    eval_path: StorePath,
    tracking_uri: str | None = None,
    store: str | None = None,
) -> SmokeResult:
    """Run the three checks against the server on 127.0.0.1:``port``; ``SmokeFailed`` names the first failure."""
    import mlflow

    deploy = spec.deploy
    # the row's own features: the server fetches the history features itself
    frame, rows = eval_rows(eval_path, spec.row_feature_names, deploy.smoke_rows)
    if not rows:
        raise SmokeFailed(f"the evaluation slice {eval_path} is empty")
    if spec.history:
        frame = with_online_history(spec, rows, store)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    reference = mlflow.pyfunc.load_model(model_uri).predict(frame)
    expected = [p.item() if hasattr(p, "item") else p for p in reference]
    got: list[Any] = []
    batch = max(1, min(spec.serving.max_rows, 1000))
    for i in range(0, len(rows), batch):
        status, body = request(port, "/predict", json.dumps(rows[i : i + batch]).encode(), timeout=60)
        if status != 200:
            raise SmokeFailed(
                f"the staging server answered {status} to rows of the evaluation slice: {body[:300]!r}"
            )
        got += json.loads(body)["predictions"]
    classification = spec.task == "classification"
    mismatches, worst = compare(expected, got, classification, spec.serving.tolerance)
    if mismatches:
        detail = (
            f"largest difference {worst:.3g} > tolerance {spec.serving.tolerance:g}"
            if worst is not None
            else "labels differ"
        )
        raise SmokeFailed(
            f"prediction mismatch: {mismatches} of {len(rows)} evaluation rows differ from "
            f"{model_uri} in the registry ({detail})"
        )
    log.info("predictions: %d rows equal the registry's (largest difference %s)", len(rows), worst)

    probes: dict[str, int] = {}
    for name, (body, ctype) in bad_inputs(rows[0], spec).items():
        status, answer = request(port, "/predict", body, content_type=ctype)
        probes[name] = status
        if not 400 <= status < 500:
            raise SmokeFailed(f"bad-input probe `{name}` got {status}, not a 4xx: {answer[:300]!r}")
    log.info("bad input: every probe got a 4xx (%s)", probes)

    load = summary(Load(port, rows, rate=50, seconds=deploy.smoke_requests / 50, threads=4).start().wait())
    if load["failed"]:
        raise SmokeFailed(
            f"{load['failed']} of {load['requests']} requests of the smoke load failed: {load['errors']}"
        )
    if load["p99_ms"] > deploy.latency_budget_ms:
        raise SmokeFailed(
            f"p99 latency {load['p99_ms']} ms over {load['requests']} requests exceeds the budget "
            f"of {deploy.latency_budget_ms:g} ms (deploy.latency_budget_ms)"
        )
    log.info("load: %s", load)
    return SmokeResult(len(rows), worst, 0, probes, load, deploy.latency_budget_ms)
