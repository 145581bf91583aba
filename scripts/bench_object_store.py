"""Object store: the same steps on a local store and on S3 (SeaweedFS), in one run, step by step.

    .venv-steps/bin/python scripts/bench_object_store.py                # bikeshare, 3 repetitions
    .venv-steps/bin/python scripts/bench_object_store.py --repeat 1     # one of each
    .venv-steps/bin/python scripts/bench_object_store.py --scale        # also 2.8M generated rows

What is compared is ``MLCYCLE_STORE`` alone: a temporary folder, or ``s3://<bucket>/bench-<random>/...``
on the local SeaweedFS server (``scripts/seaweedfs.sh start`` is run first; it is idempotent and
prints the client environment, which is parsed from its ``export`` lines). Everything else is the
same on both: each repetition of each backend has a fresh ``MLCYCLE_HOME`` of its own, so its own
MLflow SQLite file and local artifact folder (``MLCYCLE_ARTIFACT_ROOT`` and ``MLFLOW_TRACKING_URI``
unset), and a fresh store, so ingest always writes every day of the window.

1. The bundled bikeshare pipeline with the CI-sized search (``.ci/bikeshare-ci.yaml``) for the
   interval ending 2011-07-01, over the spec's 28-day window: ingest, validate, build_features,
   train, evaluate and register, each in its own process, like an Airflow task runs it.
2. With ``--scale`` (off by default: slow): ``scripts/bench_scale.py``'s generated taxi-like set at
   ``--rows-per-day`` (100,000) over ``--days`` (28): 2.8M window rows; ingest, validate and
   build_features only (the steps whose cost is the store's reads and writes).

Repetitions alternate the backends (local, S3, local, S3, ...) so that a burst of load from other
jobs on the machine falls on both rather than on one. Printed per step: the median wall seconds on
each backend (start-up included), and the ratio S3 / local; then end to end, against the goal "S3
at most 1.5 times local end to end"; the load average before and after. Nothing asserts; the
figures, every repetition included, go to ``bench-results/object_store.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import FIRST_DAY, MLCYCLE, ROOT, day_before, generate_in_process, run_step, step_args  # noqa: E402  (the scale data set and runner)

BACKENDS = ("local", "s3")
BIKESHARE_STEPS = ("ingest", "validate", "build_features", "train", "evaluate", "register")
SCALE_STEPS = ("ingest", "validate", "build_features")
BIKESHARE_SPEC = ROOT / ".ci" / "bikeshare-ci.yaml"
BIKESHARE_END = dt.date(2011, 7, 1)
#: S3 at most this many times local, end to end.
GOAL = 1.5


def seaweedfs_env() -> dict[str, str]:
    """Start SeaweedFS if it is not running; the client environment its script prints."""
    started = subprocess.run(
        ["bash", str(ROOT / "scripts" / "seaweedfs.sh"), "start"],
        check=True,
        capture_output=True,
        text=True,
    )
    env: dict[str, str] = {}
    for line in started.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            key, value = line.removeprefix("export ").split("=", 1)
            env[key.strip()] = value.strip()
    if "AWS_ENDPOINT_URL_S3" not in env:
        raise SystemExit(f"scripts/seaweedfs.sh start printed no client environment:\n{started.stdout}")
    return env


def base_env(s3: dict[str, str]) -> dict[str, str]:
    """The environment both backends share: the S3 client's, no store, tracking or artifact override."""
    env = {**os.environ, **s3, "MLFLOW_ENABLE_TELEMETRY": "false", "GX_ANALYTICS_ENABLED": "false"}
    # MLCYCLE_WARM would fork the steps from a long-lived server: each step is to start cold, in its
    # own process, as a task does.
    for name in ("MLCYCLE_STORE", "MLFLOW_TRACKING_URI", "MLCYCLE_ARTIFACT_ROOT", "MLCYCLE_WARM"):
        env.pop(name, None)
    return env


def backend_env(env: dict[str, str], backend: str, folder: Path, s3_root: str) -> dict[str, str]:
    """A fresh home (own MLflow SQLite) and a fresh store on ``backend`` for one repetition."""
    folder.mkdir(parents=True)
    store = str(folder / "store") if backend == "local" else f"{s3_root}/{folder.parent.name}/{folder.name}"
    return {**env, "MLCYCLE_HOME": str(folder / "home"), "MLCYCLE_STORE": store}


def run_steps(steps: tuple[str, ...], spec: Path, end: dt.date, env: dict[str, str], folder: Path) -> dict:
    """Each step in its own process, in order; wall seconds and peak RSS per step, and the sum."""
    figures: dict[str, dict] = {}
    began = time.perf_counter()
    for name in steps:
        args = step_args(name, spec, day_before(spec, end), figures)
        figures[name] = run_step(name, args, env, folder / f"{name}.log")
    # Between the steps' processes the runner does nothing: the sum is the end to end time.
    total = time.perf_counter() - began
    return {
        "steps": {n: {"seconds": f["seconds"], "rss_gib": f["rss_gib"]} for n, f in figures.items()},
        "total_seconds": total,
        "load_average_after": os.getloadavg(),
    }


def compare(
    label: str,
    steps: tuple[str, ...],
    spec: Path,
    end: dt.date,
    repeat: int,
    env: dict[str, str],
    work: Path,
    s3_root: str,
) -> dict:
    """``repeat`` runs on each backend, alternating; every run's figures and the medians."""
    runs: dict[str, list[dict]] = {b: [] for b in BACKENDS}
    print(f"\n{label}", flush=True)
    for rep in range(repeat):
        for backend in BACKENDS:
            folder = work / label / f"{backend}-{rep}"
            run = run_steps(steps, spec, end, backend_env(env, backend, folder, s3_root), folder)
            runs[backend].append(run)
            print(
                f"  {rep + 1}/{repeat} {backend:<5} {run['total_seconds']:7.1f} s  ("
                + ", ".join(f"{n} {f['seconds']:.1f}" for n, f in run["steps"].items())
                + f")  load {run['load_average_after'][0]:.2f}",
                flush=True,
            )
    medians = {
        b: {
            **{n: statistics.median(r["steps"][n]["seconds"] for r in runs[b]) for n in steps},
            "end to end": statistics.median(r["total_seconds"] for r in runs[b]),
        }
        for b in BACKENDS
    }
    return {"runs": runs, "median_seconds": medians}


def print_table(label: str, figures: dict, repeat: int) -> None:
    medians = figures["median_seconds"]
    local, s3 = medians["local"], medians["s3"]
    print(f"\n{label} (median of {repeat} each)")
    print(f"  {'step':<15} {'local s':>9} {'S3 s':>9} {'S3/local':>9}")
    for name in local:
        print(f"  {name:<15} {local[name]:9.2f} {s3[name]:9.2f} {s3[name] / local[name]:9.2f}")
    ratio = s3["end to end"] / local["end to end"]
    print(
        f"  goal: S3 at most {GOAL} times local end to end: {'met' if ratio <= GOAL else 'NOT met'} ({ratio:.2f}x)"
    )


def generate_scale(folder: Path, rows_per_day: int, days: int, env: dict[str, str]) -> tuple[Path, dt.date]:
    """bench_scale.py's data set (days + 1 days, the last interval's window is ``days``) and its suite."""
    folder.mkdir(parents=True)
    spec = generate_in_process(folder, rows_per_day, days + 1)
    suite = subprocess.run(
        [MLCYCLE, "suite", "--pipeline", str(spec), "--write"], env=env, capture_output=True, text=True
    )
    if suite.returncode != 0:
        raise SystemExit(f"mlcycle suite failed for {spec}:\n{suite.stdout[-2000:]}{suite.stderr[-2000:]}")
    return spec, FIRST_DAY + dt.timedelta(days=days + 1)


def remove_prefix(s3: dict[str, str], bucket: str, prefix: str) -> int:
    """Delete every object the run wrote under ``prefix``; how many."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=s3["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3["AWS_SECRET_ACCESS_KEY"],
        region_name=s3.get("AWS_REGION", "us-east-1"),
    )
    removed = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            removed += len(keys)
    return removed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per backend, alternating (default 3)")
    parser.add_argument("--scale", action="store_true", help="also the generated 2.8M-row window (slow)")
    parser.add_argument("--rows-per-day", type=int, default=100_000, help="--scale's rows a day")
    parser.add_argument("--days", type=int, default=28, help="--scale's window")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and the S3 prefix")
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "object_store.json"))
    args = parser.parse_args()
    s3 = seaweedfs_env()
    bucket = s3.get("MLCYCLE_TEST_S3_BUCKET", "mlcycle")
    prefix = f"bench-{secrets.token_hex(4)}"
    s3_root = f"s3://{bucket}/{prefix}"
    env = base_env(s3)
    work = Path(tempfile.mkdtemp(prefix="mlcycle-bench-object-store-"))
    load = os.getloadavg()
    print(f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    print(
        f"local store: {work}/<part>/local-<n>/store; S3 store: {s3_root}/<part>/s3-<n> at {s3['AWS_ENDPOINT_URL_S3']}"
    )
    results: dict[str, dict] = {}
    try:
        results["bikeshare"] = compare(
            "bikeshare", BIKESHARE_STEPS, BIKESHARE_SPEC, BIKESHARE_END, args.repeat, env, work, s3_root
        )
        if args.scale:
            began = time.perf_counter()
            spec, end = generate_scale(work / "data", args.rows_per_day, args.days, env)
            print(f"\nscale: data set generated in {time.perf_counter() - began:.0f} s", flush=True)
            results["scale"] = compare("scale", SCALE_STEPS, spec, end, args.repeat, env, work, s3_root)
    finally:
        if args.keep:
            print(f"kept: {work} and {s3_root}")
        else:
            subprocess.run(["rm", "-rf", str(work)], check=False)
            try:  # best effort: a server restarted meanwhile must not hide the figures
                print(f"removed {remove_prefix(s3, bucket, prefix)} objects under {s3_root}")
            except Exception as exc:  # noqa: BLE001
                print(f"could not remove {s3_root}: {exc}")
    after = os.getloadavg()
    print_table(
        "bikeshare, 28-day window ending 2011-07-01 (.ci/bikeshare-ci.yaml)",
        results["bikeshare"],
        args.repeat,
    )
    if "scale" in results:
        rows = args.rows_per_day * args.days
        print_table(
            f"scale, {rows:,} window rows ({args.rows_per_day:,} a day)", results["scale"], args.repeat
        )
    print(
        f"\nload average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "repeat": args.repeat,
                "cores": os.cpu_count(),
                "endpoint": s3["AWS_ENDPOINT_URL_S3"],
                "goal_s3_over_local_end_to_end": GOAL,
                "load_average_before": load,
                "load_average_after": after,
                "rows_per_day": args.rows_per_day if args.scale else None,
                "days": args.days if args.scale else None,
                **results,
            },
            indent=2,
        )
    )
    print(f"figures: {out}")


if __name__ == "__main__":
    main()
