#!/usr/bin/env python3
"""The compose stack's figures: time to healthy, idle memory, a training backfill on 1 and 2 workers.

    make bench-stack                                   # all of it (about 30 minutes on 2 cores)
    .venv/bin/python scripts/bench_stack.py --days 4   # a shorter backfill

Measured in one run, on a stack of its own (project ``mlcyclebench``, free ports):

- **cold** `make stack`: the images exist (built before the clock starts), no container, no volume:
  the database is initialised and migrated;
- **warm** `make stack`: the containers stopped (`docker compose stop`), volumes kept: a restart;
- **idle memory**: `docker stats --no-stream` of every service, 60 s after healthy, nothing running;
- **backfill**: `airflow backfill create` of training over ``--days`` days (lean search, 14-day
  windows), on a fresh stack with 1 worker, then on another with 2 (`--scale worker=2`); wall time
  from the backfill's creation to its last run's end, and the ratio (the baseline is 1 worker).

Prints one line per figure and, last, a JSON summary. Needs the images: ``STACK_IMAGES=1
scripts/build-images.sh`` (``make stack`` builds them too).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.airflow_env import free_port  # noqa: E402
from tests.integration.compose_stack import PORT_KEYS, Stack, write_env_file  # noqa: E402

PROJECT = "mlcyclebench"
DAG = "training_bikeshare"
SPEC = "/data/specs/bikeshare.yaml"
SPEC_TEXT = """extends: /opt/mlcycle/include/pipelines/bikeshare.yaml
model: {search: {n_iter: 1, cv_folds: 2}}
window: {days: 14}
"""


def new_stack(folder: Path) -> Stack:
    ports: dict[str, int] = {}
    while len(ports) < len(PORT_KEYS):
        port = free_port()
        if port not in ports.values():
            ports[PORT_KEYS[len(ports)]] = port
    return Stack(write_env_file(folder / "bench.env", PROJECT, ports))


def timed_make(stack: Stack, target: str, **variables: str) -> float:
    started = time.monotonic()
    done = stack.make(target, **variables)
    if done.returncode != 0:
        raise SystemExit(f"make {target} failed:\n{done.stdout}\n{done.stderr}")
    return time.monotonic() - started


def idle_memory(stack: Stack) -> dict[str, float]:
    """MiB per service (summed over replicas), from `docker stats --no-stream`."""
    running = [c for c in stack.containers() if c["State"]["Running"]]
    out = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.ID}} {{.MemUsage}}", *(c["Id"] for c in running)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    service = {c["Id"][:12]: c["Config"]["Labels"]["com.docker.compose.service"] for c in running}
    units = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "B": 1 / 2**20}
    memory: dict[str, float] = {}
    for line in out.splitlines():
        cid, usage = line.split(" ", 1)
        value = usage.split("/")[0].strip()
        number = next(u for u in ("GiB", "MiB", "KiB", "B") if value.endswith(u))
        memory[service[cid[:12]]] = (
            memory.get(service[cid[:12]], 0.0) + float(value[: -len(number)]) * units[number]
        )
    return memory


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole host, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def backfill(stack: Stack, days: int, workers: int) -> tuple[float, float]:
    """Wall seconds of a training backfill over ``days`` days on a fresh stack with ``workers`` workers,
    and the share of the host's CPU time that was busy meanwhile."""
    timed_make(stack, "stack", WORKERS=str(workers))
    worker = stack.service("worker")[0]["Id"]
    subprocess.run(
        ["docker", "exec", "-i", worker, "sh", "-c", f"mkdir -p /data/specs && cat > {SPEC}"],
        input=SPEC_TEXT,
        text=True,
        check=True,
        timeout=60,
    )
    stack.wait_for_dag(DAG)
    api = stack.api()
    api.request("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False})
    start, end = dt.date(2011, 6, 1), dt.date(2011, 6, days)
    started, cpu_before = time.monotonic(), cpu_times()
    api.request(
        "POST",
        "/api/v2/backfills",
        {
            "dag_id": DAG,
            "from_date": f"{start}T00:00:00Z",
            "to_date": f"{end}T00:00:00Z",
            "max_active_runs": days,
            "dag_run_conf": {"pipeline": SPEC},
            "reprocess_behavior": "none",
        },
    )
    last_states: dict[str, str] = {}
    while True:
        runs = api.request("GET", f"/api/v2/dags/{DAG}/dagRuns?limit=100")["dag_runs"]
        states = {r["dag_run_id"]: r["state"] for r in runs}
        if states != last_states:
            done = sum(s in ("success", "failed") for s in states.values())
            print(
                f"  {workers} worker(s), {time.monotonic() - started:5.0f} s: {done}/{days} runs ended",
                flush=True,
            )
            last_states = states
        if len(states) >= days and all(s in ("success", "failed") for s in states.values()):
            break
        time.sleep(5)
    wall, cpu_after = time.monotonic() - started, cpu_times()
    busy = (cpu_after[0] - cpu_before[0]) / max(1, cpu_after[1] - cpu_before[1])
    failed = [r for r, s in states.items() if s != "success"]
    if failed:
        raise SystemExit(f"backfill runs failed on {workers} worker(s): {failed}")
    timed_make(stack, "stack-down")
    return wall, busy


def startup(stack: Stack, figures: dict[str, object]) -> None:
    """Cold and warm `make stack` to healthy, and the idle stack's memory."""
    figures["cold_up_seconds"] = round(timed_make(stack, "stack"), 1)
    print(f"cold make stack to healthy: {figures['cold_up_seconds']} s", flush=True)
    time.sleep(60)
    memory = idle_memory(stack)
    figures["idle_memory_mib"] = {k: round(v) for k, v in sorted(memory.items())}
    figures["idle_memory_total_mib"] = round(sum(memory.values()))
    print(
        f"idle memory after 60 s: {figures['idle_memory_total_mib']} MiB in all; "
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(memory.items(), key=lambda kv: -kv[1])),
        flush=True,
    )
    stopped = stack.compose("stop")
    if stopped.returncode != 0:
        raise SystemExit(stopped.stderr)
    figures["warm_up_seconds"] = round(timed_make(stack, "stack"), 1)
    print(
        f"warm make stack to healthy (containers stopped, volumes kept): {figures['warm_up_seconds']} s",
        flush=True,
    )
    timed_make(stack, "stack-down")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--days", type=int, default=14, help="days of the training backfill (default 14)")
    p.add_argument("--skip-backfill", action="store_true")
    p.add_argument("--only-backfill", action="store_true", help="skip the cold/warm start and idle memory")
    args = p.parse_args()
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        stack = new_stack(Path(tmp))
        if any(stack.leftovers().values()):
            timed_make(stack, "stack-down")
        if not args.only_backfill:
            startup(stack, figures)
        if not args.skip_backfill:
            one, busy_one = backfill(stack, args.days, 1)
            two, busy_two = backfill(stack, args.days, 2)
            figures.update(
                backfill_days=args.days,
                backfill_1_worker_seconds=round(one, 1),
                backfill_2_workers_seconds=round(two, 1),
                speedup_2_vs_1=round(one / two, 2),
                cpu_busy_1_worker=round(busy_one, 2),
                cpu_busy_2_workers=round(busy_two, 2),
            )
            print(
                f"{args.days}-day training backfill: 1 worker {one:.0f} s, 2 workers {two:.0f} s "
                f"(baseline 1 worker; 2 workers take {two / one:.2f}x its time, a {one / two:.2f}x speed-up); "
                f"host CPU busy {busy_one:.0%} with 1 worker, {busy_two:.0%} with 2"
            )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
