"""train's work that does not grow with the window: plots on a bounded sample, a dataset's schema
from its first rows, while the dataset's digest and profile still describe all of it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlcycle.steps import train


def _frame(n: int) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(0)
    x = pd.DataFrame(
        {"zone": rng.choice(["a", "b", "c"], n), "distance": rng.random(n)}, index=pd.RangeIndex(100, 100 + n)
    )
    return x, pd.Series(rng.random(n), index=x.index, name="fare")


def test_the_plots_see_a_bounded_reproducible_sample_in_time_order():
    x, y = _frame(5_000)
    small_x, small_y = train._bounded(x, y, 10_000, seed=1)
    assert small_x is x and small_y is y  # nothing to bound
    a_x, a_y = train._bounded(x, y, 300, seed=1)
    b_x, _ = train._bounded(x, y, 300, seed=1)
    assert len(a_x) == 300 and a_x.index.equals(b_x.index) and a_x.index.is_monotonic_increasing
    assert a_y.index.equals(a_x.index) and a_x.index.isin(x.index).all()


def test_a_logged_dataset_infers_its_schema_from_its_first_rows_only(monkeypatch):
    x, y = _frame(50_000)
    frame = x.assign(fare=y)
    seen: list[int] = []
    from mlflow.types import utils

    real = utils._infer_schema
    monkeypatch.setattr(utils, "_infer_schema", lambda df: seen.append(len(df)) or real(df))
    dataset = train._dataset(frame, source="/store/train.parquet", name="t", targets="fare", digest="abc")
    assert str(dataset.schema) == str(real(frame))
    assert dataset.profile["num_rows"] == 50_000 and dataset.digest == "abc"
    assert seen == [train.SCHEMA_ROWS]
