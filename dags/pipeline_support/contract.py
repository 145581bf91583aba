"""The step contract both runners share: exit codes, the result channel, and what they mean to Airflow.

Imports run one way, ``runner -> contract <- docker_runner``: this module knows nothing about how a
step was started, only how it ended.

**Exit codes** (``mlcycle.errors`` on the step side): 0 done, 1 failed (the step's message says what
to do), 2 bad arguments (argparse), 99 nothing to do (the task is skipped, not failed).

**The result has a channel of its own.** A step writes its JSON result to the file named by the
environment variable ``MLCYCLE_RESULT_FILE`` (written to a temporary name and renamed, so a reader
never sees half a document), and also prints it as the last stdout line for a person at a shell.
The runners read the file, never the output: Docker does not keep the order between a container's
stdout and stderr, so a log line written before the result can arrive after it, and a "last line"
rule would take that log line for the result. The local runner passes a temporary path; the Docker
runner bind-mounts a per-try temporary folder into the container and reads the file after the
container has exited. KubernetesPodOperator's result file (``/airflow/xcom/return.json``, read after
the main container is done) is the precedent for this convention.

What a runner makes of a finished step (``interpret``):

- exit 0 and a JSON object in the result file: the object is the task's XCom value;
- exit 0 and no result file, or one that is not a JSON object: ``StepFailed`` (a success that says
  nothing is not trusted);
- exit 99: ``AirflowSkipException`` with the step's reason;
- a step that cannot start at all (its environment or image is missing): ``StepCannotStart``, a
  ``StepFailed`` that is not retried;
- any other exit code: ``StepFailed`` whose message is the step's own error and whose ``payload``
  is the result file's content (``error``, and for a rejected batch ``report`` and ``failures``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_BAD_ARGUMENTS = 2
EXIT_NOTHING_TO_DO = 99

#: Environment variable that names the file a step writes its JSON result to.
RESULT_FILE_ENV = "MLCYCLE_RESULT_FILE"
#: Name of the result file inside the per-try folder a runner creates.
RESULT_FILE_NAME = "result.json"


class StepFailed(AirflowException):
    """A pipeline step exited with an error; the message is the step's own.

    ``payload`` is the step's JSON failure result: ``error`` (full text), and for a rejected batch
    ``report`` (path of the HTML report) and ``failures`` (the failing expectations).
    """

    def __init__(self, message: str, payload: dict[str, Any] | None = None):
        super().__init__(message)
        self.payload = payload or {}


class StepCannotStart(StepFailed, AirflowFailException):
    """The step cannot start here (no step environment, no step image): the task fails at once.

    A retry cannot help (nothing builds the image or the environment in between), so the failure
    and its alert come now, with what to do, instead of after the retry delay.
    """


@dataclass(frozen=True)
class StepResult:
    """What a step left in its result file: the JSON object, or why there is none."""

    payload: dict[str, Any] | None
    problem: str = ""


def result_folder(parent: str | os.PathLike[str] | None = None) -> Path:
    """A new, empty per-try folder for one result file (under ``parent``, created when missing;
    default the system temp)."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="mlcycle-result-", dir=parent))


def read_result(path: str | os.PathLike[str]) -> StepResult:
    """Read a step's result file; a missing, empty or malformed file is a ``problem``, not an exception."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return StepResult(None, f"the step wrote no result file ({path})")
    except OSError as exc:
        return StepResult(None, f"the result file {path} cannot be read: {exc}")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        return StepResult(None, f"the result file {path} is not JSON ({exc}): {text[:200]!r}")
    if not isinstance(payload, dict):
        return StepResult(None, f"the result file {path} holds a {type(payload).__name__}, not a JSON object")
    return StepResult(payload)


def interpret(step: str, exit_code: int, result: StepResult, output_tail: str = "") -> dict[str, Any]:
    """Turn a finished step into an XCom value, a skip or a failure.

    ``result`` is what ``read_result`` found; ``output_tail`` (the last line of the step's output)
    is only a fallback for the message when a failed step wrote no result, e.g. a crash.
    """
    payload = result.payload or {}
    if exit_code == EXIT_NOTHING_TO_DO:
        raise AirflowSkipException(
            f"{step}: nothing to do: {payload.get('reason') or output_tail.strip() or 'see the log'}"
        )
    if exit_code == EXIT_BAD_ARGUMENTS:
        raise StepFailed(
            f"step `{step}` was called with bad arguments (exit code 2): "
            f"{output_tail.strip() or 'see the usage message in the log'}",
            payload,
        )
    if exit_code != EXIT_DONE:
        detail = payload.get("error") or output_tail.strip() or result.problem or "no output"
        raise StepFailed(f"step `{step}` failed (exit code {exit_code}): {detail}", payload)
    if result.payload is None:
        raise StepFailed(f"step `{step}` exited 0 but left no result: {result.problem}")
    return result.payload


def task_threads() -> str:
    """Threads each step task may use: the worker's MLCYCLE_THREADS, else 1.

    A worker runs several tasks at once (a backfill, other DAGs), and OpenMP threads that outnumber
    free cores make gradient boosting crawl: measured on 2 cores with two other busy processes, a
    search took 4.3 s with one thread and 19.3 s with two, while one thread cost nothing on the quiet
    machine (3.1 s against 3.3 s; ``make bench-training``). A worker that runs one heavy task at a time
    on many cores sets MLCYCLE_THREADS to them. Outside Airflow, a step uses the cores it may use.
    """
    return os.environ.get("MLCYCLE_THREADS") or "1"
