"""Every step process caps its own memory: a runaway step fails with a message, not the worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mlcycle import memory
from tests.datasets import make_classification_dataset, write_spec_variant
from tests.unit.conftest import step_env

#: A transform that asks for 6 GiB of address space (never touched: without a limit it succeeds at once).
RUNAWAY = """
import numpy as np


def grow(frame):
    frame.attrs["ballast"] = np.empty(6 << 30, dtype=np.uint8)
    return frame
"""


def _ingest(tmp_path, limit: str) -> subprocess.CompletedProcess:
    spec = make_classification_dataset(tmp_path / "data", days=3)
    (tmp_path / "data" / "runaway.py").write_text(RUNAWAY)
    variant = write_spec_variant(
        spec, tmp_path / "data" / "runaway.yaml", transform=str(tmp_path / "data" / "runaway.py") + ":grow"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLCYCLE", "MLFLOW", "AIRFLOW"))}
    env.update(step_env(tmp_path), MLCYCLE_STEP_MEMORY_LIMIT=limit)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mlcycle",
            "ingest",
            "--pipeline",
            str(variant),
            "--start",
            "2011-03-02",
            "--end",
            "2011-03-03",
            "--window-days",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


def test_a_runaway_step_fails_under_its_memory_limit_with_a_message(tmp_path):
    proc = _ingest(tmp_path, "3G")
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "failed" and result["step"] == "ingest"
    assert "the step ran out of memory: it asked for more than its limit of 3.0 GiB" in result["error"]
    assert "MLCYCLE_STEP_MEMORY_LIMIT" in result["error"]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("6G", 6 << 30),
        ("512M", 512 << 20),
        ("1.5g", 3 << 29),
        ("123456", 123456),
        ("2GiB", 2 << 30),
        ("off", None),
        ("0", None),
    ],
)
def test_the_setting_reads_sizes(text, size):
    assert memory.parse_size(text) == size


def test_a_bad_setting_falls_back_to_the_default(monkeypatch):
    monkeypatch.setenv(memory.LIMIT_ENV, "plenty")
    assert memory.configured_limit() == memory.default_limit()
    assert memory.default_limit() >= memory.MIN_DEFAULT
