"""Serving benchmark: `mlflow models serve` and `mlcycle serve` on the same model, side by side, one run.

    .venv-steps/bin/python scripts/bench_serving.py --model-uri models:/bikeshare@champion
    .venv-steps/bin/python scripts/bench_serving.py --model-uri path/to/model-folder --duration 5

Needs wrk (Debian: apt-get install -y wrk). Measures, with each server's default worker count:
- after a short warm-up of each server (not recorded), one-row requests at 4 and 16 connections: requests/s, p50, p99 (wrk --latency);
- 1,000-row requests at 2 connections: rows/s;
- in-process cost of one prediction on each path (Pipeline, ONNX fast path), median of many;
- the prediction log's cost: this server with the log on and off, one-row requests, 4 connections.
Writes bench-results/serving.json and prints a table. Ratios are taken within the same run, so
they hold on a busy machine better than the absolute figures do.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
#: Seconds of load each server gets after it is ready and before any measured run, so that no figure
#: includes a cold start (the first requests of a process, the prediction log writer's first file).
WARM_UP_S = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({proc.returncode}) before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} not ready after {seconds} s")


@contextmanager
def server(cmd: list[str], ready_url: str, env: dict[str, str], log: Path):
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_ready(ready_url, proc)
            yield proc
        finally:
            stop_group(proc)


def stop_group(proc: subprocess.Popen, seconds: float = 30) -> None:
    """SIGTERM the server's process group and wait until every process of it is gone: workers that
    outlive their parent would take CPU from the next server's measurements."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wrk(url: str, body: str, connections: int, duration: int, tmp: Path) -> dict[str, float]:
    body_file = tmp / f"body-{abs(hash(body))}.json"
    body_file.write_text(body)
    script = tmp / "post.lua"
    script.write_text(
        'local f = io.open(os.getenv("WRK_BODY"), "rb"); wrk.body = f:read("*a"); f:close()\n'
        'wrk.method = "POST"; wrk.headers["Content-Type"] = "application/json"\n'
    )
    proc = subprocess.run(
        [
            "wrk",
            f"-t{min(2, connections)}",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        env={**os.environ, "WRK_BODY": str(body_file)},
    )
    text = proc.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    lat = {
        p: float(v) * UNITS[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    }
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {
        "requests_per_s": rps,
        "p50_ms": lat.get("50"),
        "p99_ms": lat.get("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def in_process(folder: Path, rows: list[dict]) -> dict[str, float]:
    from mlcycle.serving.model import ServedModel

    model = ServedModel(folder)
    out = {"inference_path": model.path}
    one = rows[:1]
    for name, fn in (
        ("pipeline_one_row_us", model._predict_pipeline),
        ("onnx_one_row_us", model._predict_onnx if model.session else None),
    ):
        if fn is None:
            continue
        for _ in range(5):
            fn(one)
        times = []
        for _ in range(200 if "onnx" in name else 40):
            t = time.perf_counter()
            fn(one)
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times) * 1e6
    for name, fn in (
        ("pipeline_1000_rows_ms", model._predict_pipeline),
        ("onnx_1000_rows_ms", model._predict_onnx if model.session else None),
    ):
        if fn is None:
            continue
        times = []
        for _ in range(10):
            t = time.perf_counter()
            fn(rows[:1000])
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times) * 1e3
    out.update(log_cost(model, one))
    return out


def log_cost(model, one: list[dict]) -> dict[str, float]:
    """What the prediction log adds to a request: the append on the request path (the write is off it,
    in the writer process, which is started and ready before the clock starts)."""
    import datetime as dt

    from mlcycle.serving.predlog import LoggedRequest, PredictionLog

    with tempfile.TemporaryDirectory() as tmp:
        plog = PredictionLog(
            Path(tmp),
            "bench",
            model.info.name,
            model.info.version,
            model.names,
            flush_rows=10_000,
            flush_seconds=3600,
        )
        pred = model.predict(one).predictions
        plog.flush()  # the writer process is up
        times = []
        for i in range(5_000):
            t = time.perf_counter()
            plog.append(LoggedRequest(f"r{i}", dt.datetime.now(dt.UTC), "predict", one, pred, None, 0.1))
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        plog.flush()
        written = time.perf_counter() - t
        plog.close()
        return {
            "log_append_us": statistics.median(times) * 1e6,
            "log_write_5000_rows_ms": written * 1e3,
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "serving.json"))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from mlcycle.serving.fetch import resolve_model
    from mlcycle.serving.model import read_schema, sample_rows
    from mlcycle.settings import Settings

    settings = Settings.from_env()
    folder = resolve_model(args.model_uri, settings.home / "serving", settings.tracking_uri)
    schema = read_schema(folder)
    rows = sample_rows(schema, 1000, seed=1)
    one, many = json.dumps(rows[0]), json.dumps(rows)
    results: dict = {
        "model": str(folder),
        "duration_s": args.duration,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    results["in_process"] = in_process(folder, rows)

    # mlflow models serve starts `uvicorn` from PATH: the step environment's.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_name:
        tmp = Path(tmp_name)
        store = tmp / "store"
        mp, op = free_port(), free_port()
        runs: dict = {}
        with server(
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                str(folder),
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "-p",
                str(mp),
            ],
            f"http://127.0.0.1:{mp}/ping",
            env,
            tmp / "mlflow.log",
        ):
            url = f"http://127.0.0.1:{mp}/invocations"
            wrk(url, json.dumps({"dataframe_records": [rows[0]]}), 4, WARM_UP_S, tmp)  # not recorded
            for c in (4, 16):
                runs[f"mlflow_one_row_c{c}"] = wrk(
                    url, json.dumps({"dataframe_records": [rows[0]]}), c, args.duration, tmp
                )
            runs["mlflow_1000_rows_c2"] = wrk(
                url, json.dumps({"dataframe_records": rows}), 2, args.duration, tmp
            )
        for log_flag in ("on", "off"):
            with server(
                [str(BIN / "mlcycle"), "serve", "--model-uri", str(folder), "--port", str(op)],
                f"http://127.0.0.1:{op}/ready",
                {**env, "MLCYCLE_STORE": str(store), "MLCYCLE_SERVING_LOG": log_flag},
                tmp / f"ours-{log_flag}.log",
            ):
                url = f"http://127.0.0.1:{op}/predict"
                wrk(url, one, 4, WARM_UP_S, tmp)  # not recorded: first requests, the log writer's start
                if log_flag == "on":
                    for c in (4, 16):
                        runs[f"ours_one_row_c{c}"] = wrk(url, one, c, args.duration, tmp)
                    runs["ours_invocations_one_row_c4"] = wrk(
                        f"http://127.0.0.1:{op}/invocations",
                        json.dumps({"dataframe_records": [rows[0]]}),
                        4,
                        args.duration,
                        tmp,
                    )
                    runs["ours_1000_rows_c2"] = wrk(url, many, 2, args.duration, tmp)
                else:
                    runs["ours_one_row_c4_log_off"] = wrk(url, one, 4, args.duration, tmp)
        results["runs"] = runs
    r = runs
    results["ratios"] = {
        "one_row_c4_requests": r["ours_one_row_c4"]["requests_per_s"]
        / r["mlflow_one_row_c4"]["requests_per_s"],
        "one_row_c16_requests": r["ours_one_row_c16"]["requests_per_s"]
        / r["mlflow_one_row_c16"]["requests_per_s"],
        "rows_1000": r["ours_1000_rows_c2"]["requests_per_s"] / r["mlflow_1000_rows_c2"]["requests_per_s"],
        "log_on_over_off": r["ours_one_row_c4"]["requests_per_s"]
        / r["ours_one_row_c4_log_off"]["requests_per_s"],
    }
    results["load_average_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'run':34} {'req/s':>10} {'rows/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>7}")
    for name, v in runs.items():
        rows_s = v["requests_per_s"] * (1000 if "1000" in name else 1)
        print(
            f"{name:34} {v['requests_per_s']:10.1f} {rows_s:10.0f} {v['p50_ms'] or 0:8.2f} {v['p99_ms'] or 0:8.2f} "
            f"{v['non_2xx']:7d}"
        )
    print(
        "in-process:",
        json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in results["in_process"].items()}),
    )
    print("ratios (same run):", json.dumps({k: round(v, 2) for k, v in results["ratios"].items()}))
    print(f"load average before/after: {results['load_average']} / {results['load_average_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
