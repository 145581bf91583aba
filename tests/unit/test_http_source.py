"""HttpReader against a real HTTP server on 127.0.0.1: one download per step, errors named, CSV and Parquet."""

from __future__ import annotations

import datetime as dt
import http.server
import threading
from pathlib import Path

import pytest

from mlcycle.errors import SourceError
from mlcycle.sources.http import HttpReader
from mlcycle.spec import load_spec
from tests.datasets import make_classification_dataset, write_spec_variant


class _Files(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path/www`` on a free port; yield (base URL, folder, request log)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = type("Handler", (_Files,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: handler(*a, directory=str(www), **k)
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", www, handler.requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def _http_spec(tmp_path: Path, url: str, fmt: str = "csv"):
    local = make_classification_dataset(tmp_path / "data", days=5)
    spec = write_spec_variant(
        local,
        tmp_path / "http.yaml",
        source={"kind": "http", "url": url, "format": fmt, "timeout_seconds": 10, "path": None},
    )
    return load_spec(local), load_spec(spec)


def test_reads_the_same_rows_as_the_file_and_downloads_once(tmp_path, server):
    base, www, requests = server
    local, spec = _http_spec(tmp_path, f"{base}/synthclass.csv")
    (www / "synthclass.csv").write_bytes(Path(local.source.options["path"]).read_bytes())
    reader = HttpReader(spec)
    first = reader.read(dt.date(2011, 3, 2), dt.date(2011, 3, 4)).frame
    second = reader.read(dt.date(2011, 3, 4), dt.date(2011, 3, 5)).frame
    assert (len(first), len(second)) == (48, 24)
    assert first["event_time"].min().isoformat() == "2011-03-02T00:00:00+00:00"
    assert first["event_time"].max().isoformat() == "2011-03-03T23:00:00+00:00"
    assert requests == ["/synthclass.csv"], "the file was downloaded more than once"
    assert (reader.url, reader.format, reader.timeout) == (f"{base}/synthclass.csv", "csv", 10.0)


def test_reads_parquet(tmp_path, server):
    import pandas as pd

    base, www, _ = server
    local, spec = _http_spec(tmp_path, f"{base}/rows.parquet", fmt="parquet")
    pd.read_csv(local.source.options["path"]).to_parquet(www / "rows.parquet")
    assert len(HttpReader(spec).read(dt.date(2011, 3, 1), dt.date(2011, 3, 6)).frame) == 5 * 24


def test_a_missing_file_is_a_source_error_that_names_the_url(tmp_path, server):
    base, _, _ = server
    _, spec = _http_spec(tmp_path, f"{base}/nope.csv")
    with pytest.raises(SourceError, match=rf"cannot download {base}/nope.csv: HTTP Error 404"):
        HttpReader(spec).read(dt.date(2011, 3, 1), dt.date(2011, 3, 2))


def test_an_unreachable_server_is_a_source_error(tmp_path):
    from tests.integration.airflow_env import free_port

    url = f"http://127.0.0.1:{free_port()}/rows.csv"
    _, spec = _http_spec(tmp_path, url)
    with pytest.raises(SourceError, match=rf"cannot download {url}: "):
        HttpReader(spec).read(dt.date(2011, 3, 1), dt.date(2011, 3, 2))


def test_the_timeout_defaults_to_sixty_seconds(tmp_path):
    local = make_classification_dataset(tmp_path / "data", days=5)
    spec = load_spec(
        write_spec_variant(
            local,
            tmp_path / "http.yaml",
            source={"kind": "http", "url": "http://127.0.0.1:9/x", "path": None},
        )
    )
    reader = HttpReader(spec)
    assert reader.timeout == 60.0


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x.csv", "/etc/passwd"])
def test_only_http_urls_are_opened(tmp_path, url):
    _, spec = _http_spec(tmp_path, url)
    with pytest.raises(SourceError, match="must be an http:// or https:// URL"):
        HttpReader(spec).read(dt.date(2011, 3, 1), dt.date(2011, 3, 2))
