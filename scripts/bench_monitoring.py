"""Monitoring on bikeshare 2011: cost of the monitor step, detection per month, false positives.

    make bench-monitoring            # or: .venv-steps/bin/python scripts/bench_monitoring.py [--home DIR]

Works in its own MLCYCLE_HOME (default ``.local/bench-monitoring``): validates every day of 2011
once and trains a first champion on the 28 days before 2011-01-29 with a one-candidate search.
Then it measures:

1. the ``mlcycle monitor`` command (a fresh process, as a task runs it): wall time and peak RSS for
   one day, and for a 28-day current window; then the one-day command with warm steps
   (``MLCYCLE_WARM=1``, ``mlcycle.warm``), against that cold start;
2. detection: for each month of 2011, how many days the spec's ``monitoring:`` settings call drift,
   against the January champion's training data (the model nobody retrained) and against the 28 days
   before each day (a model retrained daily);
3. false positives on a same-distribution replay: for every day, as many rows as the day has, drawn
   from its own 28-day window (shuffled), judged against that window. Goal: 0.

The monitoring backfill under the real scheduler (days per minute, episodes, triggered retrains) is
measured by ``tests/integration/test_monitoring_backfill.py``, which prints its figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ROOT / ".venv-steps" / "bin"
SPEC = str(ROOT / ".ci" / "bikeshare-ci.yaml")
CHAMPION_END = dt.date(2011, 1, 29)
YEAR_END = dt.date(2012, 1, 1)


def _mlcycle(env: dict[str, str], *args: str) -> tuple[dict, float, int]:
    """Run one step command; return its result, wall seconds and peak RSS (MiB)."""
    began = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", str(STEPS / "mlcycle"), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - began
    if proc.returncode not in (0, 99):
        sys.exit(f"mlcycle {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    peak_kib = int(proc.stderr.strip().splitlines()[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall, peak_kib // 1024


def _prepare(env: dict[str, str]) -> None:
    store = Path(env["MLCYCLE_HOME"]) / "store" / "bikeshare"
    if not (store / "validated" / "date=2011-12-31").exists():
        year = ["--pipeline", SPEC, "--start", "2011-12-31", "--end", "2012-01-01", "--window-days", "365"]
        _mlcycle(env, "ingest", *year)
        _mlcycle(env, "validate", *year)
    if not (Path(env["MLCYCLE_HOME"]) / "mlflow" / "mlflow.db").exists():
        one = [
            "--pipeline",
            SPEC,
            "--start",
            (CHAMPION_END - dt.timedelta(days=1)).isoformat(),
            "--end",
            CHAMPION_END.isoformat(),
        ]
        _mlcycle(env, "build_features", *one)
        trained, _, _ = _mlcycle(env, "train", *one)
        _mlcycle(env, "evaluate", *one, "--run-id", trained["run_id"], "--model-uri", trained["model_uri"])
        _mlcycle(
            env,
            "register",
            "--pipeline",
            SPEC,
            "--run-id",
            trained["run_id"],
            "--model-uri",
            trained["model_uri"],
        )


def _cost(env: dict[str, str]) -> None:
    print("\n1. the monitor step (fresh process; wall includes imports)")
    walls = {}
    for label, start, end in (("1 day", "2011-03-10", "2011-03-11"), ("28 days", "2011-02-11", "2011-03-11")):
        result, walls[label], peak = _mlcycle(
            env, "monitor", "--pipeline", SPEC, "--start", start, "--end", end
        )
        print(
            f"   {label:8} [{start}, {end}): {walls[label]:5.1f} s wall, peak RSS {peak} MiB "
            f"({result['rows']} current rows vs {result['reference_rows']} reference rows; {result['line']})"
        )
    _warm_cost(env, walls["1 day"])


def _warm_cost(env: dict[str, str], cold: float) -> None:
    """The same 1-day command with MLCYCLE_WARM=1 (mlcycle.warm), against the cold start above."""
    from mlcycle import warm

    warm_env = {**env, "MLCYCLE_WARM": "1", "MLCYCLE_WARM_IDLE_SECONDS": "60"}
    day = ["monitor", "--pipeline", SPEC, "--start", "2011-03-10", "--end", "2011-03-11"]
    _mlcycle(warm_env, *day)  # no server yet: this one runs cold and starts it
    path, deadline = warm.socket_path(), time.monotonic() + 300
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1)
    walls = sorted(_mlcycle(warm_env, *day)[1] for _ in range(3))
    print(
        f"   1 day, warm (MLCYCLE_WARM=1, median of 3): {walls[1]:5.1f} s wall, "
        f"{cold / walls[1]:.1f}x faster than the cold start above (its memory is the warm server's)"
    )


def _detection() -> None:
    import numpy as np
    import pandas as pd

    from mlcycle.monitoring.data import reference_data
    from mlcycle.monitoring.decision import Figures, judge
    from mlcycle.monitoring.report import build_report
    from mlcycle.settings import Settings
    from mlcycle.spec import load_spec
    from mlcycle.store import Store, days

    warnings.filterwarnings("ignore")
    settings = Settings.from_env()
    spec = load_spec(SPEC)
    store = Store(settings.store, spec.name)
    champion = reference_data(spec, settings, store).frame
    frames = {
        d: pd.read_parquet(store.validated(d))
        for d in days(dt.date(2011, 1, 1), YEAR_END)
        if store.validated(d).is_file()
    }
    rng = np.random.default_rng(2011)

    def drift(reference: pd.DataFrame, current: pd.DataFrame) -> bool:
        report = build_report(spec, reference, current, with_performance=False, html=False)
        figures = Figures(drifted=report.drifted, monitored=len(spec.monitoring.columns))
        return judge(figures, spec.monitoring).drift

    print(
        f"\n2./3. detection per month with {spec.monitoring.method or 'Evidently defaults'} "
        f"(threshold {spec.monitoring.threshold}), drift_share {spec.monitoring.drift_share}, "
        f"columns {', '.join(spec.monitoring.columns)}"
    )
    print(f"   {'month':7} {'days':>4} {'vs Jan champion':>16} {'vs prior 28 days':>17} {'same-dist FP':>13}")
    began, totals = time.perf_counter(), [0, 0, 0, 0]
    for month in range(2, 13):
        month_days = [d for d in frames if d.month == month]
        fixed = rolling = false = 0
        for day in month_days:
            window = pd.concat([frames[d] for d in days(day - dt.timedelta(days=28), day) if d in frames])
            current = frames[day]
            fixed += drift(champion, current)
            rolling += drift(window, current)
            sample = window.sample(len(current), random_state=int(rng.integers(2**31)))
            false += drift(window, sample)
        totals = [totals[0] + len(month_days), totals[1] + fixed, totals[2] + rolling, totals[3] + false]
        print(f"   2011-{month:02d} {len(month_days):>4} {fixed:>16} {rolling:>17} {false:>13}")
    print(
        f"   {'total':7} {totals[0]:>4} {totals[1]:>16} {totals[2]:>17} {totals[3]:>13}   "
        f"false-positive rate {totals[3] / totals[0]:.3f} ({time.perf_counter() - began:.0f} s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", default=str(ROOT / ".local" / "bench-monitoring"))
    args = parser.parse_args()
    home = Path(args.home).resolve()
    env = {
        **os.environ,
        "MLCYCLE_HOME": str(home),
        "MLCYCLE_THREADS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        "MLCYCLE_ARTIFACT_ROOT": (home / "mlflow" / "artifacts").as_uri(),
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "DO_NOT_TRACK": "1",
        "MLCYCLE_LOG_LEVEL": "WARNING",
    }
    env.pop("MLCYCLE_STORE", None)
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    _prepare(env)
    os.environ.update(env)
    _cost(env)
    _detection()
    return 0


if __name__ == "__main__":
    sys.exit(main())
