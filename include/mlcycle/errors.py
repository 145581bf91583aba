"""Typed failures of the steps, each mapped by the CLI to an exit code."""

from __future__ import annotations

#: Exit code for "nothing to do": the DAG maps it to a skipped task, not a failure.
EXIT_NOTHING_TO_DO = 99
EXIT_FAILED = 1


class StepError(Exception):
    """A step failed for a reason a person can act on; the message says what to do."""

    exit_code = EXIT_FAILED


class SpecError(StepError):
    """The pipeline spec is missing, unreadable or inconsistent."""


class SourceError(StepError):
    """The source could not be read (missing or unreadable file, unreachable database)."""


class ValidationFailed(StepError):
    """A batch failed its expectation suite; it has been quarantined."""

    def __init__(self, message: str, failures: list[dict] | None = None, report: str | None = None):
        super().__init__(message)
        self.failures = failures or []
        self.report = report


class DataQualityError(StepError):
    """Validated partitions that together do not make usable data (a feature constant over a slice)."""


class NotEnoughData(StepError):
    """The training window holds too little validated data to train on."""


class RegistryError(StepError):
    """The MLflow registry is not in the state the step expects."""


class NothingToDo(Exception):
    """The step has no work for this interval (for example, no data has arrived yet)."""

    exit_code = EXIT_NOTHING_TO_DO
