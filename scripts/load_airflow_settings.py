"""Load airflow_settings.yaml (the Astro CLI format) into plain Airflow: connections, pools, variables.

    source scripts/env.sh && airflow db migrate
    .venv/bin/python scripts/load_airflow_settings.py [--file airflow_settings.yaml]

Each entry is created, or updated to match the file when it exists; entries not in the file are left
alone. Running it twice gives the same state (the second run reports everything `unchanged`).
Runs in the Airflow environment against the metadata database of $AIRFLOW_HOME.

The file (https://www.astronomer.io/docs/astro/cli/develop-project#configure-airflow_settingsyaml-local-development-only)::

    airflow:
      connections:
        - {conn_id, conn_type, conn_host, conn_schema, conn_login, conn_password, conn_port, conn_extra}
          # or conn_uri instead of the conn_type..conn_port fields; conn_extra: a mapping or a JSON string
      pools:
        - {pool_name, pool_slot, pool_description}
      variables:
        - {variable_name, variable_value}   # a non-string value is stored as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONN_FIELDS = {"conn_id", "conn_type", "conn_host", "conn_schema", "conn_login", "conn_password", "conn_port",
               "conn_extra", "conn_uri"}
POOL_FIELDS = {"pool_name", "pool_slot", "pool_description"}
VARIABLE_FIELDS = {"variable_name", "variable_value"}


class SettingsError(ValueError):
    """The settings file is unreadable or an entry is malformed; the message names the entry."""


def read_settings(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The ``airflow`` section of the file, checked: every entry has its name and only known keys."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from exc
    section = raw.get("airflow") if isinstance(raw, dict) else None
    if not isinstance(section, dict):
        raise SettingsError(f"{path}: expected a top-level `airflow:` mapping")
    out: dict[str, list[dict[str, Any]]] = {}
    for kind, name_key, allowed in (("connections", "conn_id", CONN_FIELDS), ("pools", "pool_name", POOL_FIELDS),
                                    ("variables", "variable_name", VARIABLE_FIELDS)):
        entries = section.get(kind) or []
        if not isinstance(entries, list):
            raise SettingsError(f"{path}: `airflow.{kind}` must be a list")
        checked = []
        for i, entry in enumerate(entries):
            where = f"{path}: airflow.{kind}[{i}]"
            if not isinstance(entry, dict):
                raise SettingsError(f"{where} must be a mapping")
            if not any(v not in (None, "") for v in entry.values()):
                continue  # the Astro template's empty placeholder entry
            unknown = sorted(set(entry) - allowed)
            if unknown:
                raise SettingsError(f"{where} has unknown keys {unknown}; allowed: {sorted(allowed)}")
            if not entry.get(name_key):
                raise SettingsError(f"{where} has no `{name_key}`")
            checked.append(entry)
        names = Counter(str(e[name_key]) for e in checked)
        if dupes := sorted(n for n, c in names.items() if c > 1):
            raise SettingsError(f"{path}: `airflow.{kind}` lists {dupes} more than once")
        out[kind] = checked
    return out


def _text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def wanted_connection(entry: dict[str, Any]) -> dict[str, Any]:
    """The connection's fields as the Airflow model names them."""
    extra = entry.get("conn_extra")
    if isinstance(extra, str) and extra.strip():
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"connection {entry['conn_id']}: conn_extra is not valid JSON: {exc}") from exc
    if extra not in (None, "") and not isinstance(extra, dict):
        raise SettingsError(f"connection {entry['conn_id']}: conn_extra must be a mapping or a JSON object")
    if entry.get("conn_uri"):
        from airflow.models.connection import Connection

        parts = {"conn_type", "conn_host", "conn_schema", "conn_login", "conn_password", "conn_port"}
        if any(entry.get(k) not in (None, "") for k in parts):
            raise SettingsError(f"connection {entry['conn_id']}: give either conn_uri or the conn_* fields")
        parsed = Connection(conn_id=str(entry["conn_id"]), uri=str(entry["conn_uri"]))
        fields = {"conn_type": parsed.conn_type, "host": parsed.host, "schema": parsed.schema,
                  "login": parsed.login, "password": parsed.password, "port": parsed.port,
                  "extra": {**parsed.extra_dejson, **(extra or {})}}
    else:
        if not entry.get("conn_type"):
            raise SettingsError(f"connection {entry['conn_id']}: conn_type is required")
        port = entry.get("conn_port")
        try:
            port = None if port in (None, "") else int(port)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"connection {entry['conn_id']}: conn_port {port!r} is not a number") from exc
        fields = {"conn_type": str(entry["conn_type"]), "host": _text(entry.get("conn_host")),
                  "schema": _text(entry.get("conn_schema")), "login": _text(entry.get("conn_login")),
                  "password": _text(entry.get("conn_password")), "port": port, "extra": extra or {}}
    return fields


def _slots(entry: dict[str, Any]) -> int:
    try:
        slots = int(entry.get("pool_slot"))
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"pool {entry['pool_name']}: pool_slot {entry.get('pool_slot')!r} is not a number") from exc
    if slots < -1:
        raise SettingsError(f"pool {entry['pool_name']}: pool_slot must be -1 (unlimited) or more, not {slots}")
    return slots


def _variable_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def load(settings: dict[str, list[dict[str, Any]]]) -> dict[str, Counter]:
    """Create or update every entry in one transaction; returns created/updated/unchanged counts per kind."""
    conns = [(str(e["conn_id"]), wanted_connection(e)) for e in settings["connections"]]
    pools = [(str(e["pool_name"]), _slots(e), str(e.get("pool_description") or "")) for e in settings["pools"]]
    variables = [(str(e["variable_name"]), _variable_value(e.get("variable_value", ""))) for e in settings["variables"]]

    from airflow.models.connection import Connection
    from airflow.models.pool import Pool
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    counts = {"connections": Counter(), "pools": Counter(), "variables": Counter()}
    with create_session() as session:
        for conn_id, want in conns:
            conn = session.scalar(select(Connection).where(Connection.conn_id == conn_id))
            if conn is None:
                extra = want.pop("extra")
                session.add(Connection(conn_id=conn_id, extra=json.dumps(extra) if extra else None, **want))
                counts["connections"]["created"] += 1
                continue
            have = {"conn_type": conn.conn_type, "host": conn.host, "schema": conn.schema, "login": conn.login,
                    "password": conn.password, "port": conn.port, "extra": conn.extra_dejson}
            if have == want:
                counts["connections"]["unchanged"] += 1
                continue
            for key in ("conn_type", "host", "schema", "login", "password", "port"):
                setattr(conn, key, want[key])
            conn.extra = json.dumps(want["extra"]) if want["extra"] else None
            counts["connections"]["updated"] += 1

        for name, slots, description in pools:
            pool = session.scalar(select(Pool).where(Pool.pool == name))
            state = ("created" if pool is None else
                     "unchanged" if (pool.slots, pool.description or "") == (slots, description) else "updated")
            if state != "unchanged":
                Pool.create_or_update_pool(name, slots, description, include_deferred=False, session=session)
            counts["pools"][state] += 1

        for key, value in variables:
            var = session.scalar(select(Variable).where(Variable.key == key))
            state = "created" if var is None else "unchanged" if var.val == value else "updated"
            if state != "unchanged":
                Variable.set(key, value, session=session)
            counts["variables"][state] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=ROOT / "airflow_settings.yaml",
                        help="settings file in the Astro CLI format (default: %(default)s)")
    args = parser.parse_args(argv)
    if not os.environ.get("AIRFLOW_HOME"):
        print("error: AIRFLOW_HOME is not set: `source scripts/env.sh` first, so the settings go into the "
              "project's Airflow and not into ~/airflow", file=sys.stderr)
        return 2
    try:
        settings = read_settings(args.file)
        counts = load(settings)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if "no such table" in str(exc) or "does not exist" in str(exc):
            print(f"error: the metadata database of {os.environ['AIRFLOW_HOME']} is not initialised: "
                  f"run `airflow db migrate` first ({type(exc).__name__})", file=sys.stderr)
            return 1
        raise
    summary = "; ".join(f"{kind}: " + (", ".join(f"{n} {state}" for state, n in sorted(c.items())) or "none")
                        for kind, c in counts.items())
    print(f"loaded {args.file} into {os.environ['AIRFLOW_HOME']}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
