"""What the online lookup of history features costs a request, in one run.

The generated flight events (21 days, New York time) train two models through the real steps
(ingest, validate, build_features, train, each in its own process): one with the four history
features of the tests (three feature views: by zone, by carrier, by hour and carrier), and the
baseline without them. The history model's online store is materialized twice, into SQLite and into
Redis. Then this server (`mlcycle serve`, its default workers) serves each model alone and wrk sends
one-row requests of the day after the materialized one (the row's own columns only) at 4
connections: p50, p99 and requests/s of the baseline, of the history model on SQLite and on Redis;
the lookup's cost is the difference to the baseline in the same run. In process, the lookup alone of
one row (all three views) is timed in each store.

Usage: .venv-steps/bin/python scripts/bench_online.py [--duration 8] [--redis redis://127.0.0.1:6379/15]
(wrk: apt-get install -y wrk; the Redis database given is emptied first.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_scale import run_step  # noqa: E402
from bench_serving import WARM_UP_S, mlcycle_serve, running, wrk  # noqa: E402

from tests.datasets import EVENT_HISTORY_FEATURES, make_events_dataset  # noqa: E402

FIRST = dt.date(2023, 2, 27)
DAYS = 21
LAST = FIRST + dt.timedelta(days=DAYS - 1)  # the served day: the online store holds its eve
GOAL_P99_MS = 5.0
CONNECTIONS = 4


def specs(folder: Path) -> dict[str, Path]:
    base = make_events_dataset(folder, start=FIRST.isoformat(), days=DAYS)
    out = {}
    for label, features in (("baseline", None), ("history", EVENT_HISTORY_FEATURES)):
        raw = yaml.safe_load(base.read_text())
        raw["name"] = raw["model"]["registered_name"] = f"flights_{label}"
        raw["model"]["search"]["n_iter"] = 1
        if features:
            raw["features"] = features
        path = folder / f"flights_{label}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        out[label] = path
    return out


def interval(spec: Path, start: dt.date, end: dt.date) -> list[str]:
    return ["--pipeline", str(spec), "--start", start.isoformat(), "--end", end.isoformat()]


def train(spec: Path, env: dict[str, str], logs: Path) -> dict:
    day = interval(spec, LAST - dt.timedelta(days=1), LAST)
    figures = {}
    for name in ("ingest", "validate", "build_features", "train"):
        figures[name] = run_step(name, day, env, logs / f"{spec.stem}-{name}.log")
        print(f"  {spec.stem}: {name} {figures[name]['seconds']:.1f} s", flush=True)
    return figures["train"]["result"]


def served_rows(store: Path, spec_path: Path) -> list[dict]:
    """Rows of the window's last day as a client sends them (the row's own columns; for latency, what
    matters is that their entities are in the online store)."""
    from mlcycle.spec import EVENT_TIME, load_spec
    from mlcycle.store import Store

    spec = load_spec(spec_path)
    folder = Store(store, spec.name).features_dir(LAST)
    table = pd.read_parquet(folder / "eval.parquet")
    day = table[table[EVENT_TIME].dt.tz_convert(spec.timezone).dt.date == LAST - dt.timedelta(days=1)]
    rows = day[spec.row_feature_names].head(200)
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows.to_dict("records")
    ]


def lookup_in_process(history: dict, location: str, rows: list[dict], repeat: int = 3000) -> dict:
    from mlcycle.serving.online import open_online

    online = open_online(history, location)
    online.add(rows[:50])  # connections opened, caches warm
    times = []
    for i in range(repeat):
        row = [rows[i % len(rows)]]
        began = time.perf_counter_ns()
        online.add(row)
        times.append((time.perf_counter_ns() - began) / 1000)
    times.sort()
    return {"p50_us": times[len(times) // 2], "p99_us": times[int(len(times) * 0.99)]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument(
        "--redis", default="redis://127.0.0.1:6379/15", help="a Redis database to empty and use"
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "bench-results" / "online.json")
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    import redis

    redis.Redis.from_url(args.redis).flushdb()
    from mlcycle.feature_store import serving_history
    from mlcycle.spec import load_spec

    results: dict = {"connections": CONNECTIONS, "duration_s": args.duration, "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-online-") as tmp_name:
        tmp = Path(tmp_name)
        logs = tmp / "logs"
        logs.mkdir()
        env = {
            **os.environ,
            "MLCYCLE_HOME": str(tmp / "home"),
            "MLCYCLE_STORE": str(tmp / "store"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'home' / 'mlflow.db'}",
            "MLCYCLE_ARTIFACT_ROOT": (tmp / "home" / "artifacts").as_uri(),
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "GX_ANALYTICS_ENABLED": "false",
            "OMP_NUM_THREADS": "1",
        }
        for name in ("MLCYCLE_WARM", "MLCYCLE_ONLINE_STORE"):
            env.pop(name, None)
        paths = specs(tmp / "data")
        print("training both models through the steps ...", flush=True)
        trained = {label: train(path, env, logs) for label, path in paths.items()}
        materialized = interval(paths["history"], LAST - dt.timedelta(days=8), LAST)
        for store_env in ({}, {"MLCYCLE_ONLINE_STORE": args.redis}):
            done = run_step("materialize", materialized, {**env, **store_env}, logs / "materialize.log")
            print(f"  materialize ({store_env or 'sqlite'}): {done['seconds']:.1f} s", flush=True)

        rows = served_rows(tmp / "store", paths["history"])
        history = serving_history(load_spec(paths["history"]))
        sqlite_file = str(tmp / "store" / "flights_history" / "feast" / "online.db")
        results["lookup_in_process"] = {
            "sqlite": lookup_in_process(history, sqlite_file, rows),
            "redis": lookup_in_process(history, args.redis, rows),
        }
        print("in process, one row's lookup (3 views):", json.dumps(results["lookup_in_process"]), flush=True)

        import mlflow

        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        folders = {
            label: Path(
                mlflow.artifacts.download_artifacts(t["model_uri"], dst_path=str(tmp / "serving" / label))
            )
            for label, t in trained.items()
        }
        body = json.dumps(rows[0])
        runs = {}
        for label, folder, extra in (
            ("baseline", folders["baseline"], {}),
            ("history_sqlite", folders["history"], {}),
            ("history_redis", folders["history"], {"MLCYCLE_ONLINE_STORE": args.redis}),
        ):
            srv = mlcycle_serve(label, folder, {**env, "MLCYCLE_SERVING_LOG": "off", **extra})
            with running(srv, logs):
                meta = json.loads(urlopen(srv.url.replace("/predict", "/metadata"), timeout=10).read())
                wrk(srv.url, body, CONNECTIONS, WARM_UP_S, tmp)
                figures = [wrk(srv.url, body, CONNECTIONS, args.duration, tmp) for _ in range(2)]
            best = min(figures, key=lambda f: f["p99_ms"])
            if any(f["non_2xx"] for f in figures):
                raise SystemExit(f"{label}: non-2xx answers under load (its log: {logs / (label + '.log')})")
            runs[label] = {**best, "inference_path": meta["inference_path"]}
            print(
                f"  {label:<16} p50 {best['p50_ms']:.2f} ms  p99 {best['p99_ms']:.2f} ms  "
                f"{best['requests_per_s']:.0f} req/s  ({meta['inference_path']} path)",
                flush=True,
            )
        results["servers"] = runs

    base = runs["baseline"]
    print(f"\none-row requests at {CONNECTIONS} connections (the better of two {args.duration} s wrk runs):")
    for label in ("history_sqlite", "history_redis"):
        got = runs[label]
        print(
            f"  {label}: p50 {got['p50_ms']:.2f} ms (+{got['p50_ms'] - base['p50_ms']:.2f} over the baseline's "
            f"{base['p50_ms']:.2f}), p99 {got['p99_ms']:.2f} ms (+{got['p99_ms'] - base['p99_ms']:.2f} over "
            f"{base['p99_ms']:.2f}); goal p99 under {GOAL_P99_MS} ms: "
            f"{'met' if got['p99_ms'] < GOAL_P99_MS else 'NOT met'}"
        )
    print(f"  median load average during the run: {statistics.median(os.getloadavg()):.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
