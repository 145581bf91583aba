"""validate: run the pipeline's Great Expectations suite on each raw partition of the window.

Each raw partition is read once: its bytes are hashed, the suite judges a frame parsed from those
bytes, and exactly those bytes are published as a new version of the day (named by their hash)
whose pointer replaces the current one, so a re-ingest racing with validation can never publish
what was not judged. A day already validated with the same bytes is skipped. A partition that
fails is quarantined (the bytes judged, its failures as JSON and an HTML report), and the step
fails naming every failing expectation, so nothing downstream ever sees it. The message first says in
plain words which rows, columns and values of which day are bad (``mlcycle.findings``); a problem of
every day (a renamed column) is said once, and each failed expectation is listed once with its days.

Two more checks decide on the window: the rows ingest dropped (no timestamp, outside the source's
bounds) against ``validation.max_dropped_share``, and restatements, a new version of a day that
was validated before: logged and reported (rows before and after; added, removed and changed rows
when the spec has a ``validation.key``), and rejected when the day shrinks by more than
``validation.max_restatement_shrink``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pandas as pd

from mlcycle import findings
from mlcycle.errors import StepError, ValidationFailed
from mlcycle.expectations import describe, load_suite
from mlcycle.reports import validation_report
from mlcycle.settings import Settings
from mlcycle.spec import PipelineSpec
from mlcycle.steps._common import Interval, Result, data_window
from mlcycle.store import Store, ValidatedVersion, days, read_parquet, upload_tree, write_json, write_text
from mlcycle.storepath import is_remote

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidateResult(Result):
    pipeline: str
    suite: str
    validated: int
    skipped: int
    report: str
    data_docs: str | None
    restated: list[dict[str, Any]]
    dropped: dict[str, int]


@dataclass(frozen=True)
class _Batch:
    """One raw partition as read once: the bytes judged and published, and the frame parsed from them."""

    data: bytes
    sha256: str
    frame: pd.DataFrame


def _per_partition(expectation: dict[str, Any]) -> bool:
    """Expectations whose verdict on one day cannot be read off a batch of several days."""
    kind = expectation["type"]
    aggregates = ("expect_table_row_count_to_be_between", "expect_column_stdev_to_be_between",
                  "expect_column_unique_value_count_to_be_between")
    return kind in aggregates or (
        kind == "expect_column_values_to_not_be_null" and expectation["kwargs"].get("mostly", 1) < 1)


class SuiteRunner:
    """GX validation definitions of one run, reused for every partition, and their Data Docs.

    ``full`` is the whole suite, run on one partition. For a window of many new partitions the
    suite is also split: ``row_level`` (schema, types, ranges, sets, strict not-null, uniqueness of
    the timestamp, whose verdicts on the concatenation of same-schema daily partitions equal their
    verdicts on each day) runs once on the whole batch, and ``partition_level`` (row counts, not-null
    shares) runs on each day. GX's cost is mostly per expectation and per run, not per row, so the
    split turns a first run's 28 full validations into one plus 28 small ones.

    Every validation is named by what it judged (a partition's day, or ``window_<start>_<end>``) and
    rendered by GX into the pipeline's Data Docs site (``docs``), one page per validation, in the
    form GX users know: each expectation, the observed value, samples of unexpected values.
    """

    def __init__(self, suite: dict[str, Any], docs: Path | None = None):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig
        from great_expectations.execution_engine import pandas_execution_engine

        # GX names every in-memory batch by hashing the whole DataFrame (a third of validate's time
        # on millions of rows). Each partition is already named by the sha256 of its bytes (the
        # validated version's file name, failures.json): frames of any size skip GX's hash.
        pandas_execution_engine.HASH_THRESHOLD = 0
        self.context = gx.get_context(mode="ephemeral")
        # Progress bars are for notebooks; in a task log they are noise.
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.docs = docs
        # GX renders into a folder; a store in object storage gets the rendered pages uploaded.
        self._render_dir = tempfile.mkdtemp(prefix="mlcycle-data-docs-") if is_remote(docs) else None
        if docs is not None:
            self.context.add_data_docs_site(DATA_DOCS_SITE, {
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                  "base_directory": self._render_dir or str(docs)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            })
        self.run_time = dt.datetime.now(dt.UTC)
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

    def run(self, frame: pd.DataFrame, part: str = "full", name: str = "frame") -> list[dict[str, Any]]:
        from great_expectations.core.run_identifier import RunIdentifier

        if part == "partition_level" and not self.definitions[part].suite.expectations:
            return []
        result = self.definitions[part].run(batch_parameters={"dataframe": frame}, result_format="SUMMARY",
                                            run_id=RunIdentifier(run_name=name, run_time=self.run_time))
        return [_summarise(item) for item in result.results]

    def run_window(self, frames: dict[dt.date, pd.DataFrame]) -> dict[dt.date, list[dict[str, Any]]]:
        """Each partition's results; the split suite when all partitions share one schema and pass it."""
        schemas = {tuple(zip(f.columns, map(str, f.dtypes), strict=True)) for f in frames.values()}
        if len(frames) > 1 and len(schemas) == 1:
            window = window_run_name(frames)
            row_level = self.run(pd.concat(frames.values(), ignore_index=True), "row_level", window)
            if all(r["success"] for r in row_level):
                shared = [{**r, "observed": f"{r['observed']} (on the window's {len(frames)} new partitions)"}
                          for r in row_level]
                return {day: self.run(frame, "partition_level", day.isoformat()) + shared
                        for day, frame in frames.items()}
            log.info("the window batch failed a row-level expectation: validating each partition on its own")
        return {day: self.run(frame, "full", day.isoformat()) for day, frame in frames.items()}

    def build_docs(self) -> dict[str, list[Path]]:
        """Render this run's validations into the Data Docs site: the pages of each validation name.

        The site is the pipeline's, shared by every run (its static assets once, a page per
        validation); the run's own summary (``report.html``) is its index. A failure to render is
        logged, never a reason to fail a validation that GX has already judged.
        """
        if self.docs is None:
            return {}
        keys = list(self.context.validation_results_store.list_keys())
        try:
            self.context.build_data_docs(site_names=[DATA_DOCS_SITE], resource_identifiers=keys, build_index=False)
        except Exception as exc:  # noqa: BLE001 - GX renders many types; the verdict stands without the pages
            log.warning("the Data Docs pages could not be rendered into %s: %s", self.docs, exc)
            return {}
        pages: dict[str, list[Path]] = {}
        for key in keys:
            urls = self.context.get_docs_sites_urls(resource_identifier=key, site_name=DATA_DOCS_SITE)
            page = Path(url2pathname(urlsplit(urls[0]["site_url"]).path)) if urls else None
            if page is not None and page.is_file():
                pages.setdefault(str(key.run_id.run_name), []).append(page)
            else:
                log.warning("no Data Docs page for the validation %s (%s)", key.run_id.run_name, urls)
        if self._render_dir is not None:
            render = Path(self._render_dir)
            upload_tree(render, self.docs, keep_existing=True)
            pages = {name: [self.docs / page.relative_to(render).as_posix() for page in found]
                     for name, found in pages.items()}
            shutil.rmtree(render, ignore_errors=True)
        log.info("Data Docs: %d page(s) under %s", sum(map(len, pages.values())), self.docs)
        return pages


#: The name of the pipeline's Data Docs site in the GX context.
DATA_DOCS_SITE = "mlcycle"


def window_run_name(frames: dict[dt.date, Any]) -> str:
    """The name of a validation of several partitions at once: its first and last day."""
    return f"window_{min(frames).isoformat()}_{max(frames).isoformat()}"


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


#: Longest observed value quoted in a step's message (failures.json keeps it whole).
_OBSERVED_CHARS = 300


def _expectation_lines(failed: list[dict[str, Any]], window: list[dt.date]) -> list[str]:
    """Each failed expectation once, with the days it failed on: a window-wide failure is one line, not 28."""
    days: dict[str, list[tuple[dt.date, str]]] = {}
    for entry in failed:
        for r in entry["results"]:
            if not r["success"]:
                days.setdefault(r["expectation"], []).append((dt.date.fromisoformat(entry["partition"]), r["observed"]))
    lines = []
    for expectation, seen in days.items():
        first_day, observed = seen[0]
        if len(observed) > _OBSERVED_CHARS:
            observed = observed[:_OBSERVED_CHARS] + "... (whole in failures.json)"
        if len({o for _, o in seen}) > 1:
            observed += f" (on {first_day}; the other days' in failures.json)"
        where = first_day.isoformat() if len(seen) == 1 else findings.days_named([d for d, _ in seen], window)
        lines.append(f"  {where}: {expectation}: {observed}")
    return lines


def _dropped_rows(spec: PipelineSpec, store: Store, start: dt.date, end: dt.date
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What ingest dropped for this window (from its record), and a failure per reason over its share."""
    path = store.ingest_record(end)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        log.warning("no ingest record at %s: the rows ingest dropped for this window are unknown", path)
        return {"record": "none (run ingest for this window)"}, []
    if (record.get("window_start"), record.get("window_end")) != (start.isoformat(), end.isoformat()):
        log.warning("the ingest record %s is of the window %s to %s, not %s to %s: its dropped rows are not "
                    "checked", path, record.get("window_start"), record.get("window_end"), start, end)
        return {"record": f"{path} (another window)"}, []
    read = int(record.get("source_rows_read") or 0)
    failures = []
    for reason, count in sorted(record.get("dropped", {}).items()):
        share, allowed = (count / read if read else 0.0), spec.integrity.max_dropped_share.get(reason, 0.0)
        if count and share > allowed:
            examples = record.get("dropped_examples", {}).get(reason, [])
            failures.append({
                "success": False,
                "expectation": f"rows dropped by ingest as {reason}: at most {allowed:.2%} of the source rows "
                               f"(validation.max_dropped_share.{reason})",
                "observed": f"{count} of {read} source rows ({share:.2%})"
                            + (f", e.g. {'; '.join(examples)}" if examples else ""),
            })
    removed = {f"removed by {rule}": n for rule, n in record.get("filtered", {}).items()}  # on purpose: counted
    return {"source rows read": read, **{f"dropped: {k}": v for k, v in record.get("dropped", {}).items()},
            **removed}, failures


def _restatement(spec: PipelineSpec, old: ValidatedVersion, new: pd.DataFrame) -> dict[str, Any]:
    """How a new version of a day differs from the current one: rows, and by key what changed."""
    before = read_parquet(old.path)
    change: dict[str, Any] = {"partition": old.day.isoformat(), "rows_before": len(before), "rows_after": len(new),
                              "previous_sha256": old.sha256}
    key = list(spec.integrity.key)
    if not key or not set(key) <= set(before.columns) & set(new.columns) \
            or before.duplicated(key).any() or new.duplicated(key).any():
        return change
    old_i, new_i = before.set_index(key), new.set_index(key)
    common = old_i.index.intersection(new_i.index)
    a, b = old_i.loc[common], new_i.loc[common]
    changed = pd.Series(False, index=common)
    for column in old_i.columns.union(new_i.columns):
        if column not in a or column not in b:
            changed[:] = True
            continue
        left, right = a[column], b[column]
        changed |= (left != right) & ~(left.isna() & right.isna())
    change.update(added=len(new_i.index.difference(old_i.index)), removed=len(old_i.index.difference(new_i.index)),
                  changed=int(changed.sum()))
    return change


def _publish(spec: PipelineSpec, store: Store, day: dt.date, batch: _Batch
             ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Publish a passing batch as the day's current version; return (restatement, failure).

    The restatement is judged against the version current at the moment of publishing: when a
    concurrent run publishes the day first, the judgement runs again against its version.
    """
    outcome: dict[str, Any] = {}

    def accept(current: ValidatedVersion | None) -> bool:
        outcome.clear()
        change = _restatement(spec, current, batch.frame) if current is not None else None
        outcome["change"] = change
        if change is None:
            return True
        shrink = 1 - change["rows_after"] / change["rows_before"] if change["rows_before"] else 0.0
        allowed = spec.integrity.max_restatement_shrink
        if shrink > allowed:
            outcome["failure"] = {
                "success": False,
                "expectation": f"a restatement shrinks the day by at most {allowed:.0%} "
                               f"(validation.max_restatement_shrink)",
                "observed": f"{change['rows_before']} rows validated before, {change['rows_after']} "
                            f"now ({shrink:.0%} fewer); the validated version is kept"}
            return False
        return True

    published = store.publish_validated(day, batch.data, batch.sha256, len(batch.frame), accept)
    if published is None and "failure" not in outcome:
        return None, None  # a concurrent run published these very bytes
    change = outcome.get("change")
    if published is not None and change is not None:
        log.warning("restatement of %s: %s", day, ", ".join(f"{k} {v}" for k, v in change.items()
                                                         if k not in ("partition", "previous_sha256")))
    return change, outcome.get("failure")


def _read_pending(store: Store, window: list[dt.date]) -> tuple[dict[dt.date, _Batch], int]:
    """The window's raw partitions that are not the current validated version, each read once."""
    pending: dict[dt.date, _Batch] = {}
    skipped = 0
    for day in window:
        raw = store.raw(day)
        try:
            data = raw.read_bytes()
        except FileNotFoundError:
            raise StepError(f"no raw partition for {day} at {raw}: run the ingest step for this window first") from None
        sha = hashlib.sha256(data).hexdigest()
        current = store.current_validated(day)
        if current is not None and current.sha256 == sha:
            skipped += 1
            continue
        pending[day] = _Batch(data=data, sha256=sha, frame=pd.read_parquet(io.BytesIO(data)))
    return pending, skipped


def _reject_window(spec: PipelineSpec, store: Store, interval: Interval, attempt: str, report_path, summary,
                   failures: list[dict[str, Any]]) -> ValidationFailed:
    """The whole window fails (too many dropped rows): nothing is published."""
    entry = {"partition": f"window {summary['window']}", "success": False, "results": failures}
    write_text(validation_report(f"Validation of {spec.name}: window rejected", summary, [entry]), report_path)
    folder = store.quarantine(interval.start, attempt)
    write_json({"pipeline": spec.name, "window": summary["window"], "failures": failures}, folder / "failures.json")
    write_text(validation_report(f"{spec.name}: window rejected", {"quarantined to": str(folder)}, [entry]),
               folder / "report.html")
    lines = "\n".join(f"  {f['expectation']}: {f['observed']}" for f in failures)
    return ValidationFailed(f"the window {summary['window']} of {spec.name} is rejected, nothing was published:\n"
                            f"{lines}\nFix the source (or raise the share in the spec). Report: {report_path}",
                            failures=failures, report=str(report_path))


def validate(spec: PipelineSpec, settings: Settings, interval: Interval, window_days: int | None = None,
             attempt: str = "manual") -> ValidateResult:
    """Validate every raw partition of the window; publish the good ones, quarantine the bad."""
    start, end = data_window(spec, interval, window_days)
    store = Store(settings.store, spec.name)
    store.remove_stale_temporaries()
    suite = load_suite(spec)
    window = days(start, end)
    report_path = store.validation_report(end)
    dropped, drop_failures = _dropped_rows(spec, store, start, end)
    summary = {"pipeline": spec.name, "suite": suite["name"], "window": f"{start} to {end} (end excluded)",
               "airflow run": f"{settings.dag_id} / {settings.run_id}", **dropped}
    if drop_failures:
        raise _reject_window(spec, store, interval, attempt, report_path, summary, drop_failures)
    pending, skipped = _read_pending(store, window)
    checked: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    restated: list[dict[str, Any]] = []
    if pending:
        log.info("validating %d new partition(s) of %d in the window (%d already validated)",
                 len(pending), len(window), skipped)
        # Data Docs by default; MLCYCLE_DATA_DOCS=off skips the pages (failures.json and the summary stay).
        docs = None if os.environ.get("MLCYCLE_DATA_DOCS", "on").lower() in ("off", "0", "false") \
            else store.validation_docs()
        runner = SuiteRunner(suite, docs)
        frames = {day: batch.frame for day, batch in pending.items()}
        outcome = runner.run_window(frames)
        pages = runner.build_docs()
        for day, results in outcome.items():
            ok = all(r["success"] for r in results)
            if ok:
                change, refusal = _publish(spec, store, day, pending[day])
                restated.extend([change] if change else [])
                if refusal:
                    results, ok = [*results, refusal], False
            entry = {"partition": day.isoformat(), "success": ok, "rows": len(pending[day].frame), "results": results,
                     "data_docs": [*pages.get(day.isoformat(), []), *pages.get(window_run_name(frames), [])]}
            checked.append(entry)
            if not ok:
                # The suite judged; this says in plain words what is wrong with the day's own rows.
                entry["problems"] = findings.read_day(spec, day, pending[day].frame)
                entry["note"] = "In plain words: " + "; ".join(f.text for f in entry["problems"]) \
                    if entry["problems"] else None
                failed.append(entry)

    summary.update({"partitions checked": len(checked), "already validated": skipped, "failed": len(failed),
                    "restated days": ", ".join(f"{c['partition']} ({c['rows_before']} -> {c['rows_after']} rows)"
                                               for c in restated) or "none"})
    write_text(validation_report(f"Validation of {spec.name}, window ending {end}", summary,
                                 failed + [c for c in checked if c["success"]], report_path.parent), report_path)

    if failed:
        for entry in failed:
            day = dt.date.fromisoformat(entry["partition"])
            folder = store.quarantine(day, attempt, pending[day].data)
            bad = [r for r in entry["results"] if not r["success"]]
            write_json({"pipeline": spec.name, "partition": entry["partition"], "rows": entry["rows"],
                        "sha256": pending[day].sha256, "problems": [f.to_dict() for f in entry["problems"]],
                        "failures": bad, "data_docs": [str(page) for page in entry["data_docs"]]},
                       folder / "failures.json")
            write_text(validation_report(f"{spec.name}: partition {entry['partition']} rejected",
                                         {"quarantined to": str(folder)}, [entry], folder), folder / "report.html")
        plain = findings.summarise({dt.date.fromisoformat(e["partition"]): e["problems"] for e in failed}, window)
        lines = _expectation_lines(failed, window)
        log.error("validation failed; report: %s", report_path)
        raise ValidationFailed(
            f"{len(failed)} partition(s) of {spec.name} failed the suite `{suite['name']}` and were "
            f"quarantined under {store.base / 'quarantine'}:\n"
            + ("".join(f"  {line}\n" for line in plain) + "The suite's failed expectations:\n" if plain else "")
            + "\n".join(lines) + f"\nReport: {report_path}",
            failures=[{"partition": e["partition"], **r} for e in failed for r in e["results"] if not r["success"]],
            report=str(report_path), data_docs=next((str(p) for e in failed for p in e["data_docs"]), None),
        )
    log.info("validated %d partition(s), %d already validated, %d restated; report: %s", len(checked), skipped,
             len(restated), report_path)
    return ValidateResult(pipeline=spec.name, suite=suite["name"], validated=len(checked), skipped=skipped,
                          report=str(report_path), restated=restated,
                          data_docs=next((str(p) for c in checked for p in c["data_docs"]), None),
                          dropped={k.removeprefix("dropped: "): v for k, v in dropped.items()
                                   if k.startswith("dropped: ")})
