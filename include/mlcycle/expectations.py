"""The Great Expectations suite of a pipeline: derived from the spec, kept in the repository.

``suite_from_spec`` turns the spec's column section into a GX 1.x suite (as its JSON dict);
``mlcycle suite --pipeline NAME --write`` saves it to the path the spec names, where it is
reviewed and versioned like code. The validate step runs the saved suite; a test keeps the saved
suite and the spec in step.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mlcycle.errors import SpecError
from mlcycle.spec import EVENT_TIME, Column, PipelineSpec

log = logging.getLogger(__name__)

#: pandas dtypes accepted for each spec type (checked by expect_column_values_to_be_in_type_list).
TYPE_LISTS = {
    "numeric": ["float64", "float32", "int64", "int32", "Float64", "Int64"],
    "integer": ["int64", "int32", "int16", "Int64", "Int32"],
    "string": ["object", "str", "string"],
    # A native timestamp (e.g. Parquet's); ingest stores an aware one in UTC without its zone.
    "timestamp": ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"],
}


def _expectation(kind: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": {}}


def _column_expectations(col: Column) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if col.type in TYPE_LISTS:
        items.append(_expectation("expect_column_values_to_be_in_type_list",
                                  column=col.name, type_list=TYPE_LISTS[col.type]))
    elif col.type == "categorical" and col.values:
        kinds = {"int" if isinstance(v, int) else "str" for v in col.values}
        type_list = TYPE_LISTS["integer"] if kinds == {"int"} else TYPE_LISTS["string"]
        items.append(_expectation("expect_column_values_to_be_in_type_list",
                                  column=col.name, type_list=type_list))
    not_null: dict[str, Any] = {"column": col.name}
    if col.max_null_share > 0:
        not_null["mostly"] = round(1.0 - col.max_null_share, 6)
    items.append(_expectation("expect_column_values_to_not_be_null", **not_null))
    if col.min is not None or col.max is not None:
        items.append(_expectation("expect_column_values_to_be_between", column=col.name,
                                  min_value=col.min, max_value=col.max))
    if col.values:
        items.append(_expectation("expect_column_values_to_be_in_set", column=col.name,
                                  value_set=list(col.values)))
    if col.min_std is not None:  # a day's spread may not collapse (a dead sensor reports a constant)
        items.append(_expectation("expect_column_stdev_to_be_between", column=col.name,
                                  min_value=col.min_std, strict_min=col.min_std == 0))
    if col.min_distinct is not None:
        items.append(_expectation("expect_column_unique_value_count_to_be_between", column=col.name,
                                  min_value=col.min_distinct))
    return items


def _key_expectations(spec: PipelineSpec) -> list[dict[str, Any]]:
    """The spec's ``key`` is unique: one column, or the columns together; no key, no check (event data)."""
    if not spec.key:
        return []
    if len(spec.key) == 1:
        return [_expectation("expect_column_values_to_be_unique", column=spec.key[0])]
    return [_expectation("expect_compound_columns_to_be_unique", column_list=list(spec.key))]


def suite_from_spec(spec: PipelineSpec) -> dict[str, Any]:
    expectations = [
        _expectation("expect_table_columns_to_match_set",
                     column_set=[*spec.column_names, EVENT_TIME], exact_match=True),
        _expectation("expect_table_row_count_to_be_between",
                     min_value=spec.min_rows_per_partition, max_value=spec.max_rows_per_partition),
        *_key_expectations(spec),
        _expectation("expect_column_values_to_not_be_null", column=EVENT_TIME),
    ]
    for col in spec.columns:
        expectations.extend(_column_expectations(col))
    return {
        "name": f"{spec.name}.partition",
        "expectations": expectations,
        "meta": {"generated_from": f"pipelines/{spec.path.name}",
                 "regenerate_with": f"mlcycle suite --pipeline {spec.name} --write"},
    }


def suite_drift(committed: dict[str, Any], generated: dict[str, Any]) -> list[str]:
    """How a committed suite differs from the one the spec generates, one line per expectation."""
    def keyed(suite: dict[str, Any]) -> dict[str, str]:
        return {json.dumps({"type": e["type"], "kwargs": e.get("kwargs", {})}, sort_keys=True): describe(e)
                for e in suite.get("expectations", [])}

    ours, theirs = keyed(generated), keyed(committed)
    return ([f"missing from the committed suite: {ours[k]}" for k in ours if k not in theirs]
            + [f"in the committed suite but not in the spec: {theirs[k]}" for k in theirs if k not in ours])


def load_suite(spec: PipelineSpec) -> dict[str, Any]:
    """The suite kept in the repository, or (for a new spec without one) the suite derived now.

    A committed suite must be exactly what the spec generates: a spec edited without regenerating its
    suite (or a suite edited by hand) would validate against rules nobody reviewed together.
    """
    if spec.suite_path.is_file():
        committed = json.loads(spec.suite_path.read_text())
        drift = suite_drift(committed, suite_from_spec(spec))
        if drift:
            listing = "\n  - ".join(drift)
            raise SpecError(f"the committed suite {spec.suite_path} does not match spec {spec.path} "
                            f"({len(drift)} difference(s)):\n  - {listing}\nRegenerate it and review the "
                            f"change: mlcycle suite --pipeline {spec.path} --write")
        return committed
    log.warning("no suite at %s: using the suite derived from the spec; keep it in the repository with "
                "`mlcycle suite --pipeline %s --write`", spec.suite_path, spec.name)
    return suite_from_spec(spec)


def write_suite(spec: PipelineSpec, target: Path | None = None) -> Path:
    path = target or spec.suite_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(suite_from_spec(spec), indent=2) + "\n")
    return path


def describe(config: dict[str, Any]) -> str:
    """One readable line for an expectation: its type and the arguments that matter."""
    kwargs = {k: v for k, v in config.get("kwargs", {}).items() if k != "batch_id"}
    column = kwargs.pop("column", None)
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    where = f" on `{column}`" if column else ""
    return f"{config['type']}{where}" + (f" ({args})" if args else "")
