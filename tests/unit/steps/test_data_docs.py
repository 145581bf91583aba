"""validate renders Great Expectations' own Data Docs for every validation it runs.

A person opening a run's report reaches GX's pages (each expectation, its observed value, samples of
the unexpected values); machines keep ``failures.json``; the step's result and its failure payload
name the page to link from the Airflow "Report" button and the alert.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from mlcycle.errors import ValidationFailed
from mlcycle.spec import load_spec
from mlcycle.steps.ingest import ingest
from mlcycle.steps.validate import validate
from mlcycle.store import Store
from tests.datasets import EXPECTED_FAILURE, make_bad_bikeshare
from tests.unit.conftest import day_interval

BAD_DAY = dt.date(2011, 3, 15)


def _links(report: Path) -> list[Path]:
    """The Data Docs pages a report links to, resolved from the report's own folder."""
    return [
        (report.parent / href).resolve() for href in re.findall(r'href="([^"]+\.html)"', report.read_text())
    ]


def test_a_clean_window_has_a_data_docs_page_per_validation(clf_spec, settings):
    interval = day_interval(dt.date(2011, 3, 4))
    ingest(clf_spec, settings, interval, window_days=3)
    result = validate(clf_spec, settings, interval, window_days=3)
    store = Store(settings.store, clf_spec.name)
    docs = store.validation_docs()

    pages = sorted(docs.glob("validations/**/*.html"))
    names = {page.parent.parent.name for page in pages}
    # One validation of the three new partitions at once (row-level), one of each day (row counts).
    assert names == {"window_2011-03-02_2011-03-04", "2011-03-02", "2011-03-03", "2011-03-04"}, names
    assert result.data_docs is not None and Path(result.data_docs) in pages
    linked = _links(store.validation_report(dt.date(2011, 3, 5)))
    assert set(pages) <= set(linked) and all(page.is_file() for page in linked)
    window_page = next(page for page in pages if page.parent.parent.name.startswith("window_")).read_text()
    assert "values must belong to this set" in window_page and "Succeeded" in window_page  # GX's rendering
    assert (docs / "static").is_dir()  # GX's styles, once for the whole site

    # The site is the pipeline's: the next run adds its pages beside these.
    ingest(clf_spec, settings, day_interval(dt.date(2011, 3, 5)), window_days=1)
    validate(clf_spec, settings, day_interval(dt.date(2011, 3, 5)), window_days=1)
    assert set(pages) < set(docs.glob("validations/**/*.html"))


def test_a_rejected_partition_links_its_data_docs_page_from_every_output(tmp_path, settings):
    spec = load_spec(make_bad_bikeshare(tmp_path / "bad", BAD_DAY.isoformat(), "out_of_range"))
    interval = day_interval(BAD_DAY)
    ingest(spec, settings, interval, window_days=1, attempt="a1")
    with pytest.raises(ValidationFailed) as info:
        validate(spec, settings, interval, window_days=1, attempt="a1")

    page = Path(info.value.data_docs)
    assert page.is_file() and page.parent.parent.name == BAD_DAY.isoformat()
    text = page.read_text()
    column = EXPECTED_FAILURE["bikeshare"]["out_of_range"].split("`")[1]
    assert column in text and "unexpected" in text.lower()  # GX's own rendering of the failure

    store = Store(settings.store, spec.name)
    folder = store.quarantine_dir(BAD_DAY, "a1")
    assert json.loads((folder / "failures.json").read_text())["data_docs"] == [str(page)]
    assert page in _links(folder / "report.html")
    assert page in _links(store.validation_report(BAD_DAY + dt.timedelta(days=1)))
