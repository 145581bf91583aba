"""The serving image against the real thing: a registry filled by the real steps, a real Docker engine.

For bikeshare (HistGradientBoosting, regression) and the generated classification data set
(logistic regression), with no code change between them:
- the image built by ``mlcycle serving-image`` answers the evaluation slice exactly like
  ``mlflow.pyfunc.load_model(models:/<name>@champion).predict`` (1e-6), on the ONNX fast path;
- ``/invocations`` answers like a real ``mlflow models serve --env-manager local`` on the same payloads;
- after a bounded burst and a graceful stop (SIGTERM), the prediction log holds every row sent.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import STEPS_BIN
from tests.datasets import BIKESHARE_SPEC, LEAN_MODEL, make_classification_dataset, write_spec_variant
from tests.integration.airflow_env import free_port

pytestmark = [pytest.mark.integration, pytest.mark.docker]

BURST = 200


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLCYCLE", "MLFLOW"))}
    env.update(
        {
            "MLCYCLE_HOME": str(home),
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
            "MLCYCLE_ARTIFACT_ROOT": (home / "mlflow" / "artifacts").as_uri(),
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "DO_NOT_TRACK": "1",
            "OMP_NUM_THREADS": "1",
            # The training steps fork from the warm step server (tests/integration/airflow_env.py
            # says why): the six steps of each case skip their imports.
            "MLCYCLE_WARM": "1",
            "MLCYCLE_WARM_IDLE_SECONDS": "300",
        }
    )
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    return env


def _step(env: dict[str, str], *args: str) -> dict:
    proc = subprocess.run(
        [str(STEPS_BIN / "mlcycle"), *args], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"mlcycle {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _probe(env: dict[str, str], code: str) -> dict:
    proc = subprocess.run(
        [str(STEPS_BIN / "python"), "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _train_champion(env: dict[str, str], spec: Path, end: dt.date, window: int) -> dict:
    start = end - dt.timedelta(days=1)
    common = [
        "--pipeline",
        str(spec),
        "--start",
        start.isoformat(),
        "--end",
        end.isoformat(),
        "--window-days",
        str(window),
    ]
    for step in ("ingest", "validate"):
        _step(env, step, *common)
    features = _step(env, "build_features", *common)
    trained = _step(env, "train", *common)
    _step(env, "evaluate", *common, "--run-id", trained["run_id"], "--model-uri", trained["model_uri"])
    registered = _step(
        env,
        "register",
        "--pipeline",
        str(spec),
        "--run-id",
        trained["run_id"],
        "--model-uri",
        trained["model_uri"],
    )
    assert registered["champion_version"] == registered["version"], registered
    return {"features": features, "trained": trained, "registered": registered}


def _reference(env: dict[str, str], name: str, eval_path: str, features: list[str]) -> dict:
    """The eval slice as JSON records, and what MLflow's own pyfunc predicts for it."""
    return _probe(
        env,
        f"""
import json, math
import mlflow, pandas as pd
df = pd.read_parquet({eval_path!r})[{features!r}]
pred = mlflow.pyfunc.load_model("models:/{name}@champion").predict(df)
rows = [{{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}}
        for r in json.loads(df.to_json(orient="records"))]
print(json.dumps({{"rows": rows, "predictions": [p.item() if hasattr(p, "item") else p for p in pred]}}))
""",
    )


def _http(url: str, payload=None, timeout: float = 30) -> tuple[int, dict]:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _wait(url: str, seconds: float, proc_alive=lambda: True) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if not proc_alive():
            break
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer 200 within {seconds} s")


def _run_serving_container(tag: str, container: str, port: int, *options: str) -> None:
    """Start the serving image ``tag`` as ``container`` on 127.0.0.1:``port`` (host network, this
    user), with extra ``docker run`` options."""
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            container,
            "--network",
            "host",
            "--user",
            f"{os.getuid()}:{os.getgid()}",
            "-e",
            "MLCYCLE_SERVING_HOST=127.0.0.1",
            "-e",
            f"MLCYCLE_SERVING_PORT={port}",
            *options,
            tag,
        ],
        check=True,
        capture_output=True,
    )


def _close(expected, got, classification: bool) -> None:
    assert len(expected) == len(got)
    if classification:
        assert [str(v) for v in expected] == [str(v) for v in got]
    else:
        worst = max(abs(a - b) for a, b in zip(expected, got, strict=True))
        assert worst <= 1e-6, f"largest difference {worst}"


def _cases(tmp: Path) -> dict[str, tuple[Path, dt.date, int, str, bool]]:
    bike = write_spec_variant(
        BIKESHARE_SPEC,
        tmp / "bikeshare.yaml",
        model=LEAN_MODEL,
        window={"days": 14},
    )
    clf = make_classification_dataset(tmp / "clf", days=30)
    return {
        "bikeshare": (bike, dt.date(2011, 6, 30), 14, "bikeshare", False),
        "synthclass": (clf, dt.date(2011, 3, 30), 12, "synthclass", True),
    }


@pytest.mark.parametrize("case", ["bikeshare", "synthclass"])
def test_image_answers_like_mlflow_and_logs_every_row(case, tmp_path, docker_engine):
    spec, end, window, name, classification = _cases(tmp_path)[case]
    env = _env(tmp_path / "home")
    run = _train_champion(env, spec, end, window)
    features = _probe(
        env,
        f"import json; from mlcycle.spec import load_spec; "
        f"print(json.dumps(load_spec({str(spec)!r}).feature_names))",
    )
    ref = _reference(env, name, str(Path(run["features"]["path"]) / "eval.parquet"), features)

    tag = f"mlcycle-serving-{name}-test:{uuid.uuid4().hex[:8]}"
    built = _step(
        env, "serving-image", "--pipeline", str(spec), "--model-uri", f"models:/{name}@champion", "--tag", tag
    )
    store = tmp_path / "store"
    store.mkdir()
    port = free_port()
    container = f"serving-test-{uuid.uuid4().hex[:8]}"
    try:
        assert built["model_version"] == run["registered"]["version"] and built["reused"] is False
        labels = json.loads(
            subprocess.run(
                ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", tag],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert labels["io.mlcycle.model.run_id"] == run["trained"]["run_id"]
        assert labels["io.mlcycle.model.fingerprint"] == run["trained"]["fingerprint"]
        again = _step(
            env,
            "serving-image",
            "--pipeline",
            str(spec),
            "--model-uri",
            f"models:/{name}@champion",
            "--tag",
            tag,
        )
        assert again["reused"] is True and again["image_id"] == built["image_id"]

        _run_serving_container(
            tag,
            container,
            port,
            "-v",
            f"{store}:/store",
            "-e",
            "MLCYCLE_STORE=/store",
            "-e",
            "MLCYCLE_SERVING_WORKERS=2",
            "-e",
            "MLCYCLE_SERVING_LOG_FLUSH_SECONDS=3600",
        )
        base = f"http://127.0.0.1:{port}"
        _wait(f"{base}/ready", 120)
        status, meta = _http(f"{base}/metadata")
        assert status == 200 and meta["model_version"] == run["registered"]["version"]
        assert meta["inference_path"] == "onnx", meta["inference_path_reason"]
        assert (
            meta["run_id"] == run["trained"]["run_id"]
            and meta["data_fingerprint"] == run["trained"]["fingerprint"]
        )

        # The whole evaluation slice in one request, then row by row: same as MLflow's pyfunc.
        status, body = _http(f"{base}/predict", ref["rows"])
        assert status == 200, body
        _close(ref["predictions"], body["predictions"], classification)
        singles = [_http(f"{base}/predict", row)[1]["predictions"][0] for row in ref["rows"][:20]]
        _close(ref["predictions"][:20], singles, classification)

        # A bounded burst from 8 clients, then a graceful stop: every row must be in the log.
        rows = [ref["rows"][i % len(ref["rows"])] for i in range(BURST)]
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda r: _http(f"{base}/predict", r)[0], rows))
        assert statuses == [200] * BURST
        bad, _ = _http(f"{base}/predict", {"nope": 1})
        assert bad == 422
        sent = len(ref["rows"]) + 20 + BURST
        subprocess.run(["docker", "stop", "-t", "30", container], check=True, capture_output=True)
        logged = _probe(
            env,
            f"""
import glob, json
import pyarrow.parquet as pq
files = glob.glob({str(store)!r} + "/{name}/predictions/date=*/part-*.parquet")
tables = [pq.read_table(f) for f in files]
print(json.dumps({{"rows": sum(t.num_rows for t in tables), "files": len(files),
                   "versions": sorted({{v for t in tables for v in t.column("model_version").to_pylist()}})}}))
""",
        )
        assert logged["rows"] == sent, logged
        assert logged["versions"] == [run["registered"]["version"]]
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)

    _compare_with_mlflow_models_serve(env, name, ref["rows"][:10], classification, tmp_path)


def _compare_with_mlflow_models_serve(
    env: dict[str, str], name: str, rows: list[dict], classification: bool, tmp: Path
) -> None:
    """Same payloads to ``mlflow models serve`` and to ``mlcycle serve`` (same model URI): same answers."""
    cols = list(rows[0])
    payloads = {
        "dataframe_split": {
            "dataframe_split": {"columns": cols, "data": [[r[c] for c in cols] for r in rows]}
        },
        "dataframe_records": {"dataframe_records": rows},
        "instances": {"instances": rows},
        "inputs": {"inputs": rows},
    }
    ports = free_port(), free_port()
    log_ref, log_ours = (tmp / "mlflow-serve.log").open("w"), (tmp / "mlcycle-serve.log").open("w")
    reference = subprocess.Popen(
        [
            str(STEPS_BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{name}@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "-p",
            str(ports[0]),
            "--workers",
            "1",
        ],
        env={**env, "PATH": f"{STEPS_BIN}:{env['PATH']}"},
        stdout=log_ref,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ours = subprocess.Popen(
        [
            str(STEPS_BIN / "mlcycle"),
            "serve",
            "--model-uri",
            f"models:/{name}@champion",
            "--port",
            str(ports[1]),
            "--workers",
            "1",
        ],
        env={**env, "MLCYCLE_SERVING_LOG": "off"},
        stdout=log_ours,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait(f"http://127.0.0.1:{ports[0]}/ping", 180, lambda: reference.poll() is None)
        _wait(f"http://127.0.0.1:{ports[1]}/ready", 180, lambda: ours.poll() is None)
        for kind, payload in payloads.items():
            s_ref, a_ref = _http(f"http://127.0.0.1:{ports[0]}/invocations", payload)
            s_ours, a_ours = _http(f"http://127.0.0.1:{ports[1]}/invocations", payload)
            assert s_ref == s_ours == 200, (kind, a_ref, a_ours)
            assert list(a_ref) == list(a_ours) == ["predictions"], kind
            _close(a_ref["predictions"], a_ours["predictions"], classification)
    finally:
        for proc in (reference, ours):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        log_ref.close()
        log_ours.close()
