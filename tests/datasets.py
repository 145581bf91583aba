"""Test data sets: a generated classification data set, spec variants, and bikeshare with one defect.

Imported by the unit tests (step environment) and by the integration tests (Airflow environment),
so it uses only the standard library and PyYAML: no numpy or pandas at any level.

- ``make_classification_dataset``: hourly rows with an ISO ``ts`` column, numeric, integer and
  categorical features and a binary ``label`` that depends on them (logistic regression reaches a
  ROC AUC near 0.9 on a 5-day hold-out), plus its spec. Deterministic: same arguments, same bytes.
- ``write_spec_variant``: a copy of a spec with nested overrides (a strict gate, another window...).
- ``make_bad_bikeshare``: the bundled bikeshare CSV with one defect, and a spec reading it.

Defects (``kind``) and what they break. A CSV has one header and pandas gives each column one
dtype for the whole file, so ``missing_column``, ``extra_column`` and ``wrong_type`` reach every
partition read from the file (the given day included); ``unreadable`` replaces the whole file; all
the others touch only the rows of the given day.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import math
import random
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIKESHARE_SPEC = ROOT / "include" / "pipelines" / "bikeshare.yaml"
BIKESHARE_CSV = ROOT / "include" / "data" / "bikeshare" / "bikeshare_hourly_2011.csv"
BIKESHARE_SUITE = ROOT / "include" / "expectations" / "bikeshare.json"

#: Every defect ``make_bad_bikeshare`` (and ``make_classification_dataset(bad=...)``) can inject.
BAD_KINDS = ("missing_column", "extra_column", "wrong_type", "nulls", "out_of_range", "unknown_category",
             "duplicate_timestamps", "too_small", "empty", "unreadable")

#: The expectation each defect makes fail (as ``mlcycle.expectations.describe`` names it).
EXPECTED_FAILURE = {
    "bikeshare": {
        "missing_column": "expect_table_columns_to_match_set",
        "extra_column": "expect_table_columns_to_match_set",
        "wrong_type": "expect_column_values_to_be_in_type_list on `temp`",
        "nulls": "expect_column_values_to_not_be_null on `hum`",
        "out_of_range": "expect_column_values_to_be_between on `windspeed`",
        "unknown_category": "expect_column_values_to_be_in_set on `weathersit`",
        "duplicate_timestamps": "expect_column_values_to_be_unique on `event_time`",
        "too_small": "expect_table_row_count_to_be_between",
        "empty": "expect_table_row_count_to_be_between",
        "unreadable": "source is readable",
    },
    "classification": {
        "missing_column": "expect_table_columns_to_match_set",
        "extra_column": "expect_table_columns_to_match_set",
        "wrong_type": "expect_column_values_to_be_in_type_list on `x1`",
        "nulls": "expect_column_values_to_not_be_null on `x2`",
        "out_of_range": "expect_column_values_to_be_between on `x1`",
        "unknown_category": "expect_column_values_to_be_in_set on `color`",
        "duplicate_timestamps": "expect_column_values_to_be_unique on `event_time`",
        "too_small": "expect_table_row_count_to_be_between",
        "empty": "expect_table_row_count_to_be_between",
        "unreadable": "source is readable",
    },
}

# Which column each defect uses, per data set.
_PLANS = {
    "bikeshare": {"drop": "windspeed", "wrong_type": ("temp", "warm"), "nulls": "hum",
                  "out_of_range": ("windspeed", "1.7"), "category": ("weathersit", "hurricane"),
                  "duplicate": "hr"},
    "classification": {"drop": "x2", "wrong_type": ("x1", "high"), "nulls": "x2",
                       "out_of_range": ("x1", "7.5"), "category": ("color", "purple"),
                       "duplicate": "ts"},
}
_EXTRA_COLUMN = "promo_code"
_TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_COLORS = ("red", "green", "blue")


# --------------------------------------------------------------------------------------------
# YAML helpers


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _absolutise(raw: dict[str, Any], spec_dir: Path) -> dict[str, Any]:
    """Make the spec's relative paths (source file, suite) absolute, so the copy works anywhere."""
    raw = copy.deepcopy(raw)
    source = raw.get("source")
    if isinstance(source, dict) and source.get("kind") == "file" and source.get("path"):
        path = Path(str(source["path"]))
        source["path"] = str(path if path.is_absolute() else (spec_dir / path).resolve())
    validation = raw.get("validation")
    name = raw.get("name")
    if isinstance(validation, dict) and validation.get("suite"):
        suite = Path(str(validation["suite"]))
        validation["suite"] = str(suite if suite.is_absolute() else (spec_dir / suite).resolve())
    elif name:
        # The loader's default is ../expectations/<name>.json next to the spec: pin it to the original.
        raw.setdefault("validation", {})
        if isinstance(raw["validation"], dict):
            raw["validation"]["suite"] = str((spec_dir / ".." / "expectations" / f"{name}.json").resolve())
    return raw


def _dump(raw: dict[str, Any], target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(raw, sort_keys=False, default_flow_style=False))
    return target


#: The model search of integration runs: one candidate, two folds (what is tested is the pipeline,
#: not the search; the full search is the spec's own and runs in `make run`).
LEAN_MODEL = {"search": {"n_iter": 1, "cv_folds": 2}}


def write_spec_variant(spec_path: Path | str, target_path: Path | str, **overrides: Any) -> Path:
    """Copy a spec YAML with nested overrides, e.g. ``evaluation={"threshold": 1}``; return the new path.

    Relative paths of the original (source file, suite) are made absolute first, so the variant can
    live in any folder and still reads the same data and the same suite.
    """
    spec_path, target_path = Path(spec_path), Path(target_path)
    raw = yaml.safe_load(spec_path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{spec_path} is not a YAML mapping")
    return _dump(_deep_merge(_absolutise(raw, spec_path.resolve().parent), overrides), target_path)


# --------------------------------------------------------------------------------------------
# Defect injection, shared by both data sets


def _inject(header: list[str], rows: list[list[str]], in_day: list[bool], kind: str,
            plan: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Return (header, rows) with one defect; ``in_day[i]`` tells whether row i is of the target day."""
    if kind not in BAD_KINDS or kind == "unreadable":
        raise ValueError(f"unknown defect {kind!r}: one of {', '.join(BAD_KINDS)}")
    day_idx = [i for i, flag in enumerate(in_day) if flag]
    if not day_idx:
        raise ValueError("the given day has no rows to inject a defect into")
    rows = [list(r) for r in rows]
    col = header.index

    if kind == "missing_column":
        drop = col(plan["drop"])
        return [h for j, h in enumerate(header) if j != drop], [[v for j, v in enumerate(r) if j != drop]
                                                                 for r in rows]
    if kind == "extra_column":
        return [*header, _EXTRA_COLUMN], [[*r, "SPRING24" if flag else ""] for r, flag in zip(rows, in_day,
                                                                                              strict=True)]
    if kind == "wrong_type":
        name, text = plan["wrong_type"]
        for i in day_idx[:3]:
            rows[i][col(name)] = text
    elif kind == "nulls":
        # Half the day's rows: far above any max_null_share the specs allow.
        for i in day_idx[: max(2, len(day_idx) // 2)]:
            rows[i][col(plan["nulls"])] = ""
    elif kind == "out_of_range":
        name, value = plan["out_of_range"]
        rows[day_idx[-1]][col(name)] = value
    elif kind == "unknown_category":
        name, value = plan["category"]
        rows[day_idx[0]][col(name)] = value
    elif kind == "duplicate_timestamps":
        # The second row of the day gets the first row's timestamp: same row count, two equal event times.
        j = col(plan["duplicate"])
        rows[day_idx[1]][j] = rows[day_idx[0]][j]
    elif kind == "too_small":
        keep = set(day_idx[:3])
        rows = [r for i, r in enumerate(rows) if not in_day[i] or i in keep]
    elif kind == "empty":
        rows = [r for i, r in enumerate(rows) if not in_day[i]]
    return header, rows


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_garbage(path: Path, seed: int = 13) -> Path:
    """Bytes no CSV parser reads: a zip-like magic, NULs and invalid UTF-8."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PK\x03\x04\x00\xff\xfe\x00" + bytes(rng.randrange(128, 256) for _ in range(4096)))
    return path


# --------------------------------------------------------------------------------------------
# The generated classification data set


def _classification_rows(start: dt.date, days: int, seed: int) -> tuple[list[str], list[list[str]]]:
    rng = random.Random(seed)
    header = ["ts", "hour", "x1", "x2", "visits", "color", "label"]
    rows: list[list[str]] = []
    for d in range(days):
        day = start + dt.timedelta(days=d)
        for hour in range(24):
            x1 = rng.random()
            x2 = max(-5.9, min(5.9, rng.gauss(0.0, 1.5)))
            visits = rng.randint(0, 60)
            color = rng.choice(_COLORS)
            logit = (4.0 * (x1 - 0.5) + 1.2 * x2 + {"red": 1.2, "green": 0.0, "blue": -1.2}[color]
                     + 0.04 * (visits - 30) + 0.6 * math.sin(hour / 24 * 2 * math.pi))
            noise = rng.random()
            label = 1 if noise < 1.0 / (1.0 + math.exp(-logit)) else 0
            ts = dt.datetime(day.year, day.month, day.day, hour).strftime(_TS_FORMAT)
            rows.append([ts, str(hour), f"{x1:.4f}", f"{x2:.4f}", str(visits), color, str(label)])
    return header, rows


#: The ingest result of the generated classification set for --start 2011-03-05 --end 2011-03-06
#: --window-days 2 (days=10 from 2011-03-01): what every runner must hand back, whatever the channel.
SYNTHCLASS_INGEST_RESULT = {
    "pipeline": "synthclass",
    "window_start": "2011-03-04",
    "window_end": "2011-03-06",
    "partitions": 2,
    "rows": 48,
    "empty_days": [],
    "dropped": {"unparseable_timestamp": 0, "timestamp_out_of_range": 0, "outside_source_bounds": 0},
    "filtered": {},
}


def classification_spec(name: str, csv_path: Path, start: dt.date, end: dt.date) -> dict[str, Any]:
    """The spec of the generated data set, as the YAML mapping."""
    return {
        "name": name,
        "description": "Generated hourly classification data set for tests: a binary label driven by "
                       "x1, x2, visits, color and the hour of day.",
        "task": "classification",
        "target": "label",
        "source": {"kind": "file", "path": str(csv_path.resolve()), "format": "csv"},
        "timestamp": {"kind": "column", "column": "ts", "format": _TS_FORMAT},
        "partition": "daily",
        "columns": {
            "ts": {"type": "string", "role": "ignore"},
            "hour": {"type": "integer", "min": 0, "max": 23},
            "x1": {"type": "numeric", "min": 0, "max": 1},
            "x2": {"type": "numeric", "min": -6, "max": 6},
            "visits": {"type": "integer", "min": 0, "max": 60},
            "color": {"type": "categorical", "values": list(_COLORS)},
            "label": {"type": "categorical", "values": [0, 1]},
        },
        "validation": {"suite": f"{name}.suite.json",  # not written: the loader derives it from the spec
                       "min_rows_per_partition": 12, "max_rows_per_partition": 24},
        "window": {"data_start": start.isoformat(), "data_end": end.isoformat(), "days": 21,
                   "min_training_rows": 200},
        "model": {
            # Logistic regression: fits in milliseconds, single-threaded (hist_gradient_boosting's
            # OpenMP threads spin on data this small and crawl on a busy machine), and a second
            # family next to the bundled spec's. It takes no missing values, so the data has none.
            "family": "logistic_regression",
            "registered_name": name,
            "search": {"n_iter": 2, "cv_folds": 2, "seed": 7, "space": {
                "C": {"low": 0.01, "high": 10.0, "log": True},
            }},
        },
        "evaluation": {"metric": "roc_auc", "holdout_days": 5, "threshold": 0.6, "tolerance": 0.02},
        "experiment": name,
    }


def make_classification_dataset(folder: Path, *, days: int = 60, start: str = "2011-03-01",
                                bad: dict[str, str] | None = None, name: str = "synthclass",
                                seed: int = 7) -> Path:
    """Write ``folder/<name>.csv`` and its spec ``folder/<name>.yaml``; return the spec's path.

    ``bad={"day": "2011-03-10", "kind": "nulls"}`` injects one defect (see ``BAD_KINDS``) into the
    rows of that day (``unreadable`` replaces the whole file with garbage).
    """
    folder = Path(folder)
    first = dt.date.fromisoformat(start)
    last = first + dt.timedelta(days=days - 1)
    header, rows = _classification_rows(first, days, seed)
    csv_path = folder / f"{name}.csv"
    if bad and bad.get("kind") == "unreadable":
        _write_garbage(csv_path)
    else:
        if bad:
            prefix = dt.date.fromisoformat(bad["day"]).isoformat()
            in_day = [r[0].startswith(prefix) for r in rows]
            header, rows = _inject(header, rows, in_day, bad["kind"], _PLANS["classification"])
        _write_csv(csv_path, header, rows)
    return _dump(classification_spec(name, csv_path, first, last), folder / f"{name}.yaml")


# --------------------------------------------------------------------------------------------
# Bikeshare with one defect


def make_bad_bikeshare(folder: Path, day: str, kind: str) -> Path:
    """Copy the bundled bikeshare CSV with one defect on ``day`` (a 2011 date) and write a spec for it.

    Returns the spec path (``folder/bikeshare_<kind>.yaml``), whose source is the defective copy
    (absolute path) and whose suite is the committed ``include/expectations/bikeshare.json``.
    """
    if kind not in BAD_KINDS:
        raise ValueError(f"unknown defect {kind!r}: one of {', '.join(BAD_KINDS)}")
    date = dt.date.fromisoformat(day)
    if date.year != 2011:
        raise ValueError(f"the bikeshare data covers 2011 only (got {day})")
    folder = Path(folder)
    csv_path = folder / f"bikeshare_{kind}.csv"
    if kind == "unreadable":
        _write_garbage(csv_path)
    else:
        with BIKESHARE_CSV.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            rows = list(reader)
        doy = str(date.timetuple().tm_yday)
        day_col = header.index("day")
        in_day = [r[day_col] == doy for r in rows]
        header, rows = _inject(header, rows, in_day, kind, _PLANS["bikeshare"])
        _write_csv(csv_path, header, rows)
    return write_spec_variant(BIKESHARE_SPEC, folder / f"bikeshare_{kind}.yaml",
                              source={"kind": "file", "path": str(csv_path.resolve()), "format": "csv"})


# --------------------------------------------------------------------------------------------
# The generated event data set: everything a real event log brings, in one spec

EVENT_ZONE = "America/New_York"
_ZONES = tuple(f"z{i:03d}" for i in range(100))
_CARRIERS = ("AA", "DL", "UA", "WN")


def _event_rows(start: dt.date, days: int, per_slot: int, seed: int) -> list[list[str]]:
    """Flights in local New York time: several per 30-minute slot (no unique timestamp), some cancelled
    (no outcome), a 100-value zone, and an arrival delay that the target is a rule on."""
    from zoneinfo import ZoneInfo

    rng = random.Random(seed)
    zone = ZoneInfo(EVENT_ZONE)
    effect = {z: rng.gauss(0.0, 1.0) for z in _ZONES}
    rows: list[list[str]] = []
    for d in range(days):
        day = start + dt.timedelta(days=d)
        for slot in range(48):
            local = dt.datetime(day.year, day.month, day.day, slot // 2, 30 * (slot % 2))
            # a local time that does not exist (clocks forward) is not in a real log either
            if local.replace(tzinfo=zone).astimezone(dt.UTC).astimezone(zone).replace(tzinfo=None) != local:
                continue
            for _ in range(per_slot):
                z, carrier = rng.choice(_ZONES), rng.choice(_CARRIERS)
                distance = round(rng.uniform(80, 2500), 1)
                cancelled = 1 if rng.random() < 0.05 else 0
                peak = 1.0 if 16 <= local.hour <= 20 else 0.0
                delay = (rng.gauss(0, 12) + 14 * effect[z] + 10 * peak + distance / 250
                         + {"AA": 4, "DL": -3, "UA": 2, "WN": 0}[carrier])
                rows.append([local.strftime("%Y-%m-%d %H:%M:%S"), z, carrier, f"{distance}",
                             "" if cancelled else f"{delay:.1f}", str(cancelled)])
    return rows


def events_spec(name: str, csv_path: Path, start: dt.date, end: dt.date) -> dict[str, Any]:
    return {
        "name": name,
        "description": "Generated flight events in local New York time: a derived `late` label, "
                       "cancelled flights filtered out, a 100-value zone, several events per timestamp.",
        "task": "classification",
        "target": "late",
        "source": {"kind": "file", "path": str(csv_path.resolve()), "format": "csv"},
        "timestamp": {"kind": "column", "column": "ts", "format": "%Y-%m-%d %H:%M:%S",
                      "timezone": EVENT_ZONE},
        "key": [],  # events: many flights share a timestamp, nothing identifies a row
        "derive": {"late": "arr_delay > 15", "dow": "day_of_week", "hour": "hour"},
        "filter": ["cancelled == 0"],
        "columns": {
            "ts": {"type": "string", "role": "ignore"},
            "zone": {"type": "categorical", "values": list(_ZONES)},
            "carrier": {"type": "categorical", "values": list(_CARRIERS)},
            "distance": {"type": "numeric", "min": 0, "max": 5000},
            "arr_delay": {"type": "numeric", "role": "ignore"},  # the label is a rule on it: it would leak
            "cancelled": {"type": "integer", "min": 0, "max": 0, "role": "ignore"},  # filtered: all 0
            "dow": {"type": "integer", "min": 0, "max": 6},
            "hour": {"type": "integer", "min": 0, "max": 23},
            "late": {"type": "categorical", "values": [0, 1]},
        },
        "validation": {"suite": f"{name}.suite.json", "min_rows_per_partition": 50},
        "window": {"data_start": start.isoformat(), "data_end": end.isoformat(), "days": 14,
                   "min_training_rows": 500},
        "model": {
            "family": "hist_gradient_boosting",  # the 100-value zone goes to the trees natively
            "registered_name": name,
            "search": {"n_iter": 1, "cv_folds": 2, "seed": 3, "space": {
                "learning_rate": {"values": [0.1]}, "max_iter": {"values": [100]},
                "max_leaf_nodes": {"values": [15]},
            }},
        },
        "evaluation": {"metric": "roc_auc", "holdout_days": 3, "threshold": 0.6, "tolerance": 0.05},
        "experiment": name,
    }


#: History features of the flight events (``features:``): by zone, by carrier, by hour and carrier (two
#: entity columns, one a whole number), a share, a count and a maximum; 7 days of lookback.
EVENT_HISTORY_FEATURES = {"entity": ["zone"], "history": {
    "late_share_7d": {"of": "late == 1", "agg": "share", "window": "7d"},
    "flights_7d": {"agg": "count", "window": "7d", "fill": 0},
    "carrier_delay_max_2d": {"of": "distance", "agg": "max", "window": "2d", "entity": ["carrier"]},
    "distance_mean_2d_by_hour": {"of": "distance", "agg": "mean", "window": "2d", "entity": ["hour", "carrier"]},
}}


def make_events_dataset(folder: Path, *, start: str = "2023-02-27", days: int = 21, per_slot: int = 3,
                        name: str = "flights", seed: int = 11) -> Path:
    """Write ``folder/<name>.csv`` and its spec ``folder/<name>.yaml`` (dates around the US daylight-saving
    change of 2023-03-12); return the spec's path. Deterministic: same arguments, same bytes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    first = dt.date.fromisoformat(start)
    csv_path = folder / f"{name}.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ts", "zone", "carrier", "distance", "arr_delay", "cancelled"])
        writer.writerows(_event_rows(first, days, per_slot, seed))
    return _dump(events_spec(name, csv_path, first, first + dt.timedelta(days=days - 1)), folder / f"{name}.yaml")
