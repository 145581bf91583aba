"""Run the real thing from tests: an isolated Airflow home, `airflow dags test`, and MLflow probes.

Tests in the Airflow environment cannot import MLflow (by design), so registry state is read by a
small script run in the step environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import AIRFLOW_BIN, ROOT, STEPS_BIN


@dataclass
class AirflowProject:
    home: Path
    env: dict[str, str]

    @classmethod
    def create(cls, home: Path, **overrides: str) -> AirflowProject:
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLCYCLE", "MLFLOW"))}
        env.update({
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
        })
        env.update(overrides)
        project = cls(home=home, env=env)
        project.airflow("db", "migrate")
        project.airflow("pools", "set", "training", "1", "one training run at a time")
        return project

    @property
    def store(self) -> Path:
        return Path(self.env["MLCYCLE_HOME"]) / "store"

    def airflow(self, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(AIRFLOW_BIN / "airflow"), *args], env=self.env, cwd=self.home,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"airflow {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def dags_test(self, dag_id: str, date: str, conf: dict | None = None) -> subprocess.CompletedProcess:
        args = ["dags", "test", dag_id, date]
        if conf:
            args += ["--conf", json.dumps(conf)]
        return self.airflow(*args, check=False)

    def task_states(self, dag_id: str, date: str) -> dict[str, str]:
        """Task id -> final state of the one run of ``dag_id`` with logical date ``date``."""
        runs = json.loads(self.airflow("dags", "list-runs", dag_id, "-o", "json").stdout or "[]")
        matching = [r for r in runs if str(r.get("logical_date", "")).startswith(date)]
        assert matching, f"no run of {dag_id} at {date}; runs: {runs}"
        run_id = matching[0]["run_id"]
        rows = json.loads(self.airflow("tasks", "states-for-dag-run", dag_id, run_id, "-o", "json").stdout)
        return {r["task_id"]: r["state"] for r in rows}

    def steps_python(self, code: str) -> dict:
        """Run ``code`` in the step environment; it must print one JSON line last."""
        proc = subprocess.run([str(STEPS_BIN / "python"), "-c", textwrap.dedent(code)], env=self.env,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise AssertionError(f"step-environment probe failed:\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def registry(self, model: str) -> dict:
        """Versions of ``model`` with their tags, and which version holds each alias."""
        return self.steps_python(f"""
            import json, mlflow
            from mlflow import MlflowClient
            c = MlflowClient()
            try:
                rm = c.get_registered_model({model!r})
            except Exception:
                print(json.dumps({{"versions": [], "aliases": {{}}}})); raise SystemExit
            versions = [{{"version": v.version, "tags": v.tags, "run_id": v.run_id}}
                        for v in c.search_model_versions("name='{model}'")]
            print(json.dumps({{"versions": sorted(versions, key=lambda v: int(v["version"])),
                               "aliases": {{k: str(v) for k, v in rm.aliases.items()}}}}))
        """)

    def run_tags(self, run_id: str) -> dict:
        return self.steps_python(f"""
            import json
            from mlflow import MlflowClient
            r = MlflowClient().get_run({run_id!r})
            print(json.dumps({{"tags": r.data.tags, "metrics": r.data.metrics,
                               "inputs": [d.dataset.name for d in r.inputs.dataset_inputs],
                               "artifacts": [a.path for a in MlflowClient().list_artifacts({run_id!r}, "plots")]}}))
        """)
