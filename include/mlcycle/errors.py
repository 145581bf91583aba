"""Typed failures of the steps, each mapped by the CLI to an exit code and a failure class.

**Failure classes** (the result's ``failure_class``, read by the runners):

- ``permanent``: a retry cannot fix it, so the task fails at once with no retry: a rejected batch, a
  spec or configuration error, data that cannot be trained on, a model that cannot be fitted, bad
  arguments, and an unexpected error in the step's own code.
- ``transient``: the world around the step failed and may recover: a lost connection, a server that
  does not answer, a full disk (and, seen by the runner, a process killed by a signal).
"""

from __future__ import annotations

#: Exit code for "nothing to do": the DAG maps it to a skipped task, not a failure.
EXIT_NOTHING_TO_DO = 99
EXIT_FAILED = 1


PERMANENT = "permanent"
TRANSIENT = "transient"


class StepError(Exception):
    """A step failed for a reason a person can act on; the message says what to do.

    ``retryable`` (default: the class's) says whether a retry of the same step may succeed.
    """

    exit_code = EXIT_FAILED
    retryable = False

    def __init__(self, *args: object, retryable: bool | None = None):
        super().__init__(*args)
        if retryable is not None:
            self.retryable = retryable


class ServiceUnavailable(StepError):
    """A service the step needs (MLflow, a database, a URL) does not answer: worth a retry."""

    retryable = True


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
        super().__init__(message, retryable=False)
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


#: Exception type names, anywhere in an error's chain, that mean the network or a server failed.
_TRANSIENT_TYPES = {
    "ConnectionError",
    "ConnectionRefusedError",
    "ConnectionResetError",
    "ConnectionAbortedError",
    "BrokenPipeError",
    "TimeoutError",
    "Timeout",
    "ConnectTimeout",
    "ReadTimeout",
    "ProtocolError",
    "NewConnectionError",
    "MaxRetryError",
    "RemoteDisconnected",
    "IncompleteRead",
    "OperationalError",
    "InterfaceError",
    "gaierror",
    "timeout",
}
#: OSError numbers a retry may outlive: the disk fills and frees, the network comes back.
_TRANSIENT_ERRNOS = {
    "ENOSPC",
    "EDQUOT",
    "ECONNREFUSED",
    "ECONNRESET",
    "ECONNABORTED",
    "ETIMEDOUT",
    "EHOSTUNREACH",
    "ENETUNREACH",
    "ENETDOWN",
    "EPIPE",
    "EAGAIN",
}
#: Words of a wrapped error (MLflow's REST client wraps requests' errors in an MlflowException).
_TRANSIENT_WORDS = (
    "Max retries exceeded",
    "Connection refused",
    "Connection reset",
    "timed out",
    "Temporarily Unavailable",
    "TEMPORARILY_UNAVAILABLE",
    "503 Service Unavailable",
    "Name or service not known",
    "Remote end closed connection",
    # pyarrow's S3 client (a store in object storage): the server is down, restarting or shedding load
    "AWS Error NETWORK_CONNECTION",
    "AWS Error SLOW_DOWN",
    "AWS Error SERVICE_UNAVAILABLE",
    "AWS Error INTERNAL_FAILURE",
    "AWS Error REQUEST_TIMEOUT",
)


def failure_class(exc: BaseException) -> str:
    """``transient`` or ``permanent`` for an exception a step raised (see the module's docstring).

    A ``StepError`` says so itself (``retryable``); anything else is permanent (a bug in the step's
    own code does not improve on retry) unless its chain shows a lost connection, a server that does
    not answer, or a full disk.
    """
    import errno

    if isinstance(exc, StepError) and not isinstance(exc, ServiceUnavailable):
        if exc.retryable:
            return TRANSIENT
        if exc.__cause__ is None:
            return PERMANENT
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ServiceUnavailable) or (isinstance(current, StepError) and current.retryable):
            return TRANSIENT
        if any(t.__name__ in _TRANSIENT_TYPES for t in type(current).__mro__):
            return TRANSIENT
        if isinstance(current, OSError) and errno.errorcode.get(current.errno or -1, "") in _TRANSIENT_ERRNOS:
            return TRANSIENT
        if any(word in str(current) for word in _TRANSIENT_WORDS):
            return TRANSIENT
        current = current.__cause__ or current.__context__
    return PERMANENT
