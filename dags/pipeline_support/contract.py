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
runner copies the file out of the stopped container through the Docker API (no folder is shared
with the worker) before it removes the container. KubernetesPodOperator's result file (``/airflow/xcom/return.json``, read after
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

**Failure classes.** Every ``StepFailed`` carries ``failure_class``, and the payload the same key:

- ``permanent``: a retry cannot fix it. The step said so in its result (a rejected batch, a spec or
  configuration error, a model that cannot be fitted, an unexpected error in the step's own code),
  or it was called with bad arguments (exit 2). Raised as ``StepFailedPermanently``, an
  ``AirflowFailException``: Airflow fails the task at once, whatever its ``retries``.
- ``transient``: a retry may succeed. The step said so (a lost connection, a server that does not
  answer, a full disk), or the process was killed by a signal (a negative exit code from a local
  process, 128 + N from a container's shell, 137 for SIGKILL or the OOM killer), or it died without
  a result. Raised as plain ``StepFailed``: Airflow retries it as ``retries`` allows.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_BAD_ARGUMENTS = 2
EXIT_NOTHING_TO_DO = 99

#: The failure classes (``failure_class`` of a failure result and of ``StepFailed``).
PERMANENT = "permanent"
TRANSIENT = "transient"

#: Environment variable that names the file a step writes its JSON result to.
RESULT_FILE_ENV = "MLCYCLE_RESULT_FILE"
#: Name of the result file inside the per-try folder a runner creates.
RESULT_FILE_NAME = "result.json"


class StepFailed(AirflowException):
    """A pipeline step exited with an error; the message is the step's own.

    ``payload`` is the step's JSON failure result: ``error`` (full text), and for a rejected batch
    ``report`` (path of the HTML report) and ``failures`` (the failing expectations).
    """

    failure_class = TRANSIENT

    def __init__(self, message: str, payload: dict[str, Any] | None = None):
        super().__init__(message)
        self.payload = payload or {}


class StepFailedPermanently(StepFailed, AirflowFailException):
    """A step failed for a reason a retry cannot fix: the task fails at once, with no retry."""

    failure_class = PERMANENT


class StepCannotStart(StepFailedPermanently):
    """The step cannot start here (no step environment, no step image): the task fails at once.

    A retry cannot help (nothing builds the image or the environment in between), so the failure
    and its alert come now, with what to do, instead of after the retry delay.
    """


@dataclass(frozen=True)
class StepResult:
    """What a step left in its result file: the JSON object, or why there is none."""

    payload: dict[str, Any] | None
    problem: str = ""


def read_result(path: str | os.PathLike[str]) -> StepResult:
    """Read a step's result file; a missing, empty or malformed file is a ``problem``, not an exception."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = None
    except OSError as exc:
        return StepResult(None, f"the result file {path} cannot be read: {exc}")
    return parse_result(text, str(path))


def parse_result(text: str | None, where: str) -> StepResult:
    """A result file's text (None: there was no file) as a ``StepResult``; ``where`` names the file
    in the messages. The one judgement of every runner, wherever it found the text."""
    if text is None:
        return StepResult(None, f"the step wrote no result file ({where})")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        return StepResult(None, f"the result file {where} is not JSON ({exc}): {text[:200]!r}")
    if not isinstance(payload, dict):
        return StepResult(
            None, f"the result file {where} holds a {type(payload).__name__}, not a JSON object"
        )
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
        raise StepFailedPermanently(
            f"step `{step}` was called with bad arguments (exit code 2): "
            f"{output_tail.strip() or 'see the usage message in the log'}",
            payload,
        )
    if exit_code != EXIT_DONE:
        killed = killed_by(exit_code)
        if killed and not payload.get("error"):
            detail = f"the step's process was killed by {killed} (a retry may succeed)"
        else:
            detail = payload.get("error") or output_tail.strip() or result.problem or "no output"
        failed = StepFailedPermanently if failure_class_of(exit_code, payload) == PERMANENT else StepFailed
        raise failed(f"step `{step}` failed (exit code {exit_code}): {detail}", payload)
    if result.payload is None:
        raise StepFailed(f"step `{step}` exited 0 but left no result: {result.problem}")
    return result.payload


def killed_by(exit_code: int) -> str | None:
    """The signal's name when ``exit_code`` says a signal ended the process, else None.

    A local process killed by signal N exits -N (``subprocess``); a container whose main process was
    killed exits 128 + N (the shell's convention, and Docker's 137 for SIGKILL or the OOM killer).
    """
    number = -exit_code if exit_code < 0 else exit_code - 128 if 128 < exit_code < 128 + 65 else 0
    if not number:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def failure_class_of(exit_code: int, payload: dict[str, Any]) -> str:
    """``permanent`` or ``transient`` for a failed step (see the module's docstring)."""
    if exit_code == EXIT_BAD_ARGUMENTS:
        return PERMANENT
    if killed_by(exit_code):
        return TRANSIENT
    declared = payload.get("failure_class")
    if declared in (PERMANENT, TRANSIENT):
        return declared
    return TRANSIENT  # no word from the step (it died before writing its result): give it its retries


def task_threads() -> str:
    """Threads each step task may use: the worker's MLCYCLE_THREADS, else 1.

    A worker runs several tasks at once (a backfill, other DAGs), and OpenMP threads that outnumber
    free cores make gradient boosting crawl: measured on 2 cores with two other busy processes, a
    search took 4.3 s with one thread and 19.3 s with two, while one thread cost nothing on the quiet
    machine (3.1 s against 3.3 s; ``make bench-training``). A worker that runs one heavy task at a time
    on many cores sets MLCYCLE_THREADS to them. Outside Airflow, a step uses the cores it may use.
    """
    return os.environ.get("MLCYCLE_THREADS") or "1"
