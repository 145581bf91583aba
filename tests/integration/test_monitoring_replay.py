"""Replayed traffic through the real server reaches monitoring: `mlcycle replay` -> `mlcycle serve` -> monitor.

A champion of the generated classification set is served by ``mlcycle serve`` (the prediction log
on). ``mlcycle replay`` sends one past day's rows at a set rate; each request states the day
(``X-Event-Date``), so after a graceful stop the log holds exactly that day's rows under
``predictions/date=<day>``, and the ``monitor`` step judges those served rows, not the validated batch.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import time

import pytest

from tests.conftest import STEPS_BIN
from tests.datasets import make_classification_dataset
from tests.integration.airflow_env import free_port
from tests.integration.test_serving import _env, _probe, _step, _train_champion, _wait

pytestmark = [pytest.mark.integration]

START = dt.date(2011, 3, 1)
TRAIN_END = START + dt.timedelta(days=12)
REPLAYED = TRAIN_END + dt.timedelta(days=2)
RATE = 40.0  # rows per second: the day's 24 rows take about 0.6 s


def test_replayed_day_is_logged_under_its_date_and_monitored_from_the_log(tmp_path):
    env = _env(tmp_path / "home")
    spec = make_classification_dataset(tmp_path / "data", days=16, start=START.isoformat())
    _train_champion(env, spec, TRAIN_END, 12)
    day = [
        "--pipeline",
        str(spec),
        "--start",
        REPLAYED.isoformat(),
        "--end",
        (REPLAYED + dt.timedelta(days=1)).isoformat(),
        "--window-days",
        "1",
    ]
    _step(env, "ingest", *day)
    _step(env, "validate", *day)

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [
            str(STEPS_BIN / "mlcycle"),
            "serve",
            "--model-uri",
            "models:/synthclass@champion",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait(f"http://127.0.0.1:{port}/ready", 180, lambda: server.poll() is None)
        began = time.monotonic()
        replayed = _step(
            env,
            "replay",
            "--pipeline",
            str(spec),
            "--date",
            REPLAYED.isoformat(),
            "--rate",
            str(RATE),
            "--url",
            f"http://127.0.0.1:{port}",
        )
        sent_in = time.monotonic() - began
    finally:
        server.send_signal(signal.SIGTERM)  # a graceful stop writes what the log still buffers
        server.wait(timeout=60)
        log.close()
    assert replayed["rows"] == 24 and replayed["requests"] == 24 and replayed["rejected"] == 0, replayed
    assert replayed["model_version"] == "1"
    assert replayed["seconds"] >= 23 / RATE * 0.95 and sent_in < 60, replayed  # paced, not a burst

    folder = tmp_path / "home" / "store" / "synthclass" / "predictions"
    assert [p.name for p in folder.iterdir()] == [f"date={REPLAYED.isoformat()}"]
    logged = _probe(
        env,
        f"""
import glob, json, pyarrow.parquet as pq
files = glob.glob({str(folder / f"date={REPLAYED.isoformat()}")!r} + "/part-*.parquet")
print(json.dumps({{"rows": sum(pq.read_metadata(f).num_rows for f in files)}}))
""",
    )
    assert logged["rows"] == 24

    monitored = _step(env, "monitor", *day)
    assert monitored["source"] == "predictions" and monitored["rows"] == 24, monitored
    assert monitored["model_version"] == "1" and monitored["status"] in ("ok", "drift", "decay")
