"""The command line: exit codes 0 / 1 / 2 / 99, and the JSON result as the last line of stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mlcycle import cli
from tests.conftest import ROOT
from tests.datasets import make_classification_dataset
from tests.unit.conftest import step_env


@pytest.fixture
def spec_path(tmp_path):
    return make_classification_dataset(tmp_path / "data", days=10)


def run_cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLCYCLE", "MLFLOW", "AIRFLOW"))}
    env.update(step_env(tmp_path))
    return subprocess.run([sys.executable, "-m", "mlcycle", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


def last_json(stdout: str) -> dict:
    lines = stdout.strip().splitlines()
    assert lines, "no output on stdout"
    return json.loads(lines[-1])


def test_success_exits_0_with_the_result_as_the_last_line(tmp_path, spec_path):
    proc = run_cli(tmp_path, "ingest", "--pipeline", str(spec_path), "--start", "2011-03-05",
                   "--end", "2011-03-06", "--window-days", "2")
    assert proc.returncode == 0, proc.stderr
    result = last_json(proc.stdout)
    assert result == {"pipeline": "synthclass", "window_start": "2011-03-04", "window_end": "2011-03-06",
                      "partitions": 2, "rows": 48, "empty_days": [],
                      "dropped": {"unparseable_timestamp": 0, "timestamp_out_of_range": 0,
                                  "outside_source_bounds": 0}, "filtered": {}}
    assert "ingesting synthclass" in proc.stderr  # logs go to stderr, not into the result
    assert (tmp_path / "home" / "store" / "synthclass" / "raw" / "date=2011-03-05" / "data.parquet").is_file()


def test_nothing_to_do_exits_99(tmp_path, spec_path):
    proc = run_cli(tmp_path, "ingest", "--pipeline", str(spec_path), "--start", "2011-03-11", "--end", "2011-03-12")
    assert proc.returncode == 99, proc.stderr
    result = last_json(proc.stdout)
    assert result["status"] == "skipped" and "window.data_end" in result["reason"]


def test_a_step_error_exits_1_with_the_failure_as_json(tmp_path, spec_path):
    proc = run_cli(tmp_path, "validate", "--pipeline", str(spec_path), "--start", "2011-03-05",
                   "--end", "2011-03-06", "--window-days", "1")
    assert proc.returncode == 1
    result = last_json(proc.stdout)
    assert result["status"] == "failed" and result["step"] == "validate"
    assert "run the ingest step" in result["error"] and result["failures"] == []


def test_an_unknown_pipeline_fails_with_the_known_ones(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MLCYCLE_HOME", str(tmp_path))
    monkeypatch.delenv("MLCYCLE_PIPELINES_DIR", raising=False)
    assert cli.main(["suite", "--pipeline", "nope"]) == 1
    result = last_json(capsys.readouterr().out)
    assert result["status"] == "failed" and "bikeshare" in result["error"]


def test_suite_prints_the_derived_suite(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MLCYCLE_HOME", str(tmp_path))
    assert cli.main(["suite", "--pipeline", str(ROOT / "include" / "pipelines" / "bikeshare.yaml")]) == 0
    suite = last_json(capsys.readouterr().out)
    assert suite["name"] == "bikeshare.partition" and len(suite["expectations"]) > 40


def test_an_unexpected_error_exits_1_with_the_traceback_then_the_failure_as_json(tmp_path, spec_path):
    # A real error no step anticipates: the raw partition is a folder.
    raw = tmp_path / "home" / "store" / "synthclass" / "raw" / "date=2011-03-05" / "data.parquet"
    raw.mkdir(parents=True)
    proc = run_cli(tmp_path, "validate", "--pipeline", str(spec_path), "--start", "2011-03-05",
                   "--end", "2011-03-06", "--window-days", "1")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "IsADirectoryError" in proc.stderr
    result = last_json(proc.stdout)
    assert result["status"] == "failed" and result["step"] == "validate"
    assert result["error"].startswith("unexpected IsADirectoryError") and "traceback is in the log" in result["error"]


@pytest.mark.parametrize("argv", [
    ["ingest", "--pipeline", "bikeshare", "--start", "2011-03-05"],          # --end missing
    ["ingest", "--pipeline", "bikeshare", "--start", "March", "--end", "2011-03-06"],
    ["evaluate", "--pipeline", "bikeshare", "--start", "2011-03-05", "--end", "2011-03-06"],  # no --run-id
    ["fly", "--pipeline", "bikeshare"],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "usage: mlcycle" in capsys.readouterr().err


@pytest.mark.parametrize(("start", "end", "window", "message"), [
    ("2011-03-05garbage", "2011-03-06", "1", "not a date in the form YYYY-MM-DD: '2011-03-05garbage'"),
    ("2011-03-05T00:00:00+00:00", "2011-03-06", "1", "not a date in the form YYYY-MM-DD"),
    ("2011-3-5", "2011-03-06", "1", "not a date in the form YYYY-MM-DD"),
    ("2011-02-30", "2011-03-06", "1", "not a date in the form YYYY-MM-DD"),
    ("2011-03-07", "2011-03-06", "1", "--end 2011-03-06 must be after --start 2011-03-07"),
    ("2011-03-06", "2011-03-06", "1", "--end 2011-03-06 must be after --start 2011-03-06"),
    ("2011-03-05", "2011-03-06", "0", "the window must be at least one day (got 0)"),
    ("2011-03-05", "2011-03-06", "-3", "the window must be at least one day (got -3)"),
])
def test_dates_and_windows_are_strict(start, end, window, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["validate", "--pipeline", "bikeshare", "--start", start, "--end", end, "--window-days", window])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


#: Extra arguments a step needs besides the interval (never read: the interval is refused first).
_STEP_ARGS = {"evaluate": ["--run-id", "0" * 32, "--model-uri", "runs:/0/model"]}


@pytest.mark.parametrize("when", ["after-data-end", "before-data-start"])
@pytest.mark.parametrize("step", ["ingest", "validate", "build_features", "train", "evaluate", "monitor"])
def test_a_date_outside_the_data_is_nothing_to_do_for_every_step(tmp_path, spec_path, step, when):
    """The one rule of the README's exit-code table: no day of the interval inside the bounds: 99."""
    start, end = ("2011-03-20", "2011-03-21") if when == "after-data-end" else ("2011-02-01", "2011-02-02")
    proc = run_cli(
        tmp_path,
        step,
        "--pipeline",
        str(spec_path),
        "--start",
        start,
        "--end",
        end,
        *_STEP_ARGS.get(step, []),
    )
    assert proc.returncode == 99, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    reason = last_json(proc.stdout)["reason"]
    assert f"the interval [{start}, {end})" in reason
    assert "window.data_start 2011-03-01" in reason and "window.data_end 2011-03-10" in reason
