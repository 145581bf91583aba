"""The spec schema (``mlcycle.spec_schema``): declared once, and every use of it held to the declaration.

- one typo per key the schema declares, generated from the schema itself, is a problem naming the
  key's path and the closest known key (a section whose check is dropped fails here);
- the defaults the schema declares are the ones the step package applies;
- the README's spec reference documents every key, and documents nothing the schema lacks;
- ``mlcycle spec-schema`` prints the JSON Schema, and the published copy is that output;
- every spec the project ships satisfies the declaration.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import re
import subprocess
import sys

import pytest
import yaml

from mlcycle import spec_schema
from mlcycle.errors import SpecError
from mlcycle.spec import (
    DROPPED_SHARE_DEFAULTS,
    DeploySpec,
    Integrity,
    ModelSpec,
    MonitoringSpec,
    Schedule,
    ScoringSpec,
    ServingSpec,
    parse_spec,
)
from tests.conftest import ROOT
from tests.unit.test_spec_rules import MINI, PATH

#: A name each ``<name>`` of a key path takes in MINI (a column, a search parameter).
NAMES = {"columns": "x", "space": "alpha", "history": "x_lag"}
SCHEMA_FILE = ROOT / "docs" / "pipeline-spec.schema.json"


def _typo(key: str) -> str:
    """A misspelling as people make them: the last letter doubled (``min`` -> ``minn``)."""
    return key + key[-1]


def _with_typo(path: str) -> tuple[dict, str, str]:
    """MINI with the key at ``path`` misspelt: the spec, the typo's path in the file, the typo."""
    raw = copy.deepcopy(MINI)
    *parents, key = path.split(".")
    node, where = raw, []
    for i, part in enumerate(parents):
        if part == "<name>":
            part = NAMES[parents[i - 1]]
        node = node.setdefault(part, {})
        where.append(part)
    typo = _typo(key)
    node[typo] = 1
    return raw, ".".join(where) or "spec", typo


def _problems(raw: dict) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(raw, PATH)
    return str(info.value)


KEY_PATHS = [p for p in spec_schema.key_paths() if p != "extends"]  # extends is read before parsing


@pytest.mark.parametrize("path", KEY_PATHS)
def test_a_typo_in_any_key_of_any_section_is_a_problem_naming_it(path):
    raw, where, typo = _with_typo(path)
    message = _problems(raw)
    key = path.rsplit(".", 1)[-1]
    assert f"\n  - {where}.{typo}: unknown key" in message, message
    if not path.startswith("source."):  # source keys are the kind's: a file source does not take `table`
        assert f"did you mean `{key}`?" in message, message


def test_the_typo_corpus_covers_every_section():
    sections = {p.split(".")[0] for p in KEY_PATHS}
    assert sections >= {
        "source",
        "timestamp",
        "columns",
        "validation",
        "window",
        "schedule",
        "model",
        "evaluation",
        "serving",
        "monitoring",
        "deploy",
        "scoring",
    }
    assert len(KEY_PATHS) > 100


def test_a_key_set_to_null_unsets_it_and_is_no_typo():
    raw = copy.deepcopy(MINI)
    raw["serving"] = {"tolerence": None}
    parse_spec(raw, PATH)


def test_a_source_key_of_another_kind_is_named_with_the_kind_s_keys():
    raw = copy.deepcopy(MINI)
    raw["source"]["table"] = "rides"
    raw["source"]["pth"] = "x.csv"
    message = _problems(raw)
    assert "source.table: unknown key (known: format, kind, path)" in message
    assert "source.pth: unknown key; did you mean `path`?" in message


def test_every_typo_of_a_section_is_reported_not_only_the_first():
    raw = copy.deepcopy(MINI)
    raw["serving"] = {"tolerence": 1, "max_row": 5, "unknown_categories": "accept"}
    raw["columns"]["x"]["mn"] = 0
    message = _problems(raw)
    for problem in (
        "serving.tolerence: unknown key",
        "serving.max_row: unknown key",
        "columns.x.mn: unknown key",
    ):
        assert f"\n  - {problem}" in message, message


def _defaults(model) -> dict:
    return {
        name: info.get_default(call_default_factory=True)
        for name, info in model.model_fields.items()
        if not info.is_required()
    }


@pytest.mark.parametrize(
    ("section", "dataclass_"),
    [
        (spec_schema.ServingSection, ServingSpec),
        (spec_schema.MonitoringSection, MonitoringSpec),
        (spec_schema.ScoringSection, ScoringSpec),
        (spec_schema.DeploySection, DeploySpec),
    ],
)
def test_the_schema_s_defaults_are_the_ones_the_steps_apply(section, dataclass_):
    declared = _defaults(section)
    applied = {f.name: getattr(dataclass_(), f.name) for f in dataclasses.fields(dataclass_)}
    for name, value in declared.items():
        expected = tuple(value) if isinstance(value, list) else value
        assert applied[name] == expected, (section.__name__, name)
    assert set(declared) == set(applied), section.__name__


def test_the_defaults_of_the_other_sections_too():
    spec = parse_spec(copy.deepcopy(MINI), PATH)
    search = _defaults(spec_schema.SearchSection)
    assert {k: getattr(spec.model, k) for k in search} == search
    assert spec.model.categorical_encoding == _defaults(spec_schema.ModelSection)["categorical_encoding"]
    assert {f.name for f in dataclasses.fields(ModelSpec)} >= set(search)
    evaluation = _defaults(spec_schema.EvaluationSection)
    assert (spec.evaluation.holdout_days, spec.evaluation.tolerance) == (
        evaluation["holdout_days"],
        evaluation["tolerance"],
    )
    window = _defaults(spec_schema.WindowSection)
    assert (spec.window_days, spec.min_training_rows, spec.data_end) == (
        window["days"],
        window["min_training_rows"],
        window["data_end"],
    )
    validation = _defaults(spec_schema.ValidationSection)
    assert (
        spec.min_rows_per_partition,
        spec.max_rows_per_partition,
        spec.integrity.max_restatement_shrink,
    ) == (
        validation["min_rows_per_partition"],
        validation["max_rows_per_partition"],
        validation["max_restatement_shrink"],
    )
    assert (
        validation["max_dropped_share"].model_dump()
        == DROPPED_SHARE_DEFAULTS
        == Integrity().max_dropped_share
    )
    schedule = _defaults(spec_schema.ScheduleSection)
    assert (spec.schedule.interval, spec.schedule.catchup) == (schedule["interval"], schedule["catchup"])
    assert Schedule().interval == schedule["interval"]
    column = _defaults(spec_schema.ColumnSection)
    x = spec.column("x")
    assert {k: getattr(x, k) for k in column if k != "values"} == {
        k: v for k, v in column.items() if k != "values"
    }


def _reference_rows() -> dict[str, str]:
    """The README's spec reference: key -> meaning. A key cell naming several keys (`` `a.b`, `c` ``)
    gives each its row, the later ones beside the first (``a.c``)."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Spec reference", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = line.split(" | ")
        if line.startswith("| `") and len(cells) >= 2:
            first, *others = re.findall(r"`([^`]+)`", cells[0])
            rows[first] = cells[1]
            parent = first.rsplit(".", 1)[0] + "." if "." in first else ""
            rows.update({parent + other: cells[1] for other in others})
    return rows


def _mentions(meaning: str, relative: str) -> bool:
    """Whether a row's meaning names a key given relative to the row (`` `days` ``, ``{low, high}``,
    `` `search.n_iter` ``, `` `search.space.<param>` ``)."""
    leaf = relative.rsplit(".", 1)[-1]
    return (
        re.search(rf"`{re.escape(relative)}[.`]", meaning) is not None
        or re.search(rf"[`{{,]\s*{re.escape(leaf)}\s*[,}}`:]", meaning) is not None
    )


def test_the_readme_spec_reference_documents_every_key_and_nothing_else():
    rows = _reference_rows()
    paths = spec_schema.key_paths()
    undocumented = []
    for path in paths:
        parts = path.split(".")
        if any(row.startswith(path + ".") for row in rows):
            continue  # a section whose keys have rows of their own
        row = next((p for p in (".".join(parts[:i]) for i in range(len(parts), 0, -1)) if p in rows), None)
        if row is None or (row != path and not _mentions(rows[row], ".".join(parts[len(row.split(".")) :]))):
            undocumented.append(path)
    assert not undocumented, f"keys the README's spec reference does not mention: {undocumented}"
    declared = set(paths) | {
        p.rsplit(".", 1)[0] for p in paths
    }  # and the mappings' entries (`columns.<name>`)
    unknown = [k for k in rows if k.replace("<param>", "<name>") not in declared]
    assert not unknown, f"keys in the README's spec reference that the schema does not declare: {unknown}"


def test_spec_schema_prints_the_json_schema_and_the_published_copy_is_it(tmp_path):
    out = tmp_path / "schema.json"
    proc = subprocess.run(
        [sys.executable, "-m", "mlcycle", "spec-schema", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    printed = subprocess.run(
        [sys.executable, "-m", "mlcycle", "spec-schema"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert printed.returncode == 0 and json.loads(printed.stdout) == json.loads(out.read_text())
    schema = json.loads(out.read_text())
    assert schema["additionalProperties"] is False and "columns" in schema["properties"]
    assert json.loads(SCHEMA_FILE.read_text()) == schema, (
        f"{SCHEMA_FILE} is out of date: mlcycle spec-schema --output {SCHEMA_FILE.relative_to(ROOT)}"
    )


SHIPPED = sorted((ROOT / "include" / "pipelines").glob("*.yaml")) + sorted((ROOT / ".ci").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_spec_satisfies_the_schema(path):
    raw = spec_schema.read_spec_file(path)
    assert spec_schema.unknown_key_problems(raw) == []
    spec_schema.PipelineSpecSchema.model_validate(raw)
    assert yaml.safe_load(path.read_text())  # and reads as YAML on its own


def test_dates_are_read_alike_by_both_sides():
    problems: list[str] = []
    assert spec_schema.parse_date("2011-03-01", "w", problems).isoformat() == "2011-03-01"
    assert spec_schema.parse_date("20110301", "window.data_start", problems) is None
    assert problems == ["window.data_start: an ISO date like 2011-01-01 (got '20110301')"]
    raw = copy.deepcopy(MINI)
    raw["window"]["data_start"] = "20110101"  # date.fromisoformat takes it; the DAG side never did
    assert "window.data_start: an ISO date like 2011-01-01 (got '20110101')" in _problems(raw)


# --- the shared readers, directly (both sides call them; tests/dags/test_specs.py runs the DAG side) --


def _schedule(raw: dict, window_days: int | None = 28) -> tuple[spec_schema.ScheduleFields, list[str]]:
    problems: list[str] = []
    start, end, days = spec_schema.window_bounds(raw, problems)
    return spec_schema.parse_schedule(raw, problems, start, end, window_days or days), problems


def test_the_schedule_defaults_to_the_first_day_with_a_full_window_and_the_data_end():
    fields, problems = _schedule({"window": {"data_start": "2011-01-01", "data_end": "2011-12-31"}})
    assert problems == [] and fields == ("@daily", "UTC", dt.date(2011, 1, 29), dt.date(2011, 12, 31), False)
    short, _ = _schedule({"window": {"data_start": "2011-01-01", "data_end": "2011-01-10"}})
    assert (short.start, short.end) == (dt.date(2011, 1, 10), dt.date(2011, 1, 10))  # its last day at least
    zoned, _ = _schedule({"window": {"data_start": "2011-01-01"}, "timestamp": {"timezone": "Europe/Paris"}})
    assert zoned.timezone == "Europe/Paris" and zoned.end is None


@pytest.mark.parametrize(
    ("schedule", "problem"),
    [
        (
            {"interval": "@hourly"},
            "schedule.interval: @daily or a cron that runs once a day, like '0 6 * * *' "
            "(partitions are daily; got '@hourly')",
        ),
        ({"interval": 5}, "schedule.interval: @daily or a cron that runs once a day"),
        ({"timezone": "Mars/Olympus"}, "schedule.timezone: an IANA time zone name like Europe/Paris (got "),
        ({"timezone": 3}, "schedule.timezone: an IANA time zone name like Europe/Paris (got 3)"),
        (
            {"start": "2010-12-31"},
            "schedule.start: 2010-12-31 is before window.data_start 2011-01-01: no data",
        ),
        (
            {"end": "2012-01-01"},
            "schedule.end: 2012-01-01 is after window.data_end 2011-12-31: no data to train on",
        ),
        ({"start": "2011-06-02", "end": "2011-06-01"}, "schedule: end 2011-06-01 is before start 2011-06-02"),
        ({"catchup": "yes"}, "schedule.catchup: true or false (got 'yes')"),
        ({"start": "June"}, "schedule.start: an ISO date like 2011-01-01 (got 'June')"),
    ],
)
def test_each_schedule_problem_names_its_key(schedule, problem):
    fields, problems = _schedule(
        {"window": {"data_start": "2011-01-01", "data_end": "2011-12-31"}, "schedule": schedule}
    )
    assert len(problems) == 1 and problems[0].startswith(problem), problems
    assert fields.interval == "@daily" and isinstance(fields.catchup, bool)


def test_the_schedule_at_its_bounds_is_no_problem():
    fields, problems = _schedule(
        {
            "window": {"data_start": "2011-01-01", "data_end": "2011-12-31"},
            "schedule": {
                "start": "2011-01-01",
                "end": "2011-12-31",
                "catchup": True,
                "interval": "30 6 * * *",
            },
        }
    )
    assert problems == [] and fields == (
        "30 6 * * *",
        "UTC",
        dt.date(2011, 1, 1),
        dt.date(2011, 12, 31),
        True,
    )
    same, problems = _schedule(
        {"window": {"data_start": "2011-01-01"}, "schedule": {"start": "2011-03-01", "end": "2011-03-01"}}
    )
    assert problems == [] and same.start == same.end


def test_a_schedule_that_is_not_a_mapping_is_one_problem():
    fields, problems = _schedule({"window": {"data_start": "2011-01-01"}, "schedule": "@daily"})
    assert problems == ["schedule: a mapping with interval, timezone, start, end, catchup (got '@daily')"]
    assert fields.start == dt.date(2011, 1, 29)


@pytest.mark.parametrize(
    ("expression", "daily"),
    [
        ("@daily", True),
        ("@midnight", True),
        ("0 6 * * *", True),
        ("59 23 * * *", True),
        ("60 6 * * *", False),
        ("0 24 * * *", False),
        ("0 6 * * 1", False),
        ("0 6 1 * *", False),
        ("*/5 6 * * *", False),
        ("000 6 * * *", False),
        ("0 6 * *", False),
        ("@hourly", False),
    ],
)
def test_a_daily_cron_fires_once_a_day(expression, daily):
    assert spec_schema.is_daily_cron(expression) is daily


@pytest.mark.parametrize(
    ("window", "expected", "problem"),
    [
        ({"data_start": "2011-01-01"}, (dt.date(2011, 1, 1), None, 28), None),
        ({"data_start": "2011-01-01", "days": 1}, (dt.date(2011, 1, 1), None, 1), None),
        (
            {"data_start": "2011-01-01", "days": 0},
            (dt.date(2011, 1, 1), None, 28),
            "window.days: a whole number",
        ),
        ({"data_start": "2011-01-01", "days": True}, (dt.date(2011, 1, 1), None, 28), "window.days: a whole"),
        ({"data_start": "2011-01-01", "days": "7"}, (dt.date(2011, 1, 1), None, 28), "window.days: a whole"),
        (
            {"data_start": dt.datetime(2011, 1, 1, 5), "data_end": dt.date(2011, 2, 1)},
            (dt.date(2011, 1, 1), dt.date(2011, 2, 1), 28),
            None,
        ),
    ],
)
def test_the_window_bounds(window, expected, problem):
    problems: list[str] = []
    assert spec_schema.window_bounds({"window": window}, problems) == expected
    assert problems == ([] if problem is None else [problems[0]]) and (
        problem is None or problem in problems[0]
    )


def test_reading_a_spec_file_resolves_extends_and_its_relative_paths(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "a.yaml").write_text(
        "name: a\nsource: {kind: file, path: data.csv}\nmodel: {family: ridge, x: 1}\n"
    )
    (tmp_path / "b.yaml").write_text("extends: base/a.yaml\nname: b\nmodel: {x: 2}\n")
    raw = spec_schema.read_spec_file(tmp_path / "b.yaml")
    assert raw == {
        "name": "b",
        "source": {"kind": "file", "path": str(base / "data.csv")},
        "model": {"family": "ridge", "x": 2},
    }


def test_merging_replaces_a_value_by_another_kind_of_value(tmp_path):
    base = {"model": {"family": "ridge", "search": {"n_iter": 2}}, "key": ["a"], "derive": None}
    over = {"model": {"search": None}, "key": {"b": 1}, "derive": {"d": "x + 1"}}
    assert spec_schema.deep_merge(base, over) == {
        "model": {"family": "ridge", "search": None},
        "key": {"b": 1},
        "derive": {"d": "x + 1"},
    }
    assert base["model"]["search"] == {"n_iter": 2}  # the base is not changed


def test_a_circle_names_the_first_spec_and_the_whole_chain(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(spec_schema.SpecFileError) as err:
        spec_schema.read_spec_file(tmp_path / "a.yaml")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    assert str(err.value) == f"pipeline spec {a}: `extends` goes round in a circle: {a} -> {b} -> {a}"


def test_extends_takes_an_absolute_path_too(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ntask: regression\n")
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "v.yaml").write_text(f"extends: {tmp_path / 'base.yaml'}\nname: v\n")
    assert spec_schema.read_spec_file(other / "v.yaml") == {"name": "v", "task": "regression"}


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"s.yaml": "extends: t.yaml\n", "t.yaml": "extends: s.yaml\n"}, "`extends` goes round in a circle"),
        ({"s.yaml": "extends: missing.yaml\n"}, "`extends: missing.yaml` names no file"),
        ({"s.yaml": "extends: [a]\n"}, "`extends` is the path of another spec (got ['a'])"),
        ({"s.yaml": "- a list\n"}, "must be a YAML mapping at the top level"),
        ({"s.yaml": "name: [unclosed\n"}, "cannot read pipeline spec"),
    ],
)
def test_a_spec_file_that_cannot_be_read_says_why(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(spec_schema.SpecFileError, match=re.escape(message)):
        spec_schema.read_spec_file(tmp_path / "s.yaml")


def test_key_paths_name_nested_and_mapped_keys():
    paths = spec_schema.key_paths()
    assert {
        "name",
        "columns.<name>.min",
        "model.search.space.<name>.low",
        "scoring.postgres.table",
        "validation.max_dropped_share.outside_source_bounds",
    } <= set(paths)
    assert len(paths) == len(set(paths))
    assert spec_schema.json_schema()["$schema"].endswith("2020-12/schema")


@pytest.mark.parametrize(
    ("window", "expected", "problem"),
    [
        (
            {"data_start": "soon"},
            (None, None, 28),
            "window.data_start: an ISO date like 2011-01-01 (got 'soon')",
        ),
        (
            {"data_start": "2011-01-01", "data_end": "later"},
            (dt.date(2011, 1, 1), None, 28),
            "window.data_end: an ISO date like 2011-01-01 (got 'later')",
        ),
        ("2011-01-01", (None, None, 28), None),  # not a mapping: the section's own check reports it
    ],
)
def test_bad_window_dates_are_named_by_their_key(window, expected, problem):
    problems: list[str] = []
    assert spec_schema.window_bounds({"window": window}, problems) == expected
    assert problems == ([] if problem is None else [problem])


def test_an_explicit_start_or_end_is_kept_as_given():
    window = {"data_start": "2011-01-01", "data_end": "2011-01-10"}
    # an explicit end keeps the default start at data_start + days (no clamp to the data's end)
    _, problems = _schedule({"window": window, "schedule": {"end": "2011-01-09"}})
    assert problems == ["schedule: end 2011-01-09 is before start 2011-01-29"]
    fields, problems = _schedule({"window": window, "schedule": {"start": "2011-01-05"}})
    assert problems == [] and (fields.start, fields.end) == (dt.date(2011, 1, 5), dt.date(2011, 1, 10))
    _, problems = _schedule({"window": window, "schedule": {"end": "soon"}})
    assert problems == ["schedule.end: an ISO date like 2011-01-01 (got 'soon')"]
    problems = []
    no_days = spec_schema.parse_schedule({"schedule": {}}, problems, dt.date(2011, 1, 1), None, None)
    assert no_days.start == dt.date(2011, 1, 29) and problems == []
    week = spec_schema.parse_schedule({"schedule": {}}, problems, dt.date(2011, 1, 1), None, 7)
    assert week.start == dt.date(2011, 1, 8) and problems == []


def test_an_unreadable_start_is_not_replaced_by_the_default():
    """A start that is not a date is its own problem; no default start stands in to make others."""
    window = {"data_start": "2011-01-01", "data_end": "2011-12-31"}
    fields, problems = _schedule({"window": window, "schedule": {"start": "June", "end": "2011-01-05"}})
    assert problems == ["schedule.start: an ISO date like 2011-01-01 (got 'June')"] and fields.start is None
