"""Run the real thing from tests: an isolated Airflow home, `airflow dags test`, and MLflow probes.

Tests in the Airflow environment cannot import MLflow (by design), so registry state is read by a
small script run in the step environment. Airflow's own state (task states, asset events) is read
from its metadata database: each `airflow` CLI call costs seconds of start-up, and the suite makes
hundreds of such reads.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import AIRFLOW_BIN, ROOT, STEPS_BIN


def _json_output(stdout: str):
    """The JSON document of an `airflow ... -o json` call (the CLI may log warnings before it)."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith(("[", "{")):
            return json.loads(line)
    return []


@dataclass
class AirflowProject:
    home: Path
    env: dict[str, str]

    @classmethod
    def create(cls, home: Path, **overrides: str) -> AirflowProject:
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLCYCLE", "MLFLOW"))}
        env.update(
            {
                "AIRFLOW_HOME": str(home / "airflow"),
                "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                "MLCYCLE_HOME": str(home / "local"),
                "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'local' / 'mlflow' / 'mlflow.db'}",
                "MLCYCLE_ARTIFACT_ROOT": (home / "local" / "mlflow" / "artifacts").as_uri(),
                "MLCYCLE_STEPS_BIN": str(STEPS_BIN),
                "MLCYCLE_RUNNER": "local",
                "MLFLOW_ENABLE_TELEMETRY": "false",
                "DO_NOT_TRACK": "1",
                "PATH": f"{AIRFLOW_BIN}:{env.get('PATH', '')}",
                # Warm steps (mlcycle.warm): every local step of every scenario forks from one server
                # that imported pandas, scikit-learn, MLflow and Evidently once, instead of spending
                # about 10 s importing them (the step, its environment and its results are the same;
                # tests/unit/test_warm.py proves it). A scenario about cold starts sets it to "0".
                "MLCYCLE_WARM": "1",
                "MLCYCLE_WARM_IDLE_SECONDS": "300",
            }
        )
        env.update(overrides)
        project = cls(home=home, env=env)
        project._migrate()
        subprocess.run(
            [
                str(AIRFLOW_BIN / "python"),
                str(ROOT / "scripts" / "load_airflow_settings.py"),
                "--file",
                str(ROOT / "airflow_settings.yaml"),
            ],
            env=env,
            check=True,
            timeout=300,
        )  # connections, pools, variables (output shown on failure)
        return project

    #: A freshly migrated SQLite metadata database, made once per test process and copied into
    #: each new home (a migration costs several seconds of the suite per project).
    _template_db: Path | None = None

    def _migrate(self) -> None:
        if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" in self.env:  # a server database: migrate it in place
            self.airflow("db", "migrate")
            return
        target = Path(self.env["AIRFLOW_HOME"]) / "airflow.db"
        target.parent.mkdir(parents=True, exist_ok=True)
        if AirflowProject._template_db is None:
            self.airflow("db", "migrate")
            template = Path(tempfile.mkdtemp(prefix="mlcycle-airflow-db-")) / "airflow.db"
            shutil.copyfile(target, template)
            AirflowProject._template_db = template
        else:
            shutil.copyfile(AirflowProject._template_db, target)

    def _metadata(self, query: str, **params: object) -> list[tuple]:
        """Rows of a query on this home's Airflow metadata database (SQLite or a server)."""
        from sqlalchemy import create_engine, text

        url = self.env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") or (
            f"sqlite:///{Path(self.env['AIRFLOW_HOME']) / 'airflow.db'}"
        )
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(text(query), params)]
        finally:
            engine.dispose()

    @staticmethod
    def server_settings(port: int) -> dict[str, str]:
        """Settings for services on ``port``: the API server, and the Execution API its workers report to.

        In Airflow 3 a task does not write to the metadata database: the executor's workers talk to
        the Execution API (``/execution/`` of ``airflow api-server``), authenticated with JWTs signed
        by ``api_auth.jwt_secret``, which every service must share.
        """
        base = f"http://127.0.0.1:{port}"
        return {
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"{base}/",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            # The REST API without logins (a test reads it as the UI would); never for a real deployment.
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        }

    @contextmanager
    def serve(self, timeout: float = 120) -> Iterator[dict[str, subprocess.Popen]]:
        """Run ``api-server``, ``scheduler`` and ``dag-processor`` until the block ends; stop them all.

        Needs the settings of ``server_settings`` in ``env`` (pass them to ``create``). Each service is
        the leader of its own process group, so stopping it also stops its workers and task processes.
        Logs go to ``<home>/services/<name>.log`` (``service_logs`` returns their tails).
        """
        port = self.env["AIRFLOW__API__PORT"]
        (self.home / "services").mkdir(exist_ok=True)
        procs: dict[str, subprocess.Popen] = {}
        self._procs = procs
        try:
            for name in ("api-server", "scheduler", "dag-processor"):
                self.start_service(name)
            deadline = time.monotonic() + timeout
            while True:
                dead = [n for n, p in procs.items() if p.poll() is not None]
                if dead:
                    raise AssertionError(f"airflow {', '.join(dead)} exited early:\n{self.service_logs()}")
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=5
                    ) as r:
                        health = json.loads(r.read())
                    if all(
                        (health.get(c) or {}).get("status") == "healthy"
                        for c in ("scheduler", "dag_processor")
                    ):
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"Airflow services not healthy after {timeout}s:\n{self.service_logs()}"
                    )
                time.sleep(2)
            yield procs
        finally:
            for proc in procs.values():
                _signal_group(proc, signal.SIGTERM)
            for proc in procs.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait(timeout=10)
                _signal_group(proc, signal.SIGKILL)  # stragglers of the group (task processes)
            self._procs = {}

    def start_service(self, name: str) -> subprocess.Popen:
        """Start ``airflow <name>`` (inside ``serve``), replacing the process of that name; its log is
        appended to ``<home>/services/<name>.log``."""
        with (self.home / "services" / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [str(AIRFLOW_BIN / "airflow"), name],
                env=self.env,
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs[name] = proc
        return proc

    def kill_service(self, name: str) -> int:
        """SIGKILL ``airflow <name>`` and every process under it (its executor's workers, their task
        processes and the steps they run, whatever session they moved to), as a host that dies
        would; the number of processes killed."""
        import psutil

        proc = self._procs[name]
        victims = [psutil.Process(proc.pid)]
        victims += victims[0].children(recursive=True)
        for victim in victims:
            try:
                victim.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=30)
        proc.wait(timeout=10)
        return len(victims)

    def service_logs(self, lines: int = 40) -> str:
        out = []
        for path in sorted((self.home / "services").glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)

    @property
    def store(self) -> Path:
        return Path(self.env["MLCYCLE_HOME"]) / "store"

    def airflow(self, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(AIRFLOW_BIN / "airflow"), *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"airflow {' '.join(args)} exited {proc.returncode}:\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        return proc

    def dags_test(self, dag_id: str, date: str, conf: dict | None = None) -> subprocess.CompletedProcess:
        args = ["dags", "test", dag_id, date]
        if conf:
            args += ["--conf", json.dumps(conf)]
        return self.airflow(*args, check=False)

    def runs(self, dag_id: str) -> list[dict[str, str]]:
        """The runs of ``dag_id`` as ``airflow dags list-runs -o json`` lists them (latest first), read
        from the metadata database: a poll every few seconds through the CLI would spend a core on
        starting Airflow again and again, beside the services it waits for."""
        import datetime as dt

        def iso(value: object) -> str:
            if value in (None, ""):
                return ""
            when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
            return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).isoformat()

        rows = self._metadata(
            "SELECT run_id, state, logical_date, start_date, end_date FROM dag_run WHERE dag_id = :dag "
            "ORDER BY run_after DESC, id DESC",
            dag=dag_id,
        )
        return [
            {
                "dag_id": dag_id,
                "run_id": run_id,
                "state": state,
                "logical_date": iso(logical),
                "start_date": iso(start),
                "end_date": iso(end),
            }
            for run_id, state, logical, start, end in rows
        ]

    def task_states(self, dag_id: str, date: str) -> dict[str, str]:
        """Task id -> final state of the latest run of ``dag_id`` with logical date ``date``."""
        runs = self._metadata(
            "SELECT run_id, logical_date FROM dag_run WHERE dag_id = :dag ORDER BY id DESC", dag=dag_id
        )
        matching = [run_id for run_id, logical in runs if str(logical).startswith(date)]
        assert matching, f"no run of {dag_id} at {date}; runs: {runs}"
        rows = self._metadata(
            "SELECT task_id, state FROM task_instance WHERE dag_id = :dag AND run_id = :run",
            dag=dag_id,
            run=matching[0],
        )
        return {task_id: state for task_id, state in rows}

    def champion_events(self, pipeline: str) -> list[dict]:
        """The extras of the events of ``pipeline``'s champion asset, oldest first (Airflow's own table)."""
        return [
            extra if isinstance(extra, dict) else json.loads(extra or "{}")  # JSON on a server database
            for (extra,) in self._asset_rows(
                "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri = :uri ORDER BY e.id",
                pipeline,
            )
        ]

    def champion_queue(self, pipeline: str) -> list[str]:
        """The DAGs queued to run on ``pipeline``'s champion asset (Airflow's own table)."""
        return [
            dag
            for (dag,) in self._asset_rows(
                "SELECT q.target_dag_id FROM asset_dag_run_queue q JOIN asset a ON a.id = q.asset_id WHERE a.uri = :uri",
                pipeline,
            )
        ]

    def _asset_rows(self, query: str, pipeline: str) -> list[tuple]:
        return self._metadata(query, uri=f"mlcycle://{pipeline}/champion")

    def steps_cli(self, *args: str, timeout: int = 900, env: dict[str, str] | None = None) -> dict:
        """Run ``mlcycle <args>`` with this project's environment (and ``env`` over it); its JSON
        result (exit 0 required)."""
        proc = subprocess.run(
            [str(STEPS_BIN / "mlcycle"), *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == 0, (
            f"mlcycle {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def steps_python(self, code: str) -> dict:
        """Run ``code`` in the step environment; it must print one JSON line last."""
        proc = subprocess.run(
            [str(STEPS_BIN / "python"), "-c", textwrap.dedent(code)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise AssertionError(f"step-environment probe failed:\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def registry(self, model: str) -> dict:
        """Versions of ``model`` with their tags, and which version holds each alias.

        A model that is not registered yet is an empty registry; any other error (an unreadable
        store, a wrong URI) fails the probe, so a test never compares two empty registries.
        """
        return self.steps_python(f"""
            import json, mlflow
            from mlflow import MlflowClient
            from mlflow.exceptions import MlflowException
            c = MlflowClient()
            try:
                rm = c.get_registered_model({model!r})
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                print(json.dumps({{"versions": [], "aliases": {{}}}})); raise SystemExit
            versions = [{{"version": str(v.version), "tags": v.tags, "run_id": v.run_id}}
                        for v in c.search_model_versions("name='{model}'")]
            print(json.dumps({{"versions": sorted(versions, key=lambda v: int(v["version"])),
                               "aliases": {{k: str(v) for k, v in rm.aliases.items()}}}}))
        """)

    def run_tags(self, run_id: str) -> dict:
        return self.steps_python(f"""
            import json
            from mlflow import MlflowClient
            r = MlflowClient().get_run({run_id!r})
            print(json.dumps({{"tags": r.data.tags, "metrics": r.data.metrics, "params": r.data.params,
                               "inputs": [d.dataset.name for d in r.inputs.dataset_inputs],
                               "artifacts": [a.path for a in MlflowClient().list_artifacts({run_id!r}, "plots")]}}))
        """)


@contextmanager
def fresh_database(postgres_dsn: str, prefix: str) -> Iterator[str]:
    """A new, empty database on the local PostgreSQL server (SQLAlchemy URL); dropped afterwards."""
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(postgres_dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(postgres_dsn)
        yield urlunsplit(("postgresql+psycopg2", parts.netloc, f"/{name}", "", ""))
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def mlflow_server(
    postgres_dsn: str, artifacts: str, folder: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, str]]:
    """A real `mlflow server` (step environment) on a fresh PostgreSQL database of its own, keeping
    artifacts at ``artifacts`` (a folder or s3://...); yields its URL and backend store URI, drops
    the database after."""
    with fresh_database(postgres_dsn, "mlflow") as backend:
        port = free_port()
        log_path = folder / "mlflow-server.log"
        log = log_path.open("w")
        command = [
            str(STEPS_BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            backend,
            "--serve-artifacts",
            "--artifacts-destination",
            artifacts,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false", **(env or {})},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"mlflow server did not come up:\n{log_path.read_text()[-3000:]}")
                time.sleep(2)
            yield url, backend
        finally:
            _signal_group(proc, signal.SIGTERM)
            proc.wait(timeout=30)
            log.close()


#: Ports handed out by ``free_port``: below the kernel's ephemeral range (32768-60999 by default on
#: Linux), so that no outgoing connection's local port can take one, in a block of its own per
#: pytest-xdist worker, so that two workers never hand out the same port.
PORT_BASE, PORTS_PER_WORKER = 20_000, 1_500
_next_port: list[int] = []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, and that this test process hands out once.

    A port the kernel picks for ``bind(0)`` is free only until the socket closes: before the server
    it is meant for binds it, another worker's ``bind(0)`` may get it too, or a client's outgoing
    connection may take it as its local port (both from the same ephemeral range). Here each worker
    walks its own block below that range, skipping whatever is bound already.
    """
    if not _next_port:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
        block = PORT_BASE + (int(worker) if worker.isdigit() else 0) * PORTS_PER_WORKER
        _next_port.append(block + os.getpid() % (PORTS_PER_WORKER // 2))  # two sessions side by side
        _next_port.append(block)
    block = _next_port[1]
    for _ in range(PORTS_PER_WORKER):
        port = _next_port[0]
        _next_port[0] = block + (port + 1 - block) % PORTS_PER_WORKER
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError(f"no free port in {block}-{block + PORTS_PER_WORKER - 1}")


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the service was started as the leader of its own group
    except ProcessLookupError:
        pass
