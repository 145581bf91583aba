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

    def __init__(
        self,
        message: str,
        failures: list[dict] | None = None,
        report: str | None = None,
        data_docs: str | None = None,
    ):
        super().__init__(message)
        self.failures = failures or []
        self.report = report
        self.data_docs = data_docs  # the Great Expectations Data Docs page of the first failing validation


class DataQualityError(StepError):
    """Validated partitions that together do not make usable data (a feature constant over a slice)."""


class NotEnoughData(StepError):
    """The training window holds too little validated data to train on."""


class RegistryError(StepError):
    """The MLflow registry is not in the state the step expects."""


class NothingToDo(Exception):
    """The step has no work for this interval (for example, no data has arrived yet)."""

    exit_code = EXIT_NOTHING_TO_DO


#: A write that failed because of the disk, not the data: one line says what to fix.
_STORAGE_ERRNOS = {
    "ENOSPC": "the disk is full",
    "EDQUOT": "the disk quota is exhausted",
    "EFBIG": "the file is too large",
    "EROFS": "the file system is read-only",
    "EACCES": "permission denied",
    "EPERM": "operation not permitted",
}


def storage_problem(exc: BaseException) -> str | None:
    """One actionable line for an OSError of the disk (full, read-only, no permission), else None."""
    import errno
    import os

    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    name = errno.errorcode.get(exc.errno, "")
    if name not in _STORAGE_ERRNOS:
        return None
    where = f" {exc.filename}" if exc.filename else " (MLCYCLE_STORE / MLCYCLE_HOME)"
    if name in ("EACCES", "EPERM"):
        advice = (
            f"the step runs as uid {os.getuid()}: give it write access, or run it as the owner "
            f"(MLCYCLE_DOCKER_USER for containers)"
        )
    elif name == "EROFS":
        advice = "mount the store read-write, or point MLCYCLE_STORE / MLCYCLE_HOME at a writable folder"
    else:
        advice = "free space there, or point MLCYCLE_STORE / MLCYCLE_HOME at a larger disk, then re-run"
    return (
        f"cannot write{where}: {_STORAGE_ERRNOS[name]} ({name}). Nothing half-written was published; {advice}"
    )
