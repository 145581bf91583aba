"""Pipeline specs as the DAG files see them: found in the specs folder, read with PyYAML only.

Reading the specs' YAML is the only work a DAG file does at parse time: no pandas, no step package,
no connection, no Variable. The step package (``mlcycle.spec``) validates a spec in full when a step
runs; this module reads what scheduling needs (the name, the ``schedule:`` section and the data
bounds it defaults from) and checks it strictly, so that a broken spec fails the DAG parse with a
message naming the file and the key. ``tests/dags/test_specs.py`` keeps both readers in agreement.

``extends: <path>`` makes a spec a variant of another: the base (its own relative paths resolved
against its own folder) deep-merged with the variant's keys. A CI-sized search, for example::

    extends: ../include/pipelines/bikeshare.yaml
    model: {search: {n_iter: 1, cv_folds: 2}}
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: Keys of a spec that hold paths relative to the spec file: made absolute when a variant extends it.
PATH_KEYS = (("source", "path"), ("validation", "suite"))
SCHEDULE_KEYS = {"interval", "timezone", "start", "end", "catchup"}
DEFAULT_INTERVAL = "@daily"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
_CRON_FIELD = re.compile(r"^\d{1,2}$")


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
        raise SpecProblem(f"no pipeline spec {pipeline!r}: looked for {path}; known specs in "
                          f"{where}: {', '.join(known) or 'none'}; or pass a path to a YAML file")
    return path.resolve()


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_spec(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The spec's mapping, with ``extends`` resolved (bases first, the file's own keys win)."""
    path = path.resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise SpecProblem(f"pipeline spec {_seen[0]}: `extends` goes round in a circle: {chain}")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecProblem(f"cannot read pipeline spec {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecProblem(f"pipeline spec {path} must be a YAML mapping at the top level")
    for section, key in PATH_KEYS:
        value = (raw.get(section) or {}).get(key) if isinstance(raw.get(section), dict) else None
        if isinstance(value, str) and not Path(value).is_absolute():
            raw[section] = {**raw[section], key: str((path.parent / value).resolve())}
    base_ref = raw.pop("extends", None)
    if base_ref is None:
        return raw
    if not isinstance(base_ref, str):
        raise SpecProblem(f"pipeline spec {path}: `extends` is the path of another spec (got {base_ref!r})")
    base_path = Path(base_ref) if Path(base_ref).is_absolute() else path.parent / base_ref
    if not base_path.is_file():
        raise SpecProblem(f"pipeline spec {path}: `extends: {base_ref}` names no file ({base_path.resolve()})")
    return _deep_merge(read_spec(base_path, (*_seen, path)), raw)


def _date(value: Any, where: str, problems: list[str]) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    problems.append(f"{where}: a date like 2011-01-31 (got {value!r})")
    return None


def is_daily_cron(expression: str) -> bool:
    """``@daily``/``@midnight`` or a five-field cron that fires once a day (fixed minute and hour)."""
    if expression in ("@daily", "@midnight"):
        return True
    fields = expression.split()
    return (len(fields) == 5 and all(_CRON_FIELD.match(f) for f in fields[:2])
            and int(fields[0]) < 60 and int(fields[1]) < 24 and fields[2:] == ["*", "*", "*"])


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


def parse_schedule(raw: dict[str, Any], origin: str) -> tuple[Schedule | None, list[str]]:
    """The ``schedule:`` section with its defaults, and every problem found (paths in the file)."""
    problems: list[str] = []
    section = raw.get("schedule") or {}
    if not isinstance(section, dict):
        return None, [f"schedule: a mapping with {', '.join(sorted(SCHEDULE_KEYS))} (got {section!r})"]
    problems += [f"schedule.{k}: unknown key (known: {', '.join(sorted(SCHEDULE_KEYS))})"
                 for k in section if k not in SCHEDULE_KEYS]
    window = raw.get("window") if isinstance(raw.get("window"), dict) else {}
    data_start = _date(window.get("data_start"), "window.data_start", problems)
    data_end = _date(window.get("data_end"), "window.data_end", problems)
    days = window.get("days", 28)
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        problems.append(f"window.days: a whole number of days, at least 1 (got {days!r})")
        days = 28
    interval = section.get("interval", DEFAULT_INTERVAL)
    if not isinstance(interval, str) or not is_daily_cron(interval):
        problems.append(f"schedule.interval: @daily or a cron that runs once a day, like '0 6 * * *' "
                        f"(partitions are daily; got {interval!r})")
    ts = raw.get("timestamp") if isinstance(raw.get("timestamp"), dict) else {}
    timezone = section.get("timezone", ts.get("timezone") or "UTC")
    if not isinstance(timezone, str) or not _known_timezone(timezone):
        problems.append(f"schedule.timezone: an IANA time zone name like Europe/Paris (got {timezone!r})")
    start = _date(section.get("start"), "schedule.start", problems)
    if start is None and data_start is not None:
        start = data_start + dt.timedelta(days=days)  # the first day with a full window of data
        if data_end is not None and "end" not in section:
            start = min(start, data_end)  # a data set shorter than its window: its last day at least
    if start is None and "start" not in section:
        problems.append("schedule.start: required when window.data_start is not given")
    end = _date(section.get("end"), "schedule.end", problems) if "end" in section else data_end
    if start and end and end < start:
        problems.append(f"schedule: end {end} is before start {start}")
    if data_start and start and start < data_start:
        problems.append(f"schedule.start: {start} is before window.data_start {data_start}: no data")
    if data_end and end and end > data_end:
        problems.append(f"schedule.end: {end} is after window.data_end {data_end}: no data to train on")
    catchup = section.get("catchup", False)
    if not isinstance(catchup, bool):
        problems.append(f"schedule.catchup: true or false (got {catchup!r})")
    if problems or start is None:
        return None, problems
    return Schedule(interval=interval, timezone=timezone, start=start, end=end, catchup=catchup), problems


def _known_timezone(name: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def load_entry(path: Path) -> PipelineEntry:
    """One spec's entry, or SpecProblem listing every problem with its path in the file."""
    raw = read_spec(path)
    problems: list[str] = []
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
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
        raise SpecProblem(f"pipeline spec {path} has 1 problem(s):\n  - scoring: a mapping (or {{}} for the defaults)")
    return PipelineEntry(name=name, path=path.resolve(), description=str(raw.get("description") or "").strip(),
                         schedule=schedule, window_days=int(window.get("days", 28)), data_start=data_start,
                         scoring=scoring)


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
            broken[path] = (f"pipeline spec {path}: name {entry.name!r} is already used by {seen[entry.name]}; "
                            "each spec in the folder needs its own name (a variant belongs outside it); "
                            "across MLCYCLE_PIPELINES_DIR entries, too")
            continue
        seen[entry.name] = path
        entries.append(entry)
    return entries, broken


def training_window(window: dict[str, Any], end: dt.date, window_days: int | None) -> tuple[dt.date, dt.date]:
    """The same arithmetic as ``mlcycle.steps._common.training_window``: [start, end) clipped to the data."""
    problems: list[str] = []
    days = window_days or int(window.get("days") or 28)
    data_start = _date(window.get("data_start"), "window.data_start", problems)
    data_end = _date(window.get("data_end"), "window.data_end", problems)
    if problems or data_start is None:
        raise SpecProblem("; ".join(problems) or "window.data_start: required")
    stop = min(end, data_end + dt.timedelta(days=1)) if data_end else end
    return max(end - dt.timedelta(days=days), data_start), stop
