"""The step package's seams: no import circle, and a source kind or a model family added by one registration.

The test-only source ``memory`` and the test-only family ``extra_trees`` are registered the way
docs/extending.md tells a user to add one: one class (or one estimator per task) and one call of
:mod:`mlcycle.registry`; the spec's parser, its typo check, ``ingest``, the model pipeline, skops
and the ONNX export then know it, with no other edit.
"""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mlcycle import registry
from mlcycle.errors import SpecError
from mlcycle.sources.base import Selection
from mlcycle.sources.file import read_table, select_range
from mlcycle.spec import load_spec
from mlcycle.steps.ingest import ingest
from mlcycle.store import Store
from tests.datasets import make_classification_dataset, write_spec_variant
from tests.unit.conftest import day_interval

PACKAGE = Path(__file__).resolve().parents[2] / "include" / "mlcycle"


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere (a function's lazy import counts too)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("mlcycle", *path.relative_to(PACKAGE).with_suffix("").parts))
        modules[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            if component:
                found.append(sorted([node, *component]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_step_package_has_no_import_circle():
    graph = _import_graph()
    assert "mlcycle.cli" in graph["mlcycle.warm_server"] and "mlcycle.warm" in graph["mlcycle.warm_server"]
    assert _cycles(graph) == []


def test_the_circle_check_sees_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


class MemoryReader:
    """A test-only source: the rows of a CSV that a test put in :data:`TABLES` under a name."""

    TABLES: dict[str, pd.DataFrame] = {}

    def __init__(self, spec):
        self.spec = spec
        self.frame = self.TABLES[spec.source.options["table"]]

    def read(self, start: dt.date, end: dt.date) -> Selection:
        return select_range(self.frame, self.spec, start, end)


@pytest.fixture
def memory_source():
    registry.register_source("memory", MemoryReader, required=("table",), optional=("note",))
    try:
        yield MemoryReader.TABLES
    finally:
        del registry.SOURCES["memory"]
        MemoryReader.TABLES.clear()


def _memory_spec(tmp_path: Path, **source) -> Path:
    local = make_classification_dataset(tmp_path / "data", days=5)
    return local, write_spec_variant(
        local, tmp_path / "memory.yaml", source={"path": None, "format": None, **source}
    )


def test_a_registered_source_is_ingested_like_a_file(tmp_path, settings, memory_source):
    local, path = _memory_spec(tmp_path, kind="memory", table="clf")
    file_spec = load_spec(local)
    memory_source["clf"] = read_table(file_spec.source.path(), "csv")
    spec = load_spec(path)
    assert spec.source.kind == "memory"
    result = ingest(spec, settings, day_interval(dt.date(2011, 3, 4)), window_days=2)
    assert result.partitions == 2 and result.rows == 48
    written = pd.read_parquet(Store(settings.store, spec.name).raw(dt.date(2011, 3, 3)))
    expected = select_range(memory_source["clf"], file_spec, dt.date(2011, 3, 3), dt.date(2011, 3, 4)).frame
    assert written["ts"].tolist() == expected["ts"].tolist()


def test_a_registered_source_checks_its_own_keys(tmp_path, memory_source):
    _, missing = _memory_spec(tmp_path, kind="memory")
    with pytest.raises(SpecError, match="source.table"):
        load_spec(missing)
    _, typo = _memory_spec(tmp_path / "typo", kind="memory", table="clf", nte="x")
    with pytest.raises(SpecError, match="source.nte: unknown key; did you mean `note`"):
        load_spec(typo)


def test_an_unregistered_kind_names_the_registered_ones(tmp_path):
    _, path = _memory_spec(tmp_path, kind="memory", table="clf")
    with pytest.raises(SpecError, match="source.kind: one of file, postgres, http"):
        load_spec(path)


def test_a_kind_is_registered_once(memory_source):
    with pytest.raises(ValueError, match="already registered"):
        registry.register_source("memory", MemoryReader)


@pytest.fixture
def extra_trees():
    registry.register_model_family(
        "extra_trees",
        registry.ModelFamily(
            {
                "regression": "sklearn.ensemble:ExtraTreesRegressor",
                "classification": "sklearn.ensemble:ExtraTreesClassifier",
            },
            trusted_types=("sklearn.tree._tree.Tree",),
        ),
    )
    try:
        yield
    finally:
        del registry.MODELS["extra_trees"]


def test_a_registered_model_family_trains_saves_and_exports_to_onnx(tmp_path, extra_trees, monkeypatch):
    import mlflow
    import numpy as np

    from mlcycle.modeling import build_pipeline, trusted_types
    from mlcycle.serving.export import serving_schema, to_onnx

    local = make_classification_dataset(tmp_path / "data", days=5)
    spec = load_spec(write_spec_variant(local, tmp_path / "et.yaml", model={"family": "extra_trees"}))
    frame = read_table(spec.source.path(), "csv")
    x, y = frame[spec.feature_names], frame[spec.target]
    model = build_pipeline(spec).set_params(model__n_estimators=5, model__max_depth=4).fit(x, y)
    assert type(model.steps[-1][1]).__name__ == "ExtraTreesClassifier"
    monkeypatch.setattr(
        mlflow.models, "infer_pip_requirements", lambda uri, flavor, fallback=None, **kw: fallback
    )
    mlflow.sklearn.save_model(
        model, tmp_path / "m", serialization_format="skops", skops_trusted_types=trusted_types(spec)
    )
    loaded = mlflow.sklearn.load_model(str(tmp_path / "m"))
    np.testing.assert_allclose(loaded.predict_proba(x), model.predict_proba(x))
    export = to_onnx(serving_schema(spec, model, x), model, x)
    assert export.model is not None and export.label_mismatches == 0 and export.max_abs_diff < 1e-6, (
        export.reason
    )


def test_an_unregistered_family_is_refused_with_the_registered_ones(tmp_path):
    local = make_classification_dataset(tmp_path / "data", days=5)
    path = write_spec_variant(local, tmp_path / "et.yaml", model={"family": "extra_trees"})
    with pytest.raises(
        SpecError,
        match="model.family: for classification, one of hist_gradient_boosting, "
        "random_forest, logistic_regression .got 'extra_trees'",
    ):
        load_spec(path)


# --- an extension module loaded by the steps themselves (docs/extending.md) ----------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "extensions" / "example.py"


def _cli(tmp_path, *args: str, extensions: str | None = "tests.extensions.example"):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.unit.conftest import step_env

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLCYCLE", "MLFLOW", "AIRFLOW"))}
    env.update(step_env(tmp_path), PYTHONPATH=os.pathsep.join([str(ROOT / "include"), str(ROOT)]))
    if extensions is not None:
        env["MLCYCLE_EXTENSIONS"] = extensions
    return subprocess.run(
        [sys.executable, "-m", "mlcycle", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


def _jsonl_spec(tmp_path: Path) -> Path:
    local = make_classification_dataset(tmp_path / "data", days=10)
    frame = read_table(load_spec(local).source.path(), "csv")
    frame.to_json(tmp_path / "events.jsonl", orient="records", lines=True)
    path = write_spec_variant(
        local,
        tmp_path / "jsonl.yaml",
        source={"kind": "jsonl", "path": str(tmp_path / "events.jsonl"), "format": None},
        model={"family": "extra_trees", "search": {"n_iter": 1, "cv_folds": 2}},
    )
    raw = yaml.safe_load(path.read_text())
    raw["model"]["search"]["space"] = {
        "n_estimators": {"values": [20]},
        "max_depth": {"low": 3, "high": 8, "integer": True},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_steps_load_an_extension_module_for_its_source_and_its_family(tmp_path):
    """The spec names both the module's source kind and its model family: it loads only when the
    step imported the module (training the family is the in-process test above)."""
    import json

    proc = _ingest_one_day(tmp_path, "tests.extensions.example", "--window-days", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["partitions"], result["rows"]) == (3, 72)


def test_a_search_parameter_the_family_does_not_take_is_a_spec_error(tmp_path, extra_trees):
    from mlcycle.modeling import build_search

    local = make_classification_dataset(tmp_path / "data", days=5)
    spec = load_spec(write_spec_variant(local, tmp_path / "et.yaml", model={"family": "extra_trees"}))
    with pytest.raises(SpecError) as caught:  # the base spec's space is logistic regression's
        build_search(spec, 1000)
    assert "model.search.space.C: not a parameter of ExtraTreesClassifier (model.family extra_trees)" in str(
        caught.value
    )
    spec = load_spec(
        write_spec_variant(
            tmp_path / "et.yaml",
            tmp_path / "typo.yaml",
            model={"search": {"space": {"n_estimator": {"values": [5]}}}},
        )
    )
    with pytest.raises(SpecError, match="model.search.space.n_estimator: .*did you mean `n_estimators`"):
        build_search(spec, 1000)


def _ingest_one_day(tmp_path, extensions: str | None, *extra: str):
    spec = str(_jsonl_spec(tmp_path))
    return _cli(
        tmp_path,
        "ingest",
        "--pipeline",
        spec,
        "--start",
        "2011-03-10",
        "--end",
        "2011-03-11",
        *extra,
        extensions=extensions,
    )


def test_without_the_extension_the_spec_names_what_is_known(tmp_path):
    proc = _ingest_one_day(tmp_path, extensions=None)
    assert proc.returncode == 1, proc.stderr
    assert "source.kind: one of file, postgres, http (got 'jsonl')" in proc.stdout


def test_an_extension_that_cannot_be_imported_is_named(tmp_path):
    proc = _ingest_one_day(tmp_path, extensions="tests.extensions.exampel")
    assert proc.returncode == 1, proc.stderr
    assert "extension module 'tests.extensions.exampel'" in proc.stdout


def test_the_extending_page_shows_the_example_module_as_it_is():
    page = (Path(__file__).resolve().parents[2] / "docs" / "extending.md").read_text()
    assert EXAMPLE.read_text().split('"""', 2)[2].strip() in page
