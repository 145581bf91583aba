"""Training-side helpers: what a model must carry so that one model folder can be served alone.

- ``serving_metadata``: the serving schema (features with type, range and allowed values, target,
  task, class labels) for the MLmodel ``metadata``.
- ``to_onnx``: the fitted Pipeline converted with skl2onnx, tree ensembles in double precision
  (``ai.onnx.ml`` opset 3), and its parity with the Pipeline on the evaluation slice.

Runs in the step environment only (skl2onnx and onnx are not in the serving image).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

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


#: The per-branch arrays of an ONNX TreeEnsemble (one entry per branch node).
_BRANCH_FIELDS = (
    "featureids",
    "splits",
    "modes",
    "truenodeids",
    "trueleafs",
    "falsenodeids",
    "falseleafs",
    "missing",
)


def _tree_arrays(node: Any, predictors: Any, n_targets: int) -> dict[str, list]:
    """The ``TreeEnsemble`` arrays of one ``TreeEnsembleRegressor`` node, values read from ``predictors``."""
    tree_ids, node_ids = _attr(node, "nodes_treeids"), _attr(node, "nodes_nodeids")
    modes, features = _attr(node, "nodes_modes"), _attr(node, "nodes_featureids")
    trues, falses = _attr(node, "nodes_truenodeids"), _attr(node, "nodes_falsenodeids")
    missing = _attr(node, "nodes_missing_value_tracks_true") or [0] * len(node_ids)
    info = {(t, n): i for i, (t, n) in enumerate(zip(tree_ids, node_ids, strict=True))}
    out: dict[str, list] = {k: [] for k in (*_BRANCH_FIELDS, "roots", "leaf_targetids", "leaf_weights")}
    branch_index: dict[tuple[int, int], int] = {}
    leaf_index: dict[tuple[int, int], int] = {}

    def leaf(key: tuple[int, int]) -> int:
        if key not in leaf_index:
            leaf_index[key] = len(out["leaf_weights"])
            out["leaf_targetids"].append(0)
            out["leaf_weights"].append(float(predictors[key[0]][0].nodes[key[1]]["value"]))
        return leaf_index[key]

    def is_leaf(key: tuple[int, int]) -> bool:
        return modes[info[key]] == "LEAF"

    def branch(key: tuple[int, int]) -> int:
        i = info[key]
        if modes[i] != "BRANCH_LEQ" or n_targets != 1:
            raise NotImplementedError(f"tree node mode {modes[i]} with {n_targets} target(s)")
        pos = len(out["featureids"])
        branch_index[key] = pos
        for k in _BRANCH_FIELDS:
            out[k].append(0)
        out["featureids"][pos] = features[i]
        out["splits"][pos] = float(predictors[key[0]][0].nodes[key[1]]["num_threshold"])
        out["missing"][pos] = int(missing[i])
        for side, child in (("true", trues[i]), ("false", falses[i])):
            ckey = (key[0], child)
            if is_leaf(ckey):
                out[f"{side}nodeids"][pos], out[f"{side}leafs"][pos] = leaf(ckey), 1
            else:
                out[f"{side}nodeids"][pos], out[f"{side}leafs"][pos] = branch(ckey), 0
        return pos

    for tree in sorted(set(tree_ids)):
        root = (tree, min(n for t, n in zip(tree_ids, node_ids, strict=True) if t == tree))
        if is_leaf(root):  # a tree without a split: a dummy split whose both sides are that leaf
            pos = len(out["featureids"])
            only = leaf(root)
            for k, v in (
                ("featureids", 0),
                ("splits", 0.0),
                ("modes", 0),
                ("truenodeids", only),
                ("trueleafs", 1),
                ("falsenodeids", only),
                ("falseleafs", 1),
                ("missing", 0),
            ):
                out[k].append(v)
            out["roots"].append(pos)
        else:
            out["roots"].append(branch(root))
    return out


def _double_tree_regressors(onx: Any, estimator: Any) -> int:
    """Rewrite a HistGradientBoostingRegressor's ``TreeEnsembleRegressor`` (ai.onnx.ml 3: float32
    thresholds, leaf values and output) into the ``TreeEnsemble`` operator of ai.onnx.ml 5, in double.

    skl2onnx 1.20 keeps the tree structure right but rounds thresholds and leaf values to float32
    (a row with ``temp`` exactly 0.45 then takes the other branch: 22 riders off on bikeshare) and
    the operator's output is float32 (up to 3e-5 off). The structure is kept; thresholds, leaf
    values and the baseline are read again, in double, from the fitted trees. Returns the count.
    """
    predictors = getattr(estimator, "_predictors", None)
    if predictors is None or getattr(estimator, "n_trees_per_iteration_", 1) != 1:
        return 0
    import numpy as np
    from onnx import helper, numpy_helper

    rewritten = 0
    for node in list(onx.graph.node):
        if node.op_type != "TreeEnsembleRegressor":
            continue
        n_targets = int(_attr(node, "n_targets") or 1)
        if len(set(_attr(node, "nodes_treeids"))) != len(predictors):
            continue
        if (_attr(node, "post_transform") or "NONE") != "NONE" or (
            _attr(node, "aggregate_function") or "SUM"
        ) != "SUM":
            continue
        out = _tree_arrays(node, predictors, n_targets)
        tree_out = f"{node.output[0]}_trees"
        new = helper.make_node(
            "TreeEnsemble",
            list(node.input),
            [tree_out],
            domain="ai.onnx.ml",
            name=f"{node.name}_double",
            n_targets=n_targets,
            aggregate_function=1,
            post_transform=0,
            tree_roots=out["roots"],
            nodes_featureids=out["featureids"],
            nodes_splits=numpy_helper.from_array(np.asarray(out["splits"], dtype=np.float64)),
            nodes_modes=numpy_helper.from_array(np.zeros(len(out["modes"]), dtype=np.uint8)),
            nodes_truenodeids=out["truenodeids"],
            nodes_trueleafs=out["trueleafs"],
            nodes_falsenodeids=out["falsenodeids"],
            nodes_falseleafs=out["falseleafs"],
            nodes_missing_value_tracks_true=out["missing"],
            leaf_targetids=out["leaf_targetids"],
            leaf_weights=numpy_helper.from_array(np.asarray(out["leaf_weights"], dtype=np.float64)),
        )
        base = np.asarray(estimator._baseline_prediction, dtype=np.float64).reshape(1, -1)
        base_name = f"{node.output[0]}_base"
        onx.graph.initializer.append(numpy_helper.from_array(base, base_name))
        add = helper.make_node("Add", [tree_out, base_name], [node.output[0]], name=f"{node.name}_base")
        index = list(onx.graph.node).index(node)
        onx.graph.node.remove(node)
        onx.graph.node.insert(index, add)
        onx.graph.node.insert(index, new)
        rewritten += 1
    if rewritten:
        for opset in onx.opset_import:
            if opset.domain == "ai.onnx.ml":
                opset.version = max(opset.version, 5)
    return rewritten


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
        _double_tree_regressors(onx, model.steps[-1][1])
        _double_imputers(onx, model)
        data = onx.SerializeToString()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        out = session.run(None, _feeds(schema, x_eval))
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
