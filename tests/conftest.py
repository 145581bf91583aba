"""Shared test fixtures: paths of the project and its two environments."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_BIN = ROOT / ".venv" / "bin"
STEPS_BIN = ROOT / ".venv-steps" / "bin"
BIKESHARE_CSV = ROOT / "include" / "data" / "bikeshare" / "bikeshare_hourly_2011.csv"

sys.path.insert(0, str(ROOT / "dags"))  # the DAG helper package, as Airflow puts dags/ on the path
sys.path.insert(0, str(ROOT / "plugins"))  # the timetable plugin the DAG files import, likewise


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


def _unavailable(what: str, reason: str, required_by: str) -> None:
    """Skip on a machine without ``what`` (a laptop), but fail where CI requires it."""
    import os

    if os.environ.get(required_by) == "1":
        pytest.fail(f"{what} is required here ({required_by}=1) but unavailable: {reason}")
    pytest.skip(f"{what} unavailable: {reason}")


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """The step image's name, once a Docker daemon answers and the image exists."""
    import os
    import shutil
    import subprocess

    image = os.environ.get("MLCYCLE_STEP_IMAGE", "mlcycle-steps:0.1.0")
    if not shutil.which("docker"):
        _unavailable("Docker", "no docker client on PATH", "MLCYCLE_REQUIRE_DOCKER")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        _unavailable("Docker", "the daemon does not answer (scripts/docker-engine.sh starts one)",
                     "MLCYCLE_REQUIRE_DOCKER")
    found = subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True, timeout=30)
    if found.returncode != 0:
        _unavailable("Docker", f"image {image} is missing (make images builds it)", "MLCYCLE_REQUIRE_DOCKER")
    return image


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """A DSN of the local PostgreSQL server, once it accepts connections."""
    import os
    import socket

    dsn = os.environ.get("MLCYCLE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=3).close()
    except OSError as exc:
        _unavailable("PostgreSQL", f"nothing listens on 127.0.0.1:5432 ({exc})", "MLCYCLE_REQUIRE_POSTGRES")
    return dsn


@pytest.fixture
def redis_url() -> str:
    """``redis://`` URL of an emptied database of a real Redis server: ``MLCYCLE_TEST_REDIS_URL``, else
    127.0.0.1:6379, database 10 plus the xdist worker's number (workers never share one). Skips where
    no Redis answers (fails with MLCYCLE_REQUIRE_REDIS=1; .ci/run starts Debian's redis-server)."""
    import os

    import redis

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    url = os.environ.get("MLCYCLE_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{10 + int(worker or 0)}")
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.flushdb()
    except (redis.RedisError, OSError) as exc:
        _unavailable("Redis", f"{url} does not answer ({exc})", "MLCYCLE_REQUIRE_REDIS")
    yield url
    client.flushdb()


@pytest.fixture(scope="session")
def s3_env() -> dict[str, str]:
    """The client environment of a real S3-compatible server (SeaweedFS) and its test bucket.

    What it holds: ``AWS_ENDPOINT_URL_S3``, the credentials, ``AWS_REGION`` and
    ``MLCYCLE_TEST_S3_BUCKET``. Uses the server the environment names (as `.ci/run` exports after
    ``scripts/seaweedfs.sh start``); otherwise starts SeaweedFS through that script when its binary
    is installed. Skips where there is none (fails with MLCYCLE_REQUIRE_S3=1). ``os.environ`` is
    left as it is: tests hand this mapping to what they start.
    """
    import os
    import subprocess

    names = ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
             "MLCYCLE_TEST_S3_BUCKET")
    if os.environ.get("AWS_ENDPOINT_URL_S3") and os.environ.get("MLCYCLE_TEST_S3_BUCKET"):
        return {name: os.environ[name] for name in names if name in os.environ}
    if not (ROOT / ".local" / "seaweedfs" / "bin" / "weed").exists():
        _unavailable("S3", "no server named by AWS_ENDPOINT_URL_S3 and SeaweedFS is not installed "
                     "(scripts/seaweedfs.sh start installs and starts it)", "MLCYCLE_REQUIRE_S3")
    started = subprocess.run(["bash", str(ROOT / "scripts" / "seaweedfs.sh"), "start"],
                             capture_output=True, text=True, timeout=300)
    if started.returncode != 0:
        _unavailable("S3", f"scripts/seaweedfs.sh start failed: {started.stderr[-2000:]}", "MLCYCLE_REQUIRE_S3")
    env = {}
    for line in started.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value
    return env



def s3_client(env: dict[str, str]):
    """A boto3 S3 client of the server ``env`` names (the ``s3_env`` mapping)."""
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name=env["AWS_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


_SUITE_STARTED = __import__("time").monotonic()
_SPENT: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A line per finished scenario test (and per failure anywhere), with its time and the suite's.

    The integration run prints dots; a CI log cut short by its time limit would then say nothing of
    where the time went. These lines do, as each test ends:
    ``[  812s]   45.2s done tests/integration/...::test_x`` (setup, call and teardown together).
    Printed by the controller only (pytest-xdist forwards the workers' reports to it).
    """
    import os
    import time

    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    spent = _SPENT[report.nodeid] = _SPENT.get(report.nodeid, 0.0) + report.duration
    if not (report.failed or (report.when == "teardown" and "tests/integration/" in report.nodeid)):
        return
    outcome = f"FAILED in {report.when}" if report.failed else "done"
    print(f"\n[{time.monotonic() - _SUITE_STARTED:6.0f}s] {spent:6.1f}s {outcome} {report.nodeid}", flush=True)
