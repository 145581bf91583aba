"""Deploy benchmark: trigger to production, failed requests during a swap, the latency nginx adds.

Run with the Airflow environment, after `make setup` and `make images`:

    .venv/bin/python scripts/bench_deploy.py [--rates 100 500] [--seconds 10]

Everything happens in a fresh temporary home (Airflow, MLflow, store) with its own container
namespace and free ports, so the figures are those of a clean clone and nothing of the project's
own deployment is touched. Nothing here asserts: it measures and prints.

1. **Trigger to production**: `airflow dags test deploy_<name>` (auto-approved) of v1 when no
   serving image of it exists (cold: the model layer and everything after it is built; the
   dependency layer comes from Docker's build cache when an earlier build left it), then of v2
   (warm: code unchanged, a new model version). Both the whole run (including the watch window) and
   the moment production first answers with the new version are reported.
2. **Failed requests during a swap**: a steady load through the proxy at each rate while the proxy
   switches between the two slots (`mlcycle deploy-rollout`), several times. Goal: 0.
3. **Latency the proxy adds**: the same load through nginx, then straight to the live slot.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = ROOT / ".venv" / "bin" / "airflow"
STEPS_BIN = ROOT / ".venv-steps" / "bin"
sys.path.insert(0, str(ROOT))


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "deploy_load", ROOT / "include" / "mlcycle" / "deploy" / "load.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


load = _load_generator()


def free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            if sock.getsockname()[1] not in ports:
                ports.append(sock.getsockname()[1])
    return ports


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def step(env: dict[str, str], *args: str) -> dict:
    return json.loads(run([str(STEPS_BIN / "mlcycle"), *args], env).stdout.strip().splitlines()[-1])


def served(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
            return json.loads(resp.read())["model_version"]
    except OSError:
        return None


def deploy_run(env: dict[str, str], date: str, version: str, port: int) -> dict[str, float]:
    """One auto-approved run of the deploy DAG; its wall time and when production first served ``version``."""
    first: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            if served(port) == version:
                first.append(time.perf_counter())
                return
            time.sleep(0.1)

    began = time.perf_counter()
    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    run(
        [
            str(AIRFLOW),
            "dags",
            "test",
            "deploy_bikeshare",
            date,
            "--conf",
            json.dumps({"version": version, "auto_approve": True}),
        ],
        env,
    )
    wall = time.perf_counter() - began
    done.set()
    return {
        "run_seconds": round(wall, 1),
        "to_production_seconds": round(first[0] - began, 1) if first else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 500.0])
    parser.add_argument("--seconds", type=float, default=10.0, help="load per measurement")
    parser.add_argument("--swaps", type=int, default=4, help="proxy switches per rate")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home and the containers")
    args = parser.parse_args()

    from tests.datasets import BIKESHARE_SPEC, write_spec_variant

    home = Path(tempfile.mkdtemp(prefix="mlcycle-bench-deploy-"))
    production, blue, green, staging = free_ports(4)
    pipelines = home / "pipelines"
    pipelines.mkdir()
    spec = write_spec_variant(
        BIKESHARE_SPEC,
        pipelines / "bikeshare.yaml",
        model={"search": {"n_iter": 1, "cv_folds": 2}},
        window={"days": 14},
        deploy={
            "production_port": production,
            "slot_ports": [blue, green],
            "staging_port": staging,
            "watch_seconds": 5,
            "latency_budget_ms": 2000,
        },
    )
    namespace = f"bench{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLCYCLE", "MLFLOW"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "MLCYCLE_HOME": str(home / "local"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'local' / 'mlflow' / 'mlflow.db'}",
            "MLCYCLE_ARTIFACT_ROOT": (home / "local" / "mlflow" / "artifacts").as_uri(),
            "MLCYCLE_STEPS_BIN": str(STEPS_BIN),
            "MLCYCLE_PIPELINES_DIR": str(pipelines),
            "MLCYCLE_DEPLOY_NAMESPACE": namespace,
            "MLCYCLE_RUNNER": "local",
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "DO_NOT_TRACK": "1",
            "GX_ANALYTICS_ENABLED": "false",
            "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
        }
    )
    (home / "local" / "mlflow").mkdir(parents=True)
    results: dict[str, object] = {}
    try:
        print("==> a champion (v1) by the real steps, and v2 (the same model, a new version)", flush=True)
        run([str(AIRFLOW), "db", "migrate"], env)
        common = [
            "--pipeline",
            str(spec),
            "--start",
            "2011-06-29",
            "--end",
            "2011-06-30",
            "--window-days",
            "14",
        ]
        for name in ("ingest", "validate", "build_features"):
            step(env, name, *common)
        trained = step(env, "train", *common)
        step(env, "evaluate", *common, "--run-id", trained["run_id"], "--model-uri", trained["model_uri"])
        step(
            env,
            "register",
            "--pipeline",
            str(spec),
            "--run-id",
            trained["run_id"],
            "--model-uri",
            trained["model_uri"],
        )
        run(
            [
                str(STEPS_BIN / "python"),
                "-c",
                "from mlflow import MlflowClient; c = MlflowClient(); "
                "v = c.get_model_version('bikeshare', '1'); "
                "c.create_model_version('bikeshare', source=v.source, run_id=v.run_id, model_id=v.model_id)",
            ],
            env,
        )

        print("==> trigger to production", flush=True)
        results["cold_v1"] = deploy_run(env, "2012-01-01", "1", production)
        results["warm_v2"] = deploy_run(env, "2012-01-02", "2", production)
        print(json.dumps({k: results[k] for k in ("cold_v1", "warm_v2")}), flush=True)

        rows = json.loads(
            run(
                [
                    str(STEPS_BIN / "python"),
                    "-c",
                    (
                        "import json; from pathlib import Path; from mlcycle.deploy.smoke import eval_rows, latest_eval_slice; "
                        f"from mlcycle.spec import load_spec; s = load_spec({str(spec)!r}); "
                        f"print(json.dumps(eval_rows(latest_eval_slice(Path({str(home / 'local' / 'store')!r}), 'bikeshare'), "
                        "s.feature_names, 200)[1]))"
                    ),
                ],
                env,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        status = step(env, "deploy-status", "--pipeline", str(spec))
        image = {slot["version"]: slot["image"] for slot in status["slots"].values() if slot}

        print("==> failed requests during swaps", flush=True)
        for rate in args.rates:
            with load.Load(production, rows, rate=rate, threads=max(16, int(rate // 8))) as generator:
                time.sleep(2)
                version = "2"
                for _ in range(args.swaps):
                    version = "1" if version == "2" else "2"
                    step(
                        env,
                        "deploy-rollout",
                        "--pipeline",
                        str(spec),
                        "--version",
                        version,
                        "--image",
                        image[version],
                    )
                    time.sleep(max(0.5, args.seconds / args.swaps))
                samples = generator.stop()
            figures = load.summary(samples)
            results[f"swap_{int(rate)}rps"] = {**figures, "target_rate": rate, "swaps": args.swaps}
            print(json.dumps(results[f"swap_{int(rate)}rps"]), flush=True)

        print("==> latency through nginx vs straight to the slot", flush=True)
        live = step(env, "deploy-status", "--pipeline", str(spec))
        slot_port = live["slots"][live["live"]]["port"]
        for name, port in (("through_nginx", production), ("direct_to_slot", slot_port)):
            samples = load.Load(port, rows, rate=100, seconds=args.seconds, threads=16).start().wait()
            results[f"latency_{name}"] = load.summary(samples)
            print(name, json.dumps(results[f"latency_{name}"]), flush=True)
    finally:
        if not args.keep:
            subprocess.run(
                [str(STEPS_BIN / "mlcycle"), "deploy-stop", "--pipeline", str(spec)],
                env=env,
                capture_output=True,
                timeout=300,
            )
            images = subprocess.run(
                [
                    "docker",
                    "image",
                    "ls",
                    "--format",
                    "{{.Repository}}:{{.Tag}}",
                    f"{namespace}-serving-bikeshare",
                ],
                capture_output=True,
                text=True,
            ).stdout.split()
            if images:
                subprocess.run(
                    ["docker", "image", "rm", "--no-prune", *images], capture_output=True, timeout=300
                )
            shutil.rmtree(home, ignore_errors=True)
    print("\n" + json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
