"""The runner contract (dags/pipeline_support/contract.py): every exit path, and the result file.

Plain functions on real files; the runners that call them are tested with a real subprocess here
(``test_local_runner_*``) and a real container in tests/integration/test_result_channel.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from pipeline_support import contract
from pipeline_support.contract import StepFailed, StepResult, interpret, read_result
from tests.conftest import ROOT, STEPS_BIN
from tests.datasets import SYNTHCLASS_INGEST_RESULT

REJECTED = {
    "status": "failed",
    "step": "validate",
    "error": "1 partition(s) of bikeshare failed the suite",
    "report": "/store/reports/validation/2011-07-06.html",
    "failures": [{"expectation": "expect_column_values_to_be_between", "column": "windspeed"}],
}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- reading the result file ------------------------------------------------------------------


def test_a_json_object_is_the_result(tmp_path):
    result = read_result(write(tmp_path / "result.json", json.dumps({"rows": 48, "pipeline": "p"})))
    assert result == StepResult({"rows": 48, "pipeline": "p"}, "")


def test_a_missing_file_is_named_as_such(tmp_path):
    result = read_result(tmp_path / "result.json")
    assert result.payload is None
    assert result.problem == f"the step wrote no result file ({tmp_path / 'result.json'})"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "is not JSON"),
        ('{"rows": 4', "is not JSON"),
        ("2011-03-05 INFO ingest progress: 7/7", "is not JSON"),
        ("[1, 2]", "holds a list, not a JSON object"),
        ('"done"', "holds a str, not a JSON object"),
    ],
)
def test_anything_but_a_json_object_is_a_problem(tmp_path, text, problem):
    result = read_result(write(tmp_path / "result.json", text))
    assert result.payload is None and problem in result.problem and str(tmp_path) in result.problem


def test_a_long_malformed_result_is_quoted_up_to_200_characters(tmp_path):
    text = "x" * 199 + "yz" + "tail" * 50
    result = read_result(write(tmp_path / "result.json", text))
    assert result.problem.endswith(f": {text[:200]!r}") and "yz" not in result.problem


def test_the_result_file_is_read_as_utf8(tmp_path):
    (tmp_path / "result.json").write_bytes(json.dumps({"city": "Zürich"}, ensure_ascii=False).encode("utf-8"))
    assert read_result(tmp_path / "result.json").payload == {"city": "Zürich"}


def test_an_unreadable_path_is_a_problem_not_an_exception(tmp_path):
    result = read_result(tmp_path)  # a folder, not a file
    assert result.payload is None and "cannot be read" in result.problem


# --- interpret: every exit path ---------------------------------------------------------------


def test_exit_0_with_a_result_returns_it():
    assert interpret("ingest", 0, StepResult({"rows": 48}), "log line") == {"rows": 48}


def test_exit_0_with_an_empty_object_returns_it():
    assert interpret("ingest", 0, StepResult({}), "") == {}


def test_exit_0_without_a_result_fails_and_says_why():
    with pytest.raises(StepFailed) as info:
        interpret("ingest", 0, StepResult(None, "the step wrote no result file (/tmp/x)"), '{"rows": 1}')
    assert (
        str(info.value) == "step `ingest` exited 0 but left no result: the step wrote no result file (/tmp/x)"
    )
    assert info.value.payload == {}


#: exit code, what the result file held, the output's last line -> exception and its exact message
OUTCOMES = [
    (
        99,
        StepResult({"status": "skipped", "reason": "past window.data_end"}),
        "tail",
        AirflowSkipException,
        "ingest: nothing to do: past window.data_end",
    ),
    (
        99,
        StepResult(None, "no file"),
        "  nothing arrived yet \n",
        AirflowSkipException,
        "ingest: nothing to do: nothing arrived yet",
    ),
    (99, StepResult(None, "no file"), "", AirflowSkipException, "ingest: nothing to do: see the log"),
    (
        1,
        StepResult(REJECTED),
        "2011-07-06 INFO a log line written last",
        StepFailed,
        "step `ingest` failed (exit code 1): 1 partition(s) of bikeshare failed the suite",
    ),
    (
        1,
        StepResult(None, "no file"),
        "RuntimeError: bug\n",
        StepFailed,
        "step `ingest` failed (exit code 1): RuntimeError: bug",
    ),
    (
        137,
        StepResult(None, "the step wrote no result file (/r)"),
        "",
        StepFailed,
        "step `ingest` failed (exit code 137): the step's process was killed by SIGKILL (a retry may succeed)",
    ),
    (3, StepResult(None), "", StepFailed, "step `ingest` failed (exit code 3): no output"),
    (
        2,
        StepResult(None, "no file"),
        "mlcycle ingest: error: --end is required",
        StepFailed,
        "step `ingest` was called with bad arguments (exit code 2): mlcycle ingest: error: --end is required",
    ),
    (
        2,
        StepResult(None, "no file"),
        "",
        StepFailed,
        "step `ingest` was called with bad arguments (exit code 2): see the usage message in the log",
    ),
]


@pytest.mark.parametrize(("exit_code", "result", "tail", "raised", "message"), OUTCOMES)
def test_every_exit_path(exit_code, result, tail, raised, message):
    with pytest.raises(raised) as info:
        interpret("ingest", exit_code, result, tail)
    assert str(info.value) == message
    if raised is AirflowSkipException:
        assert not isinstance(info.value, StepFailed)
    else:
        assert info.value.payload == (result.payload or {})


#: exit code, what the result file held -> failure class (permanent: AirflowFailException, no retry)
CLASSES = [
    (1, {**REJECTED, "failure_class": "permanent"}, "permanent"),
    (1, {"status": "failed", "error": "unexpected KeyError: 'x'", "failure_class": "permanent"}, "permanent"),
    (1, {"status": "failed", "error": "MLflow does not answer", "failure_class": "transient"}, "transient"),
    (2, None, "permanent"),  # bad arguments never improve on retry
    (-9, None, "transient"),  # a local process killed by SIGKILL
    (137, None, "transient"),  # a container killed by SIGKILL (or the OOM killer)
    (143, {"status": "failed", "error": "x", "failure_class": "permanent"}, "transient"),  # SIGTERM wins
    (1, None, "transient"),  # died before writing its result: no word from the step, give it its retries
]


@pytest.mark.parametrize(("exit_code", "payload", "kind"), CLASSES)
def test_the_failure_class_decides_whether_airflow_retries(exit_code, payload, kind):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(StepFailed) as info:
        interpret("train", exit_code, StepResult(payload, "" if payload else "no file"), "")
    assert info.value.failure_class == kind
    assert isinstance(info.value, AirflowFailException) == (kind == "permanent"), "retry decision is wrong"
    assert isinstance(info.value, contract.StepFailedPermanently) == (kind == "permanent")


def test_a_killed_local_step_is_named_by_its_signal():
    with pytest.raises(StepFailed) as info:
        interpret("train", -9, StepResult(None, "the step wrote no result file (/r)"), "")
    assert "killed by SIGKILL" in str(info.value) and info.value.failure_class == "transient"


def test_the_output_tail_is_optional():
    with pytest.raises(StepFailed) as info:
        interpret("train", 1, StepResult(None, "the step wrote no result file (/r)"))
    assert str(info.value) == "step `train` failed (exit code 1): the step wrote no result file (/r)"


def test_exit_2_keeps_whatever_payload_the_step_wrote():
    with pytest.raises(StepFailed) as info:
        interpret("evaluate", 2, StepResult({"status": "failed", "error": "bad --run-id"}), "usage: mlcycle")
    assert info.value.payload == {"status": "failed", "error": "bad --run-id"}


def test_the_exit_codes_match_the_step_package():
    """The step side (include/mlcycle/errors.py) and this side must agree; read without importing it."""
    errors = (ROOT / "include" / "mlcycle" / "errors.py").read_text()
    assert f"EXIT_NOTHING_TO_DO = {contract.EXIT_NOTHING_TO_DO}" in errors
    assert f"EXIT_FAILED = {contract.EXIT_FAILED}" in errors
    cli = (ROOT / "include" / "mlcycle" / "cli.py").read_text()
    assert f'RESULT_FILE_ENV = "{contract.RESULT_FILE_ENV}"' in cli
    assert (contract.EXIT_DONE, contract.EXIT_BAD_ARGUMENTS) == (0, 2)


def test_step_failed_is_an_airflow_exception_with_an_empty_default_payload():
    from airflow.sdk.exceptions import AirflowException

    failure = StepFailed("boom")
    assert isinstance(failure, AirflowException) and failure.payload == {} and str(failure) == "boom"


def test_a_step_that_cannot_start_is_not_retried(tmp_path, monkeypatch):
    """No step environment: the task fails at once (AirflowFailException), saying what to run."""
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("MLCYCLE_STEPS_BIN", str(tmp_path / "no-venv" / "bin"))
    with pytest.raises(StepFailed) as info:
        local_operator("ingest", "--pipeline", "bikeshare").execute({})
    assert isinstance(info.value, AirflowFailException), "a missing environment would wait for a retry"
    assert "the step environment is missing" in str(info.value) and "make setup" in str(info.value)


def test_imports_run_one_way():
    """runner -> contract <- docker_runner: neither runner imports the other, contract imports neither."""
    folder = Path(contract.__file__).parent
    assert "pipeline_support.runner" not in (folder / "docker_runner.py").read_text()
    source = (folder / "contract.py").read_text()
    assert "pipeline_support.runner" not in source and "pipeline_support.docker_runner" not in source
    assert "from pipeline_support.contract import" in (folder / "runner.py").read_text()


# --- the local runner: a real subprocess of the step environment ------------------------------

needs_steps = pytest.mark.skipif(
    not (STEPS_BIN / "mlcycle").exists(), reason="no step environment (make setup)"
)


def local_operator(step: str, *args: str):
    from pipeline_support.runner import LocalStepOperator

    return LocalStepOperator(task_id=step, step=step, command=[step, *args])


@pytest.fixture
def step_home(tmp_path, monkeypatch):
    for name in ("MLCYCLE_STORE", "MLCYCLE_PIPELINES_DIR", "MLCYCLE_RESULT_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLCYCLE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLCYCLE_STEPS_BIN", str(STEPS_BIN))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    return tmp_path


@needs_steps
def test_local_runner_skips_a_step_with_nothing_to_do(step_home):
    from tests.datasets import make_classification_dataset

    spec = make_classification_dataset(step_home / "data", days=10)
    op = local_operator("ingest", "--pipeline", str(spec), "--start", "2011-03-20", "--end", "2011-03-21")
    with pytest.raises(AirflowSkipException) as info:
        op.execute({})
    assert str(info.value).startswith("ingest: nothing to do: ") and "window.data_end" in str(info.value)


@needs_steps
def test_local_runner_returns_the_result_file_and_leaves_no_folder(step_home, monkeypatch):
    import tempfile

    from tests.datasets import make_classification_dataset

    monkeypatch.setattr(tempfile, "tempdir", str(step_home / "tmp"))
    (step_home / "tmp").mkdir()
    spec = make_classification_dataset(step_home / "data", days=10)
    op = local_operator(
        "ingest",
        "--pipeline",
        str(spec),
        "--start",
        "2011-03-05",
        "--end",
        "2011-03-06",
        "--window-days",
        "2",
    )
    assert op.execute({}) == SYNTHCLASS_INGEST_RESULT
    assert list((step_home / "tmp").iterdir()) == [], "the per-try result folder was left behind"


@needs_steps
def test_local_runner_fails_with_the_payload_of_a_rejected_batch(step_home):
    from tests.datasets import make_classification_dataset

    spec = make_classification_dataset(
        step_home / "data", days=10, bad={"day": "2011-03-05", "kind": "nulls"}
    )
    window = ["--pipeline", str(spec), "--start", "2011-03-05", "--end", "2011-03-06", "--window-days", "1"]
    local_operator("ingest", *window).execute({})
    with pytest.raises(StepFailed) as info:
        local_operator("validate", *window).execute({})
    payload = info.value.payload
    assert payload["status"] == "failed" and payload["step"] == "validate"
    assert payload["failures"] and payload["report"].endswith(".html")
    assert str(info.value).startswith("step `validate` failed (exit code 1): ")
    # A rejected batch does not improve on retry: Airflow fails the task at once.
    assert payload["failure_class"] == "permanent" and isinstance(info.value, contract.StepFailedPermanently)


@needs_steps
def test_local_runner_retries_a_step_killed_by_sigkill(step_home, monkeypatch):
    """The real step process, SIGKILLed while it runs: a transient failure, named by its signal."""
    from tests.datasets import make_classification_dataset

    spec = make_classification_dataset(step_home / "data", days=10)
    bin_dir = step_home / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "mlcycle"  # becomes the step (exec), which a background shell SIGKILLs after 1 s
    wrapper.write_text(f'#!/bin/sh\n(sleep 1; kill -KILL $$) &\nexec {STEPS_BIN / "mlcycle"} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("MLCYCLE_STEPS_BIN", str(bin_dir))
    monkeypatch.setenv("MLCYCLE_WARM", "0")
    op = local_operator("train", "--pipeline", str(spec), "--start", "2011-03-05", "--end", "2011-03-06")
    with pytest.raises(StepFailed) as info:
        op.execute({})
    assert (
        str(info.value) == "step `train` failed (exit code -9): the step's process was killed by SIGKILL "
        "(a retry may succeed)"
    )
    assert info.value.failure_class == "transient"
    assert not isinstance(info.value, contract.StepFailedPermanently), "a killed step would not be retried"


@needs_steps
def test_local_runner_reports_bad_arguments(step_home):
    with pytest.raises(StepFailed) as info:
        local_operator(
            "ingest", "--pipeline", "bikeshare", "--start", "March", "--end", "2011-03-06"
        ).execute({})
    assert "was called with bad arguments (exit code 2)" in str(info.value)
    assert "not a date in the form YYYY-MM-DD: 'March'" in str(info.value)


def test_each_step_task_gets_one_thread_unless_the_worker_says_otherwise(monkeypatch):
    monkeypatch.delenv("MLCYCLE_THREADS", raising=False)
    assert contract.task_threads() == "1"  # several tasks share a worker: no oversubscribed OpenMP
    monkeypatch.setenv("MLCYCLE_THREADS", "8")
    assert contract.task_threads() == "8"
