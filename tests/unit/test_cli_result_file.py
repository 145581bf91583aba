"""The CLI's result channel: the JSON result goes to $MLCYCLE_RESULT_FILE (atomically) and to stdout."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlcycle import cli
from tests.datasets import SYNTHCLASS_INGEST_RESULT, make_classification_dataset
from tests.unit.conftest import step_env


@pytest.fixture
def spec_path(tmp_path):
    return make_classification_dataset(tmp_path / "data", days=10)


def run_with_result_file(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``mlcycle ARGS`` in a subprocess, as a runner starts it: with a result file to write."""
    result_file = tmp_path / "result" / "result.json"
    result_file.parent.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLCYCLE", "MLFLOW", "AIRFLOW"))}
    env.update(step_env(tmp_path), MLCYCLE_RESULT_FILE=str(result_file))
    proc = subprocess.run(
        [sys.executable, "-m", "mlcycle", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    return proc, result_file


def test_a_success_writes_the_result_file_and_the_same_last_line(tmp_path, spec_path):
    proc, result_file = run_with_result_file(
        tmp_path,
        "ingest",
        "--pipeline",
        str(spec_path),
        "--start",
        "2011-03-05",
        "--end",
        "2011-03-06",
        "--window-days",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    written = json.loads(result_file.read_text())
    assert written == SYNTHCLASS_INGEST_RESULT
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == written
    assert [p.name for p in result_file.parent.iterdir()] == ["result.json"], "a temporary file was left"


def test_a_skip_and_a_failure_write_their_payload(tmp_path, spec_path):
    proc, result_file = run_with_result_file(
        tmp_path, "ingest", "--pipeline", str(spec_path), "--start", "2011-03-20", "--end", "2011-03-21"
    )
    assert proc.returncode == 99
    skipped = json.loads(result_file.read_text())
    assert skipped["status"] == "skipped" and "window.data_end" in skipped["reason"]

    failed_dir = tmp_path / "second"
    failed_dir.mkdir()
    proc, result_file = run_with_result_file(
        failed_dir,
        "validate",
        "--pipeline",
        str(spec_path),
        "--start",
        "2011-03-05",
        "--end",
        "2011-03-06",
        "--window-days",
        "1",
    )
    assert proc.returncode == 1
    failed = json.loads(result_file.read_text())
    assert (
        failed["status"] == "failed"
        and failed["step"] == "validate"
        and "run the ingest step" in failed["error"]
    )


def test_without_the_variable_only_stdout_carries_the_result(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("MLCYCLE_RESULT_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    cli._emit({"rows": 3})
    assert capsys.readouterr().out == '{"rows": 3}\n'
    assert list(tmp_path.iterdir()) == []


def test_emit_replaces_an_older_result_whole(monkeypatch, tmp_path, capsys):
    target = tmp_path / "result.json"
    target.write_text('{"stale": true, "padding": "' + "x" * 1000 + '"}')
    monkeypatch.setenv("MLCYCLE_RESULT_FILE", str(target))
    cli._emit({"rows": 3, "when": dt.date(2011, 3, 5)})
    assert json.loads(target.read_text()) == {"rows": 3, "when": "2011-03-05"}
    assert capsys.readouterr().out.strip() == target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_an_unwritable_result_file_is_logged_and_stdout_still_has_the_result(
    monkeypatch, tmp_path, capsys, caplog
):
    monkeypatch.setenv("MLCYCLE_RESULT_FILE", str(tmp_path / "no-such-folder" / "result.json"))
    cli._emit({"rows": 3})
    assert capsys.readouterr().out == '{"rows": 3}\n'
    assert "cannot write the result file" in caplog.text and "MLCYCLE_RESULT_FILE" in caplog.text
    assert list(tmp_path.iterdir()) == []
