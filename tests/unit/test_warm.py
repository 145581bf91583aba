"""Warm steps (MLCYCLE_WARM=1): the same step, result and exit code as a cold start, and stopping the
command stops the step, whether the command is asked to stop or killed outright."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from mlcycle import warm
from tests.datasets import SYNTHCLASS_INGEST_RESULT, make_classification_dataset
from tests.unit.conftest import step_env

STARTED = re.compile(r"started warm as pid (\d+), forked from the warm step server \(pid (\d+)\)")


@pytest.fixture(scope="module")
def server():
    """A warm server of this package, on a socket under a short private temporary folder."""
    tmp = Path(tempfile.mkdtemp(prefix="w", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLCYCLE", "MLFLOW", "AIRFLOW"))}
    env.update(TMPDIR=str(tmp), MLCYCLE_WARM="1", MLCYCLE_WARM_IDLE_SECONDS="300")
    path = tmp / f"mlcycle-warm-{os.getuid()}" / f"{warm.package_key()}.sock"
    path.parent.mkdir(mode=0o700)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlcycle.warm_server", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "server.log").open("w"),
    )
    deadline = time.monotonic() + 180
    while not _answers(path):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp / "server.log").read_text()
        time.sleep(0.2)
    yield env, proc, path
    proc.terminate()
    proc.wait(timeout=30)
    assert not path.exists() and not path.with_suffix(".lock").exists(), "a stopped server left its socket"
    shutil.rmtree(tmp, ignore_errors=True)


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _mlcycle(env: dict, tmp_path: Path, *args: str, warm_on: bool = True) -> subprocess.CompletedProcess:
    run_env = {**env, **step_env(tmp_path), "MLCYCLE_RESULT_FILE": str(tmp_path / "result.json")}
    if not warm_on:
        run_env.pop("MLCYCLE_WARM")
    return subprocess.run(
        [sys.executable, "-m", "mlcycle", *args],
        env=run_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_warm_step_is_the_same_step_as_a_cold_one(server, tmp_path):
    env, proc, _ = server
    spec = make_classification_dataset(tmp_path / "data", days=10)
    day = ["--pipeline", str(spec), "--start", "2011-03-05", "--end", "2011-03-06", "--window-days", "2"]

    hot = _mlcycle(env, tmp_path, "ingest", *day)
    assert hot.returncode == 0, hot.stderr
    started = STARTED.search(hot.stderr)
    assert started and int(started.group(2)) == proc.pid, hot.stderr
    assert json.loads((tmp_path / "result.json").read_text()) == SYNTHCLASS_INGEST_RESULT
    assert json.loads(hot.stdout.strip().splitlines()[-1]) == SYNTHCLASS_INGEST_RESULT

    cold = _mlcycle(env, tmp_path, "ingest", *day, warm_on=False)
    assert cold.returncode == 0 and "started warm" not in cold.stderr, cold.stderr
    assert json.loads(cold.stdout.strip().splitlines()[-1]) == SYNTHCLASS_INGEST_RESULT


def test_exit_codes_and_messages_reach_the_command(server, tmp_path):
    env, _, _ = server
    spec = make_classification_dataset(tmp_path / "data", days=3)
    bad = _mlcycle(env, tmp_path, "ingest", "--pipeline", str(spec), "--start", "2011-13-01", "--end", "x")
    assert bad.returncode == 2 and "not a date in the form YYYY-MM-DD" in bad.stderr, bad.stderr
    nothing = _mlcycle(
        env, tmp_path, "monitor", "--pipeline", str(spec), "--start", "2013-06-01", "--end", "2013-06-02"
    )
    assert nothing.returncode == 99 and "starts after the data ends" in nothing.stderr, nothing.stderr
    assert STARTED.search(nothing.stderr), "the skip did not run warm"
    missing = _mlcycle(
        env,
        tmp_path,
        "ingest",
        "--pipeline",
        str(tmp_path / "nope.yaml"),
        "--start",
        "2011-03-05",
        "--end",
        "2011-03-06",
    )
    assert missing.returncode == 1 and "nope.yaml" in missing.stderr, missing.stderr


@pytest.fixture
def silent_endpoint():
    """An HTTP endpoint that starts every answer and never finishes it (a byte a second, forever
    within the test): a replay to it blocks for as long as the test needs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                )
                while not stop.wait(1.0):
                    conn.sendall(b" ")
            except OSError:
                pass

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                threading.Thread(target=trickle, args=(listener.accept()[0],), daemon=True).start()
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    listener.close()


def _blocked_replay(env: dict, tmp_path: Path, url: str) -> tuple[subprocess.Popen, int]:
    """A warm replay hung on the silent endpoint; the command and its step's pid."""
    spec = make_classification_dataset(tmp_path / "data", days=3)
    day = ["--pipeline", str(spec), "--start", "2011-03-02", "--end", "2011-03-03", "--window-days", "1"]
    for step in ("ingest", "validate"):
        assert _mlcycle(env, tmp_path, step, *day).returncode == 0
    log = tmp_path / "replay.log"
    command = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlcycle",
            "replay",
            "--pipeline",
            str(spec),
            "--date",
            "2011-03-02",
            "--rate",
            "5",
            "--url",
            url,
        ],
        env={**env, **step_env(tmp_path)},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    deadline = time.monotonic() + 120
    while not (found := STARTED.search(log.read_text())):
        assert command.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return command, int(found.group(1))


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_stopping_the_command_stops_its_step(server, tmp_path, silent_endpoint):
    env, _, _ = server
    command, step = _blocked_replay(env, tmp_path, silent_endpoint)
    time.sleep(12)  # longer than the replay's own request timeout: the endpoint keeps it waiting
    assert command.poll() is None, "the replay did not block"
    command.send_signal(signal.SIGTERM)
    assert command.wait(timeout=30) == -signal.SIGTERM  # ends the way the step ended
    assert _gone(step, 10), "the step outlived its command"


def test_a_killed_command_has_its_step_terminated(server, tmp_path, silent_endpoint):
    env, proc, path = server
    command, step = _blocked_replay(env, tmp_path, silent_endpoint)
    time.sleep(12)
    assert command.poll() is None, "the replay did not block"
    command.kill()  # no chance to pass anything on: the server sees the connection close
    command.wait(timeout=30)
    assert _gone(step, warm.KILL_GRACE + 10), "the step outlived its killed command"
    assert proc.poll() is None and _answers(path), "the server went down with the step"


def test_the_package_key_follows_every_file_of_the_step_package():
    before = warm.package_key()
    target = Path(warm.__file__).parent / "errors.py"
    stat = target.stat()
    try:
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert warm.package_key() != before
    finally:
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert warm.package_key() == before


def test_no_server_means_a_cold_start_that_starts_one(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(Path(tempfile.mkdtemp(prefix="w", dir="/tmp"))))
    started: list[Path] = []
    monkeypatch.setattr(warm, "_start_server", started.append)
    path = warm.socket_path()
    path.touch()  # a stale socket file of a server that died: nobody answers
    try:
        assert warm.forward(["ingest"]) is None
        assert started == [path]
    finally:
        shutil.rmtree(tempfile.tempdir, ignore_errors=True)


@pytest.mark.parametrize("planted", ["open_mode", "symlink", "other_owner"])
def test_a_socket_folder_others_control_is_never_used(tmp_path, monkeypatch, planted):
    """The command sends its environment (secrets too) to the socket: another user's folder is refused."""
    root = Path(tempfile.mkdtemp(prefix="w", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    folder = root / f"mlcycle-warm-{os.getuid()}"
    if planted == "open_mode":
        folder.mkdir()
        folder.chmod(0o777)
    elif planted == "symlink":
        (root / "elsewhere").mkdir(mode=0o700)
        folder.symlink_to(root / "elsewhere")
    else:
        if os.getuid() != 0:
            pytest.skip("only root can make a folder owned by another user")
        folder.mkdir(mode=0o700)
        os.chown(folder, 65534, 65534)
    started: list[Path] = []
    monkeypatch.setattr(warm, "_start_server", started.append)
    try:
        with pytest.raises(OSError, match="not a private folder"):
            warm.socket_path()
        assert warm.forward(["ingest"]) is None  # a cold start, and no server in that folder
        assert started == []
    finally:
        shutil.rmtree(root, ignore_errors=True)
