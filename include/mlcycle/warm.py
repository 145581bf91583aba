"""Warm steps: a server that has imported the step libraries once and forks a process per step.

A step spends most of a short run importing: pandas, scikit-learn, MLflow and Evidently take 12 of
the monitor step's 16 seconds on a 2-core machine, and a backfill pays that again for every day.
With ``MLCYCLE_WARM=1`` the ``mlcycle`` command hands its arguments, environment, working folder
and standard streams to a warm server of the same interpreter and step package, which forks a child
that runs the step exactly as the command would have (the same ``mlcycle.cli.main``); the command
waits for the child and exits with its code. It is the preloading fork that Airflow's LocalExecutor,
Celery's prefork pool and gunicorn's ``--preload`` use, for the step package.

- The first command that finds no server starts one in the background and runs its own step cold;
  the server exits after ``MLCYCLE_WARM_IDLE_SECONDS`` (default 600) without a step.
- A server is keyed by the interpreter and the step package's files (paths, sizes, modification
  times): an edited step package is never run from a server that imported the old one.
- The child gets the command's whole environment, so each step sees its own run's settings.
- Stopping the command stops the step: SIGTERM and SIGINT are passed on to the child's process
  group, and a command that dies (even by SIGKILL: its connection closes) has its child terminated
  by the server. A child killed by a signal ends the command by the same signal.
- Anything that goes wrong reaching the server (none, a stale socket, a refused connection) falls
  back to a cold start: the warm path only ever saves time.

Off by default; ``MLCYCLE_WARM=1`` turns it on for a shell, a test or an Airflow worker (the Docker
runner's containers never use it: each step runs in its own container).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

ENABLE_ENV = "MLCYCLE_WARM"
IDLE_ENV = "MLCYCLE_WARM_IDLE_SECONDS"
#: Libraries the steps import; loaded once by the server (a missing one is skipped).
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "pyarrow.dataset",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "sklearn.model_selection",
    "sklearn.inspection",
    "mlflow",
    "mlflow.sklearn",
    "mlflow.store.tracking.sqlalchemy_store",
    "matplotlib.pyplot",
    "evidently",
    "evidently.presets",
    "mlcycle.cli",
    "mlcycle.steps.ingest",
    "mlcycle.steps.validate",
    "mlcycle.steps.features",
    "mlcycle.steps.train",
    "mlcycle.steps.evaluate",
    "mlcycle.steps.register",
    "mlcycle.monitoring.step",
    "mlcycle.monitoring.report",
)
#: Seconds a child of a vanished command gets between SIGTERM and SIGKILL.
KILL_GRACE = 10.0
_HEADER_LIMIT = 4 << 20
_LOCK_FD: int | None = None


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def package_key() -> str:
    """The interpreter and every file of the step package (path, size, mtime): a server's identity."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256(f"{sys.executable}\0{sys.version}\0{root}".encode())
    for path in sorted(root.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def socket_path() -> Path:
    """Short (a UNIX socket path has at most 107 bytes) and private to this user."""
    folder = Path(tempfile.gettempdir()) / f"mlcycle-warm-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    # The command sends its whole environment (secrets included) to whatever listens there: a
    # folder another user made (or could write to), or a symlink, must not be trusted.
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise OSError(f"{folder} is not a private folder of this user (mode {info.st_mode:o}): not used")
    return folder / f"{package_key()}.sock"


# -- the command's side -------------------------------------------------------------------------


def forward(argv: list[str]) -> int | None:
    """Run ``mlcycle argv`` in a warm child and return its exit code; None: run it here, cold."""
    try:
        path = socket_path()
    except OSError as exc:
        log.warning("warm steps off: %s", exc)
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        header = json.dumps(
            {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "umask": _umask()}
        ).encode()
        socket.send_fds(conn, [len(header).to_bytes(8, "big") + header], [0, 1, 2])
        reader = conn.makefile("r", encoding="utf-8")
        started = json.loads(reader.readline() or "{}")
    except (OSError, ValueError):
        conn.close()
        _start_server(path)
        return None
    pid = started.get("pid")
    if not pid:
        conn.close()
        return None
    _pass_signals_to(pid)
    try:
        ended = json.loads(reader.readline() or "{}")
    except (OSError, ValueError):
        ended = {}
    conn.close()
    if "signal" in ended:  # end the way the child ended, as a cold start would have
        signal.signal(ended["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), ended["signal"])
    return int(ended.get("exit", 1))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pass_signals_to(pid: int) -> None:
    def relay(signum, _frame):
        _killpg(pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, relay)


def _start_server(path: Path) -> None:
    """Start a server for this package in the background (it exits at once if another one won)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CTX_", "MLCYCLE_RESULT"))}
    try:
        with open(path.with_suffix(".log"), "ab") as out:
            subprocess.Popen(
                [sys.executable, "-m", "mlcycle.warm_server", str(path)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                cwd="/",
            )
    except OSError as exc:
        log.debug("no warm server: %s", exc)


# -- the server's side --------------------------------------------------------------------------


class Server:
    """Forks a child per command; the child runs ``run(argv, server_pid)`` (handed in: the server
    knows nothing of the command line it serves, mlcycle.warm_server joins the two)."""

    def __init__(self, idle: float, run: Callable[[list[str], int], int]) -> None:
        self.idle = idle
        self.run = run
        self.children: dict[int, socket.socket] = {}  # child pid -> its command's connection
        self.orphans: dict[int, float] = {}  # child pid -> when it was sent SIGTERM
        self.last = time.monotonic()

    def preload(self) -> None:
        from mlcycle.threads import limit_threads

        limit_threads()
        began = time.perf_counter()
        for name in PRELOAD:
            try:
                __import__(name)
            except Exception as exc:  # noqa: BLE001 - a library a step may not need: it loads cold
                log.info("not preloaded: %s (%s)", name, exc)
        log.info("preloaded %d modules in %.1f s", len(sys.modules), time.perf_counter() - began)
        import threading

        if threading.active_count() > 1:  # a fork copies only the forking thread
            log.warning(
                "threads running after preload (not in the steps' children): %s",
                [t.name for t in threading.enumerate()],
            )

    def serve(self, listener: socket.socket) -> None:
        while self.children or time.monotonic() - self.last < self.idle:
            watched = [c for pid, c in self.children.items() if pid not in self.orphans]
            ready, _, _ = select.select([listener, *watched], [], [], 0.5)
            for conn in ready:
                if conn is listener:
                    self._accept(listener)
                else:  # a command's connection is readable only when the command went away
                    self._orphan(next(pid for pid, c in self.children.items() if c is conn))
            self._reap()
            self._escalate()
        log.info("idle for %.0f s: stopping", self.idle)

    def _accept(self, listener: socket.socket) -> None:
        conn, _ = listener.accept()
        self.last = time.monotonic()
        try:
            conn.settimeout(30)
            request, fds = _receive(conn)
            conn.settimeout(None)
        except (OSError, ValueError) as exc:
            log.warning("bad request: %s", exc)
            conn.close()
            return
        pid = os.fork()
        if pid == 0:  # the child: becomes the command, runs the step, never returns here
            listener.close()
            conn.close()
            if _LOCK_FD is not None:
                os.close(_LOCK_FD)
            _become(request, fds, os.getppid(), self.run)
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        try:
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        except OSError:
            self._orphan(pid)

    def _orphan(self, pid: int) -> None:
        if pid in self.orphans:
            return
        log.warning("the command of step process %d went away: terminating it", pid)
        _killpg(pid, signal.SIGTERM)
        self.orphans[pid] = time.monotonic()

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            self.orphans.pop(pid, None)
            self.last = time.monotonic()
            if conn is None:
                continue
            ended = (
                {"signal": os.WTERMSIG(status)}
                if os.WIFSIGNALED(status)
                else {"exit": os.waitstatus_to_exitcode(status)}
            )
            try:
                conn.sendall(json.dumps(ended).encode() + b"\n")
            except OSError:
                pass
            conn.close()

    def _escalate(self) -> None:
        for pid, since in list(self.orphans.items()):
            if time.monotonic() - since > KILL_GRACE:
                _killpg(pid, signal.SIGKILL)


def _killpg(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
    try:
        if len(data) < 8 or len(fds) != 3:
            raise ValueError("not a step request")
        size = int.from_bytes(data[:8], "big")
        if size > _HEADER_LIMIT:
            raise ValueError("request too large")
        body = data[8:]
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise ValueError("request cut short")
            body += chunk
        return json.loads(body), fds
    except BaseException:
        for fd in fds:  # a rejected request keeps none of the command's streams open
            os.close(fd)
        raise


def _become(request: dict, fds: list[int], server: int, run: Callable[[list[str], int], int]) -> None:
    """In the forked child: take the command's streams, environment and folder, and run the step."""
    code = 1
    try:
        os.setpgid(0, 0)  # its own process group: the command stops the step and what it started
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        sys.argv = ["mlcycle", *request["argv"]]
        logging.getLogger().handlers.clear()  # the server's own log handlers write to its log file
        code = run(request["argv"], server)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report it on the command's stderr, as a cold start would
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _listen(path: Path) -> socket.socket | None:
    """Bind the socket, unless a live server already has it."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return None  # someone answers: that server serves this package
    except OSError:
        pass
    finally:
        probe.close()
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return None
        raise
    listener.listen(64)
    return listener


def main(argv: list[str], run: Callable[[list[str], int], int]) -> int:
    """Serve ``run`` on the socket ``argv[0]`` until idle (the entry point is mlcycle.warm_server)."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s mlcycle.warm[%(process)d]: %(message)s",
    )
    global _LOCK_FD
    path = Path(argv[0])
    _LOCK_FD = lock = os.open(path.with_suffix(".lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another server is starting for this package
    server = Server(float(os.environ.get(IDLE_ENV) or 600), run)
    server.preload()
    listener = _listen(path)
    if listener is None:
        return 0
    log.info("serving steps on %s", path)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop cleanly: the socket goes too
    try:
        server.serve(listener)
    finally:
        listener.close()
        for leftover in (path, path.with_suffix(".lock")):
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass
    return 0
