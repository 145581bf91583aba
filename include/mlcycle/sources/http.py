"""Read a CSV or Parquet file served over HTTP(S): downloaded once per step, then read like a file."""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd

from mlcycle.errors import SourceError
from mlcycle.sources.base import Selection
from mlcycle.sources.file import read_table, select_range
from mlcycle.spec import PipelineSpec

log = logging.getLogger(__name__)


class HttpReader:
    def __init__(self, spec: PipelineSpec):
        self.spec = spec
        self.url = str(spec.source.options["url"])
        self.format = str(spec.source.options.get("format") or "csv")
        self.timeout = float(spec.source.options.get("timeout_seconds", 60))
        self._frame: pd.DataFrame | None = None

    def read(self, start: dt.date, end: dt.date) -> Selection:
        if self._frame is None:
            log.info("downloading %s", self.url)
            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / f"source.{self.format}"
                scheme = urllib.parse.urlsplit(self.url).scheme.lower()
                if scheme not in ("http", "https"):  # urlopen also opens file: and ftp: URLs
                    raise SourceError(
                        f"source.url must be an http:// or https:// URL (got {scheme or 'no'} scheme in "
                        f"{self.url}); a local file is a `file` source"
                    )
                try:
                    with urllib.request.urlopen(self.url, timeout=self.timeout) as resp:  # noqa: S310 - scheme checked above
                        target.write_bytes(resp.read())
                except OSError as exc:
                    raise SourceError(f"cannot download {self.url}: {exc}") from exc
                self._frame = read_table(target, self.format)
        return select_range(self._frame, self.spec, start, end)
