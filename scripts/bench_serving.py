"""Serving benchmark: this server (`mlcycle serve`) against three anchors on the same model, one run.

    .venv-steps/bin/python scripts/bench_serving.py --model-uri models:/bikeshare@champion
    .venv-steps/bin/python scripts/bench_serving.py --model-uri path/to/model-folder --duration 5

The anchors serve the same fitted scikit-learn Pipeline: `mlflow models serve` (the step environment,
its default of one worker), Seldon MLServer with mlserver-sklearn and BentoML, each of these two in
its own virtual environment under .local/bench-envs/ (made on first use from
scripts/bench/requirements-<name>.txt; their pins conflict with the step environment's) with the
worker count its documentation recommends for the machine (one per core; the functions `mlserver`
and `bentoml` below cite the pages). Every server listens on 127.0.0.1 only.

Before anything is measured, all four are started together and must answer the same predictions
as the Pipeline in process, to 1e-6, on the same 1,000 rows and on the one-row request the load
uses; the run stops otherwise. Then each server runs alone (the others stopped) and wrk (Debian:
apt-get install -y wrk) measures, after a short warm-up that is not recorded:
- one-row requests at 4 and 16 connections: requests/s, p50, p99 (wrk --latency);
- 1,000-row requests at 2 connections: rows/s;
- this server with the prediction log on (the default) and off, one-row requests, 4 connections;
and, in process, the cost of one prediction on each path (Pipeline, ONNX fast path) and of the log.
Writes bench-results/serving.json and prints a table and the goal ratios. Ratios are taken within
the same run, so they hold on a busy machine better than the absolute figures do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
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
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BENCH = ROOT / "scripts" / "bench"
#: One virtual environment per anchor, made from scripts/bench/requirements-<name>.txt.
ANCHOR_ENVS = ROOT / ".local" / "bench-envs"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
#: Seconds of load each server gets after it is ready and before any measured run, so that no figure
#: includes a cold start (the first requests of a process, the prediction log writer's first file).
WARM_UP_S = 3
#: Largest difference allowed between two servers' predictions (regression); labels must be equal.
TOLERANCE = 1e-6
#: The goals the run is read against: (key, what, goal, higher is better).
GOALS = (
    (
        "one_row_c4_vs_best_anchor",
        "one-row req/s, 4 connections: this server / best of MLServer, BentoML",
        3.0,
        True,
    ),
    ("one_row_c4_vs_mlflow", "one-row req/s, 4 connections: this server / mlflow models serve", 60.0, True),
    ("rows_1000_vs_mlflow", "1,000-row rows/s: this server / mlflow models serve", 3.0, True),
    ("rows_1000_vs_best_anchor", "1,000-row rows/s: this server / best of MLServer, BentoML", 1.0, True),
    ("p99_ms_one_row_c4_log_on", "p99 ms, one-row requests, 4 connections, prediction log on", 5.0, False),
)


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


@dataclass
class Server:
    """One server under test: how to start it, when it is ready, and how to ask it for predictions."""

    name: str
    cmd: list[str]
    ready_url: str
    url: str
    #: The JSON body of a request for these rows, in this server's protocol.
    body: Callable[[list[dict]], str]
    #: The predictions in this server's answer.
    parse: Callable[[Any], list]
    workers: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


@contextmanager
def running(srv: Server, logs: Path):
    log = logs / f"{srv.name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            srv.cmd,
            env=srv.env,
            cwd=srv.cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            try:
                wait_ready(srv.ready_url, proc)
            except SystemExit as exc:
                raise SystemExit(f"{srv.name}: {exc} (its log: {log})") from None
            yield proc
        finally:
            stop_group(proc)


def descendants(pid: int) -> set[int]:
    """Every process under ``pid`` (from /proc): BentoML puts its workers in process groups of their own."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_group(proc: subprocess.Popen, seconds: float = 30) -> None:
    """SIGTERM the server's process group and wait until it and every process it started are gone:
    workers that outlive their parent would take CPU from the next server's measurements."""
    others = descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        proc.poll()
        if not alive(proc.pid) and not any(alive(pid) for pid in others):
            return
        time.sleep(0.1)
    for pid in [proc.pid, *others]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
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


def anchor_env(name: str) -> Path:
    """The bin folder of the anchor's virtual environment, made or updated from its requirements file
    when that file changed (a stamp of its hash sits in the environment)."""
    requirements = BENCH / f"requirements-{name}.txt"
    env_dir = ANCHOR_ENVS / name
    stamp = env_dir / ".requirements.sha"
    want = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    python = env_dir / "bin" / "python"
    if python.exists() and stamp.is_file() and stamp.read_text().strip() == want:
        return python.parent
    print(f"==> installing {name} into {env_dir} from {requirements.relative_to(ROOT)}", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if pip.returncode != 0:
        raise SystemExit(
            f"could not install {requirements.relative_to(ROOT)} into {env_dir}:\n{pip.stderr[-3000:]}"
        )
    stamp.write_text(want + "\n")
    return python.parent


def check_same_sklearn(name: str, bin_dir: Path) -> None:
    """The anchors unpickle the Pipeline this environment loaded: the same scikit-learn, or no run."""
    import sklearn

    theirs = subprocess.run(
        [str(bin_dir / "python"), "-c", "import sklearn; print(sklearn.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if theirs != sklearn.__version__:
        raise SystemExit(
            f"{name}'s environment has scikit-learn {theirs}, this one {sklearn.__version__}: pin "
            f"scikit-learn=={sklearn.__version__} in scripts/bench/requirements-{name}.txt"
        )


V2_TYPES = {"double": "FP64", "long": "INT64"}


def v2_request(schema, rows: list[dict]) -> str:
    """The Open Inference Protocol (V2) request MLServer decodes into a pandas DataFrame: one input
    per feature, strings as BYTES with the `str` content type."""
    inputs = []
    for f in schema.features:
        dtype = V2_TYPES.get(f.dtype, "BYTES")
        column = {"name": f.name, "shape": [len(rows)], "datatype": dtype, "data": [r[f.name] for r in rows]}
        if dtype == "BYTES":
            column["parameters"] = {"content_type": "str"}
        inputs.append(column)
    return json.dumps({"parameters": {"content_type": "pd"}, "inputs": inputs})


def mlserver(bin_dir: Path, model_file: Path, schema, base_env: dict[str, str], tmp: Path) -> Server:
    """MLServer with mlserver-sklearn on the Pipeline's joblib file. Workers: MLServer offloads
    inference to a pool of `parallel_workers` processes (default one); its documentation recommends
    sizing that pool to the cores available ("Parallel Inference",
    https://docs.seldon.ai/mlserver/user-guide/parallel-inference, and Seldon Core 2's performance
    tuning guide, https://docs.seldon.ai/seldon-core-2/user-guide/performance-tuning/models/inference:
    "adjust parallel_workers in line with the number of CPU cores")."""
    workers = cores()
    root = tmp / "mlserver"
    model_dir = root / "pipeline"
    model_dir.mkdir(parents=True)
    shutil.copy(model_file, model_dir / "model.joblib")
    (model_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "pipeline",
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib"},
            }
        )
    )
    port = free_port()
    (root / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": port,
                "grpc_port": free_port(),
                "metrics_port": free_port(),
                "parallel_workers": workers,
                "debug": False,
            }
        )
    )
    return Server(
        name="mlserver",
        cmd=[str(bin_dir / "mlserver"), "start", str(root)],
        ready_url=f"http://127.0.0.1:{port}/v2/models/pipeline/ready",
        url=f"http://127.0.0.1:{port}/v2/models/pipeline/infer",
        body=lambda rows: v2_request(schema, rows),
        parse=lambda answer: answer["outputs"][0]["data"],
        workers=f"{workers} (parallel_workers = cores)",
        env={**base_env, "PATH": f"{bin_dir}:{base_env['PATH']}"},
        cwd=root,
    )


def bentoml(bin_dir: Path, model_file: Path, schema, base_env: dict[str, str], tmp: Path) -> Server:
    """BentoML serving scripts/bench/bentoml_service.py (workers="cpu_count": see that file)."""
    port = free_port()
    return Server(
        name="bentoml",
        cmd=[
            str(bin_dir / "bentoml"),
            "serve",
            "bentoml_service:Pipeline",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        ready_url=f"http://127.0.0.1:{port}/readyz",
        url=f"http://127.0.0.1:{port}/predict",
        body=lambda rows: json.dumps({"rows": rows}),
        parse=lambda answer: answer,
        workers=f'{cores()} (workers="cpu_count")',
        env={
            **base_env,
            "PATH": f"{bin_dir}:{base_env['PATH']}",
            "BENTOML_HOME": str(tmp / "bentoml-home"),
            "BENTOML_DO_NOT_TRACK": "true",
            "BENCH_MODEL_JOBLIB": str(model_file),
            "BENCH_COLUMNS": ",".join(f.name for f in schema.features),
        },
        cwd=BENCH,
    )


def mlcycle_serve(name: str, folder: Path, env: dict[str, str]) -> Server:
    """This server (`mlcycle serve`) on a free port of 127.0.0.1, with its default workers."""
    port = free_port()
    return Server(
        name=name,
        cmd=[
            str(BIN / "mlcycle"),
            "serve",
            "--model-uri",
            str(folder),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        ready_url=f"http://127.0.0.1:{port}/ready",
        url=f"http://127.0.0.1:{port}/predict",
        body=lambda rs: json.dumps(rs[0] if len(rs) == 1 else rs),
        parse=lambda answer: answer["predictions"],
        workers=f"{cores()} (its default: one per core)",
        env=env,
    )


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def post(url: str, body: str) -> Any:
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())


def differences(name: str, got: list, want: list) -> tuple[float, int]:
    """The largest difference between ``got`` and ``want`` and its row; SystemExit on a different
    length, a non-number where the Pipeline answers a number, or a different label."""
    if len(got) != len(want):
        raise SystemExit(f"{name} answered {len(got)} predictions for {len(want)} rows")
    worst, where = 0.0, 0
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        if isinstance(b, (int, float)) and not isinstance(b, bool):
            if not isinstance(a, (int, float)) or not math.isfinite(float(a)):
                raise SystemExit(f"{name}: row {i} predicted {a!r}, the Pipeline {b!r}")
            if abs(float(a) - float(b)) > worst:
                worst, where = abs(float(a) - float(b)), i
        elif str(a) != str(b):
            raise SystemExit(f"{name}: row {i} predicted {a!r}, the Pipeline {b!r}")
    return worst, where


def check_parity(servers: list[Server], rows: list[dict], want: list, logs: Path) -> dict[str, float]:
    """Start every server at once and compare its answers, on ``rows`` and on the first row alone (the
    body the load sends), with the Pipeline's in process: the largest difference per server, or
    SystemExit naming the server and the row."""
    worst: dict[str, float] = {}
    with ExitStack() as stack:
        for srv in servers:
            stack.enter_context(running(srv, logs))
        for srv in servers:
            for sent, expected in ((rows, want), (rows[:1], want[:1])):
                got = srv.parse(post(srv.url, srv.body(sent)))
                diff, row = differences(srv.name, got, expected)
                if diff > TOLERANCE:
                    raise SystemExit(
                        f"{srv.name} answers {got[row]!r} for row {row} of {len(sent)}, the Pipeline "
                        f"{expected[row]!r} (difference {diff:.3g}, allowed {TOLERANCE}): the servers do "
                        "not serve the same model, so no figure would compare like with like"
                    )
                worst[srv.name] = max(worst.get(srv.name, 0.0), diff)
    return worst


def measure(srv: Server, rows: list[dict], duration: int, logs: Path, tmp: Path, extra=None) -> dict:
    """One server alone: warm-up (not recorded), one-row requests at 4 and 16 connections, 1,000-row
    requests at 2 connections; ``extra(runs)`` adds runs while it is up."""
    runs = {}
    one, many = srv.body(rows[:1]), srv.body(rows[:1000])
    with running(srv, logs):
        wrk(srv.url, one, 4, WARM_UP_S, tmp)  # not recorded: first requests, the log writer's start
        for c in (4, 16):
            runs[f"{srv.name}_one_row_c{c}"] = wrk(srv.url, one, c, duration, tmp)
        runs[f"{srv.name}_1000_rows_c2"] = wrk(srv.url, many, 2, duration, tmp)
        if extra:
            runs.update(extra())
    return runs


def goal_ratios(runs: dict, anchors: list[str]) -> dict[str, float | None]:
    def rps(name: str) -> float:
        return runs[name]["requests_per_s"]

    best_one = max((rps(f"{a}_one_row_c4") for a in anchors), default=None)
    best_many = max((rps(f"{a}_1000_rows_c2") for a in anchors), default=None)
    ours_one, ours_many = rps("ours_one_row_c4"), rps("ours_1000_rows_c2")
    return {
        "one_row_c4_vs_best_anchor": ours_one / best_one if best_one else None,
        "one_row_c4_vs_mlflow": ours_one / rps("mlflow_one_row_c4"),
        "rows_1000_vs_mlflow": ours_many / rps("mlflow_1000_rows_c2"),
        "rows_1000_vs_best_anchor": ours_many / best_many if best_many else None,
        "p99_ms_one_row_c4_log_on": runs["ours_one_row_c4"]["p99_ms"],
    }


def in_process(model, rows: list[dict]) -> dict[str, float]:
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
    parser.add_argument(
        "--model-uri",
        required=True,
        help="models:/<name>@<alias>, models:/<name>/<version> or a model folder",
    )
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument(
        "--anchors",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run MLServer and BentoML too (default); --no-anchors: mlflow models serve and this server only",
    )
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "serving.json"))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    if not 1 <= args.duration <= 120:
        raise SystemExit(f"--duration {args.duration}: give 1 to 120 seconds per wrk run")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import joblib

    from mlcycle.serving.fetch import resolve_model
    from mlcycle.serving.model import ServedModel, read_schema, sample_rows
    from mlcycle.settings import Settings

    settings = Settings.from_env()
    folder = resolve_model(args.model_uri, settings.home / "serving", settings.tracking_uri)
    schema = read_schema(folder)
    rows = sample_rows(schema, 1000, seed=1)
    model = ServedModel(folder)
    want = model._predict_pipeline(rows).predictions
    anchor_bins = {}
    if args.anchors:
        for name in ("mlserver", "bentoml"):
            anchor_bins[name] = anchor_env(name)
            check_same_sklearn(name, anchor_bins[name])
    results: dict = {
        "model_uri": args.model_uri,
        "model": str(folder),
        "duration_s": args.duration,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    results["in_process"] = in_process(model, rows)

    # mlflow models serve starts `uvicorn` from PATH: the step environment's.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "DO_NOT_TRACK": "1",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_name:
        tmp = Path(tmp_name)
        logs = tmp / "logs"
        logs.mkdir()
        model_file = tmp / "pipeline.joblib"
        joblib.dump(model.pipeline, model_file)  # the fitted Pipeline the anchors load
        mp = free_port()
        mlflow_serve = Server(
            name="mlflow",
            cmd=[
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
            ready_url=f"http://127.0.0.1:{mp}/ping",
            url=f"http://127.0.0.1:{mp}/invocations",
            body=lambda rs: json.dumps({"dataframe_records": rs}),
            parse=lambda answer: answer["predictions"],
            workers="1 (its default)",
            env=env,
        )

        def ours(log_flag: str) -> Server:
            return mlcycle_serve(
                "ours" if log_flag == "on" else "ours_log_off",
                folder,
                {**env, "MLCYCLE_STORE": str(tmp / f"store-{log_flag}"), "MLCYCLE_SERVING_LOG": log_flag},
            )

        anchors = [
            make(anchor_bins[name], model_file, schema, env, tmp)
            for name, make in (("mlserver", mlserver), ("bentoml", bentoml))
            if name in anchor_bins
        ]
        ours_on = ours("on")
        results["workers"] = {s.name: s.workers for s in (mlflow_serve, *anchors, ours_on)}
        results["max_abs_difference"] = check_parity([mlflow_serve, *anchors, ours_on], rows, want, logs)
        print(
            f"same predictions on {len(rows)} rows (to {TOLERANCE}):",
            json.dumps({k: float(f"{v:.3g}") for k, v in results["max_abs_difference"].items()}),
            flush=True,
        )

        runs: dict = {}
        for srv in (mlflow_serve, *anchors):
            runs.update(measure(srv, rows, args.duration, logs, tmp))
        invocations = ours_on.url.replace("/predict", "/invocations")
        runs.update(
            measure(
                ours_on,
                rows,
                args.duration,
                logs,
                tmp,
                extra=lambda: {
                    "ours_invocations_one_row_c4": wrk(
                        invocations, json.dumps({"dataframe_records": rows[:1]}), 4, args.duration, tmp
                    )
                },
            )
        )
        log_off = ours("off")
        with running(log_off, logs):
            wrk(log_off.url, log_off.body(rows[:1]), 4, WARM_UP_S, tmp)  # not recorded
            runs["ours_one_row_c4_log_off"] = wrk(log_off.url, log_off.body(rows[:1]), 4, args.duration, tmp)
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
    results["goals"] = goal_ratios(runs, [a.name for a in anchors])
    results["load_average_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")

    print(f"model: {args.model_uri} ({folder}), {results['cores']} cores, {args.duration} s per run")
    print("workers:", json.dumps(results["workers"]))
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
    print("goals (same run):")
    for key, what, goal, higher in GOALS:
        value = results["goals"][key]
        if value is None:
            print(f"  {what}: not measured (--no-anchors)")
            continue
        met = value >= goal if higher else value < goal
        print(
            f"  {what}: {value:.2f} (goal {'>=' if higher else '<'} {goal:g}: {'met' if met else 'MISSED'})"
        )
    print(f"load average before/after: {results['load_average']} / {results['load_average_after']}")
    failed = [name for name, v in runs.items() if v["non_2xx"]]
    if failed:
        print(f"non-2xx answers in {', '.join(failed)}: those figures do not count", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
