"""The spec loader rule by rule: each broken field gives exactly its own problem, and every default is exact."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from pathlib import Path

import pytest
import yaml

from mlcycle.errors import SpecError
from mlcycle.spec import (
    CLASSIFICATION_METRICS,
    MODEL_FAMILIES,
    REGRESSION_METRICS,
    Column,
    SearchParam,
    load_spec,
    parse_spec,
    resolve_spec_path,
)

#: The smallest valid spec: everything else takes its default.
MINI = {
    "name": "mini",
    "task": "regression",
    "source": {"kind": "file", "path": "mini.csv"},
    "timestamp": {"kind": "column", "column": "ts"},
    "columns": {
        "ts": {"type": "string", "role": "ignore"},
        "x": {"type": "numeric"},
        "y": {"type": "numeric"},
    },
    "target": "y",
    "window": {"data_start": "2011-01-01"},
    "model": {"family": "ridge", "search": {"space": {"alpha": {"low": 0.1, "high": 10}}}},
    "evaluation": {"metric": "rmse", "threshold": 100},
}
PATH = Path("/specs/pipelines/mini.yaml")


def problems(raw: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(raw, PATH)
    head, *listing = str(info.value).split("\n  - ")
    assert head == f"pipeline spec {PATH} has {len(listing)} problem(s):"
    return listing


def changed(edit) -> dict:
    raw = copy.deepcopy(MINI)
    edit(raw)
    return raw


def test_the_smallest_spec_takes_every_default():
    spec = parse_spec(copy.deepcopy(MINI), PATH)
    assert (spec.partition, spec.min_rows_per_partition, spec.max_rows_per_partition) == ("daily", 1, None)
    assert (spec.data_start, spec.data_end, spec.window_days, spec.min_training_rows) == (
        dt.date(2011, 1, 1),
        None,
        28,
        100,
    )
    assert dataclasses.asdict(spec.model) == {
        "family": "ridge",
        "registered_name": "mini",
        "n_iter": 8,
        "cv_folds": 3,
        "seed": 42,
        "space": ({"name": "alpha", "low": 0.1, "high": 10, "log": False, "integer": False, "values": None},),
        "categorical_encoding": "auto",
        "budget_seconds": 600.0,
        "early_stopping": True,
        "max_rows": 200_000,
    }
    assert dataclasses.asdict(spec.evaluation) == {
        "metric": "rmse",
        "greater_is_better": False,
        "threshold": 100.0,
        "tolerance": 0.0,
        "holdout_days": 7,
    }
    assert spec.columns == (
        Column("ts", "string", "ignore"),
        Column("x", "numeric", "feature"),
        Column("y", "numeric", "target"),
    )
    assert spec.suite_path == Path("/specs/expectations/mini.json")
    assert (spec.experiment, spec.description, spec.task, spec.target) == ("mini", "", "regression", "y")
    assert spec.source.options == {"path": "mini.csv"} and spec.source.base_dir == PATH.parent
    assert (spec.timestamp.kind, spec.timestamp.column, spec.timestamp.format) == ("column", "ts", None)


def test_every_field_given_is_kept():
    raw = changed(
        lambda r: (
            r.update(description="  a test  ", experiment="exp", partition="daily"),
            r["validation"].update(
                min_rows_per_partition=5, max_rows_per_partition=9, suite="/abs/suite.json"
            )
            if "validation" in r
            else r.update(
                validation={
                    "min_rows_per_partition": 5,
                    "max_rows_per_partition": 9,
                    "suite": "/abs/suite.json",
                }
            ),
            r["window"].update(data_end="2011-12-31", days=14, min_training_rows=50),
            r["model"].update(registered_name="reg"),
            r["model"]["search"].update(
                n_iter=3,
                cv_folds=2,
                seed=7,
                space={
                    "alpha": {"low": 0.5, "high": 2, "log": True, "integer": True},
                    "solver": {"values": ["a", "b"]},
                },
            ),
            r["evaluation"].update(tolerance=0.1, holdout_days=3, metric="r2"),
            r["columns"]["x"].update(min=0, max=5, max_null_share=0.25),
            r["columns"].update(c={"type": "categorical", "values": ["p", "q"]}),
        )
    )
    spec = parse_spec(raw, PATH)
    assert (spec.description, spec.experiment, spec.min_rows_per_partition, spec.max_rows_per_partition) == (
        "a test",
        "exp",
        5,
        9,
    )
    assert spec.suite_path == Path("/abs/suite.json")
    assert (spec.data_end, spec.window_days, spec.min_training_rows) == (dt.date(2011, 12, 31), 14, 50)
    assert (spec.model.registered_name, spec.model.n_iter, spec.model.cv_folds, spec.model.seed) == (
        "reg",
        3,
        2,
        7,
    )
    assert spec.model.space == (
        SearchParam("alpha", low=0.5, high=2, log=True, integer=True),
        SearchParam("solver", values=("a", "b")),
    )
    assert (spec.evaluation.greater_is_better, spec.evaluation.tolerance, spec.evaluation.holdout_days) == (
        True,
        0.1,
        3,
    )
    assert spec.columns[1] == Column("x", "numeric", "feature", min=0, max=5, max_null_share=0.25)
    assert spec.columns[3] == Column("c", "categorical", "feature", values=("p", "q"))


REG, CLF = ", ".join(REGRESSION_METRICS), ", ".join(CLASSIFICATION_METRICS)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda r: r.pop("name"), ["spec.name: required"]),
        (lambda r: r.update(name=5), ["spec.name: expected str, got 5"]),
        (
            lambda r: r.pop("task"),
            [
                "spec.task: required",
                "spec.task: regression or classification (got None)",
                f"evaluation.metric: for None, one of {CLF} (got 'rmse')",
            ],
        ),
        (
            lambda r: r.update(source="data.csv"),
            [
                "spec.source: expected dict, got 'data.csv'",
                "source.kind: required",
                "source.kind: one of file, postgres, http (got None)",
            ],
        ),
        (
            lambda r: r["source"].update(kind=5),
            ["source.kind: expected str, got 5", "source.kind: one of file, postgres, http (got None)"],
        ),
        (lambda r: r["source"].update(path=5), ["source.path: expected str, got 5"]),
        (
            lambda r: r.update(source={"kind": "postgres", "table": 1, "conn_id": 2, "timestamp_column": 3}),
            [
                "source.table: expected str, got 1",
                "source.conn_id: expected str, got 2",
                "source.timestamp_column: expected str, got 3",
            ],
        ),
        (lambda r: r.update(source={"kind": "http", "url": 1}), ["source.url: expected str, got 1"]),
        (
            lambda r: r.update(timestamp={"kind": "day_of_year", "year": "2011", "day_column": 1}),
            [
                "timestamp.year: expected int, got '2011'",
                "timestamp.day_column: expected str, got 1",
                "timestamp: column 1 is not among the columns",
            ],
        ),
        (
            lambda r: r.update(timestamp={"kind": "column", "column": 1}),
            ["timestamp.column: expected str, got 1", "timestamp: column 1 is not among the columns"],
        ),
        (
            lambda r: r.update(timestamp="ts"),
            [
                "spec.timestamp: expected dict, got 'ts'",
                "timestamp.kind: required",
                "timestamp.kind: column or day_of_year (got None)",
            ],
        ),
        (lambda r: r.update(partition=1), ["spec.partition: expected str, got 1"]),
        (
            lambda r: r["columns"].update(x={"role": "feature"}),
            [
                "columns.x.type: required",
                "columns.x.type: one of numeric, integer, categorical, string, timestamp (got None)",
            ],
        ),
        (lambda r: r["columns"]["x"].update(role=5), ["columns.x.role: expected str, got 5"]),
        (
            lambda r: r["columns"]["x"].update(max_null_share="lots"),
            ["columns.x.max_null_share: expected int or float, got 'lots'"],
        ),
        (lambda r: r.update(columns={}), ["columns: required, a mapping of column name to {type, ...}"]),
        (lambda r: r.update(target=5), ["spec.target: expected str, got 5"]),
        (
            lambda r: r.update(validation={"min_rows_per_partition": "1", "max_rows_per_partition": "2"}),
            [
                "validation.min_rows_per_partition: expected int, got '1'",
                "validation.max_rows_per_partition: expected int, got '2'",
            ],
        ),
        (lambda r: r.update(validation="strict"), ["spec.validation: expected dict, got 'strict'"]),
        (
            lambda r: r.update(window="28d"),
            ["spec.window: expected dict, got '28d'", "window.data_start: required"],
        ),
        (
            lambda r: r["window"].update(days="28", min_training_rows="9"),
            ["window.days: expected int, got '28'", "window.min_training_rows: expected int, got '9'"],
        ),
        (
            lambda r: r.update(model="ridge"),
            [
                "spec.model: expected dict, got 'ridge'",
                "model.family: required",
                f"model.family: for regression, one of {', '.join(MODEL_FAMILIES['regression'])} (got None)",
                "model.search: required",
                "model.search.space: required, a mapping of hyper-parameter to its bounds",
            ],
        ),
        (
            lambda r: r["model"].update(family=1, registered_name=2),
            [
                "model.family: expected str, got 1",
                f"model.family: for regression, one of {', '.join(MODEL_FAMILIES['regression'])} (got None)",
                "model.registered_name: expected str, got 2",
            ],
        ),
        (
            lambda r: r["model"].update(search="grid"),
            [
                "model.search: expected dict, got 'grid'",
                "model.search.space: required, a mapping of hyper-parameter to its bounds",
            ],
        ),
        (
            lambda r: r["model"]["search"].update(n_iter="8", cv_folds="3", seed="42"),
            [
                "model.search.n_iter: expected int, got '8'",
                "model.search.cv_folds: expected int, got '3'",
                "model.search.seed: expected int, got '42'",
            ],
        ),
        (
            lambda r: r["model"]["search"].update(space={"alpha": {"low": 1, "high": 1}}),
            ["model.search.space.alpha: low < high, both numbers (got 1, 1)"],
        ),
        (
            lambda r: r["model"]["search"].update(space={"alpha": {"low": "a", "high": 1}}),
            ["model.search.space.alpha: low < high, both numbers (got 'a', 1)"],
        ),
        (
            lambda r: r["model"]["search"].update(space={"alpha": {"values": "ab"}}),
            ["model.search.space.alpha.values: a non-empty list"],
        ),
        (
            lambda r: r.update(evaluation="rmse"),
            [
                "spec.evaluation: expected dict, got 'rmse'",
                "evaluation.metric: required",
                f"evaluation.metric: for regression, one of {REG} (got None)",
                "evaluation.threshold: required",
            ],
        ),
        (
            lambda r: r["evaluation"].update(metric=1, threshold="high", holdout_days="7"),
            [
                "evaluation.metric: expected str, got 1",
                f"evaluation.metric: for regression, one of {REG} (got None)",
                "evaluation.threshold: expected int or float, got 'high'",
                "evaluation.holdout_days: expected int, got '7'",
            ],
        ),
        (
            lambda r: r.update(task="forecast"),
            [
                "spec.task: regression or classification (got 'forecast')",
                f"evaluation.metric: for forecast, one of {CLF} (got 'rmse')",
            ],
        ),
        (
            lambda r: r.pop("source"),
            [
                "spec.source: required",
                "source.kind: required",
                "source.kind: one of file, postgres, http (got None)",
            ],
        ),
        (lambda r: r["source"].update(kind="s3"), ["source.kind: one of file, postgres, http (got 's3')"]),
        (lambda r: r["source"].pop("path"), ["source.path: required"]),
        (
            lambda r: r.update(source={"kind": "postgres"}),
            ["source.table: required", "source.conn_id: required", "source.timestamp_column: required"],
        ),
        (lambda r: r.update(source={"kind": "http"}), ["source.url: required"]),
        (
            lambda r: r.update(timestamp={"kind": "day_of_year"}),
            ["timestamp.year: required", "timestamp.day_column: required"],
        ),
        (
            lambda r: r.update(timestamp={"kind": "epoch"}),
            ["timestamp.kind: column or day_of_year (got 'epoch')"],
        ),
        (lambda r: r.update(timestamp={"kind": "column"}), ["timestamp.column: required"]),
        (
            lambda r: r["timestamp"].update(column="when"),
            ["timestamp: column 'when' is not among the columns"],
        ),
        (
            lambda r: r.update(
                timestamp={"kind": "day_of_year", "year": 2011, "day_column": "x", "hour_column": "h"}
            ),
            ["timestamp: column 'h' is not among the columns"],
        ),
        (
            lambda r: r.update(partition="hourly"),
            ["spec.partition: only `daily` is supported (got 'hourly')"],
        ),
        (lambda r: r.pop("columns"), ["columns: required, a mapping of column name to {type, ...}"]),
        (
            lambda r: r["columns"].update(x="numeric"),
            [
                "columns.x: expected a mapping with at least `type`",
                "columns: at least one column must have role `feature`",
            ],
        ),
        (
            lambda r: r["columns"]["x"].update(type="float"),
            ["columns.x.type: one of numeric, integer, categorical, string, timestamp (got 'float')"],
        ),
        (
            lambda r: r["columns"]["x"].update(role="label"),
            [
                "columns.x.role: one of feature, target, ignore (got 'label')",
                "columns: at least one column must have role `feature`",
            ],
        ),
        (
            lambda r: r["columns"]["x"].update(type="categorical"),
            ["columns.x.values: a categorical column lists its allowed values"],
        ),
        (
            lambda r: r["columns"]["x"].update(max_null_share=1.5),
            ["columns.x.max_null_share: between 0 and 1 (got 1.5)"],
        ),
        (
            lambda r: r["columns"]["x"].update(max_null_share=-0.1),
            ["columns.x.max_null_share: between 0 and 1 (got -0.1)"],
        ),
        (lambda r: r.update(target="z"), ["spec.target: 'z' is not among the columns"]),
        (
            lambda r: r["columns"]["x"].update(role="ignore"),
            ["columns: at least one column must have role `feature`"],
        ),
        (lambda r: r["window"].pop("data_start"), ["window.data_start: required"]),
        (
            lambda r: r["window"].update(data_start="soon"),
            ["window.data_start: an ISO date like 2011-01-01 (got 'soon')"],
        ),
        (
            lambda r: r["window"].update(data_end="later"),
            ["window.data_end: an ISO date like 2011-01-01 (got 'later')"],
        ),
        (
            lambda r: r["model"].update(family="xgboost"),
            [
                f"model.family: for regression, one of {', '.join(MODEL_FAMILIES['regression'])} (got 'xgboost')"
            ],
        ),
        (lambda r: r["model"]["search"].update(n_iter=0), ["model.search.n_iter: between 1 and 200 (got 0)"]),
        (
            lambda r: r["model"]["search"].update(n_iter=201),
            ["model.search.n_iter: between 1 and 200 (got 201)"],
        ),
        (
            lambda r: r["model"]["search"].pop("space"),
            ["model.search.space: required, a mapping of hyper-parameter to its bounds"],
        ),
        (
            lambda r: r["model"]["search"].update(space={"alpha": {"values": []}}),
            ["model.search.space.alpha.values: a non-empty list"],
        ),
        (
            lambda r: r["model"]["search"].update(space={"alpha": {"low": 10, "high": 1}}),
            ["model.search.space.alpha: low < high, both numbers (got 10, 1)"],
        ),
        (
            lambda r: r["model"]["search"].update(space={"alpha": {"low": 0, "high": 1, "log": True}}),
            ["model.search.space.alpha: a log-scaled range needs low > 0"],
        ),
        (
            lambda r: r["model"]["search"].update(space={"alpha": {"low": 1}}),
            ["model.search.space.alpha: give either `values: [...]` or `low`/`high` bounds"],
        ),
        (
            lambda r: r["evaluation"].update(metric="auc"),
            [f"evaluation.metric: for regression, one of {REG} (got 'auc')"],
        ),
        *(
            (
                lambda r, bad=bad: r["model"]["search"].update(max_rows=bad),
                [
                    f"model.search.max_rows: a whole number of rows, at least 1000, or null for every row (got {bad!r})"
                ],
            )
            for bad in (999, "all", True, 2.5e5)
        ),
        (lambda r: r["evaluation"].pop("threshold"), ["evaluation.threshold: required"]),
        (lambda r: r["evaluation"].update(threshold=float("inf")), ["evaluation.threshold: a finite number"]),
        (
            lambda r: r["evaluation"].update(tolerance="small"),
            ["evaluation.tolerance: expected int or float, got 'small'"],
        ),
        (
            lambda r: (r["window"].update(days=7), r["evaluation"].update(holdout_days=7)),
            ["evaluation.holdout_days: must be smaller than window.days"],
        ),
    ],
)
def test_each_broken_field_gives_exactly_its_problem(edit, expected):
    assert problems(changed(edit)) == expected


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r["columns"]["x"].update(max_null_share=0),
        lambda r: r["columns"]["x"].update(max_null_share=1),
        lambda r: r["model"]["search"].update(n_iter=1),
        lambda r: r["model"]["search"].update(n_iter=200),
        lambda r: r["model"]["search"].update(max_rows=1000),
        lambda r: r["model"]["search"].update(max_rows=None),
        lambda r: (r["window"].update(days=8), r["evaluation"].update(holdout_days=7)),
        lambda r: r.update(
            task="classification",
            model={**r["model"], "family": "logistic_regression"},
            evaluation={"metric": "roc_auc", "threshold": 0.5},
        ),
    ],
)
def test_the_bounds_themselves_are_allowed(edit):
    parse_spec(changed(edit), PATH)


def test_a_classification_metric_knows_its_direction():
    raw = changed(
        lambda r: r.update(
            task="classification",
            model={**r["model"], "family": "logistic_regression"},
            evaluation={"metric": "log_loss", "threshold": 0.7},
        )
    )
    assert parse_spec(raw, PATH).evaluation.greater_is_better is False


def test_an_unknown_name_lists_the_known_specs(tmp_path):
    (tmp_path / "alpha.yaml").write_text("{}")
    (tmp_path / "beta.yaml").write_text("{}")
    with pytest.raises(SpecError) as info:
        resolve_spec_path("gamma", tmp_path)
    assert str(info.value) == (
        f"no pipeline spec 'gamma': looked for {tmp_path / 'gamma.yaml'}. Known specs in "
        f"{tmp_path}: alpha, beta; or pass a path to a YAML file."
    )
    with pytest.raises(SpecError, match="Known specs in .*: none; or pass"):
        resolve_spec_path("gamma", tmp_path / "missing")


def test_a_name_or_a_path_resolves_to_the_file(tmp_path):
    (tmp_path / "alpha.yaml").write_text("{}")
    assert resolve_spec_path("alpha", tmp_path) == (tmp_path / "alpha.yaml").resolve()
    assert (
        resolve_spec_path(str(tmp_path / "alpha.yaml"), tmp_path / "elsewhere")
        == (tmp_path / "alpha.yaml").resolve()
    )


def test_load_spec_refuses_what_is_not_a_mapping_or_not_yaml(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "list.yaml")
    assert (
        str(info.value) == f"pipeline spec {tmp_path / 'list.yaml'} must be a YAML mapping at the top level"
    )
    (tmp_path / "bad.yaml").write_text("a: [\n")
    with pytest.raises(SpecError, match=r"cannot read pipeline spec .*bad\.yaml: "):
        load_spec(tmp_path / "bad.yaml")


def test_a_yml_path_is_taken_as_a_path_even_when_missing(tmp_path):
    (tmp_path / "alpha.yml").write_text("{}")
    assert (
        resolve_spec_path(str(tmp_path / "alpha.yml"), tmp_path / "other")
        == (tmp_path / "alpha.yml").resolve()
    )
    with pytest.raises(SpecError, match=r"looked for .*beta\.yml\. Known"):
        resolve_spec_path(str(tmp_path / "beta.yml"), tmp_path)
    with pytest.raises(SpecError, match=r"looked for .*gamma\.yaml\. Known"):
        resolve_spec_path(str(tmp_path / "gamma.yaml"), tmp_path / "other")


def test_source_paths_are_relative_to_the_spec_unless_absolute(tmp_path):
    spec = parse_spec(copy.deepcopy(MINI), PATH)
    assert spec.source.path() == Path("/specs/pipelines/mini.csv")
    absolute = parse_spec(changed(lambda r: r["source"].update(path="/data/x.csv")), PATH)
    assert absolute.source.path() == Path("/data/x.csv")


def test_load_spec_reads_the_file_it_is_given(tmp_path):
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(MINI))
    spec = load_spec("mini", tmp_path)
    assert spec.path == (tmp_path / "mini.yaml").resolve() and spec.name == "mini"
