"""Batch scoring: rows per second and peak memory of the score step, ONNX path against the Pipeline.

    .venv-steps/bin/python scripts/bench_scoring.py                        # 330k rows a day: 9.24M rows
    .venv-steps/bin/python scripts/bench_scoring.py --rows-per-day 20000   # a smaller window
    .venv-steps/bin/python scripts/bench_scoring.py --encoding native onehot   # both encodings, one run

The data is ``scripts/bench_scale.py``'s generated taxi-like set (seed 7) over ``--days`` days (28:
the scale window). Its days are ingested, then published as validated as they are (this measures
scoring, not the suite: ``make bench-scale`` measures validate). For each ``--encoding`` in turn, a
model (hist gradient boosting, 100 trees of 31 leaves; categoricals native by default, or one-hot
encoded) is trained on the last days and registered, and ``mlcycle score`` runs over the whole
window with that version (``@challenger``: the version just registered, whatever the gate said),
once per inference path, each in its own process: its wall time end to end (start-up, model load,
reading, scoring, writing the partitions), its CPU seconds (user + system: on a busy machine the
wall time also measures the other jobs) and peak RSS (``wait4``). The two paths' predictions are
compared row by row over the whole window, beside the parity the step checks at model load.

Printed: rows per second, CPU seconds, peak GiB, the ONNX path's ratio to the Pipeline's and the
parity, per encoding, measured in the same run, with the load average before the run and after
each score. Goals: at least 500,000 rows/s end to end on the ONNX path on two cores, at most
2 GiB. Nothing asserts; the figures go to ``bench-results/scoring.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import FIRST_DAY, MLCYCLE, ROOT, day_before, generate_in_process, run_step  # noqa: E402  (the scale data set and runner)

#: native: every categorical a native split of the trees (the zone's 100 values and the payment's 4),
#: converted to ONNX as set-membership nodes on the encoder's codes: the graph's input is a few
#: columns, not a 107-column one-hot matrix. onehot: the configuration measured before native
#: categoricals converted to ONNX. auto: the spec default (the zone native, the payment one-hot).
#: The spec always names its encoding, so a change of the default never changes what is measured.
ENCODINGS = ("native", "onehot", "auto")

#: compares the ``prediction`` column of two scores folders, day by day: rows, max abs difference.
COMPARE = """
import json, sys
from pathlib import Path
import numpy as np, pyarrow.parquet as pq
a, b = Path(sys.argv[1]), Path(sys.argv[2])
rows, worst, differ = 0, 0.0, 0
for day in sorted(a.glob("date=*")):
    x = pq.read_table(day / "data.parquet", columns=["prediction"]).column(0).to_numpy()
    y = pq.read_table(b / day.name / "data.parquet", columns=["prediction"]).column(0).to_numpy()
    if len(x) != len(y):
        raise SystemExit(f"{day.name}: {len(x)} rows on one path, {len(y)} on the other")
    d = np.abs(x.astype(float) - y.astype(float))
    rows, worst, differ = rows + len(x), max(worst, float(d.max(initial=0.0))), differ + int((d > 1e-6).sum())
print(json.dumps({"rows": rows, "max_abs_difference": worst, "rows_beyond_1e-6": differ}))
"""

PARITY = re.compile(r"inference path: (\w+) \((.*)\)")


def prepare(folder: Path, rows_per_day: int, days: int, env: dict[str, str]) -> tuple[Path, list[str]]:
    """Generate, ingest, publish and build the features of the window; the spec and the train interval."""
    spec = generate_in_process(folder, rows_per_day, days)
    # Scoring uses @challenger: each encoding's model scores as soon as it is registered, whether
    # or not the gate moved @champion to it.
    raw = yaml.safe_load(spec.read_text())
    raw["scoring"] = {"alias": "challenger"}
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    subprocess.run(
        [MLCYCLE, "suite", "--pipeline", str(spec), "--write"], env=env, check=True, capture_output=True
    )
    end = FIRST_DAY + dt.timedelta(days=days)
    window = day_before(spec, end)
    run_step("ingest", [*window, "--window-days", str(days)], env, folder / "ingest.log")
    publish = (
        "import datetime as dt, sys\nfrom pathlib import Path\nfrom mlcycle.store import Store\n"
        f"store = Store(Path({str(folder / 'home' / 'store')!r}), 'taxi')\n"
        f"for i in range({days}):\n    store.publish(dt.date.fromisoformat({FIRST_DAY.isoformat()!r}) + dt.timedelta(days=i))\n"
    )
    subprocess.run([sys.executable, "-c", publish], env=env, check=True)
    train_window = [*window, "--window-days", "4"]  # 1 day to train on, the 3 hold-out days to evaluate
    run_step("build_features", train_window, env, folder / "features.log")
    return spec, train_window


def train(spec: Path, encoding: str, train_window: list[str], env: dict[str, str], folder: Path) -> str:
    """Train, evaluate and register a model with ``encoding``; the ONNX export's outcome."""
    raw = yaml.safe_load(spec.read_text())
    raw["model"]["categorical_encoding"] = encoding
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    trained = run_step("train", train_window, env, folder / f"train-{encoding}.log")["result"]
    evaluated = run_step(
        "evaluate",
        [*train_window, "--run-id", trained["run_id"], "--model-uri", trained["model_uri"]],
        env,
        folder / f"evaluate-{encoding}.log",
    )["result"]
    run_step(
        "register",
        ["--pipeline", str(spec), "--run-id", evaluated["run_id"], "--model-uri", evaluated["model_uri"]],
        env,
        folder / f"register-{encoding}.log",
    )
    lines = [line for line in (folder / f"train-{encoding}.log").read_text().splitlines() if "ONNX" in line]
    return lines[-1][lines[-1].index("ONNX") :].strip() if lines else "(train logged nothing about ONNX)"


def score(interval: list[str], path: str, rows: int, env: dict[str, str], log: Path) -> dict:
    """One score run over the window on ``path``: wall and CPU seconds, peak RSS, the load-time parity."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = run_step("score", interval, {**env, "MLCYCLE_SCORING_PATH": path}, log)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run["result"]
    if result["rows"] != rows or result["path"] != path:
        raise SystemExit(f"score on the {path} path did not score the window: {result}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    loaded = PARITY.search(log.read_text())
    return {
        "seconds": run["seconds"],
        "cpu_seconds": cpu,
        "rss_gib": run["rss_gib"],
        "rows_per_second": rows / run["seconds"],
        "rows_per_cpu_second": rows / cpu,
        "step_seconds": result["seconds"],
        "model_version": result.get("version"),
        "load_check": loaded.group(2) if loaded else None,
        "load_average_after": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows-per-day", type=int, default=330_000)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument(
        "--encoding",
        nargs="+",
        choices=ENCODINGS,
        default=["native"],
        help="the model's categorical_encoding, one model each, measured in this order (default: native)",
    )
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
    end = FIRST_DAY + dt.timedelta(days=args.days)
    scores = work / "home" / "store" / "taxi" / "scores"
    load = os.getloadavg()
    print(f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    encodings: dict[str, dict] = {}
    try:
        began = time.perf_counter()
        spec, train_window = prepare(work, args.rows_per_day, args.days, env)
        interval = ["--pipeline", str(spec), "--start", FIRST_DAY.isoformat(), "--end", end.isoformat()]
        print(
            f"{rows:,} rows ({args.rows_per_day:,} a day, {args.days} days) generated, ingested and "
            f"features built in {time.perf_counter() - began:.0f} s",
            flush=True,
        )
        for encoding in dict.fromkeys(args.encoding):
            export = train(spec, encoding, train_window, env, work)
            print(f"{encoding}: {export}", flush=True)
            figures: dict[str, dict] = {}
            for path in ("onnx", "pipeline"):
                if path == "pipeline":  # the ONNX path's scores, to compare with the Pipeline's
                    shutil.rmtree(work / "scores-onnx", ignore_errors=True)
                    scores.rename(work / "scores-onnx")
                figures[path] = score(interval, path, rows, env, work / f"score-{encoding}-{path}.log")
                f = figures[path]
                print(
                    f"  {path:<9} {f['seconds']:7.1f} s  {f['rows_per_second']:>11,.0f} rows/s  "
                    f"{f['cpu_seconds']:7.1f} CPU s  {f['rows_per_cpu_second']:>11,.0f} rows/CPU s  "
                    f"{f['rss_gib']:.2f} GiB peak  (load {f['load_average_after'][0]:.1f})",
                    flush=True,
                )
            compared = subprocess.run(
                [sys.executable, "-c", COMPARE, str(work / "scores-onnx"), str(scores)],
                check=True,
                capture_output=True,
                text=True,
            )
            figures["parity"] = {
                "window": json.loads(compared.stdout),
                "at_load": figures["onnx"]["load_check"],
                "export": export,
            }
            window = figures["parity"]["window"]
            print(
                f"  parity: max abs difference {window['max_abs_difference']:.3g} over {window['rows']:,} rows "
                f"({window['rows_beyond_1e-6']} beyond 1e-6); at load: {figures['parity']['at_load']}",
                flush=True,
            )
            encodings[encoding] = figures
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)
        else:
            print(f"kept: {work}")
    print()
    for encoding, figures in encodings.items():
        onnx, pipeline = figures["onnx"], figures["pipeline"]
        print(
            f"{encoding}: ONNX path {onnx['rows_per_second'] / pipeline['rows_per_second']:.2f}x the "
            f"Pipeline's rows/s ({pipeline['cpu_seconds'] / onnx['cpu_seconds']:.2f}x in CPU seconds); "
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
                "load_average": load,
                "encodings": encodings,
            },
            indent=2,
        )
    )
    print(f"figures: {out}")


if __name__ == "__main__":
    main()
