"""Validate's cost: wall time and peak memory on a first run (28 new partitions) and the next day.

    .venv-steps/bin/python scripts/bench_validate.py [--repeat 3]

Each repeat uses a fresh store under a temporary folder; ingest runs before each validate and is
not measured. The variants run interleaved in the same repeats: without Data Docs
(``MLCYCLE_DATA_DOCS=off``) and the default, which renders GX's Data Docs pages, and, with
``--baseline-code``, an older checkout first; ratios are against the first variant.
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
    parser.add_argument(
        "--baseline-code",
        type=Path,
        default=None,
        help="a checkout of older code (e.g. `git worktree add /tmp/base <commit>`): its "
        "include/ is measured first, as the baseline, in the same repeats",
    )
    args = parser.parse_args()
    labels = ("first run (28 partitions)", "next day (1 new)")
    variants = {"without Data Docs": {"MLCYCLE_DATA_DOCS": "off"}, "with Data Docs": {}}
    if args.baseline_code is not None:
        older = {"PYTHONPATH": str(args.baseline_code.resolve() / "include")}  # ahead of the editable install
        variants = {f"code of {args.baseline_code} (baseline)": older, **variants}
    figures: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for _ in range(args.repeat):
        for variant, settings in variants.items():
            with tempfile.TemporaryDirectory() as tmp:
                env = {
                    **os.environ,
                    "MLCYCLE_HOME": tmp,
                    "MLFLOW_ENABLE_TELEMETRY": "false",
                    "GX_ANALYTICS_ENABLED": "false",
                    **settings,
                }
                env.pop("MLCYCLE_STORE", None)
                for label, interval in zip(labels, (FIRST, NEXT), strict=True):
                    step("ingest", interval, env)
                    figures.setdefault((label, variant), []).append(step("validate", interval, env))
    medians = {
        key: tuple(statistics.median(run[i] for run in runs) for i in range(3))
        for key, runs in figures.items()
    }
    for (label, variant), (wall, cpu, rss) in medians.items():
        base_wall, base_cpu, _ = medians[(label, next(iter(variants)))]
        print(
            f"validate, {label}, {variant}: {wall:.2f} s wall ({wall / base_wall:.2f}x), {cpu:.2f} s CPU "
            f"({cpu / base_cpu:.2f}x), {rss:.0f} MiB peak RSS (median of {args.repeat})"
        )


if __name__ == "__main__":
    main()
