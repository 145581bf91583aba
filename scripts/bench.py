"""Benchmarks: figures printed with the baseline each is compared to, measured in the same run.

Run with the Airflow environment after `source scripts/env.sh` (or `make bench`):

    python scripts/bench.py                # parse times, dags test wall time, peak memory per step
    python scripts/bench.py --docker       # also: Docker runner overhead per step, image size

Nothing here asserts: it measures and prints. Every run uses a fresh temporary Airflow home and
store, so the figures are those of a first run on a clean clone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = ROOT / ".venv" / "bin" / "airflow"
STEPS_BIN = ROOT / ".venv-steps" / "bin"
DATE, START, END = "2011-06-30", "2011-06-29", "2011-06-30"
TRIVIAL_DAG = '''
"""Baseline: two TaskFlow tasks that do nothing."""
import pendulum
from airflow.sdk import dag, task

@dag(schedule=None, start_date=pendulum.datetime(2011, 1, 1, tz="UTC"), tags=["bench"])
def bench_trivial():
    @task
    def first():
        return 1

    @task
    def second(x):
        return x + 1

    second(first())

bench_trivial()
'''


def env_for(home: Path, dags: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLCYCLE", "MLFLOW"))}
    env.update({
        "AIRFLOW_HOME": str(home / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(dags or ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "MLCYCLE_HOME": str(home / "local"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'local' / 'mlflow' / 'mlflow.db'}",
        "MLCYCLE_ARTIFACT_ROOT": (home / "local" / "mlflow" / "artifacts").as_uri(),
        "MLCYCLE_STEPS_BIN": str(STEPS_BIN), "MLFLOW_ENABLE_TELEMETRY": "false", "GX_ANALYTICS_ENABLED": "false",
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
    })
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str], check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    began = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - began
    if check and proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc


def parse_times() -> None:
    print("\n## DAG parse time (fresh interpreter per file; baseline: the trivial 2-task DAG)")
    probe = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        t0 = time.perf_counter()
        import airflow.sdk  # noqa: F401  (the import every DAG file pays; reported separately)
        from airflow.dag_processing.dagbag import BundleDagBag
        t1 = time.perf_counter()
        bag = BundleDagBag(dag_folder=sys.argv[1], bundle_path=Path(sys.argv[1]).parent, safe_mode=False)
        t2 = time.perf_counter()
        assert not bag.import_errors, bag.import_errors
        print(f"{t1 - t0:.3f} {t2 - t1:.3f}")
    """)
    with tempfile.TemporaryDirectory() as tmp:
        trivial = Path(tmp) / "bench_trivial.py"
        trivial.write_text(TRIVIAL_DAG)
        files = [trivial, *sorted((ROOT / "dags").glob("*.py"))]
        results = {}
        for f in files:
            samples = []
            for _ in range(3):
                _, proc = run([sys.executable, "-c", probe, str(f)], env_for(Path(tmp)))
                samples.append([float(x) for x in proc.stdout.strip().splitlines()[-1].split()])
            results[f.name] = (statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples))
        base = results["bench_trivial.py"][1]
        print(f"{'file':28} {'import airflow.sdk':>18} {'parse file':>11} {'vs trivial':>11}")
        for name, (imp, parse) in results.items():
            print(f"{name:28} {imp:17.3f}s {parse:10.3f}s {parse / base:10.2f}x")
        print("goal: parse file <= 0.300 s each (median of 3 fresh processes)")


def dags_test_wall() -> None:
    print("\n## `airflow dags test` wall time (fresh home; baseline: the trivial 2-task DAG)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dags = tmp / "dags"
        dags.mkdir()
        (dags / "bench_trivial.py").write_text(TRIVIAL_DAG)
        benv = env_for(tmp / "trivial", dags)
        run([str(AIRFLOW), "db", "migrate"], benv)
        base, _ = run([str(AIRFLOW), "dags", "test", "bench_trivial", DATE], benv)

        tenv = env_for(tmp / "training")
        run([str(AIRFLOW), "db", "migrate"], tenv)
        run([str(AIRFLOW), "pools", "set", "training", "1", "bench"], tenv)
        first, proc = run([str(AIRFLOW), "dags", "test", "training", DATE], tenv)
        steady, _ = run([str(AIRFLOW), "dags", "test", "training", "2011-07-01"], tenv)
        ok = "state=success" in proc.stdout + proc.stderr
        print(f"trivial 2-task DAG (baseline): {base:6.1f} s")
        print(f"training, first run {DATE} (28 partitions to validate, new MLflow store): {first:6.1f} s "
              f"= {first / base:.1f}x baseline {'(success)' if ok else '(NOT successful)'}")
        print(f"training, next day (1 new partition):  {steady:6.1f} s = {steady / base:.1f}x baseline")
        print(f"goal: <= 60 s on {os.cpu_count()} cores")


def step_memory() -> None:
    print("\n## Peak memory (max RSS) per step, each in a fresh process, first run on a fresh store")
    child = textwrap.dedent("""
        import json, resource, subprocess, sys
        p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
        print(json.dumps({"rc": p.returncode, "rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                          "last": (p.stdout.strip().splitlines() or [""])[-1]}))
    """)
    with tempfile.TemporaryDirectory() as tmp:
        env = env_for(Path(tmp))
        mlc = str(STEPS_BIN / "mlcycle")
        interval = ["--pipeline", "bikeshare", "--start", START, "--end", END]
        rows = []
        _, base = run([sys.executable, "-c", child, str(STEPS_BIN / "python"), "-c",
                       "import pandas, sklearn, pyarrow"], env)
        baseline_kb = json.loads(base.stdout)["rss_kb"]
        train_result: dict = {}
        plan = [("ingest", interval), ("validate", interval), ("build_features", interval), ("train", interval)]
        for step, args in plan:
            secs, proc = run([sys.executable, "-c", child, mlc, step, *args], env)
            out = json.loads(proc.stdout)
            rows.append((step, secs, out["rss_kb"]))
            if step == "train":
                train_result = json.loads(out["last"])
        ids = ["--run-id", train_result["run_id"], "--model-uri", train_result["model_uri"]]
        for step, args in (("evaluate", interval + ids), ("register", ["--pipeline", "bikeshare", *ids])):
            secs, proc = run([sys.executable, "-c", child, mlc, step, *args], env)
            rows.append((step, secs, json.loads(proc.stdout)["rss_kb"]))
        print(f"baseline: python importing pandas + sklearn + pyarrow: {baseline_kb / 1024:7.1f} MiB")
        print(f"{'step':16} {'wall':>8} {'peak RSS':>10} {'vs baseline':>12}")
        for step, secs, kb in rows:
            print(f"{step:16} {secs:7.1f}s {kb / 1024:8.1f}MiB {kb / baseline_kb:11.2f}x")


def docker_overhead() -> None:
    print("\n## Docker runner overhead per step (baseline: the same command as a local process)")
    image = os.environ.get("MLCYCLE_STEP_IMAGE", "mlcycle-steps:0.1.0")
    size = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", image], capture_output=True, text=True)
    if size.returncode != 0:
        print(f"skipped: image {image} not found (make images)")
        return

    def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
        began = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        first = None
        for _ in proc.stdout:
            first = first or time.perf_counter() - began
        proc.wait()
        if proc.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}")
        return first or 0.0, time.perf_counter() - began

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        interval = ["--pipeline", "bikeshare", "--start", START, "--end", END, "--window-days", "14"]
        print(f"{'step':16} {'local: 1st line':>16} {'total':>8} {'docker: 1st line':>17} {'total':>8} {'overhead':>9}")
        for step in ("ingest", "validate", "build_features"):
            local_env = env_for(tmp / "local")
            first_l, total_l = timed([str(STEPS_BIN / "mlcycle"), step, *interval], local_env)
            home = tmp / "docker" / "local"
            home.mkdir(parents=True, exist_ok=True)
            cmd = ["docker", "run", "--rm", "--network", "host", "--user", f"{os.getuid()}:{os.getgid()}",
                   "-e", f"MLCYCLE_HOME={home}", "-v", f"{home}:{home}", image, step, *interval]
            first_d, total_d = timed(cmd, os.environ.copy())
            print(f"{step:16} {first_l:15.2f}s {total_l:7.2f}s {first_d:16.2f}s {total_d:7.2f}s "
                  f"{total_d - total_l:+8.2f}s")
        print(f"step image {image}: {int(size.stdout) / 1e6:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docker", action="store_true", help="also measure the Docker runner")
    parser.add_argument("--only", choices=["parse", "dags-test", "memory", "docker"], help="one section")
    args = parser.parse_args()
    print(f"# mlcycle benchmarks: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    sections = {"parse": parse_times, "dags-test": dags_test_wall, "memory": step_memory, "docker": docker_overhead}
    chosen = [args.only] if args.only else ["parse", "dags-test", "memory"] + (["docker"] if args.docker else [])
    for name in chosen:
        sections[name]()


if __name__ == "__main__":
    main()
