"""Batch scoring: rows per second and peak memory of the score step, ONNX path against the Pipeline.

    .venv-steps/bin/python scripts/bench_scoring.py                        # 330k rows a day: 9.24M rows
    .venv-steps/bin/python scripts/bench_scoring.py --rows-per-day 20000   # a smaller window

The data is ``scripts/bench_scale.py``'s generated taxi-like set (seed 7) over ``--days`` days (28:
the scale window). Its days are ingested, then published as validated as they are (this measures
scoring, not the suite: ``make bench-scale`` measures validate), a model (hist gradient boosting,
100 trees of 31 leaves, zones one-hot encoded so that it converts to ONNX) is trained on the last days and registered as ``@champion``. Then
``mlcycle score`` runs over the whole window, once per inference path, each in its own process:
its wall time end to end (start-up, model load, reading, scoring, writing the partitions) and peak
RSS (``wait4``). Printed: rows per second, peak GiB, and the ONNX path's ratio to the Pipeline's,
measured in the same run. Goals: at least 500,000 rows/s end to end on the ONNX path on two cores,
at most 2 GiB. Nothing asserts; the figures go to ``bench-results/scoring.json``.
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

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import FIRST_DAY, MLCYCLE, ROOT, run_step  # noqa: E402  (the scale data set and runner)


def prepare(folder: Path, rows_per_day: int, days: int, env: dict[str, str]) -> tuple[Path, list[str]]:
    generated = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_scale.py"),
            "--generate",
            str(folder),
            str(rows_per_day),
            str(days),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    spec = Path(generated.stdout.strip().splitlines()[-1])
    # One-hot zones: gradient boosting's native categories of 100 values do not convert to ONNX
    # within the tolerance (train logs "no ONNX fast path"), and this compares the two paths.
    raw = yaml.safe_load(spec.read_text())
    raw["model"]["categorical_encoding"] = "onehot"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    subprocess.run(
        [MLCYCLE, "suite", "--pipeline", str(spec), "--write"], env=env, check=True, capture_output=True
    )
    end = FIRST_DAY + dt.timedelta(days=days)
    window = [
        "--pipeline",
        str(spec),
        "--start",
        (end - dt.timedelta(days=1)).isoformat(),
        "--end",
        end.isoformat(),
    ]
    run_step("ingest", [*window, "--window-days", str(days)], env, folder / "ingest.log")
    publish = (
        "import datetime as dt, sys\nfrom pathlib import Path\nfrom mlcycle.store import Store\n"
        f"store = Store(Path({str(folder / 'home' / 'store')!r}), 'taxi')\n"
        f"for i in range({days}):\n    store.publish(dt.date.fromisoformat({FIRST_DAY.isoformat()!r}) + dt.timedelta(days=i))\n"
    )
    subprocess.run([sys.executable, "-c", publish], env=env, check=True)
    train_window = [*window, "--window-days", "4"]  # 1 day to train on, the 3 hold-out days to evaluate
    run_step("build_features", train_window, env, folder / "features.log")
    trained = run_step("train", train_window, env, folder / "train.log")["result"]
    evaluated = run_step(
        "evaluate",
        [*train_window, "--run-id", trained["run_id"], "--model-uri", trained["model_uri"]],
        env,
        folder / "evaluate.log",
    )["result"]
    run_step(
        "register",
        ["--pipeline", str(spec), "--run-id", evaluated["run_id"], "--model-uri", evaluated["model_uri"]],
        env,
        folder / "register.log",
    )
    return spec, ["--pipeline", str(spec), "--start", FIRST_DAY.isoformat(), "--end", end.isoformat()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows-per-day", type=int, default=330_000)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--keep", action="store_true", help="keep the generated data and stores")
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "scoring.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlcycle-bench-scoring-"))
    env = {
        **os.environ,
        "MLCYCLE_HOME": str(work / "home"),
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "MLCYCLE_ARTIFACT_ROOT": (work / "artifacts").as_uri(),
    }
    env.pop("MLCYCLE_STORE", None)
    rows = args.rows_per_day * args.days
    try:
        began = time.perf_counter()
        _, interval = prepare(work, args.rows_per_day, args.days, env)
        print(
            f"{rows:,} rows ({args.rows_per_day:,} a day, {args.days} days) generated, ingested and a model "
            f"trained in {time.perf_counter() - began:.0f} s",
            flush=True,
        )
        figures = {}
        for path in ("onnx", "pipeline"):
            run = run_step(
                "score", interval, {**env, "MLCYCLE_SCORING_PATH": path}, work / f"score-{path}.log"
            )
            result = run["result"]
            if result["rows"] != rows or result["path"] != path:
                raise SystemExit(f"score on the {path} path did not score the window: {result}")
            figures[path] = {
                "seconds": run["seconds"],
                "rss_gib": run["rss_gib"],
                "rows_per_second": rows / run["seconds"],
                "step_seconds": result["seconds"],
            }
            print(
                f"  {path:<9} {run['seconds']:7.1f} s  {rows / run['seconds']:>11,.0f} rows/s  "
                f"{run['rss_gib']:.2f} GiB peak",
                flush=True,
            )
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)
        else:
            print(f"kept: {work}")
    onnx, pipeline = figures["onnx"], figures["pipeline"]
    print(
        f"\nONNX path: {onnx['rows_per_second'] / pipeline['rows_per_second']:.2f}x the Pipeline's rows/s; "
        f"goal >= 500,000 rows/s: {'met' if onnx['rows_per_second'] >= 500_000 else 'NOT met'} "
        f"({onnx['rows_per_second']:,.0f}); peak <= 2 GiB: {'met' if onnx['rss_gib'] <= 2 else 'NOT met'} "
        f"({onnx['rss_gib']:.2f} GiB)"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "rows": rows,
                "rows_per_day": args.rows_per_day,
                "days": args.days,
                "cores": os.cpu_count(),
                **figures,
            },
            indent=2,
        )
    )
    print(f"figures: {out}")


if __name__ == "__main__":
    main()
