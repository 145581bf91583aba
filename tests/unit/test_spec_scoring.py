"""The spec's `scoring:` section and `monitoring.source`, and the DAG side's reading of it."""

from __future__ import annotations

import pytest

from mlcycle.errors import SpecError
from mlcycle.spec import ScoringPostgres, load_spec
from tests.datasets import BIKESHARE_SPEC, write_spec_variant


def _load(tmp_path, **overrides):
    return load_spec(write_spec_variant(BIKESHARE_SPEC, tmp_path / "bikeshare.yaml", **overrides))


def test_the_bundled_spec_scores_with_the_defaults(tmp_path):
    spec = load_spec(BIKESHARE_SPEC)
    assert spec.scoring is not None and spec.scoring.alias is None and spec.scoring.postgres is None
    assert spec.scoring.batch_rows == 200_000 and spec.monitoring.source == "auto"


def test_a_postgres_table_and_an_alias(tmp_path):
    spec = _load(
        tmp_path,
        scoring={"alias": "production", "postgres": {"conn_id": "pg", "table": "ml.scores"}},
        monitoring={"source": "scoring"},
    )
    assert spec.scoring.alias == "production"
    assert spec.scoring.postgres == ScoringPostgres(conn_id="pg", table="ml.scores")
    assert spec.monitoring.source == "scoring"


def test_no_section_no_scoring(tmp_path):
    assert _load(tmp_path, scoring=None).scoring is None


@pytest.mark.parametrize(
    ("scoring", "monitoring", "problem"),
    [
        ({"batch_row": 10}, {}, "scoring.batch_row: unknown key; did you mean `batch_rows`?"),
        ({"batch_rows": 0}, {}, "scoring.batch_rows: at least 1"),
        (
            {"postgres": {"conn_id": "pg", "table": "drop table x;"}},
            {},
            "scoring.postgres.table: a table name",
        ),
        ({"postgres": {"table": "t"}}, {}, "scoring.postgres.conn_id: required"),
        ({}, {"source": "serving"}, "monitoring.source: auto or scoring"),
        (None, {"source": "scoring"}, "monitoring.source: scoring needs a `scoring:` section"),
    ],
)
def test_problems_are_named(tmp_path, scoring, monitoring, problem):
    with pytest.raises(SpecError) as caught:
        _load(tmp_path, scoring=scoring, monitoring=monitoring)
    assert problem in str(caught.value)
