"""Faults under load: each test breaks a real service in the middle of real work, then checks that
nothing was lost and that the system still serves.

- The MLflow server is killed and restarted while `register` creates the model version, and the
  server's answer is lost: the step finds the version it made instead of making a second one.
- The disk of the store fills up while `validate` publishes: no partial version, the day's
  ``CURRENT.json`` pointer unchanged, and the same command succeeds once there is room again.
- The source's PostgreSQL (a server of the test's own) crashes before a training run reaches it:
  the `extract` task is retried once the server is back, and the run registers its model.

Every wait fails when progress stops (a service that no longer changes), never at a fixed total.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import AIRFLOW_BIN, ROOT, STEPS_BIN
from tests.datasets import BIKESHARE_SPEC, LEAN_MODEL, write_spec_variant
from tests.integration.airflow_env import AirflowProject, free_port, fresh_database

pytestmark = [pytest.mark.integration]

#: Longest time a service may stay silent (not up, no new output) before a wait gives up.
STALL = 5 * 60
TRAINING = ["ingest", "validate", "build_features", "train", "evaluate", "register"]


# --- a real MLflow server that a test can kill, and a proxy in front of it that can lose an answer


class MlflowServer:
    """`mlflow server` on a PostgreSQL database of its own; ``restart`` SIGKILLs it and starts it again."""

    def __init__(self, backend: str, artifacts: Path, log: Path):
        self.backend, self.artifacts, self.log = backend, artifacts, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(STEPS_BIN / "mlflow"), "server", "--backend-store-uri", self.backend,
                 "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false"},
            )  # fmt: skip
        _wait_for(lambda: _answers(f"{self.url}/health"), "the MLflow server to answer", self.log,
                  alive=lambda: self.proc.poll() is None)  # fmt: skip

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its workers, no clean shutdown
            self.proc.wait(timeout=30)

    def restart(self) -> None:
        self.kill()
        self.restarts += 1
        self.start()


class LosingProxy(socketserver.ThreadingTCPServer):
    """An HTTP proxy (one request per connection) that loses the answer to the first request whose
    path contains ``target``: it forwards the request, lets the server store it and answer, calls
    ``fault`` (a restart of the server), and closes the client's connection without a reply."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream_port: int, target: str, fault):
        self.upstream_port, self.target, self.fault = upstream_port, target.encode(), fault
        self.lost: list[str] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: LosingProxy = self.server  # type: ignore[assignment]
        head, body = _read_request(self.request)
        if not head:
            return
        request_line = head.split(b"\r\n", 1)[0]
        lines = [line for line in head.split(b"\r\n")[1:] if not line.lower().startswith(b"connection:")]
        head = b"\r\n".join([request_line, *lines, b"Connection: close"])
        try:
            upstream = socket.create_connection(("127.0.0.1", server.upstream_port), timeout=120)
        except OSError:
            return  # the server is down: the client sees a dropped connection, as it would without us
        with upstream:
            upstream.sendall(head + b"\r\n\r\n" + body)
            answer = _read_all(upstream)
        with server.lock:
            lose = server.target in request_line and not server.lost
            if lose:
                server.lost.append(request_line.decode())
                server.fault()  # while the client still waits for its answer
        if not lose:
            self.request.sendall(answer)


def _read_request(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return b"", b""
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    }
    if b"chunked" in headers.get(b"transfer-encoding", b""):
        while not body.endswith(b"0\r\n\r\n"):
            body += sock.recv(65536)
    else:
        length = int(headers.get(b"content-length", b"0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return head, body


def _read_all(sock: socket.socket) -> bytes:
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def _wait_for(done, what: str, log: Path, alive=lambda: True, stall: float = STALL) -> None:
    """Poll ``done()``; fail when ``alive()`` turns false or ``log`` has not grown for ``stall`` seconds."""
    last, changed = -1, time.monotonic()
    while not done():
        size = log.stat().st_size if log.exists() else 0
        if size != last:
            last, changed = size, time.monotonic()
        if not alive() or time.monotonic() - changed > stall:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise AssertionError(f"waiting for {what}: {'exited' if not alive() else 'no progress'}\n{tail}")
        time.sleep(1)


@pytest.fixture(scope="module")
def private_database(postgres_dsn):
    """A database of this module's own on the shared server (never restarted here); dropped afterwards."""
    with fresh_database(postgres_dsn, "faults") as url:
        yield url


@pytest.mark.postgres
def test_mlflow_server_restarted_during_register_makes_one_version(private_database, tmp_path):
    server = MlflowServer(private_database, tmp_path / "server-artifacts", tmp_path / "mlflow-server.log")
    server.start()
    proxy = LosingProxy(server.port, "/model-versions/create", server.restart)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        spec = write_spec_variant(BIKESHARE_SPEC, tmp_path / "specs" / "bikeshare.yaml", model=LEAN_MODEL)
        project = AirflowProject.create(
            tmp_path / "home", MLFLOW_TRACKING_URI=proxy.url, MLCYCLE_ARTIFACT_ROOT=""
        )
        run = project.dags_test(
            "training_bikeshare", "2011-06-30", {"pipeline": str(spec), "window_days": 14}
        )
        (tmp_path / "dags-test.log").write_text(run.stdout + run.stderr)  # the whole run, for a post-mortem
        output = f"{run.stderr[-3000:]}\n{server.log.read_text()[-2000:]}"
        states = project.task_states("training_bikeshare", "2011-06-30")

        # The fault happened where it was meant to: the version was stored, its answer lost, the server restarted.
        assert proxy.lost and server.restarts == 1, (proxy.lost, server.restarts, output)
        assert all(states[t] == "success" for t in TRAINING), f"{states}\n{output}"

        # Nothing lost, nothing doubled: one version for the run, and both aliases on it.
        registry = project.registry("bikeshare")  # read through the restarted server
        runs = [v["run_id"] for v in registry["versions"]]
        assert len(runs) == 1 == len(set(runs)), registry["versions"]
        assert registry["aliases"] == {"champion": "1", "challenger": "1"}, registry
        assert registry["versions"][0]["tags"]["airflow.registered_by_run_id"], registry
        # The system serves: the restarted server answers a registry read of the champion directly.
        assert _answers(f"{server.url}/api/2.0/mlflow/registered-models/alias?name=bikeshare&alias=champion")
    finally:
        proxy.shutdown()
        proxy.server_close()
        server.kill()


# --- the disk of the store fills up during validate


def _mlcycle(env: dict[str, str], *args: str) -> tuple[int, dict]:
    proc = subprocess.run([str(STEPS_BIN / "mlcycle"), *args], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, (json.loads(lines[-1]) if lines else {"stderr": proc.stderr[-3000:]})


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs for the store (mounting needs root), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the store needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True, timeout=60)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=60)


def test_store_disk_full_during_validate_publishes_nothing(small_disk, tmp_path):
    spec = write_spec_variant(BIKESHARE_SPEC, tmp_path / "specs" / "bikeshare.yaml", model=LEAN_MODEL)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLCYCLE", "MLFLOW"))}
    env.update({"MLCYCLE_HOME": str(tmp_path / "home"), "MLCYCLE_STORE": str(small_disk / "store"),
                "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}",
                "MLCYCLE_DATA_DOCS": "off"})  # fmt: skip
    first = ["--pipeline", str(spec), "--start", "2011-03-03", "--end", "2011-03-04", "--window-days", "2"]
    assert _mlcycle(env, "ingest", *first)[0] == 0
    code, result = _mlcycle(env, "validate", *first)
    assert code == 0, result
    store = small_disk / "store" / "bikeshare"
    day = "date=2011-03-03"
    # The day is restated upstream (one row fewer) and ingested again: validate must publish a new version.
    raw = store / "raw" / day / "data.parquet"
    subprocess.run([str(STEPS_BIN / "python"), "-c",
                    f"import pandas as pd; f = pd.read_parquet({str(raw)!r}); f.iloc[1:].to_parquet({str(raw)!r})"],
                   check=True, timeout=120)  # fmt: skip
    before = _tree(store / "validated")
    pointer = (store / "validated" / day / "CURRENT.json").read_text()

    # Fill the disk, leaving less room than the new version needs.
    filler = small_disk / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    free = shutil.disk_usage(small_disk).free
    assert free < raw.stat().st_size, f"{free} bytes still free"
    code, result = _mlcycle(env, "validate", *first)

    assert code != 0, result
    assert "disk is full" in result["error"] and "ENOSPC" in result["error"], result
    assert (store / "validated" / day / "CURRENT.json").read_text() == pointer
    assert _tree(store / "validated") == before, "a version or pointer changed while the disk was full"
    assert not [p for p in store.rglob("*") if p.name.endswith(".mlcycle-tmp")], "a temporary was left behind"

    # Room again: the same command publishes the restated day.
    filler.unlink()
    code, result = _mlcycle(env, "validate", *first)
    assert code == 0, result
    current = json.loads((store / "validated" / day / "CURRENT.json").read_text())
    assert (
        current["replaces"] == json.loads(pointer)["sha256"]
        and current["rows"] == json.loads(pointer)["rows"] - 1
    )
    assert (store / "validated" / day / current["file"]).exists()


# --- PostgreSQL, the source of a training run, goes down and comes back


class PrivatePostgres:
    """A PostgreSQL server of this test's own (``initdb`` in a temporary folder, Debian's binaries),
    so that crashing it breaks nothing else running beside it. Run as user ``postgres`` when the
    tests run as root (PostgreSQL refuses root)."""

    def __init__(self):
        from tests.conftest import _unavailable

        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
        if not bins:
            _unavailable("PostgreSQL", "no /usr/lib/postgresql/*/bin/initdb", "MLCYCLE_REQUIRE_POSTGRES")
        self.bin = bins[-1].parent
        self.folder = Path(tempfile.mkdtemp(prefix="mlcycle-pg-"))
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        self.data, self.log = self.folder / "data", self.folder / "server.log"
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _pg(self, tool: str, *args: str) -> None:
        proc = subprocess.run([*self.as_postgres, str(self.bin / tool), *args], capture_output=True,
                              text=True, timeout=180)  # fmt: skip
        assert proc.returncode == 0, f"{tool} {' '.join(args)}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def crash(self) -> None:
        """Stop without a shutdown checkpoint (``immediate``): what a killed server leaves behind."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        subprocess.run([*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.mark.postgres
def test_postgresql_down_during_a_training_run_is_retried_and_the_run_succeeds(tmp_path):
    """The source's PostgreSQL crashes before the run reaches it: `extract` fails with the lost
    connection (a transient failure, so Airflow retries it), the server comes back while the task
    waits for its retry, and the run ends with a registered model and every day of the window."""
    from tests.integration.test_postgres_source import POSTGRES_SPEC, TASKS

    server = PrivatePostgres()
    try:
        server.start()
        table = f"bikeshare_{uuid.uuid4().hex[:8]}"
        load = subprocess.run([str(STEPS_BIN / "python"), str(ROOT / "scripts" / "load_postgres.py"), "--dsn",
                               server.dsn, "--table", table], capture_output=True, text=True, timeout=300)  # fmt: skip
        assert load.returncode == 0, load.stderr[-3000:]
        spec = write_spec_variant(POSTGRES_SPEC, tmp_path / "specs" / "bikeshare_postgres.yaml",
                                  source={"table": table}, model=LEAN_MODEL)  # fmt: skip
        project = AirflowProject.create(tmp_path / "home", AIRFLOW_CONN_BIKESHARE_POSTGRES=server.dsn,
                                        MLCYCLE_RETRY_DELAY_SECONDS="15")  # fmt: skip
        server.crash()
        log = tmp_path / "dags-test.log"
        conf = json.dumps({"pipeline": str(spec), "window_days": 14})
        with log.open("wb") as out:
            run = subprocess.Popen([str(AIRFLOW_BIN / "airflow"), "dags", "test", "training_bikeshare_postgres",
                                    "2011-03-07", "--conf", conf], env=project.env, cwd=project.home,
                                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip

        def extract_state() -> tuple | None:
            try:
                rows = project._metadata(
                    "SELECT state, try_number FROM task_instance WHERE task_id = 'extract'"
                )
            except Exception:  # the database of `dags test` is not created yet
                return None
            return rows[0] if rows else None

        _wait_for(lambda: (extract_state() or (None,))[0] == "up_for_retry", "extract to fail and wait",
                  log, alive=lambda: run.poll() is None)  # fmt: skip
        server.start()  # back before the retry
        _wait_for(lambda: run.poll() is not None, "the run to end", log)
        output = log.read_text(errors="replace")
        states = project.task_states("training_bikeshare_postgres", "2011-03-07")
        assert all(states.get(t) == "success" for t in TASKS), (states, output[-6000:])
        assert extract_state() == ("success", 2), (extract_state(), output[-6000:])
        assert "Connection refused" in output or "could not connect" in output, output[-6000:]
        days = sorted(p.name for p in (project.store / "bikeshare_postgres" / "landing").iterdir())
        assert len(days) == 14, days
        registry = project.registry("bikeshare_postgres")
        assert [v["version"] for v in registry["versions"]] == ["1"], registry
        assert registry["aliases"].get("champion") == "1", registry
    finally:
        server.remove()
