"""The pipeline spec: the bundled one loads, a broken one reports every problem, names resolve."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from mlcycle.errors import SpecError
from mlcycle.settings import DEFAULT_PIPELINES_DIR
from mlcycle.spec import load_spec, resolve_spec_path
from tests.conftest import BIKESHARE_CSV, ROOT
from tests.datasets import BIKESHARE_SPEC, BIKESHARE_SUITE, make_classification_dataset, write_spec_variant


def test_bikeshare_spec_loads_by_name():
    spec = load_spec("bikeshare")
    assert spec.name == "bikeshare"
    assert spec.path == BIKESHARE_SPEC.resolve()
    assert spec.task == "regression" and spec.target == "bikers"
    assert spec.column("bikers").role == "target"
    # The parts of the target and the day-of-year are not features (they would leak or overfit).
    assert {"casual", "registered", "day", "bikers"}.isdisjoint(spec.feature_names)
    assert spec.feature_names[:2] == ["season", "mnth"]
    assert spec.column("weathersit").values == ("clear", "cloudy/misty", "light rain/snow", "heavy rain/snow")
    assert spec.column("temp").max_null_share == pytest.approx(0.01)
    assert (spec.data_start, spec.data_end) == (dt.date(2011, 1, 1), dt.date(2011, 12, 31))
    assert spec.evaluation.metric == "rmse" and spec.evaluation.greater_is_better is False
    assert spec.evaluation.holdout_days < spec.window_days
    # Relative paths are resolved against the spec file, not the working directory.
    assert spec.source.path() == BIKESHARE_CSV.resolve()
    assert spec.suite_path == BIKESHARE_SUITE.resolve()
    assert spec.model.family == "hist_gradient_boosting" and len(spec.model.space) == 5


def test_spec_by_path_and_by_name_are_the_same(tmp_path):
    by_path = load_spec(BIKESHARE_SPEC)
    assert by_path == load_spec("bikeshare", DEFAULT_PIPELINES_DIR)
    spec_path = make_classification_dataset(tmp_path, days=10)
    assert load_spec("synthclass", tmp_path).path == spec_path.resolve()


def test_generated_classification_spec_parses(tmp_path):
    spec = load_spec(make_classification_dataset(tmp_path, days=40, start="2011-05-01"))
    assert spec.task == "classification" and spec.target == "label"
    assert spec.timestamp.kind == "column" and spec.timestamp.column == "ts"
    assert spec.evaluation.metric == "roc_auc" and spec.evaluation.greater_is_better
    assert (spec.data_start, spec.data_end) == (dt.date(2011, 5, 1), dt.date(2011, 6, 9))
    assert spec.source.path().is_absolute() and spec.source.path().is_file()
    assert spec.model.n_iter == 2 and spec.window_days == 21 and spec.evaluation.holdout_days == 5
    assert spec.feature_names == ["hour", "x1", "x2", "visits", "color"]


def test_spec_variant_overrides_nested_keys_and_keeps_the_rest(tmp_path):
    target = write_spec_variant(BIKESHARE_SPEC, tmp_path / "sub" / "strict.yaml",
                                evaluation={"threshold": 1}, window={"days": 14})
    spec = load_spec(target)
    base = load_spec(BIKESHARE_SPEC)
    assert spec.evaluation.threshold == 1.0
    assert spec.evaluation.tolerance == base.evaluation.tolerance  # siblings survive the merge
    assert spec.window_days == 14 and spec.data_start == base.data_start
    # The copy lives elsewhere but still reads the same data and the committed suite.
    assert spec.source.path() == base.source.path()
    assert spec.suite_path == base.suite_path


BROKEN = {
    "name": "broken",
    "task": "clustering",
    "source": {"kind": "ftp"},
    "timestamp": {"kind": "column"},
    "target": "y",
    "columns": {
        "x": {"type": "float"},
        "c": {"type": "categorical"},
        "ratio": {"type": "numeric", "max_null_share": 1.5},
    },
    "window": {"data_start": "first of March", "days": 5},
    "model": {"family": "deep_net", "search": {"n_iter": 500,
                                               "space": {"alpha": {"low": 2, "high": 1}}}},
    "evaluation": {"metric": "auc", "holdout_days": 9},
}


def test_broken_spec_reports_every_problem_with_its_path(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(BROKEN))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    expected = [
        "spec.task", "source.kind", "timestamp.column: required", "columns.x.type", "columns.c.values",
        "columns.ratio.max_null_share", "spec.target: 'y' is not among the columns", "window.data_start",
        "model.search.n_iter", "model.search.space.alpha", "evaluation.metric",
        "evaluation.threshold: required", "evaluation.holdout_days: must be smaller than window.days",
    ]
    missing = [item for item in expected if item not in message]
    assert not missing, f"not reported: {missing}\n{message}"
    count = int(message.split(" has ")[1].split(" problem")[0])
    assert count >= len(expected)
    assert str(path) in message
    assert message.count("\n  - ") == count  # one line per problem


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"evaluation": {"metric": "r3"}}, "evaluation.metric: for regression, one of rmse, mae, r2 (got 'r3')"),
    ({"model": {"family": "logistic_regression"}}, "model.family: for regression, one of hist_gradient_boosting"),
    ({"target": "riders"}, "spec.target: 'riders' is not among the columns"),
    ({"timestamp": {"day_column": "doy"}}, "timestamp: column 'doy' is not among the columns"),
    ({"partition": "hourly"}, "spec.partition: only `daily` is supported"),
])
def test_a_valid_spec_with_one_mistake_names_just_that(tmp_path, overrides, problem):
    path = write_spec_variant(BIKESHARE_SPEC, tmp_path / "one.yaml", **overrides)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "has 1 problem(s):\n  - " + problem in str(info.value)


def test_unknown_spec_name_lists_the_known_specs():
    with pytest.raises(SpecError) as info:
        load_spec("no_such_pipeline")
    message = str(info.value)
    assert "'no_such_pipeline'" in message
    assert "Known specs in" in message and "bikeshare" in message


def test_unknown_spec_in_an_empty_folder_says_none(tmp_path):
    with pytest.raises(SpecError, match="Known specs in .*: none"):
        resolve_spec_path("nothing", tmp_path)


def test_missing_spec_file_by_path(tmp_path):
    with pytest.raises(SpecError, match="no pipeline spec"):
        load_spec(tmp_path / "absent.yaml")


@pytest.mark.parametrize(("text", "fragment"), [
    ("name: [unclosed", "cannot read pipeline spec"),
    ("- just\n- a list\n", "must be a YAML mapping"),
])
def test_unparseable_or_non_mapping_spec(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=fragment):
        load_spec(path)


def test_bundled_pipelines_folder_is_the_default():
    assert DEFAULT_PIPELINES_DIR == ROOT / "include" / "pipelines"
    assert isinstance(resolve_spec_path("bikeshare", DEFAULT_PIPELINES_DIR), Path)
