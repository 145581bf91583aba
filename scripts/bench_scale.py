"""Scale: each step of one interval on a generated taxi-like data set, at growing rows per day.

    .venv-steps/bin/python scripts/bench_scale.py                         # 10k, 100k, 330k rows a day
    .venv-steps/bin/python scripts/bench_scale.py --sizes 10000,100000    # or: make bench-scale SIZES=...

For each size, a deterministic data set (seed 7) of ``--days`` + 1 days is generated as one Parquet
file with its spec: a pickup timestamp, a 100-value zone, a 4-value payment type, passengers,
distance, hour, and a numeric fare target. Then ingest, validate, build_features, train, evaluate
and register run once, each in its own process, for the interval that ends the data, over a
``--days`` window, with a 2-candidate 2-fold search. Printed per step: wall time and peak RSS
(from ``wait4`` on the step's process), and the ratio to the previous size, so that linear growth
is visible (a ratio near the ratio of sizes). Nothing asserts: it measures and prints, and writes
``bench-results/scale.json``.

The generated data and its MLflow store live under a temporary folder (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
MLCYCLE = str(Path(sys.executable).parent / "mlcycle")
FIRST_DAY = dt.date(2024, 1, 1)
ZONES = [f"z{i:03d}" for i in range(100)]
PAYMENTS = ["card", "cash", "voucher", "dispute"]
STEPS = ("ingest", "validate", "build_features", "train", "evaluate", "register")


def generate(folder: Path, rows_per_day: int, days: int, seed: int = 7) -> Path:
    """Write ``trips.parquet`` and ``taxi.yaml`` under ``folder``; return the spec's path."""
    rng = np.random.default_rng(seed)
    n = rows_per_day * days
    seconds = np.sort(rng.integers(0, days * 86_400, n))
    stamps = pd.Timestamp(FIRST_DAY) + pd.to_timedelta(seconds, unit="s")
    zone = rng.integers(0, len(ZONES), n)
    payment = rng.choice(len(PAYMENTS), n, p=[0.7, 0.25, 0.04, 0.01])
    passengers = rng.integers(1, 7, n)
    distance = np.round(rng.gamma(2.0, 2.0, n), 2)
    hour = stamps.hour.to_numpy()
    rush = np.isin(hour, [7, 8, 9, 16, 17, 18])
    fare = 3.0 + 2.5 * distance + 0.05 * zone + 1.5 * rush + 0.8 * (payment == 1) + rng.normal(0, 1.5, n)
    frame = pd.DataFrame(
        {
            "pickup": stamps,  # a native Parquet timestamp
            "zone": pd.Categorical.from_codes(zone, ZONES).astype(str),
            "payment": pd.Categorical.from_codes(payment, PAYMENTS).astype(str),
            "passengers": passengers,
            "distance": distance,
            "hour": hour,
            "fare": np.round(np.clip(fare, 0, None), 2),
        }
    )
    data = folder / "trips.parquet"
    frame.to_parquet(data, row_group_size=max(rows_per_day, 10_000), index=False)
    last = FIRST_DAY + dt.timedelta(days=days - 1)
    spec = {
        "name": "taxi",
        "description": "Generated taxi trips (scripts/bench_scale.py).",
        "task": "regression",
        "target": "fare",
        "source": {"kind": "file", "path": str(data), "format": "parquet"},
        "timestamp": {"kind": "column", "column": "pickup"},
        "key": [],
        "columns": {
            "pickup": {"type": "timestamp", "role": "ignore"},
            "zone": {"type": "categorical", "values": ZONES},
            "payment": {"type": "categorical", "values": PAYMENTS},
            "passengers": {"type": "integer", "min": 1, "max": 6},
            "distance": {"type": "numeric", "min": 0},
            "hour": {"type": "integer", "min": 0, "max": 23},
            "fare": {"type": "numeric", "min": 0},
        },
        "validation": {
            "suite": str(folder / "taxi.suite.json"),
            "min_rows_per_partition": 1,
            "max_rows_per_partition": rows_per_day * 2,
        },
        "window": {
            "data_start": FIRST_DAY.isoformat(),
            "data_end": last.isoformat(),
            "days": days - 1,
            "min_training_rows": 100,
        },
        "model": {
            "family": "hist_gradient_boosting",
            "registered_name": "taxi",
            "search": {
                "n_iter": 2,
                "cv_folds": 2,
                "seed": 1,
                "space": {
                    "learning_rate": {"values": [0.1, 0.2]},
                    "max_iter": {"values": [100]},
                    "max_leaf_nodes": {"values": [31]},
                },
            },
        },
        "evaluation": {"metric": "rmse", "holdout_days": 3, "threshold": 1000, "tolerance": 0.05},
        "experiment": "taxi",
    }
    path = folder / "taxi.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_step(name: str, args: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    """Wall seconds and peak RSS (GiB) of one step in its own process; its JSON result."""
    result_file = log.with_suffix(".json")
    began = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [MLCYCLE, name, *args],
            env={**env, "MLCYCLE_RESULT_FILE": str(result_file)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{name} failed ({code}); its log: {log}\n" + log.read_text()[-3000:])
    return {
        "seconds": wall,
        "rss_gib": usage.ru_maxrss / 1024 / 1024,
        "result": json.loads(result_file.read_text()) if result_file.exists() else {},
    }


def day_before(spec: Path, end: dt.date) -> list[str]:
    """The arguments of the one-day data interval that ends ``end`` (a step's window is the spec's)."""
    return [
        "--pipeline",
        str(spec),
        "--start",
        (end - dt.timedelta(days=1)).isoformat(),
        "--end",
        end.isoformat(),
    ]


def step_args(name: str, spec: Path, interval: list[str], figures: dict[str, dict]) -> list[str]:
    """A step's arguments: the interval, and for evaluate and register the run the step before made."""
    if name == "evaluate":
        trained = figures["train"]["result"]
        return [*interval, "--run-id", trained["run_id"], "--model-uri", trained["model_uri"]]
    if name == "register":
        evaluated = figures["evaluate"]["result"]
        return [
            "--pipeline",
            str(spec),
            "--run-id",
            evaluated["run_id"],
            "--model-uri",
            evaluated["model_uri"],
        ]
    return list(interval)


def generate_in_process(folder: Path, rows_per_day: int, days: int) -> Path:
    """``generate`` in a process of its own (the generated frame is large); the spec's path."""
    generated = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--generate",
            str(folder),
            str(rows_per_day),
            str(days),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(generated.stdout.strip().splitlines()[-1])


def full_search(spec: Path, interval: list[str], env: dict[str, str], folder: Path) -> dict:
    """train once more, its search on every row (``model.search.max_rows: null``): the sample's baseline."""
    raw = yaml.safe_load(spec.read_text())
    raw["model"]["search"]["max_rows"] = None
    full = spec.with_name("taxi-full-search.yaml")
    full.write_text(yaml.safe_dump(raw, sort_keys=False))
    args = [a if a != str(spec) else str(full) for a in interval]
    return run_step("train", args, env, folder / "train-full-search.log")


def measure(rows_per_day: int, days: int, work: Path, compare: bool = False) -> dict[str, dict]:
    folder = work / f"{rows_per_day}"
    folder.mkdir(parents=True)
    began = time.perf_counter()
    # In a process of its own: a step's peak RSS would otherwise start at this one's (Linux keeps
    # ru_maxrss across fork and exec), and the generated frame is large.
    generated = subprocess.run(
        [sys.executable, __file__, "--generate", str(folder), str(rows_per_day), str(days + 1)],
        check=True,
        capture_output=True,
        text=True,
    )
    spec = Path(generated.stdout.strip().splitlines()[-1])
    print(
        f"\n{rows_per_day:,} rows a day: data set of {rows_per_day * (days + 1):,} rows generated in "
        f"{time.perf_counter() - began:.1f} s",
        flush=True,
    )
    env = {
        **os.environ,
        "MLCYCLE_HOME": str(folder / "home"),
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "MLCYCLE_ARTIFACT_ROOT": (folder / "artifacts").as_uri(),
    }
    env.pop("MLCYCLE_STORE", None)
    subprocess.run(
        [MLCYCLE, "suite", "--pipeline", str(spec), "--write"], env=env, check=True, capture_output=True
    )
    end = FIRST_DAY + dt.timedelta(days=days + 1)
    interval = day_before(spec, end)
    figures: dict[str, dict] = {}
    for name in STEPS:
        figures[name] = run_step(name, step_args(name, spec, interval, figures), env, folder / f"{name}.log")
        print(
            f"  {name:<15} {figures[name]['seconds']:8.1f} s {figures[name]['rss_gib']:6.2f} GiB", flush=True
        )
    if compare:
        figures["train_full_search"] = full = full_search(spec, interval, env, folder)
        sampled, whole = figures["train"]["result"], full["result"]
        loss = (sampled["holdout_score"] - whole["holdout_score"]) / whole["holdout_score"]
        print(
            f"  train, search on every row: {full['seconds']:.1f} s {full['rss_gib']:.2f} GiB; hold-out "
            f"{whole['metric']} {whole['holdout_score']:.4f}, sampled search {sampled['holdout_score']:.4f} "
            f"({loss:+.2%} worse)",
            flush=True,
        )
        figures["sample_vs_full"] = {
            "seconds": 0.0,
            "rss_gib": 0.0,
            "loss": loss,
            "sampled": sampled["holdout_score"],
            "full": whole["holdout_score"],
        }
    return figures


def main() -> None:
    if sys.argv[1:2] == ["--generate"]:
        folder, rows_per_day, days = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        print(generate(Path(folder), rows_per_day, days))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,330000", help="rows per day, comma-separated")
    parser.add_argument("--days", type=int, default=28, help="the training window")
    parser.add_argument("--keep", action="store_true", help="keep the generated data and stores")
    parser.add_argument(
        "--compare-at",
        type=int,
        default=100_000,
        help="at this size, also train with the search on every row (the sample's baseline)",
    )
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "scale.json"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="mlcycle-scale-"))
    results: dict[int, dict[str, dict]] = {}
    try:
        for size in sizes:
            results[size] = measure(size, args.days, work, compare=size == args.compare_at)
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)
        else:
            print(f"kept: {work}")
    header = f"{'rows/day':>9} {'window rows':>12} " + " ".join(f"{s:>22}" for s in (*STEPS, "total"))
    print("\n" + header)
    previous = None
    for size, figures in results.items():
        total = sum(figures[name]["seconds"] for name in STEPS)
        cells = []
        for name in STEPS:
            f = figures[name]
            ratio = f" x{f['seconds'] / previous[name]['seconds']:.1f}" if previous else ""
            cells.append(f"{f['seconds']:.1f} s {f['rss_gib']:.2f} GiB{ratio}".rjust(22))
        ratio = f" x{total / sum(previous[name]['seconds'] for name in STEPS):.1f}" if previous else ""
        cells.append(f"{total:.1f} s{ratio}".rjust(22))
        print(f"{size:>9,} {size * args.days:>12,} " + " ".join(cells))
        previous = figures
    size, figures = max(results.items())
    rows = size * args.days / 1e6
    print(
        f"\npeak RSS per million window rows at {size:,} rows a day ({rows:.2f}M rows): "
        + ", ".join(f"{name} {figures[name]['rss_gib'] / rows:.2f} GiB" for name in STEPS)
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                str(k): {n: {key: f[key] for key in f if key != "result"} for n, f in v.items()}
                for k, v in results.items()
            },
            indent=2,
        )
    )
    print(f"figures: {out}")


if __name__ == "__main__":
    main()
