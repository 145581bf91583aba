"""The deploy package's pure parts: the spec section, the comparison, the watch figures, the state file,
the proxy's upstream file, the load generator (against a tiny local HTTP server)."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlcycle.deploy.figures import breach_of, read_metrics, window_figures
from mlcycle.deploy.load import Load, percentile, summary
from mlcycle.deploy.proxy import NGINX_CONF, Proxy
from mlcycle.deploy.smoke import compare
from mlcycle.deploy.state import DeployState, Slot, StateStore
from mlcycle.errors import SpecError
from mlcycle.spec import DeploySpec, load_spec
from tests.datasets import BIKESHARE_SPEC, write_spec_variant


def test_the_deploy_section_has_defaults_and_takes_overrides(tmp_path):
    assert load_spec(BIKESHARE_SPEC).deploy == DeploySpec()
    spec = load_spec(
        write_spec_variant(
            BIKESHARE_SPEC,
            tmp_path / "b.yaml",
            deploy={
                "production_port": 9100,
                "slot_ports": [9101, 9102],
                "staging_port": 9103,
                "watch_seconds": 3,
                "auto_approve": True,
                "latency_budget_ms": 40,
            },
        )
    )
    assert spec.deploy.slot_ports == (9101, 9102) and spec.deploy.auto_approve is True
    assert spec.deploy.latency_budget_ms == 40.0 and spec.deploy.watch_seconds == 3


@pytest.mark.parametrize(
    "section, problem",
    [
        ({"watch_secnds": 3}, "deploy.watch_secnds: unknown key; did you mean `watch_seconds`?"),
        ({"slot_ports": [9101]}, "deploy.slot_ports: two port numbers"),
        ({"staging_port": 8700}, "four different ports"),
        ({"watch_max_error_rate": 2}, "deploy.watch_max_error_rate: a share between 0 and 1"),
        ({"auto_approve": "yes"}, "deploy.auto_approve: expected bool"),
        ({"latency_budget_ms": 0}, "deploy.latency_budget_ms: a number of milliseconds > 0"),
    ],
)
def test_a_bad_deploy_section_is_refused_with_its_key(tmp_path, section, problem):
    with pytest.raises(SpecError, match=None) as info:
        load_spec(write_spec_variant(BIKESHARE_SPEC, tmp_path / "b.yaml", deploy=section))
    assert problem in str(info.value)


def test_compare_counts_rows_beyond_the_tolerance_and_differing_labels():
    assert compare([1.0, 2.0, 3.0], [1.0, 2.0 + 1e-7, 3.0], False, 1e-6) == (0, pytest.approx(1e-7))
    assert compare([1.0, 2.0, 3.0], [1.0, 2.5, 3.0 + 1e-3], False, 1e-6)[0] == 2
    assert compare(["a", "b"], ["a", "c"], True, 0.0) == (1, None)
    assert compare([1.0], [1.0, 2.0], False, 1e-6)[0] == 2  # a missing answer is a mismatch


METRICS = """\
# HELP mlcycle_requests_total HTTP requests by endpoint and status code
mlcycle_requests_total{endpoint="/predict",status="200"} %(ok)s
mlcycle_requests_total{endpoint="/predict",status="500"} %(bad)s
mlcycle_requests_total{endpoint="/predict",status="422"} 5.0
mlcycle_requests_total{endpoint="/ready",status="200"} 999.0
mlcycle_request_latency_seconds_bucket{endpoint="/predict",le="0.005"} %(fast)s
mlcycle_request_latency_seconds_bucket{endpoint="/predict",le="0.1"} %(mid)s
mlcycle_request_latency_seconds_bucket{endpoint="/predict",le="+Inf"} %(all)s
mlcycle_request_latency_seconds_bucket{endpoint="/ready",le="+Inf"} 999.0
"""


def _serve_metrics(text: str):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            body = text.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_watch_reads_errors_and_p99_of_the_prediction_endpoints_between_two_readings():
    first = _serve_metrics(METRICS % {"ok": 100.0, "bad": 0.0, "fast": 100.0, "mid": 105.0, "all": 105.0})
    second = _serve_metrics(METRICS % {"ok": 190.0, "bad": 10.0, "fast": 150.0, "mid": 205.0, "all": 205.0})
    try:
        before = read_metrics(f"http://127.0.0.1:{first.server_address[1]}")
        after = read_metrics(f"http://127.0.0.1:{second.server_address[1]}")
    finally:
        first.shutdown()
        second.shutdown()
    figures = window_figures(before, after)
    # 90 new 200s and 10 new 500s on /predict; /ready and the 422s before do not count
    assert (
        figures["requests"] == 100 and figures["errors"] == 10 and figures["error_rate"] == pytest.approx(0.1)
    )
    assert figures["p99_ms"] == pytest.approx(100.0)  # 50 of 100 under 5 ms, all under 100 ms
    deploy = DeploySpec(watch_max_error_rate=0.05, watch_max_p99_ms=500)
    assert "error rate 10.00%" in breach_of(figures, deploy)
    assert "p99 latency 100 ms" in breach_of(figures | {"error_rate": 0.0}, DeploySpec(watch_max_p99_ms=50))
    assert breach_of(figures | {"error_rate": 0.0}, deploy) is None
    assert breach_of(figures | {"requests": 3}, deploy) is None  # too few answers to judge


def test_the_state_file_round_trips_and_names_the_idle_slot(tmp_path, place):
    """On a folder and in object storage; the lock and the proxy's folder stay on the deploy host."""
    from mlcycle.storepath import is_remote, store_root

    location, env = place
    store = store_root(location, env)
    states = StateStore(store, "bikeshare", tmp_path / "home")
    state = states.read()
    assert state.live is None and state.idle == "blue"
    state.slots["blue"] = Slot("blue", "c-blue", 8701, "3", "img:v3", "sha256:1", "2026-01-01T00:00:00+00:00")
    state.live = "blue"
    with states.locked():
        states.write(state)
    again = StateStore(store_root(location, env), "bikeshare", tmp_path / "other").read()
    assert again.live_slot == state.slots["blue"] and again.idle == "green"
    assert DeployState.from_dict(json.loads(states.path.read_text())).live == "blue"
    assert str(states.path) == f"{location}/bikeshare/deploy/state.json"
    local = (
        tmp_path / "home" / "deploy" / "bikeshare"
        if is_remote(store)
        else tmp_path / "store" / "bikeshare" / "deploy"
    )
    assert states.folder == local and states.proxy_dir == local / "proxy"
    assert (local / ".lock").is_file()
    if not is_remote(store):
        assert not list(states.folder.glob(".state.json.*"))  # no temporary left behind


def test_the_proxy_config_forwards_to_the_upstream_file(tmp_path):
    proxy = Proxy("unused", tmp_path, 9000)
    assert proxy.upstream() is None
    proxy._write_upstream(8702)
    assert proxy.upstream() == 8702 and proxy.backup() is None
    proxy._write_upstream(8701, backup=8702)  # the slot that served until now stays behind the new one
    assert (proxy.upstream(), proxy.backup()) == (8701, 8702)
    assert (tmp_path / "upstream.conf").read_text().splitlines() == [
        "server 127.0.0.1:8701 max_fails=1 fail_timeout=1s;",
        "server 127.0.0.1:8702 backup;",
    ]
    proxy._write_upstream(8701, backup=8701)  # never itself
    assert proxy.backup() is None
    conf = NGINX_CONF.format(pipeline="p", port=9000, mount="/etc/mlcycle-proxy")
    assert "listen 127.0.0.1:9000;" in conf and "include /etc/mlcycle-proxy/upstream.conf;" in conf
    # a request the live slot did not answer goes to the backup, a prediction (POST) included
    assert "proxy_next_upstream error timeout http_503 non_idempotent;" in conf


def test_a_folder_in_a_named_volume_is_reached_through_the_volume_at_its_own_path(tmp_path, monkeypatch):
    from mlcycle.deploy.slots import mount

    # Outside the compose stack: a bind mount at the container's own path.
    monkeypatch.delenv("MLCYCLE_DOCKER_VOLUMES", raising=False)
    assert mount(tmp_path / "proxy", "/etc/mlcycle-proxy", read_only=True) == (
        ["-v", f"{tmp_path / 'proxy'}:/etc/mlcycle-proxy:ro"],
        "/etc/mlcycle-proxy",
    )
    # In a worker of the stack, /data is the volume stack_data: the daemon cannot see the worker's /data.
    monkeypatch.setenv("MLCYCLE_DOCKER_VOLUMES", "other_cache:/cache, stack_data:/data")
    assert mount(Path("/data/store/p/deploy/proxy"), "/etc/mlcycle-proxy", read_only=True) == (
        ["-v", "stack_data:/data:ro"],
        "/data/store/p/deploy/proxy",
    )
    assert mount(Path("/data"), "/var/lib/mlcycle/store") == (["-v", "stack_data:/data"], "/data")
    assert mount(Path("/database"), "/x") == (["-v", "/database:/x"], "/x")  # a prefix, not a parent
    # The proxy's nginx is started with, and reloaded through, the config at that same path.
    assert (
        Proxy("unused", Path("/data/store/p/deploy/proxy"), 9000).config
        == "/data/store/p/deploy/proxy/nginx.conf"
    )
    monkeypatch.delenv("MLCYCLE_DOCKER_VOLUMES")
    assert Proxy("unused", Path("/data/store/p/deploy/proxy"), 9000).config == "/etc/mlcycle-proxy/nginx.conf"


def test_deploy_containers_carry_the_namespace_label(monkeypatch):
    from mlcycle.deploy.slots import labels

    monkeypatch.setenv("MLCYCLE_DEPLOY_NAMESPACE", "mystack")
    assert labels() == ["--label", "io.mlcycle.deploy=1", "--label", "io.mlcycle.namespace=mystack"]


def test_the_load_sends_at_the_rate_and_keeps_every_answer(tmp_path):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["content-length"]))
            body = b'{"model_version":"7","predictions":[1]}' if self.path == "/predict" else b"{}"
            self.send_response(200 if self.path == "/predict" else 503)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        samples = Load(server.server_address[1], [{"a": 1}], rate=100, seconds=0.5, threads=4).start().wait()
        failing = (
            Load(server.server_address[1], [{"a": 1}], rate=50, seconds=0.2, path="/other").start().wait()
        )
    finally:
        server.shutdown()
    figures = summary(samples)
    assert figures["requests"] == 50 and figures["failed"] == 0 and figures["versions"] == ["7"]
    assert summary(failing)["failed"] == len(failing) == 10
    assert percentile([1, 2, 3, 4], 0.5) == 2 and percentile([], 0.99) == 0.0


def test_nothing_here_imports_airflow():
    package = Path(__file__).resolve().parents[3] / "include" / "mlcycle" / "deploy"
    for module in package.glob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+airflow", module.read_text(), re.M), module


def _reading(statuses: dict, buckets: dict) -> dict:
    return {"statuses": statuses, "buckets": buckets}


def test_window_figures_count_only_what_happened_between_the_readings():
    before = _reading({"200": 50.0}, {0.005: 40.0, 0.1: 50.0, float("inf"): 50.0})
    # a status seen only after (503) and a bucket seen only after (0.25) count from zero
    after = _reading({"200": 140.0, "503": 10.0}, {0.005: 40.0, 0.1: 139.0, 0.25: 149.0, float("inf"): 150.0})
    figures = window_figures(before, after)
    assert figures == {"requests": 100, "errors": 10, "error_rate": 0.1, "p99_ms": 250.0}


def test_p99_is_the_first_bucket_holding_99_percent_exactly_at_the_share():
    buckets = {0.01: 99.0, 0.05: 99.0, 0.5: 100.0, float("inf"): 100.0}
    assert window_figures(_reading({}, {}), _reading({"200": 100.0}, buckets))["p99_ms"] == 10.0  # 99 of 100
    just_under = {0.01: 98.0, 0.05: 99.0, 0.5: 100.0, float("inf"): 100.0}
    assert window_figures(_reading({}, {}), _reading({"200": 100.0}, just_under))["p99_ms"] == 50.0


def test_an_empty_window_has_no_rate_and_no_latency():
    same = _reading({"200": 5.0}, {0.1: 5.0, float("inf"): 5.0})
    assert window_figures(same, same) == {"requests": 0, "errors": 0, "error_rate": 0.0, "p99_ms": 0.0}
    assert window_figures(_reading({}, {}), _reading({}, {})) == {
        "requests": 0,
        "errors": 0,
        "error_rate": 0.0,
        "p99_ms": 0.0,
    }
    only_4xx = window_figures(_reading({}, {}), _reading({"422": 30.0}, {0.1: 30.0, float("inf"): 30.0}))
    assert (only_4xx["requests"], only_4xx["errors"], only_4xx["error_rate"]) == (30, 0, 0.0)


def test_read_metrics_sums_every_series_of_the_served_endpoints(tmp_path):
    text = (
        'mlcycle_requests_total{endpoint="/predict",status="200"} 7\n'
        'mlcycle_requests_total{endpoint="/invocations",status="200"} 3\n'
        'mlcycle_requests_total{endpoint="/predict",status="500"} 2\n'
        'mlcycle_requests_total{endpoint="/ready",status="200"} 99\n'
        'mlcycle_request_latency_seconds_bucket{endpoint="/predict",le="0.1"} 8\n'
        'mlcycle_request_latency_seconds_bucket{endpoint="/invocations",le="0.1"} 3\n'
        'mlcycle_request_latency_seconds_bucket{endpoint="/predict",le="+Inf"} 9\n'
        'mlcycle_request_latency_seconds_bucket{endpoint="/invocations",le="+Inf"} 3\n'
        "mlcycle_requests_total 1000\n"
        "# HELP nothing\n"
    )
    server = _serve_metrics(text)
    try:
        reading = read_metrics(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
    assert reading == {"statuses": {"200": 10.0, "500": 2.0}, "buckets": {0.1: 11.0, float("inf"): 12.0}}


def test_every_container_of_a_history_model_is_given_the_online_store(tmp_path, monkeypatch):
    """Staging included (it has no store): the SQLite file's folder read-only, or Redis by its URL taken
    from the environment (it may hold a password, which must not be on a command line)."""
    from mlcycle.deploy.slots import DeployError, online_args, online_location
    from tests.datasets import EVENT_HISTORY_FEATURES, make_events_dataset

    base = make_events_dataset(tmp_path / "data", start="2023-02-27", days=2)
    plain = load_spec(base)
    spec = load_spec(
        write_spec_variant(
            base, tmp_path / "data" / "h.yaml", name="flights_history", features=EVENT_HISTORY_FEATURES
        )
    )
    monkeypatch.delenv("MLCYCLE_ONLINE_STORE", raising=False)
    monkeypatch.delenv("MLCYCLE_DOCKER_VOLUMES", raising=False)
    location = online_location(spec, tmp_path / "store")
    assert location == str(tmp_path / "store" / spec.name / "feast" / "online.db")
    assert online_args(location) == [
        "-v",
        f"{tmp_path / 'store' / spec.name / 'feast'}:/var/lib/mlcycle/online:ro",
        "-e",
        "MLCYCLE_ONLINE_STORE=/var/lib/mlcycle/online/online.db",
    ]
    monkeypatch.setenv("MLCYCLE_ONLINE_STORE", "redis://:secret@127.0.0.1:6379/1")
    assert online_location(spec, None) == "redis://:secret@127.0.0.1:6379/1"
    assert online_args(online_location(spec, None)) == ["-e", "MLCYCLE_ONLINE_STORE"]
    assert online_location(plain, tmp_path) is None
    monkeypatch.delenv("MLCYCLE_ONLINE_STORE")
    with pytest.raises(DeployError, match="MLCYCLE_ONLINE_STORE"):
        online_location(spec, None)  # staging of a store in object storage, and no Redis named
