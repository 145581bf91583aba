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


class SuiteRunner:
    """One ephemeral GX context and validation definition, reused for every partition of a run."""

    def __init__(self, suite: dict[str, Any]):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.context = gx.get_context(mode="ephemeral")
        # Progress bars are for notebooks; in a task log they are noise.
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        batch = (self.context.data_sources.add_pandas("partitions")
                 .add_dataframe_asset("partition").add_batch_definition_whole_dataframe("whole"))
        gx_suite = self.context.suites.add(gx.ExpectationSuite(name=suite["name"],
                                                                expectations=suite["expectations"]))
        self.definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name="partition", data=batch, suite=gx_suite))

    def run(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        result = self.definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        return [_summarise(item) for item in result.results]


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
                    f"({res.get('unexpected_percent') or 0:.1f}%), e.g. {sample!r}")
    else:
        observed = ""
    return {"success": bool(item.success), "expectation": describe(config), "observed": observed}


def validate(spec: PipelineSpec, settings: Settings, interval: Interval, window_days: int | None = None,
             attempt: str = "manual") -> ValidateResult:
    """Validate every raw partition of the window; publish the good ones, quarantine the bad."""
    start, end = training_window(spec, interval, window_days)
    store = Store(settings.store, spec.name)
    suite = load_suite(spec)
    runner: SuiteRunner | None = None
    checked: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    skipped = 0
    window = days(start, end)
    for i, day in enumerate(window, start=1):
        raw, published = store.raw(day), store.validated(day)
        if not raw.exists():
            raise StepError(f"no raw partition for {day} at {raw}: run the ingest step for this window first")
        if published.exists() and file_sha256(published) == file_sha256(raw):
            skipped += 1
            continue
        runner = runner or SuiteRunner(suite)
        frame = pd.read_parquet(raw)
        results = runner.run(frame)
        ok = all(r["success"] for r in results)
        entry = {"partition": day.isoformat(), "success": ok, "rows": len(frame), "results": results}
        checked.append(entry)
        if ok:
            store.publish(day)
        else:
            failed.append(entry)
        if i % 7 == 0:
            log.info("validation progress: %d/%d partitions (%d failed so far)", i, len(window), len(failed))

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
