"""Pipeline specs as the DAG files see them: found in the specs folder, read with PyYAML only.

Reading the specs' YAML is the only work a DAG file does at parse time: no pandas, no step package,
no connection, no Variable. The step package (``mlcycle.spec``) validates a spec in full when a step
runs; this module reads what scheduling needs (the name, the ``schedule:`` section and the data
bounds it defaults from) and checks it strictly, so that a broken spec fails the DAG parse with a
message naming the file and the key. Both sides read the spec through one module,
``mlcycle.spec_schema`` (the sections and their keys, ``extends``, the schedule, dates), which needs
only PyYAML and pydantic: a key misspelt in any section fails the DAG parse too.

``extends: <path>`` makes a spec a variant of another: the base (its own relative paths resolved
against its own folder) deep-merged with the variant's keys. A CI-sized search, for example::

    extends: ../include/pipelines/bikeshare.yaml
    model: {search: {n_iter: 1, cv_folds: 2}}
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
try:
    from mlcycle import spec_schema
except ImportError:  # the Airflow environment does not install the step package: read it from include/
    sys.path.append(str(PROJECT_ROOT / "include"))
    from mlcycle import spec_schema


class SpecProblem(ValueError):
    """A spec cannot be used to build its DAGs; the message names the file and what to fix."""


def pipelines_entries() -> list[Path]:
    """Where the DAG files find specs: ``MLCYCLE_PIPELINES_DIR``, or ``include/pipelines``.

    Several entries are separated by ``:`` (``os.pathsep``); each is a folder (every ``*.yaml`` in it)
    or one spec file, so a spec kept anywhere gets its DAGs without copying it or its neighbours:
    ``MLCYCLE_PIPELINES_DIR=/srv/specs:/home/me/new.yaml``.
    """
    raw = os.environ.get("MLCYCLE_PIPELINES_DIR") or str(PROJECT_ROOT / "include" / "pipelines")
    return [Path(entry) for entry in raw.split(os.pathsep) if entry.strip()]


def pipelines_dir() -> Path:
    """Where specs are looked up by name (and named in step commands): the first folder entry."""
    folders = [entry for entry in pipelines_entries() if entry.suffix not in {".yaml", ".yml"}]
    return folders[0] if folders else PROJECT_ROOT / "include" / "pipelines"


def spec_files() -> list[Path]:
    """Every spec file of every entry, in entry order (a folder's files sorted by name)."""
    files: list[Path] = []
    for entry in pipelines_entries():
        if entry.suffix in {".yaml", ".yml"}:
            files += [entry] if entry.is_file() else []
        elif entry.is_dir():
            files += sorted(entry.glob("*.yaml"))
    return files


def resolve_spec(pipeline: str) -> Path:
    """A spec named by a path to a YAML file (relative to the project) or by its name in the specs folder."""
    candidate = Path(pipeline)
    if not candidate.is_absolute():
        candidate = PROJECT_ROOT / candidate  # the steps run with the project as working directory
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        path = candidate
    else:  # by name: the first folder, then any other entry of MLCYCLE_PIPELINES_DIR
        named = [p for p in spec_files() if p.stem == pipeline]
        path = named[0] if named else pipelines_dir() / f"{pipeline}.yaml"
    if not path.is_file():
        known = sorted({p.stem for p in spec_files()})
        where = os.pathsep.join(str(e) for e in pipelines_entries())
        raise SpecProblem(
            f"no pipeline spec {pipeline!r}: looked for {path}; known specs in "
            f"{where}: {', '.join(known) or 'none'}; or pass a path to a YAML file"
        )
    return path.resolve()


def read_spec(path: Path) -> dict[str, Any]:
    """The spec's mapping, with ``extends`` resolved (bases first, the file's own keys win)."""
    try:
        return spec_schema.read_spec_file(path)
    except spec_schema.SpecFileError as exc:
        raise SpecProblem(str(exc)) from exc


def _date(value: Any, where: str, problems: list[str]) -> dt.date | None:
    return spec_schema.parse_date(value, where, problems)


@dataclass(frozen=True)
class Schedule:
    """When a pipeline runs: a daily interval in a time zone, from ``start`` to ``end`` (logical dates)."""

    interval: str
    timezone: str
    start: dt.date
    end: dt.date | None
    catchup: bool

    def serves(self, day: dt.date) -> bool:
        return self.start <= day and (self.end is None or day <= self.end)

    def describe(self) -> str:
        until = f"to {self.end}" if self.end else "onwards (no end)"
        return f"data intervals starting {self.start} {until}, {self.interval} in {self.timezone}"

    def run_after(self, day: dt.date) -> dt.datetime:
        """When the interval of the day before ``day`` ends: ``day`` at the cron's time, in the
        schedule's zone. A manual run given this moment covers ``[day-1, day)`` whatever the zone
        (given UTC midnight, a pipeline west of UTC would cover the local day before that)."""
        from zoneinfo import ZoneInfo

        hour = minute = 0
        if self.interval not in ("@daily", "@midnight"):
            minute, hour = (int(f) for f in self.interval.split()[:2])
        return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=ZoneInfo(self.timezone))


@dataclass(frozen=True)
class PipelineEntry:
    """What the DAG factories need of one spec."""

    name: str
    path: Path
    description: str
    schedule: Schedule
    window_days: int
    #: The first day the source holds data (``window.data_start``; the schedule's start without it).
    data_start: dt.date
    #: The ``scoring:`` section as written (None: the spec has none, so no ``scoring_<name>`` DAG).
    scoring: dict[str, Any] | None = None
    #: Whether the spec declares history features (``features.history``): the training DAG materializes them.
    history: bool = False


def parse_schedule(raw: dict[str, Any], origin: str) -> tuple[Schedule | None, list[str]]:
    """The ``schedule:`` section with its defaults, and every problem found (paths in the file)."""
    problems: list[str] = []
    data_start, data_end, days = spec_schema.window_bounds(raw, problems)
    fields = spec_schema.parse_schedule(raw, problems, data_start, data_end, days)
    if fields.start is None and not problems:
        problems.append("schedule.start: required when window.data_start is not given")
    if problems or fields.start is None:
        return None, problems
    return Schedule(
        interval=fields.interval,
        timezone=fields.timezone,
        start=fields.start,
        end=fields.end,
        catchup=fields.catchup,
    ), problems


def load_entry(path: Path) -> PipelineEntry:
    """One spec's entry, or SpecProblem listing every problem with its path in the file."""
    raw = read_spec(path)
    problems = spec_schema.unknown_key_problems(raw)
    name = raw.get("name")
    if not isinstance(name, str) or not spec_schema.NAME.match(name):
        problems.append(f"name: a plain identifier (letters, digits, underscores; got {name!r})")
    schedule, schedule_problems = parse_schedule(raw, str(path))
    problems += schedule_problems
    if problems:
        listing = "\n  - ".join(problems)
        raise SpecProblem(f"pipeline spec {path} has {len(problems)} problem(s):\n  - {listing}")
    assert schedule is not None
    window = raw.get("window") or {}
    data_start = _date(window.get("data_start"), "window.data_start", []) or schedule.start
    scoring = raw.get("scoring")
    if scoring is not None and not isinstance(scoring, dict):
        raise SpecProblem(
            f"pipeline spec {path} has 1 problem(s):\n  - scoring: a mapping (or {{}} for the defaults)"
        )
    return PipelineEntry(
        name=name,
        path=path.resolve(),
        description=str(raw.get("description") or "").strip(),
        schedule=schedule,
        window_days=int(window.get("days", 28)),
        data_start=data_start,
        scoring=scoring,
        history=spec_schema.history_lookback_days(raw) > 0,
    )


def discover(folder: Path | None = None) -> tuple[list[PipelineEntry], dict[Path, str]]:
    """Every spec of ``folder`` (default: every entry of ``MLCYCLE_PIPELINES_DIR``): the loadable ones,
    and the problems of the others by file."""
    if folder is not None:
        paths = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    else:
        paths = list(dict.fromkeys(p.resolve() for p in spec_files()))
    entries: list[PipelineEntry] = []
    broken: dict[Path, str] = {}
    seen: dict[str, Path] = {}
    for path in paths:
        try:
            entry = load_entry(path)
        except SpecProblem as exc:
            broken[path] = str(exc)
            continue
        if entry.name in seen:
            broken[path] = (
                f"pipeline spec {path}: name {entry.name!r} is already used by {seen[entry.name]}; "
                "each spec in the folder needs its own name (a variant belongs outside it); "
                "across MLCYCLE_PIPELINES_DIR entries, too"
            )
            continue
        seen[entry.name] = path
        entries.append(entry)
    return entries, broken


def training_window(
    window: dict[str, Any], end: dt.date, window_days: int | None, lookback_days: int = 0
) -> tuple[dt.date, dt.date]:
    """The steps' window (``spec_schema.clipped_window``): [start, end) clipped to the data; with
    ``lookback_days``, the days ingest reads (``spec_schema.data_window``: history features' too)."""
    problems: list[str] = []
    data_start, data_end, days = spec_schema.window_bounds({"window": window}, problems)
    if problems or data_start is None:
        raise SpecProblem("; ".join(problems) or "window.data_start: required")
    return spec_schema.data_window(end, window_days or days, data_start, data_end, lookback_days)
