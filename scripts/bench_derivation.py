"""The server's derivation of source rows (mlcycle.serving.derivation): microseconds a row.

Builds the generated flight events (local New York time across the daylight-saving change of
2023-03-12, ``dow``/``hour`` derived from the timestamp, a ``cancelled == 0`` filter) and the bundled
bikeshare rows (no rules: the derivation is skipped), fits a small model for each and saves its folder
as training does, then times in this process, against the goal of 20 us a row:

- one row at a time (``RowValidator.derive([row], single=True)``, the ``/predict`` path), each row's
  timestamp read for the first time (the clock's cache emptied before each call) and read again (every
  timestamp already in the cache);
- batches of the first 1,000 rows, the time of a batch divided by its rows, timestamps read for the
  first time.

The rows are validated once beforehand, as the server validates them before deriving; the figures
are the median and the 90th percentile of the wall-clock time, and the median of the thread's CPU
time (what a busy machine's preemptions do not inflate). The machine's load average is printed with
them: on a busy machine the wall-clock figures are upper bounds::

    .venv-steps/bin/python scripts/bench_derivation.py [--rows 2000] [--batches 30]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "include"), str(ROOT)]

GOAL_US = 20.0
BATCH = 1000


def _plain(records: list[dict]) -> list[dict]:
    """CSV rows as a JSON client sends them: NaN is null, numpy scalars are plain numbers."""
    return [
        {
            k: (None if isinstance(v, float) and math.isnan(v) else (v.item() if hasattr(v, "item") else v))
            for k, v in r.items()
        }
        for r in records
    ]


def _figures(wall_ns: list[float], cpu_ns: list[float]) -> tuple[float, float, float]:
    """Median and p90 of the wall-clock us, and the median of the thread's CPU us (which a busy
    machine's preemptions do not inflate)."""
    ordered = sorted(wall_ns)
    return (
        statistics.median(ordered) / 1000,
        ordered[int(0.9 * (len(ordered) - 1))] / 1000,
        statistics.median(cpu_ns) / 1000,
    )


def _timed(fn, arg) -> tuple[int, int]:
    cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
    fn(arg)
    return time.perf_counter_ns() - wall, time.thread_time_ns() - cpu


def _one_row(rows, validated: list[dict], fresh: bool) -> tuple[float, float, float]:
    """The figures of one-row calls; ``fresh`` empties the clock's cache before each one."""
    clock = rows.derivation.clock if rows.derivation is not None else None
    for row in validated[:200]:  # warm: plans built, code paths loaded
        rows.derive([dict(row)], single=True)
    if clock is not None and not fresh:
        for row in validated:
            rows.derive([dict(row)], single=True)
    wall, cpu = [], []
    one = lambda row: rows.derive([row], single=True)  # noqa: E731
    for row in validated:
        row = dict(row)
        if fresh and clock is not None:
            clock._cache.clear()
        w, c = _timed(one, row)
        wall.append(w)
        cpu.append(c)
    return _figures(wall, cpu)


def _batches(rows, validated: list[dict], batches: int) -> tuple[float, float, float]:
    """The figures a row of 1,000-row calls (the first 1,000 rows), timestamps read for the first time."""
    clock = rows.derivation.clock if rows.derivation is not None else None
    chunk = validated[:BATCH]
    rows.derive([dict(r) for r in chunk])  # warm
    wall, cpu = [], []
    for _ in range(batches):
        batch = [dict(r) for r in chunk]
        if clock is not None:
            clock._cache.clear()
        w, c = _timed(rows.derive, batch)
        wall.append(w / len(batch))
        cpu.append(c / len(batch))
    return _figures(wall, cpu)


def _validator(spec, raw, tmp: Path, name: str):
    """The server's RowValidator for a small model of ``spec``, read from a saved model folder."""
    from mlcycle import derive
    from mlcycle.modeling import build_pipeline
    from mlcycle.serving.model import read_schema
    from mlcycle.serving.validation import RowValidator
    from mlcycle.spec import EVENT_TIME
    from mlcycle.timestamps import derive_event_time
    from tests.unit.serving.conftest import save_model_folder

    frame = raw.copy()
    frame[EVENT_TIME] = derive_event_time(raw, spec.timestamp).values.array
    ingested, _ = derive.apply(frame, spec.derivations, spec.timezone, EVENT_TIME)
    x, y = ingested[spec.feature_names], ingested[spec.target]
    model = build_pipeline(spec).set_params(model__max_iter=30, model__max_leaf_nodes=15).fit(x, y)
    folder = save_model_folder(spec, model, x, x.iloc[:300], tmp / name / "model")
    return RowValidator(read_schema(folder))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2000, help="source rows timed one at a time")
    parser.add_argument("--batches", type=int, default=30, help=f"batches of {BATCH} rows timed")
    args = parser.parse_args()
    if args.rows < BATCH:
        parser.error(f"--rows must be at least {BATCH} (the batch is made of the first {BATCH} rows)")
    warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")

    import pandas as pd

    from mlcycle.spec import load_spec
    from mlcycle.threads import limit_threads
    from tests.datasets import BIKESHARE_CSV, make_events_dataset

    limit_threads()
    tmp = Path(tempfile.mkdtemp(prefix="bench-derivation-"))
    flights = load_spec(make_events_dataset(tmp / "flights", start="2023-03-08", days=8))
    flights_raw = pd.read_csv(flights.source.path())
    bike = load_spec("bikeshare")
    bike_raw = pd.read_csv(BIKESHARE_CSV).iloc[:3000]
    cases = [
        ("flights", flights, flights_raw, flights_raw.loc[flights_raw["cancelled"] == 0]),
        ("bikeshare", bike, bike_raw, bike_raw.iloc[2000:]),
    ]
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} cores)")
    print(f"{'data set':<11}{'path':<44}{'median us':>10}{'p90 us':>9}{'cpu us':>9}{'goal us':>9}")
    for name, spec, raw, sources in cases:
        rows = _validator(spec, raw, tmp, name)
        validated = rows.many.validate_python(_plain(sources.head(args.rows).to_dict("records")))
        rule = "" if rows.derivation is not None else "  (no rules: skipped)"
        for label, (median, p90, cpu) in (
            ("one row, timestamps read for the first time", _one_row(rows, validated, fresh=True)),
            ("one row, timestamps already read", _one_row(rows, validated, fresh=False)),
            (f"batch of {BATCH}, a row", _batches(rows, validated, args.batches)),
        ):
            print(f"{name:<11}{label:<44}{median:>10.1f}{p90:>9.1f}{cpu:>9.1f}{GOAL_US:>9.0f}{rule}")
    print(f"load average after:  {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
