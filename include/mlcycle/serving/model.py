"""A served model: one model folder, its schema, and the two inference paths.

The folder is an MLflow model folder (``MLmodel``, the scikit-learn Pipeline saved with skops,
``input_example.json``) that carries the serving schema in its ``metadata`` and, when training
could convert it, ``model.onnx``. ``serving.json`` (written by ``fetch``) adds the registry's view:
model name, version, run id, data fingerprint and window, code version.

- The *exact* path is the scikit-learn Pipeline itself, on a pandas DataFrame.
- The *fast* path is onnxruntime (one intra-op thread) on numpy arrays built straight from the
  validated rows, one array per input column. At load it is compared with the Pipeline on the
  input example and a deterministic sample drawn from the schema (ranges, allowed values, nulls);
  it is used only when the largest difference is within the schema's tolerance.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mlcycle.serving.schema import METADATA_KEY, ServingSchema

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
#: Training's ONNX export report beside the model (mlcycle.serving.export.write_export_report): why
#: there is no ``model.onnx`` when there is none.
ONNX_EXPORT_FILE = "onnx_export.json"
SERVING_INFO = "serving.json"
PARITY_SAMPLE_ROWS = 256


class ModelLoadError(Exception):
    """The model folder cannot be served; the message says what is missing."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    run_id: str | None
    model_uri: str | None
    fingerprint: str | None
    window_start: str | None
    window_end: str | None
    code_version: str | None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Prediction:
    predictions: list[Any]
    probabilities: list[list[float]] | None


def _read_mlmodel(folder: Path) -> dict[str, Any]:
    path = folder / "MLmodel"
    if not path.is_file():
        raise ModelLoadError(f"{folder} is not an MLflow model folder (no MLmodel file)")
    return yaml.safe_load(path.read_text())


def read_schema(folder: Path) -> ServingSchema:
    meta = (_read_mlmodel(folder).get("metadata") or {}).get(METADATA_KEY)
    if not meta:
        raise ModelLoadError(
            f"the model in {folder} carries no serving schema (MLmodel metadata "
            f"`{METADATA_KEY}`): retrain it with this version of mlcycle"
        )
    return ServingSchema.from_dict(meta)


def read_info(folder: Path, mlmodel: dict[str, Any], default_name: str) -> ModelInfo:
    info_path = folder / SERVING_INFO
    raw = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return ModelInfo(
        name=str(raw.get("name") or default_name),
        version=str(raw.get("version") or "unregistered"),
        run_id=raw.get("run_id") or mlmodel.get("run_id"),
        model_uri=raw.get("model_uri"),
        fingerprint=raw.get("fingerprint"),
        window_start=raw.get("window_start"),
        window_end=raw.get("window_end"),
        code_version=raw.get("code_version"),
        tags=dict(raw.get("tags") or {}),
    )


def missing_onnx_reason(folder: Path, info: ModelInfo) -> str:
    """Why ``folder`` holds no ONNX model: training's export report, else the registry's
    ``mlcycle.onnx`` tag (copied into ``serving.json``), else only that it is missing."""
    reason = None
    report = folder / ONNX_EXPORT_FILE
    if report.is_file():
        try:
            reason = json.loads(report.read_text()).get("reason")
        except (OSError, ValueError, AttributeError):
            log.warning("%s is not a readable export report: ignored", report)
    tag = info.tags.get("mlcycle.onnx", "")
    if not reason and tag.startswith("not logged: "):
        reason = tag.removeprefix("not logged: ")
    return f"no ONNX model in the folder: {reason}" if reason else "no ONNX model in the folder"


def _load_pipeline(folder: Path, mlmodel: dict[str, Any]):
    conf = (mlmodel.get("flavors") or {}).get("sklearn") or {}
    path = folder / str(conf.get("pickled_model", "model.skops"))
    fmt = conf.get("serialization_format", "skops")
    if fmt != "skops":
        raise ModelLoadError(
            f"{path}: serialization format {fmt!r}; only skops models are served (pickle "
            "can run arbitrary code)"
        )
    import skops.io

    # Trust exactly the types this file holds that skops does not trust by default, as the model's
    # own MLflow flavor would (MLflow stores the list it was told to trust at save time).
    trusted = conf.get("skops_trusted_types") or skops.io.get_untrusted_types(file=path)
    return skops.io.load(path, trusted=list(trusted))


def _input_example(folder: Path, names: list[str]) -> list[dict[str, Any]]:
    path = folder / "input_example.json"
    if not path.is_file():
        return []
    raw = json.loads(path.read_text())
    if isinstance(raw, dict) and "columns" in raw:
        return [dict(zip(raw["columns"], row, strict=True)) for row in raw["data"]]
    if isinstance(raw, dict) and "dataframe_split" in raw:
        split = raw["dataframe_split"]
        return [dict(zip(split["columns"], row, strict=True)) for row in split["data"]]
    return [r for r in raw if isinstance(r, dict)] if isinstance(raw, list) else []


def sample_rows(schema: ServingSchema, n: int = PARITY_SAMPLE_ROWS, seed: int = 0) -> list[dict[str, Any]]:
    """Deterministic rows spread over the schema: every allowed value, the range's ends, nulls."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        row = {}
        for f in schema.features:
            if f.nullable and i % 17 == 5:
                row[f.name] = None
            elif f.values:
                row[f.name] = f.values[i % len(f.values)] if i % 2 else rng.choice(f.values)
            elif f.dtype == "string":
                row[f.name] = f"value-{rng.randrange(5)}"
            else:
                lo = f.min if f.min is not None and math.isfinite(f.min) else -1000.0
                hi = f.max if f.max is not None and math.isfinite(f.max) else 1000.0
                value = lo if i % 31 == 1 else hi if i % 31 == 2 else rng.uniform(lo, hi)
                row[f.name] = int(round(value)) if f.dtype == "long" else float(value)
        rows.append(row)
    return rows


class ServedModel:
    """Loads a model folder once; ``predict`` takes validated rows (dicts keyed by feature name)."""

    def __init__(self, folder: Path | str, force_path: str | None = None):
        started = time.perf_counter()
        self.folder = Path(folder)
        self.mlmodel = _read_mlmodel(self.folder)
        self.schema = read_schema(self.folder)
        self.info = read_info(self.folder, self.mlmodel, self.schema.pipeline)
        self.signature = self.mlmodel.get("signature")
        self.names = self.schema.feature_names
        self.classification = self.schema.task == "classification"
        self.pipeline = _load_pipeline(self.folder, self.mlmodel)
        self.classes = (
            [c.item() if hasattr(c, "item") else c for c in getattr(self.pipeline, "classes_", [])]
            if self.classification
            else None
        )
        self.session = None
        self.parity: float | None = None
        self.path = "pipeline"
        self.path_reason = missing_onnx_reason(self.folder, self.info)
        self.example = _input_example(self.folder, self.names)
        if force_path != "pipeline" and (self.folder / ONNX_FILE).is_file():
            self._try_fast_path()
        elif force_path == "pipeline":
            self.path_reason = "forced by MLCYCLE_SERVING_PATH=pipeline"
        self.load_seconds = time.perf_counter() - started
        log.info(
            "model %s version %s loaded from %s in %.2f s; inference path: %s (%s)",
            self.info.name,
            self.info.version,
            self.folder,
            self.load_seconds,
            self.path,
            self.path_reason,
        )

    # ---------------------------------------------------------------------------------------
    # the fast path

    def _try_fast_path(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(self.folder / ONNX_FILE), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors; the Pipeline stays
            self.path_reason = f"onnxruntime cannot load {ONNX_FILE}: {exc}"
            return
        self._inputs = {i.name: i.type for i in session.get_inputs()}
        missing = [n for n in self.names if n not in self._inputs]
        if missing:
            self.path_reason = f"{ONNX_FILE} lacks inputs for {', '.join(missing)}"
            return
        self._outputs = [o.name for o in session.get_outputs()]
        kinds = {"tensor(string)": object, "tensor(int64)": np.int64, "tensor(float)": np.float32}
        self._encoders = [(name, kinds.get(self._inputs[name], np.float64)) for name in self.names]
        self.session = session
        rows = self.example + sample_rows(self.schema)
        try:
            diff = self._max_difference(rows)
        except Exception as exc:  # noqa: BLE001 - any failure of the fast path means: serve the Pipeline
            self.session = None
            self.path_reason = f"the ONNX model failed on the check sample: {exc}"
            return
        self.parity = diff
        if diff <= self.schema.tolerance:
            self.path = "onnx"
            self.path_reason = (
                f"ONNX matches the Pipeline on {len(rows)} rows (max abs difference {diff:.3g} "
                f"<= tolerance {self.schema.tolerance:g})"
            )
        else:
            self.session = None
            self.path_reason = (
                f"ONNX differs from the Pipeline by {diff:.3g} on {len(rows)} rows "
                f"(> tolerance {self.schema.tolerance:g}): serving the Pipeline"
            )

    def _max_difference(self, rows: list[dict[str, Any]]) -> float:
        fast, exact = self._predict_onnx(rows), self._predict_pipeline(rows)
        if self.classification:
            if list(fast.predictions) != list(exact.predictions):
                return math.inf
            a, b = np.asarray(fast.probabilities), np.asarray(exact.probabilities)
        else:
            a, b = np.asarray(fast.predictions, dtype=float), np.asarray(exact.predictions, dtype=float)
        return float(np.max(np.abs(a - b))) if a.size else 0.0

    def encode(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Rows to the ONNX inputs: one (n, 1) array per feature, in the dtype the graph declares.

        Rows are validated already: numbers are numbers (None, for a nullable feature, becomes NaN in
        a float array), categories have the type the graph expects.
        """
        if len(rows) == 1:  # the common case: a (1, 1) array in one call
            row = rows[0]
            return {name: np.array([[row[name]]], dtype=dtype) for name, dtype in self._encoders}
        return {
            name: np.array([r[name] for r in rows], dtype=dtype).reshape(-1, 1)
            for name, dtype in self._encoders
        }

    def _predict_onnx(self, rows: list[dict[str, Any]]) -> Prediction:
        out = self.session.run(None, self.encode(rows))
        if self.classification:
            labels = out[0].tolist()
            if self.classes and isinstance(self.classes[0], str):
                labels = [str(v) for v in labels]
            return Prediction(labels, np.asarray(out[1], dtype=np.float64).tolist())
        return Prediction(np.asarray(out[0], dtype=np.float64).reshape(-1).tolist(), None)

    # ---------------------------------------------------------------------------------------
    # the exact path

    def frame(self, rows: list[dict[str, Any]]):
        import pandas as pd

        data = {}
        for f in self.schema.features:
            values = [r[f.name] for r in rows]
            if f.dtype == "double":
                data[f.name] = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
            elif f.dtype == "long" and None not in values:
                data[f.name] = np.array(values, dtype=np.int64)
            else:
                data[f.name] = np.array(values, dtype=object)
        return pd.DataFrame(data, columns=self.names)

    def _predict_pipeline(self, rows: list[dict[str, Any]]) -> Prediction:
        df = self.frame(rows)
        if self.classification:
            proba = self.pipeline.predict_proba(df)
            labels = [v.item() if hasattr(v, "item") else v for v in self.pipeline.predict(df)]
            return Prediction(labels, proba.tolist())
        return Prediction(np.asarray(self.pipeline.predict(df), dtype=np.float64).reshape(-1).tolist(), None)

    # ---------------------------------------------------------------------------------------

    def predict(self, rows: list[dict[str, Any]]) -> Prediction:
        if self.session is not None:
            return self._predict_onnx(rows)
        return self._predict_pipeline(rows)

    def warm_up(self, rounds: int = 20) -> None:
        rows = self.example[:1] or sample_rows(self.schema, 1)
        for _ in range(rounds):
            self.predict(rows)


def limit_threads() -> None:
    """One thread per worker for OpenMP and BLAS: measured, more threads make one-row predictions crawl."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
