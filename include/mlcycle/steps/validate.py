"""validate: run the pipeline's Great Expectations suite on each raw partition of the window.

A partition that passes is published, byte for byte, to the validated store; one that is already
validated with the same bytes is skipped. A partition that fails is moved to quarantine with its
failures (JSON) and an HTML report, and the step fails naming every failing expectation, so
nothing downstream (features, training, the registry) ever sees it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mlcycle.errors import StepError, ValidationFailed
from mlcycle.expectations import describe, load_suite
from mlcycle.reports import validation_report
from mlcycle.settings import Settings
from mlcycle.spec import PipelineSpec
from mlcycle.steps._common import Interval, Result, training_window
from mlcycle.store import Store, days, file_sha256, write_json, write_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidateResult(Result):
    pipeline: str
    suite: str
    validated: int
    skipped: int
    report: str


def _per_partition(expectation: dict[str, Any]) -> bool:
    """Expectations whose verdict on one day cannot be read off a batch of several days."""
    kind = expectation["type"]
    aggregates = ("expect_table_row_count_to_be_between", "expect_column_stdev_to_be_between",
                  "expect_column_unique_value_count_to_be_between")
    return kind in aggregates or (
        kind == "expect_column_values_to_not_be_null" and expectation["kwargs"].get("mostly", 1) < 1)


class SuiteRunner:
    """GX validation definitions of one run, reused for every partition.

    ``full`` is the whole suite, run on one partition. For a window of many new partitions the
    suite is also split: ``row_level`` (schema, types, ranges, sets, strict not-null, uniqueness of
    the timestamp, whose verdicts on the concatenation of same-schema daily partitions equal their
    verdicts on each day) runs once on the whole batch, and ``partition_level`` (row counts, not-null
    shares) runs on each day. GX's cost is mostly per expectation and per run, not per row, so the
    split turns a first run's 28 full validations into one plus 28 small ones.
    """

    def __init__(self, suite: dict[str, Any]):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.context = gx.get_context(mode="ephemeral")
        # Progress bars are for notebooks; in a task log they are noise.
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        batch = (self.context.data_sources.add_pandas("partitions")
                 .add_dataframe_asset("partition").add_batch_definition_whole_dataframe("whole"))
        parts = {
            "full": suite["expectations"],
            "row_level": [e for e in suite["expectations"] if not _per_partition(e)],
            "partition_level": [e for e in suite["expectations"] if _per_partition(e)],
        }
        self.definitions = {}
        for key, expectations in parts.items():
            gx_suite = self.context.suites.add(gx.ExpectationSuite(name=f"{suite['name']}.{key}",
                                                                    expectations=expectations))
            self.definitions[key] = self.context.validation_definitions.add(
                gx.ValidationDefinition(name=key, data=batch, suite=gx_suite))

    def run(self, frame: pd.DataFrame, part: str = "full") -> list[dict[str, Any]]:
        if part == "partition_level" and not self.definitions[part].suite.expectations:
            return []
        result = self.definitions[part].run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        return [_summarise(item) for item in result.results]

    def run_window(self, frames: dict[dt.date, pd.DataFrame]) -> dict[dt.date, list[dict[str, Any]]]:
        """Each partition's results; the split suite when all partitions share one schema and pass it."""
        schemas = {tuple(zip(f.columns, map(str, f.dtypes), strict=True)) for f in frames.values()}
        if len(frames) > 1 and len(schemas) == 1:
            row_level = self.run(pd.concat(frames.values(), ignore_index=True), "row_level")
            if all(r["success"] for r in row_level):
                shared = [{**r, "observed": f"{r['observed']} (on the window's {len(frames)} new partitions)"}
                          for r in row_level]
                return {day: self.run(frame, "partition_level") + shared for day, frame in frames.items()}
            log.info("the window batch failed a row-level expectation: validating each partition on its own")
        return {day: self.run(frame) for day, frame in frames.items()}


def _summarise(item: Any) -> dict[str, Any]:
    config = item.expectation_config.to_json_dict()
    res = item.result or {}
    info = item.exception_info or {}
    errors = [v.get("exception_message") for v in info.values() if isinstance(v, dict)] or \
        [info.get("exception_message")]
    errors = [e for e in errors if e]
    if errors:
        observed = f"error: {errors[0]}"
    elif "observed_value" in res:
        observed = f"observed {res['observed_value']!r}"
    elif "unexpected_count" in res:
        sample = res.get("partial_unexpected_list", [])[:5]
        observed = (f"{res['unexpected_count']} of {res.get('element_count')} rows unexpected "
                    f"({res.get('unexpected_percent') or 0:.1f}%)" + (f", e.g. {sample!r}" if sample else ""))
    else:
        observed = ""
    return {"success": bool(item.success), "expectation": describe(config), "observed": observed}


def validate(spec: PipelineSpec, settings: Settings, interval: Interval, window_days: int | None = None,
             attempt: str = "manual") -> ValidateResult:
    """Validate every raw partition of the window; publish the good ones, quarantine the bad."""
    start, end = training_window(spec, interval, window_days)
    store = Store(settings.store, spec.name)
    suite = load_suite(spec)
    checked: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    skipped = 0
    window = days(start, end)
    pending: dict[dt.date, pd.DataFrame] = {}
    for day in window:
        raw, published = store.raw(day), store.validated(day)
        if not raw.exists():
            raise StepError(f"no raw partition for {day} at {raw}: run the ingest step for this window first")
        if published.exists() and file_sha256(published) == file_sha256(raw):
            skipped += 1
            continue
        pending[day] = pd.read_parquet(raw)
    if pending:
        log.info("validating %d new partition(s) of %d in the window (%d already validated)",
                 len(pending), len(window), skipped)
        outcome = SuiteRunner(suite).run_window(pending)
        for day, results in outcome.items():
            ok = all(r["success"] for r in results)
            entry = {"partition": day.isoformat(), "success": ok, "rows": len(pending[day]), "results": results}
            checked.append(entry)
            if ok:
                store.publish(day)
            else:
                failed.append(entry)

    report_path = store.validation_report(end)
    summary = {"pipeline": spec.name, "suite": suite["name"], "window": f"{start} to {end} (end excluded)",
               "partitions checked": len(checked), "already validated": skipped, "failed": len(failed),
               "airflow run": f"{settings.dag_id} / {settings.run_id}"}
    write_text(validation_report(f"Validation of {spec.name}, window ending {end}", summary,
                                 failed + [c for c in checked if c["success"]]), report_path)

    if failed:
        lines = []
        for entry in failed:
            folder = store.quarantine(dt.date.fromisoformat(entry["partition"]), attempt)
            bad = [r for r in entry["results"] if not r["success"]]
            write_json({"pipeline": spec.name, "partition": entry["partition"], "rows": entry["rows"],
                        "failures": bad}, folder / "failures.json")
            write_text(validation_report(f"{spec.name}: partition {entry['partition']} rejected",
                                         {"quarantined to": str(folder)}, [entry]), folder / "report.html")
            lines.extend(f"  {entry['partition']}: {r['expectation']}: {r['observed']}" for r in bad)
        log.error("validation failed; report: %s", report_path)
        raise ValidationFailed(
            f"{len(failed)} partition(s) of {spec.name} failed the suite `{suite['name']}` and were "
            f"quarantined under {store.base / 'quarantine'}:\n" + "\n".join(lines) + f"\nReport: {report_path}",
            failures=[{"partition": e["partition"], **r} for e in failed for r in e["results"] if not r["success"]],
            report=str(report_path),
        )
    log.info("validated %d partition(s), %d already validated; report: %s", len(checked), skipped, report_path)
    return ValidateResult(pipeline=spec.name, suite=suite["name"], validated=len(checked), skipped=skipped,
                          report=str(report_path))
