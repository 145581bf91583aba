"""Tree ensembles in double precision: the fitted scikit-learn trees written as ONNX ``TreeEnsemble``.

skl2onnx 1.20 converts tree ensembles to the ``TreeEnsembleRegressor`` / ``TreeEnsembleClassifier``
operators of ai.onnx.ml 1 and 3, whose thresholds, leaf values and outputs are float32: a row exactly
on a threshold takes the other branch (22 riders off on bikeshare), outputs are up to 3e-5 off, and
for a gradient-boosting classifier or a forest regressor onnxruntime refuses the graph outright
(their outputs are declared double). The server then fell back to the scikit-learn Pipeline, about
200 times slower a row, for exactly the families users train on their own data.

:func:`double_trees` keeps skl2onnx's graph for the preprocessing and replaces its tree node by the
``TreeEnsemble`` operator of ai.onnx.ml 5, in double, built from the fitted trees themselves:

- ``HistGradientBoostingRegressor`` / ``Classifier``: the predictors' thresholds and leaf values,
  the baseline added, then the link (sigmoid for two classes, softmax for more);
- ``RandomForest*`` / ``ExtraTrees*``: each tree's thresholds, leaf means or class shares divided by
  the number of trees and summed; the input is rounded to float32 first, as scikit-learn's trees
  compare float32 values with their thresholds, so every row takes the branch it takes there.

A classifier's label is the class of the largest probability (the first on a tie, as scikit-learn).
Gradient boosting with native categorical features keeps skl2onnx's graph (:func:`double_trees`
returns 0), which onnxruntime refuses for a classifier: that model is served by the Pipeline. The
server measures whatever graph results against the Pipeline before serving it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
#: TreeEnsemble's node mode: ``x <= split`` goes to the true side.
BRANCH_LEQ = 0
_TREE_OPS = ("TreeEnsembleRegressor", "TreeEnsembleClassifier")


class Unsupported(Exception):
    """A tree this rewrite does not express (a categorical split): skl2onnx's node stays."""


@dataclass
class _Ensemble:
    """The arrays of one ``TreeEnsemble`` node, filled tree by tree."""

    roots: list[int] = field(default_factory=list)
    branches: dict[str, list] = field(default_factory=lambda: {k: [] for k in _BRANCH_FIELDS})
    leaf_targets: list[int] = field(default_factory=list)
    leaf_weights: list[float] = field(default_factory=list)

    def add_tree(self, nodes: Any, target: int, weight) -> None:
        """Add one tree. ``nodes(i)`` -> (is_leaf, feature, threshold, left, right, missing_left);
        ``weight(i)`` is leaf ``i``'s contribution to ``target``. Node 0 is the root; left is the true
        side (``x <= threshold``)."""

        def leaf(i: int) -> int:
            self.leaf_targets.append(target)
            self.leaf_weights.append(float(weight(i)))
            return len(self.leaf_weights) - 1

        def new_branch(feature: int, threshold: float, missing_left: bool) -> int:
            pos = len(self.branches["featureids"])
            for key, value in (
                ("featureids", int(feature)),
                ("splits", float(threshold)),
                ("modes", BRANCH_LEQ),
                ("truenodeids", 0),
                ("trueleafs", 0),
                ("falsenodeids", 0),
                ("falseleafs", 0),
                ("missing", int(bool(missing_left))),
            ):
                self.branches[key].append(value)
            return pos

        if nodes(0)[0]:  # a tree without a split: a dummy split whose both sides are that leaf
            pos, only = new_branch(0, 0.0, False), leaf(0)
            for side in ("true", "false"):
                self.branches[f"{side}nodeids"][pos], self.branches[f"{side}leafs"][pos] = only, 1
            self.roots.append(pos)
            return
        # Branches in preorder, the true side first.
        stack: list[tuple[int | None, str, int]] = [(None, "", 0)]
        while stack:  # iterative: a deep forest tree would overflow the recursion limit
            parent, side, child = stack.pop()
            c_leaf, c_feature, c_threshold, c_left, c_right, c_missing = nodes(child)
            if c_leaf:
                self.branches[f"{side}nodeids"][parent], self.branches[f"{side}leafs"][parent] = (
                    leaf(child),
                    1,
                )
                continue
            pos = new_branch(c_feature, c_threshold, c_missing)
            if parent is None:
                self.roots.append(pos)
            else:
                self.branches[f"{side}nodeids"][parent], self.branches[f"{side}leafs"][parent] = pos, 0
            stack += [(pos, "false", c_right), (pos, "true", c_left)]  # the true side is popped first

    def node(self, inputs: list[str], output: str, name: str, n_targets: int) -> Any:
        from onnx import helper, numpy_helper

        return helper.make_node(
            "TreeEnsemble",
            inputs,
            [output],
            domain="ai.onnx.ml",
            name=name,
            n_targets=n_targets,
            aggregate_function=1,
            post_transform=0,  # SUM, NONE
            tree_roots=self.roots,
            nodes_featureids=self.branches["featureids"],
            nodes_splits=numpy_helper.from_array(np.asarray(self.branches["splits"], dtype=np.float64)),
            nodes_modes=numpy_helper.from_array(
                np.zeros(len(self.branches["splits"]), dtype=np.uint8)
            ),  # BRANCH_LEQ
            nodes_truenodeids=self.branches["truenodeids"],
            nodes_trueleafs=self.branches["trueleafs"],
            nodes_falsenodeids=self.branches["falsenodeids"],
            nodes_falseleafs=self.branches["falseleafs"],
            nodes_missing_value_tracks_true=self.branches["missing"],
            leaf_targetids=self.leaf_targets,
            leaf_weights=numpy_helper.from_array(np.asarray(self.leaf_weights, dtype=np.float64)),
        )


def _hgb_nodes(predictor: Any):
    nodes = predictor.nodes

    def get(i: int):
        n = nodes[i]
        return (
            bool(n["is_leaf"]),
            int(n["feature_idx"]),
            float(n["num_threshold"]),
            int(n["left"]),
            int(n["right"]),
            bool(n["missing_go_to_left"]),
        )

    return get, lambda i: float(nodes[i]["value"])


def _sklearn_nodes(tree: Any):
    t = tree.tree_
    missing = getattr(t, "missing_go_to_left", None)

    def get(i: int):
        left = int(t.children_left[i])
        return (
            left == -1,
            int(max(t.feature[i], 0)),
            float(t.threshold[i]),
            left,
            int(t.children_right[i]),
            bool(missing[i]) if missing is not None else False,
        )

    return get


def _ensemble(estimator: Any) -> tuple[_Ensemble, int, np.ndarray | None, bool]:
    """(the trees, n_targets, the baseline to add, whether the input is rounded to float32 first)."""
    ensemble = _Ensemble()
    predictors = getattr(estimator, "_predictors", None)
    if predictors is not None:  # HistGradientBoosting: one predictor per iteration and target
        if getattr(estimator, "_preprocessor", None) is not None:
            # Native categoricals: scikit-learn re-encodes and reorders them inside the estimator,
            # and onnxruntime 1.32 answered unlike scikit-learn for BRANCH_MEMBER sets written from
            # them: such a model keeps skl2onnx's graph (the server measures it).
            raise Unsupported("native categorical features")
        k = int(getattr(estimator, "n_trees_per_iteration_", 1))
        for per_iteration in predictors:
            for target, predictor in enumerate(per_iteration):
                nodes, weight = _hgb_nodes(predictor)
                ensemble.add_tree(nodes, target, weight)
        baseline = np.asarray(estimator._baseline_prediction, dtype=np.float64).reshape(1, -1)
        return ensemble, k, baseline, False
    trees = getattr(estimator, "estimators_", None)
    if trees is None or not all(hasattr(t, "tree_") for t in trees):
        raise Unsupported(f"{type(estimator).__name__} is not a tree ensemble this rewrite knows")
    n = len(trees)
    classes = getattr(estimator, "classes_", None)
    if classes is None:  # a forest regressor: the mean of the trees' leaf means
        if getattr(estimator, "n_outputs_", 1) != 1:
            raise Unsupported("more than one output")
        for tree in trees:
            values = tree.tree_.value[:, 0, 0]
            ensemble.add_tree(_sklearn_nodes(tree), 0, lambda i, v=values: v[i] / n)
        return ensemble, 1, None, True
    k = len(classes)
    targets = [1] if k == 2 else list(range(k))  # two classes: the second's probability only
    for tree in trees:
        value = tree.tree_.value[:, 0, :]
        shares = value / np.maximum(value.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
        for j, cls in enumerate(targets):
            ensemble.add_tree(_sklearn_nodes(tree), j, lambda i, s=shares, c=cls: s[i, c] / n)
    return ensemble, len(targets), None, True


def double_trees(onx: Any, estimator: Any) -> int:
    """Replace skl2onnx's tree node of ``onx`` by a double ``TreeEnsemble`` of ``estimator``; the count."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [n for n in onx.graph.node if n.op_type in _TREE_OPS]
    if len(nodes) != 1:
        return 0
    node = nodes[0]
    try:
        ensemble, n_targets, baseline, float32_input = _ensemble(estimator)
        labels = _class_labels(node) if node.op_type == "TreeEnsembleClassifier" else None
    except Unsupported:
        return 0
    base = node.name or node.op_type
    new: list[Any] = []
    features = node.input[0]
    if float32_input:
        new += [
            helper.make_node("Cast", [features], [f"{base}_x32"], to=TensorProto.FLOAT, name=f"{base}_x32"),
            helper.make_node(
                "Cast", [f"{base}_x32"], [f"{base}_x64"], to=TensorProto.DOUBLE, name=f"{base}_x64"
            ),
        ]
        features = f"{base}_x64"
    raw = f"{base}_raw"
    new.append(ensemble.node([features], raw, f"{base}_double", n_targets))
    initializers = []
    if baseline is not None:
        initializers.append(numpy_helper.from_array(baseline, f"{base}_baseline"))
        new.append(
            helper.make_node("Add", [raw, f"{base}_baseline"], [f"{base}_score"], name=f"{base}_baseline")
        )
        raw = f"{base}_score"
    if node.op_type == "TreeEnsembleRegressor":
        new.append(helper.make_node("Identity", [raw], [node.output[0]], name=f"{base}_out"))
        doubles = [node.output[0]]
    else:
        label_out, proba_out = node.output[0], node.output[1]
        if (
            n_targets == 1
        ):  # two classes: raw is the second class's probability (forest) or log-odds (boosting)
            p1 = raw
            if baseline is not None:
                new.append(helper.make_node("Sigmoid", [raw], [f"{base}_p1"], name=f"{base}_sigmoid"))
                p1 = f"{base}_p1"
            initializers.append(numpy_helper.from_array(np.ones((1, 1), dtype=np.float64), f"{base}_one"))
            new += [
                helper.make_node("Sub", [f"{base}_one", p1], [f"{base}_p0"], name=f"{base}_p0"),
                helper.make_node("Concat", [f"{base}_p0", p1], [proba_out], axis=1, name=f"{base}_proba"),
            ]
        elif baseline is not None:
            new.append(helper.make_node("Softmax", [raw], [proba_out], axis=1, name=f"{base}_softmax"))
        else:
            new.append(helper.make_node("Identity", [raw], [proba_out], name=f"{base}_proba"))
        initializers.append(labels)
        new += [
            helper.make_node(
                "ArgMax",
                [proba_out],
                [f"{base}_argmax"],
                axis=1,
                keepdims=0,
                select_last_index=0,
                name=f"{base}_argmax",
            ),
            helper.make_node(
                "Gather", [labels.name, f"{base}_argmax"], [label_out], axis=0, name=f"{base}_label"
            ),
        ]
        doubles = [proba_out]
    index = list(onx.graph.node).index(node)
    onx.graph.node.remove(node)
    for offset, item in enumerate(new):
        onx.graph.node.insert(index + offset, item)
    onx.graph.initializer.extend(initializers)
    for value in [*onx.graph.output, *onx.graph.value_info]:
        if value.name in doubles:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    for opset in onx.opset_import:
        if opset.domain == "ai.onnx.ml":
            opset.version = max(opset.version, 5)
    return 1


def _class_labels(node: Any) -> Any:
    """The classifier node's class labels (integers or strings) as a tensor initializer."""
    from onnx import helper, numpy_helper

    for attribute in node.attribute:
        if attribute.name == "classlabels_int64s":
            values = np.asarray(helper.get_attribute_value(attribute), dtype=np.int64)
            break
        if attribute.name == "classlabels_strings":
            values = np.asarray([v.decode() for v in helper.get_attribute_value(attribute)], dtype=object)
            break
    else:
        raise Unsupported("a classifier without class labels")
    return numpy_helper.from_array(values, f"{node.name or node.op_type}_classes")
