"""schemathesis against a real server (uvicorn on a free port) and its own OpenAPI document.

Every check (``--checks all``: no 5xx, status codes, content types, headers and bodies conform to
the document, schema-valid requests accepted and schema-violating ones refused) on a bounded budget
of examples per operation (``MLCYCLE_FUZZ_EXAMPLES``, seed ``MLCYCLE_FUZZ_SEED``). What the document
cannot express is declared, with its reason, in ``schemathesis.toml`` beside this file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.serving.conftest import free_port, wait_ready

EXAMPLES = int(os.environ.get("MLCYCLE_FUZZ_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def server_url(bike_model, tmp_path_factory):
    _, folder, _ = bike_model
    port = free_port()
    env = os.environ | {
        "MLCYCLE_SERVING_MODEL": str(folder),
        "MLCYCLE_STORE": str(tmp_path_factory.mktemp("fuzzstore")),
        "MLCYCLE_SERVING_MAX_BODY_BYTES": str(256 * 1024),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "mlcycle.serving.app:app_from_env",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_schemathesis_finds_nothing(server_url, tmp_path):
    cli = Path(sys.executable).with_name("schemathesis")
    proc = subprocess.run(
        [
            str(cli),
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            f"{server_url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            os.environ.get("MLCYCLE_FUZZ_SEED", "1"),
            "--no-color",
            "--suppress-health-check",
            "all",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=os.environ | {"SCHEMATHESIS_HOOKS": ""},
    )
    assert proc.returncode == 0, proc.stdout[-30000:] + proc.stderr[-2000:]
    assert "No issues found" in proc.stdout or "passed" in proc.stdout.lower(), proc.stdout[-3000:]
