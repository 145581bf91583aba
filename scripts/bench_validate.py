"""Validate's cost: wall time and peak memory on a first run (28 new partitions) and the next day.

    .venv-steps/bin/python scripts/bench_validate.py [--repeat 3]

Each repeat uses a fresh store under a temporary folder; ingest runs before each validate and is
not measured. Prints the median of the repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MLCYCLE = str(Path(sys.executable).parent / "mlcycle")
FIRST, NEXT = ("2011-06-29", "2011-06-30"), ("2011-06-30", "2011-07-01")


def step(name: str, interval: tuple[str, str], env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MiB) of one step run, measured with wait4 on the child.

    On a busy machine the CPU time is the steadier figure: wall time also counts waiting for a core.
    """
    began = time.perf_counter()
    proc = subprocess.Popen(
        [MLCYCLE, name, "--pipeline", "bikeshare", "--start", interval[0], "--end", interval[1]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{name} {interval} failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, list[tuple[float, float, float]]] = {
        "first run (28 partitions)": [],
        "next day (1 new)": [],
    }
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            env = {
                **os.environ,
                "MLCYCLE_HOME": tmp,
                "MLFLOW_ENABLE_TELEMETRY": "false",
                "GX_ANALYTICS_ENABLED": "false",
            }
            env.pop("MLCYCLE_STORE", None)
            for label, interval in zip(figures, (FIRST, NEXT), strict=True):
                step("ingest", interval, env)
                figures[label].append(step("validate", interval, env))
    for label, runs in figures.items():
        wall, cpu, rss = (statistics.median(run[i] for run in runs) for i in range(3))
        print(
            f"validate, {label}: {wall:.2f} s wall, {cpu:.2f} s CPU, {rss:.0f} MiB peak RSS "
            f"(median of {len(runs)})"
        )


if __name__ == "__main__":
    main()
