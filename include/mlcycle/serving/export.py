"""Training-side helpers: what a model must carry so that one model folder can be served alone.

- ``serving_metadata``: the serving schema (features with type, range and allowed values, target,
  task, class labels) for the MLmodel ``metadata``.
- ``to_onnx``: the fitted Pipeline converted with skl2onnx, tree ensembles rewritten in double
  precision (``ai.onnx.ml`` 5, mlcycle.serving.onnx_trees), and its parity with the Pipeline on the evaluation slice.
- ``write_export_report``: the export's outcome as ``onnx_export.json``, to log beside the model, so
  the server can say why a model folder has no ONNX graph (``/metadata``'s ``inference_path_reason``).

Runs in the step environment only (skl2onnx and onnx are not in the serving image).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlcycle.serving.model import ONNX_EXPORT_FILE
from mlcycle.serving.onnx_trees import Unsupported, double_trees
from mlcycle.serving.schema import METADATA_KEY, FeatureSchema, ServingSchema, schema_from_spec

log = logging.getLogger(__name__)

#: ONNX opsets: ``ai.onnx.ml`` 3 holds the tree ensembles with double thresholds.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


@dataclass(frozen=True)
class OnnxExport:
    model: bytes | None  # the serialised ONNX graph, or None when the converter could not do it
    max_abs_diff: float | None  # on the evaluation slice: predictions (regression) or probabilities
    label_mismatches: int | None  # classification: rows whose predicted label differs
    rows: int
    reason: str  # one line for logs and tags


def serving_schema(spec: Any, model: Any, frame) -> ServingSchema:
    dtypes = {name: frame[name].dtype.kind for name in spec.feature_names}
    classes = list(getattr(model, "classes_", [])) if spec.task == "classification" else None
    return schema_from_spec(spec, dtypes, classes)


def serving_metadata(spec: Any, model: Any, frame) -> dict[str, Any]:
    """The MLmodel ``metadata`` entry that makes a model folder servable on its own."""
    return {METADATA_KEY: serving_schema(spec, model, frame).to_dict()}


def _initial_types(features: tuple[FeatureSchema, ...]) -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import DoubleTensorType, Int64TensorType, StringTensorType

    types = []
    for f in features:
        if not f.is_categorical:
            types.append((f.name, DoubleTensorType([None, 1])))
        elif f.dtype == "long":
            types.append((f.name, Int64TensorType([None, 1])))
        else:
            types.append((f.name, StringTensorType([None, 1])))
    return types


def _feeds(schema: ServingSchema, frame) -> dict[str, np.ndarray]:
    feeds = {}
    for f in schema.features:
        col = frame[f.name]
        if not f.is_categorical:
            feeds[f.name] = col.to_numpy(dtype=np.float64, na_value=np.nan).reshape(-1, 1)
        elif f.dtype == "long":
            feeds[f.name] = col.to_numpy(dtype=np.int64).reshape(-1, 1)
        else:
            feeds[f.name] = col.astype(str).to_numpy(dtype=object).reshape(-1, 1)
    return feeds


@contextmanager
def _boolean_attribute_fix() -> Iterator[None]:
    """skl2onnx 1.20 hands onnx >= 1.20 a Python bool for a leaf's ``nodes_missing_value_tracks_true``
    (its HistGradientBoosting converter), which onnx's protobuf refuses ("Expected an int, got a
    boolean"). Coerce that one attribute to int while converting, then restore the original."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args: Any, **kwargs: Any) -> Any:
        if "nodes_missing_value_tracks_true" in kwargs:
            kwargs["nodes_missing_value_tracks_true"] = int(bool(kwargs["nodes_missing_value_tracks_true"]))
        return original(*args, **kwargs)

    tree_ensemble.add_node = add_node
    try:
        yield
    finally:
        tree_ensemble.add_node = original


def _attr(node: Any, name: str) -> Any:
    from onnx import helper, numpy_helper

    for a in node.attribute:
        if a.name == f"{name}_as_tensor":
            return numpy_helper.to_array(a.t).ravel().tolist()
        if a.name == name:
            value = helper.get_attribute_value(a)
            if isinstance(value, bytes):
                return value.decode()
            return (
                [v.decode() if isinstance(v, bytes) else v for v in value]
                if isinstance(value, list)
                else value
            )
    return None


def _double_imputers(onx: Any, model: Any) -> int:
    """onnxruntime has no double kernel for ``Imputer`` (ai.onnx.ml): rewrite each one that replaces
    NaN into ``Where(IsNaN(X), fill, X)``, the fill values read in double from the fitted imputer."""
    import numpy as np
    from onnx import helper, numpy_helper
    from sklearn.impute import SimpleImputer

    fills = [est.statistics_ for _, est in _walk(model) if isinstance(est, SimpleImputer)]
    imputers = [n for n in onx.graph.node if n.op_type == "Imputer"]
    if len(fills) != len(imputers):
        return 0
    for node, fill in zip(imputers, fills, strict=True):
        replaced = _attr(node, "replaced_value_float")
        if replaced is not None and not np.isnan(replaced):
            continue
        name = node.output[0]
        fill_name, mask = f"{name}_fill", f"{name}_isnan"
        onx.graph.initializer.append(
            numpy_helper.from_array(np.asarray(fill, dtype=np.float64).reshape(1, -1), fill_name)
        )
        index = list(onx.graph.node).index(node)
        onx.graph.node.remove(node)
        onx.graph.node.insert(
            index,
            helper.make_node("Where", [mask, fill_name, node.input[0]], [name], name=f"{node.name}_where"),
        )
        onx.graph.node.insert(
            index, helper.make_node("IsNaN", [node.input[0]], [mask], name=f"{node.name}_isnan")
        )
    return len(imputers)


def _walk(est: Any) -> Iterator[tuple[str, Any]]:
    """Every estimator inside a Pipeline or ColumnTransformer, in the order skl2onnx converts them."""
    for entry in getattr(est, "steps", None) or getattr(est, "transformers_", None) or []:
        name, child = entry[0], entry[1]
        if isinstance(child, str):  # "passthrough" or "drop"
            continue
        yield name, child
        yield from _walk(child)


def to_onnx(schema: ServingSchema, model: Any, x_eval) -> OnnxExport:
    """Convert ``model`` and measure it against the Pipeline on ``x_eval``; never raises for the converter."""
    try:
        import onnxruntime as ort
        from skl2onnx import convert_sklearn

        options = {id(model.steps[-1][1]): {"zipmap": False}} if schema.task == "classification" else None
        with _boolean_attribute_fix():
            onx = convert_sklearn(
                model,
                initial_types=_initial_types(schema.features),
                target_opset=TARGET_OPSET,
                options=options,
            )
        double_trees(onx, model.steps[-1][1])
        _double_imputers(onx, model)
        data = onx.SerializeToString()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        out = session.run(None, _feeds(schema, x_eval))
    except Unsupported as exc:
        reason = f"no exact ONNX graph for {type(model.steps[-1][1]).__name__}: {exc}"
        log.warning("no ONNX fast path: %s", reason)
        return OnnxExport(None, None, None, len(x_eval), reason[:500])
    except Exception as exc:  # noqa: BLE001 - skl2onnx raises many untyped errors; the Pipeline is still served
        reason = (
            f"skl2onnx could not convert {type(model.steps[-1][1]).__name__}: {type(exc).__name__}: {exc}"
        )
        log.warning("no ONNX fast path: %s", reason)
        return OnnxExport(None, None, None, len(x_eval), reason[:500])
    if schema.task == "classification":
        labels = np.asarray(out[0]).reshape(-1)
        expected = np.asarray(model.predict(x_eval)).reshape(-1)
        mismatches = int(np.sum(labels.astype(str) != expected.astype(str)))
        diff = float(np.max(np.abs(np.asarray(out[1], dtype=np.float64) - model.predict_proba(x_eval))))
    else:
        mismatches = None
        diff = float(
            np.max(
                np.abs(
                    np.asarray(out[0], dtype=np.float64).reshape(-1)
                    - np.asarray(model.predict(x_eval), dtype=np.float64)
                )
            )
        )
    reason = f"max abs difference {diff:.3g} on {len(x_eval)} evaluation rows" + (
        f", {mismatches} label mismatch(es)" if mismatches is not None else ""
    )
    log.info("ONNX export: %s", reason)
    return OnnxExport(data, diff, mismatches, len(x_eval), reason)


def write_export_report(export: OnnxExport, folder: Path | str, logged: bool) -> Path:
    """``folder/onnx_export.json``: whether the graph was logged beside the model, and why (the
    server reports it when the model folder has no ``model.onnx``)."""
    report = {k: v for k, v in asdict(export).items() if k != "model"}
    path = Path(folder) / ONNX_EXPORT_FILE
    path.write_text(json.dumps({"logged": logged, **report}, indent=2, sort_keys=True) + "\n")
    return path
