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

Gradient boosting with native categorical features re-encodes them inside the estimator
(``_preprocessor``: an OrdinalEncoder of the values seen in training, categorical columns moved
first) and splits on sets of those codes. Each categorical split is written on the estimator's own
input as a ``BRANCH_MEMBER`` node, its set the input values of the codes that go to one side, in
scikit-learn's order of tests (``_predictor.pyx``):

- NaN, and any value that is not a category seen in training or not known to the bin mapper (a
  category allowed by the spec but absent from the training slice, a value the upstream encoder
  marks unknown or missing), goes to the split's missing side;
- a known category goes left when it is in the split's left set, right otherwise.

So the member set is the known categories of the non-missing side, the true side is that side, and
everything else (NaN included: ``missing_value_tracks_true`` is 0) takes the false side; an empty
set, which onnxruntime refuses, is written ``x < -inf``. onnxruntime 1.32 tests the membership of a
large set on the value truncated to an integer (2.5 is in {2, ...}): the graph first turns a
categorical input that is not a whole number into NaN, which scikit-learn's encoder also treats as
unknown.

A classifier's label is the class of the largest probability (the first on a tie, as scikit-learn).
The server measures whatever graph results against the Pipeline before serving it.
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
#: TreeEnsemble's node modes: ``x <= split`` goes to the true side; ``x < split``; ``x`` in the node's set.
BRANCH_LEQ = 0
BRANCH_LT = 1
BRANCH_MEMBER = 6
_TREE_OPS = ("TreeEnsembleRegressor", "TreeEnsembleClassifier")


class Unsupported(Exception):
    """A model this rewrite does not express: skl2onnx's node stays, and the message says why."""


@dataclass(frozen=True)
class Split:
    """One branch node: ``x[feature] <= threshold`` (``members`` None) or ``x[feature] in members``
    goes to ``true_child``; NaN goes to ``true_child`` only when ``missing_true``."""

    feature: int
    threshold: float
    true_child: int
    false_child: int
    missing_true: bool
    members: tuple[float, ...] | None = None


@dataclass
class _Ensemble:
    """The arrays of one ``TreeEnsemble`` node, filled tree by tree."""

    roots: list[int] = field(default_factory=list)
    branches: dict[str, list] = field(default_factory=lambda: {k: [] for k in _BRANCH_FIELDS})
    leaf_targets: list[int] = field(default_factory=list)
    leaf_weights: list[float] = field(default_factory=list)

    members: list[tuple[float, ...]] = field(default_factory=list)

    def add_tree(self, nodes: Any, target: int, weight) -> None:
        """Add one tree. ``nodes(i)`` is node ``i``'s :class:`Split`, or None for a leaf; ``weight(i)``
        is leaf ``i``'s contribution to ``target``. Node 0 is the root."""

        def leaf(i: int) -> int:
            self.leaf_targets.append(target)
            self.leaf_weights.append(float(weight(i)))
            return len(self.leaf_weights) - 1

        def new_branch(split: Split) -> int:
            pos = len(self.branches["featureids"])
            if split.members is None:
                mode, threshold = BRANCH_LEQ, float(split.threshold)
            elif split.members:
                mode, threshold = BRANCH_MEMBER, 0.0
            else:  # an empty set (onnxruntime refuses one): x < -inf, false for every x and NaN
                mode, threshold = BRANCH_LT, -np.inf
            for key, value in (
                ("featureids", int(split.feature)),
                ("splits", threshold),
                ("modes", mode),
                ("truenodeids", 0),
                ("trueleafs", 0),
                ("falsenodeids", 0),
                ("falseleafs", 0),
                ("missing", int(bool(split.missing_true))),
            ):
                self.branches[key].append(value)
            if mode == BRANCH_MEMBER:
                self.members.append(split.members)
            return pos

        root = nodes(0)
        if root is None:  # a tree without a split: a dummy split whose both sides are that leaf
            pos, only = new_branch(Split(0, 0.0, 0, 0, False)), leaf(0)
            for side in ("true", "false"):
                self.branches[f"{side}nodeids"][pos], self.branches[f"{side}leafs"][pos] = only, 1
            self.roots.append(pos)
            return
        # Branches in preorder, the true side first.
        stack: list[tuple[int | None, str, int]] = [(None, "", 0)]
        while stack:  # iterative: a deep forest tree would overflow the recursion limit
            parent, side, child = stack.pop()
            split = nodes(child)
            if split is None:
                self.branches[f"{side}nodeids"][parent], self.branches[f"{side}leafs"][parent] = (
                    leaf(child),
                    1,
                )
                continue
            pos = new_branch(split)
            if parent is None:
                self.roots.append(pos)
            else:
                self.branches[f"{side}nodeids"][parent], self.branches[f"{side}leafs"][parent] = pos, 0
            # the true side is popped first
            stack += [(pos, "false", split.false_child), (pos, "true", split.true_child)]

    def node(self, inputs: list[str], output: str, name: str, n_targets: int) -> Any:
        from onnx import helper, numpy_helper

        sets = {}
        if self.members:  # every member node's set, in node order, each followed by a NaN
            values = [v for members in self.members for v in (*members, np.nan)][:-1]
            sets["membership_values"] = numpy_helper.from_array(np.asarray(values, dtype=np.float64))
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
            nodes_modes=numpy_helper.from_array(np.asarray(self.branches["modes"], dtype=np.uint8)),
            nodes_truenodeids=self.branches["truenodeids"],
            nodes_trueleafs=self.branches["trueleafs"],
            nodes_falsenodeids=self.branches["falsenodeids"],
            nodes_falseleafs=self.branches["falseleafs"],
            nodes_missing_value_tracks_true=self.branches["missing"],
            leaf_targetids=self.leaf_targets,
            leaf_weights=numpy_helper.from_array(np.asarray(self.leaf_weights, dtype=np.float64)),
            **sets,
        )


@dataclass(frozen=True)
class _Categoricals:
    """How a HistGradientBoosting estimator with native categorical features reads its input.

    ``columns[j]``: the input column of the estimator's internal feature ``j`` (categorical features
    come first there); ``values[j]``: for a categorical feature, the input value of each internal
    code; ``known``/``feature_map``: the bin mapper's bitsets of the codes it knows, per feature.
    """

    columns: np.ndarray
    values: dict[int, np.ndarray]
    known: np.ndarray
    feature_map: np.ndarray

    @classmethod
    def of(cls, estimator: Any) -> _Categoricals:
        pre = estimator._preprocessor
        n = int(pre.n_features_in_)
        columns = np.full(n, -1, dtype=np.int64)
        for name, _, selected in pre.transformers_:
            where = pre.output_indices_.get(name, slice(0, 0))
            picked = np.arange(n)[selected] if np.asarray(selected).dtype == bool else np.asarray(selected)
            if where.stop - where.start != len(picked):
                raise Unsupported(f"the categorical preprocessor's {name!r} changes the number of columns")
            columns[where] = picked
        if (columns < 0).any():
            raise Unsupported("the categorical preprocessor drops columns")
        encoder, where = pre.named_transformers_["encoder"], pre.output_indices_["encoder"]
        values = {}
        for offset, categories in enumerate(encoder.categories_):
            categories = np.asarray(categories)
            if categories.dtype.kind not in "biuf":
                raise Unsupported(
                    "categorical features whose values are not numbers (encode them with an "
                    "OrdinalEncoder in the Pipeline)"
                )
            values[where.start + offset] = categories.astype(np.float64)[~np.isnan(categories.astype(float))]
        known, feature_map = estimator._bin_mapper.make_known_categories_bitsets()
        return cls(columns, values, np.asarray(known), np.asarray(feature_map))

    @property
    def inputs(self) -> list[int]:
        """The input columns of the categorical features."""
        return sorted(int(self.columns[j]) for j in self.values)

    def split(self, node: Any, left_bitsets: np.ndarray, left: int, right: int) -> Split:
        """A categorical node as a membership test on the input value (see the module's docstring)."""
        feature = int(node["feature_idx"])
        values = self.values[feature]
        codes = np.arange(len(values))
        known = _in_bitset(self.known[self.feature_map[feature]], codes)
        goes_left = _in_bitset(left_bitsets[int(node["bitset_idx"])], codes)
        column = int(self.columns[feature])
        if node["missing_go_to_left"]:  # the known categories that go right are the set
            return Split(column, 0.0, right, left, False, tuple(values[known & ~goes_left].tolist()))
        return Split(column, 0.0, left, right, False, tuple(values[goes_left].tolist()))


def _in_bitset(bitset: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """scikit-learn's category bitsets: eight 32-bit words, bit ``c % 32`` of word ``c // 32``."""
    words = np.asarray(bitset, dtype=np.uint64)[codes >> 5]
    return ((words >> (codes & 31).astype(np.uint64)) & np.uint64(1)).astype(bool)


def _hgb_nodes(predictor: Any, categoricals: _Categoricals | None):
    nodes = predictor.nodes
    left_bitsets = predictor.raw_left_cat_bitsets

    def get(i: int) -> Split | None:
        n = nodes[i]
        if n["is_leaf"]:
            return None
        left, right = int(n["left"]), int(n["right"])
        if categoricals is None:
            return Split(
                int(n["feature_idx"]), float(n["num_threshold"]), left, right, bool(n["missing_go_to_left"])
            )
        if n["is_categorical"]:
            return categoricals.split(n, left_bitsets, left, right)
        column = int(categoricals.columns[int(n["feature_idx"])])
        return Split(column, float(n["num_threshold"]), left, right, bool(n["missing_go_to_left"]))

    return get, lambda i: float(nodes[i]["value"])


def _sklearn_nodes(tree: Any):
    t = tree.tree_
    missing = getattr(t, "missing_go_to_left", None)

    def get(i: int) -> Split | None:
        left = int(t.children_left[i])
        if left == -1:
            return None
        return Split(
            int(t.feature[i]),
            float(t.threshold[i]),
            left,
            int(t.children_right[i]),
            bool(missing[i]) if missing is not None else False,
        )

    return get


@dataclass
class _Trees:
    ensemble: _Ensemble
    n_targets: int
    baseline: np.ndarray | None  # added to the trees' sum
    float32_input: bool  # the input is rounded to float32 first
    categorical_inputs: list[int] = field(default_factory=list)  # input columns tested by membership
    n_features: int = 0


def _ensemble(estimator: Any) -> _Trees:
    ensemble = _Ensemble()
    predictors = getattr(estimator, "_predictors", None)
    if predictors is not None:  # HistGradientBoosting: one predictor per iteration and target
        categoricals = None
        if getattr(estimator, "_preprocessor", None) is not None:
            categoricals = _Categoricals.of(estimator)
        k = int(getattr(estimator, "n_trees_per_iteration_", 1))
        for per_iteration in predictors:
            for target, predictor in enumerate(per_iteration):
                nodes, weight = _hgb_nodes(predictor, categoricals)
                ensemble.add_tree(nodes, target, weight)
        baseline = np.asarray(estimator._baseline_prediction, dtype=np.float64).reshape(1, -1)
        return _Trees(
            ensemble,
            k,
            baseline,
            False,
            categoricals.inputs if categoricals is not None else [],
            int(estimator.n_features_in_),
        )
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
        return _Trees(ensemble, 1, None, True)
    k = len(classes)
    targets = [1] if k == 2 else list(range(k))  # two classes: the second's probability only
    for tree in trees:
        value = tree.tree_.value[:, 0, :]
        shares = value / np.maximum(value.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
        for j, cls in enumerate(targets):
            ensemble.add_tree(_sklearn_nodes(tree), j, lambda i, s=shares, c=cls: s[i, c] / n)
    return _Trees(ensemble, len(targets), None, True)


def double_trees(onx: Any, estimator: Any) -> int:
    """Replace skl2onnx's tree node of ``onx`` by a double ``TreeEnsemble`` of ``estimator``; the count.

    Raises :class:`Unsupported` for gradient boosting with native categorical features that this
    rewrite cannot express: skl2onnx's own node ignores the estimator's re-encoding of them.
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes = [n for n in onx.graph.node if n.op_type in _TREE_OPS]
    if len(nodes) != 1:
        return 0
    node = nodes[0]
    try:
        trees = _ensemble(estimator)
        labels = _class_labels(node) if node.op_type == "TreeEnsembleClassifier" else None
    except Unsupported:
        if getattr(estimator, "_preprocessor", None) is not None:
            raise
        return 0
    ensemble, n_targets, baseline = trees.ensemble, trees.n_targets, trees.baseline
    base = node.name or node.op_type
    new: list[Any] = []
    features = node.input[0]
    initializers = []
    if trees.categorical_inputs:
        # A categorical input that is not a whole number becomes NaN (unknown to scikit-learn's
        # encoder); onnxruntime would test the truncated value's membership.
        other = np.ones((1, trees.n_features), dtype=bool)
        other[0, trees.categorical_inputs] = False
        initializers += [
            numpy_helper.from_array(other, f"{base}_not_categorical"),
            numpy_helper.from_array(np.full((1, 1), np.nan), f"{base}_nan"),
        ]
        new += [
            helper.make_node("Floor", [features], [f"{base}_floor"], name=f"{base}_floor"),
            helper.make_node("Equal", [f"{base}_floor", features], [f"{base}_whole"], name=f"{base}_whole"),
            helper.make_node(
                "Or", [f"{base}_whole", f"{base}_not_categorical"], [f"{base}_keep"], name=f"{base}_keep"
            ),
            helper.make_node(
                "Where", [f"{base}_keep", features, f"{base}_nan"], [f"{base}_xcat"], name=f"{base}_xcat"
            ),
        ]
        features = f"{base}_xcat"
    if trees.float32_input:
        new += [
            helper.make_node("Cast", [features], [f"{base}_x32"], to=TensorProto.FLOAT, name=f"{base}_x32"),
            helper.make_node(
                "Cast", [f"{base}_x32"], [f"{base}_x64"], to=TensorProto.DOUBLE, name=f"{base}_x64"
            ),
        ]
        features = f"{base}_x64"
    raw = f"{base}_raw"
    new.append(ensemble.node([features], raw, f"{base}_double", n_targets))
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
