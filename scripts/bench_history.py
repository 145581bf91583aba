"""What history features buy and cost: bikeshare's hold-out RMSE with and without them, and the
feature steps' time.

For each end date (a spread of 2011), the bundled bikeshare spec with ``FEATURES`` (the same hour a
week before, and the riders of this hour on this kind of day over four weeks) and the spec without
them run ingest, validate, build_features and train, each step in its own process
on a fresh store and MLflow home, with the same search (seed, iterations, folds). Printed: the
hold-out RMSE of each, their ratio per date and over all dates, and build_features' wall time.

Usage: .venv-steps/bin/python scripts/bench_history.py [--ends 2011-04-01,2011-07-01] [--n-iter 6]
       [--features my-features.yaml]   (a `features:` section of your own, measured instead)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import FIRST_DAY, ROOT, day_before, generate_in_process, run_step, step_args  # noqa: E402

SPEC = ROOT / "include" / "pipelines" / "bikeshare.yaml"
ENDS = "2011-03-15,2011-04-15,2011-05-15,2011-06-15,2011-07-15,2011-08-15,2011-09-15,2011-10-15,2011-11-15,2011-12-15"
STEPS = ("ingest", "validate", "build_features", "train")
#: The history features measured: both can be served from a store refreshed once a day.
FEATURES = {
    "history": {
        "riders_same_hour_last_week": {"of": "bikers", "lag": "7d", "entity": ["hr"]},
        "riders_mean_28d_this_hour": {
            "of": "bikers",
            "agg": "mean",
            "window": "28d",
            "entity": ["hr", "workingday"],
        },
    }
}
#: The issue's floor: the hold-out RMSE with history features at least this much lower.
GOAL = 0.20


def variant(folder: Path, history: bool, n_iter: int, features: dict | None = None) -> Path:
    """The bundled spec, with or without history features (``features``, else ``FEATURES``), and the
    search of this benchmark."""
    raw = yaml.safe_load(SPEC.read_text())
    raw["source"]["path"] = str((SPEC.parent / raw["source"]["path"]).resolve())
    raw["validation"]["suite"] = str((SPEC.parent / raw["validation"]["suite"]).resolve())
    raw["model"]["search"]["n_iter"] = n_iter
    if history:
        raw["features"] = features or FEATURES
    raw["name"] = "bikeshare_history" if history else "bikeshare_plain"
    raw["model"]["registered_name"] = raw["name"]
    path = folder / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def naive_rmse(end: dt.date, holdout_days: int = 7) -> float:
    """The RMSE of predicting each hour of the hold-out slice (the window's last ``holdout_days``
    before ``end``) by the riders of the same hour a week before: how much a lag alone knows."""
    import numpy as np
    import pandas as pd

    raw = yaml.safe_load(SPEC.read_text())
    frame = pd.read_csv((SPEC.parent / raw["source"]["path"]).resolve())
    frame["time"] = pd.Timestamp("2011-01-01") + pd.to_timedelta(frame["day"] - 1, unit="D")
    frame["time"] += pd.to_timedelta(frame["hr"], unit="h")
    riders = frame.set_index("time")["bikers"]
    start = pd.Timestamp(end - dt.timedelta(days=holdout_days))
    held = riders[(riders.index >= start) & (riders.index < pd.Timestamp(end))]
    week_before = riders.reindex(held.index - pd.Timedelta(days=7)).to_numpy(dtype=float)
    known = ~np.isnan(week_before)
    return float(np.sqrt(np.mean((held.to_numpy(dtype=float)[known] - week_before[known]) ** 2)))


def run(spec: Path, end: dt.date, folder: Path) -> dict:
    env = {
        **os.environ,
        "MLCYCLE_HOME": str(folder / "home"),
        "MLCYCLE_STORE": str(folder / "store"),
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "GX_ANALYTICS_ENABLED": "false",
    }
    for name in ("MLFLOW_TRACKING_URI", "MLCYCLE_ARTIFACT_ROOT", "MLCYCLE_WARM"):
        env.pop(name, None)
    folder.mkdir(parents=True)
    figures: dict[str, dict] = {}
    for name in STEPS:
        figures[name] = run_step(
            name, step_args(name, spec, day_before(spec, end), figures), env, folder / f"{name}.log"
        )
    return {
        "rmse": figures["train"]["result"]["holdout_score"],
        "build_features_s": figures["build_features"]["seconds"],
        "validate_s": figures["validate"]["seconds"],
    }


#: History features of the scale data set (taxi trips by zone): a 7-day mean and a day's count.
SCALE_FEATURES = {
    "entity": ["zone"],
    "history": {
        "fare_mean_7d": {"of": "fare", "agg": "mean", "window": "7d"},
        "trips_1d": {"agg": "count", "window": "1d", "fill": 0},
    },
}
SCALE_ROWS_PER_DAY = 330_000
SCALE_WINDOW_DAYS = 28  # 9.24M rows


def scale(rows_per_day: int) -> None:
    """``--scale``: build_features over the 28-day window of the scale data set (9.24M rows at 330,000 a
    day) without and with history features by zone, and materialize of the window's last day; each in
    its own process, on one store that ingest and validate filled once (window and lookback)."""
    with tempfile.TemporaryDirectory(prefix="bench-history-scale-") as tmp:
        work = Path(tmp)
        print(f"generating {SCALE_WINDOW_DAYS + 8} days of {rows_per_day:,} trips ...", flush=True)
        (work / "data").mkdir()
        base = generate_in_process(work / "data", rows_per_day, SCALE_WINDOW_DAYS + 8)
        raw = yaml.safe_load(base.read_text())
        raw["window"]["days"] = SCALE_WINDOW_DAYS
        plain = work / "plain.yaml"
        plain.write_text(yaml.safe_dump(raw, sort_keys=False))
        raw["features"] = SCALE_FEATURES
        with_history = work / "history.yaml"
        with_history.write_text(yaml.safe_dump(raw, sort_keys=False))
        end = FIRST_DAY + dt.timedelta(days=SCALE_WINDOW_DAYS + 8)
        env = {
            **os.environ,
            "MLCYCLE_HOME": str(work / "home"),
            "MLCYCLE_STORE": str(work / "store"),
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "GX_ANALYTICS_ENABLED": "false",
        }
        env.pop("MLCYCLE_WARM", None)
        figures: dict[str, dict] = {}
        for name, spec in (("ingest", with_history), ("validate", with_history)):
            figures[name] = run_step(name, day_before(spec, end), env, work / f"{name}.log")
            print(f"  {name}: {figures[name]['seconds']:.1f} s", flush=True)
        runs = {}
        for label, spec in (
            ("without", plain),
            ("with", with_history),
            ("without again", plain),
            ("with again", with_history),
        ):
            runs[label] = run_step("build_features", day_before(spec, end), env, work / f"bf-{label}.log")
            result = runs[label]["result"]
            print(
                f"  build_features {label:<14}{runs[label]['seconds']:7.1f} s  {runs[label]['rss_gib']:.2f} GiB  "
                f"{result['train_rows'] + result['eval_rows']:,} rows",
                flush=True,
            )
        last = day_before(with_history, end)
        mat = run_step("materialize", last, env, work / "materialize.log")
        print(
            f"  materialize (one day, {sum(mat['result']['rows'].values()):,} snapshots): {mat['seconds']:.1f} s  "
            f"{mat['rss_gib']:.2f} GiB",
            flush=True,
        )
        without = min(runs["without"]["seconds"], runs["without again"]["seconds"])
        with_ = min(runs["with"]["seconds"], runs["with again"]["seconds"])
        print(
            f"\nbuild_features with history features: {with_:.1f} s = {with_ / without:.2f}x without ({without:.1f} s); "
            f"with materialize of a day: {(with_ + mat['seconds']) / without:.2f}x (goal: within 2x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ends", default=ENDS, help="comma-separated end dates of the runs")
    parser.add_argument("--n-iter", type=int, default=6, help="search candidates per run (the spec's: 6)")
    parser.add_argument(
        "--features",
        help="a YAML file holding a spec's `features:` section, measured instead of FEATURES",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="instead: build_features and materialize on the 9.24M-row scale window",
    )
    parser.add_argument("--rows-per-day", type=int, default=SCALE_ROWS_PER_DAY, help="with --scale")
    args = parser.parse_args()
    if args.scale:
        scale(args.rows_per_day)
        return
    ends = [dt.date.fromisoformat(d) for d in args.ends.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        work = Path(tmp)
        features = yaml.safe_load(Path(args.features).read_text()) if args.features else None
        if isinstance(features, dict) and "features" in features:
            features = features["features"]
        specs = {
            "with": variant(work, True, args.n_iter, features),
            "without": variant(work, False, args.n_iter),
        }
        rows = []
        print(
            f"{'end':<12}{'RMSE without':>14}{'RMSE with':>12}{'with/without':>14}"
            f"{'build_features s (without, with)':>36}",
            flush=True,
        )
        for end in ends:
            got = {k: run(spec, end, work / f"{k}-{end}") for k, spec in specs.items()}
            ratio = got["with"]["rmse"] / got["without"]["rmse"]
            rows.append((got, ratio))
            print(
                f"{end.isoformat():<12}{got['without']['rmse']:>14.2f}{got['with']['rmse']:>12.2f}"
                f"{ratio:>14.3f}{got['without']['build_features_s']:>18.2f}{got['with']['build_features_s']:>18.2f}",
                flush=True,
            )
    mean_without = statistics.mean(g["without"]["rmse"] for g, _ in rows)
    mean_with = statistics.mean(g["with"]["rmse"] for g, _ in rows)
    lower = 1 - mean_with / mean_without
    print(
        f"\nmean hold-out RMSE: {mean_without:.2f} without, {mean_with:.2f} with history features: "
        f"{lower:.1%} lower (goal: at least {GOAL:.0%}; worst date {1 - max(r for _, r in rows):.1%} lower)"
    )
    naive = statistics.mean(naive_rmse(end) for end in ends)
    print(
        f"the same hour a week before as the prediction itself: RMSE {naive:.2f} on the same hold-out days "
        f"({naive / mean_without:.2f}x the model without history features)"
    )
    print(
        f"build_features: median {statistics.median(g['without']['build_features_s'] for g, _ in rows):.2f} s "
        f"without, {statistics.median(g['with']['build_features_s'] for g, _ in rows):.2f} s with"
    )


if __name__ == "__main__":
    main()
