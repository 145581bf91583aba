"""Slow clients against the real server (``mlcycle serve``: granian): no connection is held forever.

Twenty connections that send one header line every half second (a slowloris) are closed once the
header timeout passes; a body that stops arriving gets 408 at the body timeout; meanwhile a normal
client is still answered. The timeouts are set short here (2 s); their defaults are 10 s and 30 s.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.unit.serving.conftest import free_port, wait_ready

HEADER_TIMEOUT, BODY_TIMEOUT = 2, 2
#: How long past its timeout a connection may stay open before the test calls the timeout broken.
GRACE = 8


@pytest.fixture(scope="module")
def granian_url(bike_model, tmp_path_factory):
    pytest.importorskip("granian")
    _, folder, _ = bike_model
    port = free_port()
    env = os.environ | {
        "MLCYCLE_STORE": str(tmp_path_factory.mktemp("slowstore")),
        "MLCYCLE_SERVING_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "MLCYCLE_SERVING_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "mlcycle",
        "serve",
        "--model-uri",
        str(folder),
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(tmp_path_factory.mktemp("slowlog") / "serve.log", "w")  # closed below, after the server stops
    proc = subprocess.Popen(cmd, env=env, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, "mlcycle serve")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _closed(sock: socket.socket) -> bytes | None:
    """What the server sent before closing, or None while the connection is still open."""
    sock.setblocking(False)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except BlockingIOError:
        return None
    except ConnectionResetError:
        return data
    return data


def test_a_slowloris_is_closed_at_the_header_timeout_and_others_are_still_served(granian_url, bike_model):
    port = granian_url
    sockets = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        sockets.append(s)
    started, open_ = time.monotonic(), set(range(20))
    closed_after = {}
    while open_ and time.monotonic() - started < HEADER_TIMEOUT + GRACE:
        for i in sorted(open_):
            if _closed(sockets[i]) is not None:
                open_.discard(i)
                closed_after[i] = time.monotonic() - started
                continue
            try:
                sockets[i].setblocking(True)
                sockets[i].sendall(b"X-Slow: %d\r\n" % i)  # one more header line, never the end
            except OSError:
                open_.discard(i)
                closed_after[i] = time.monotonic() - started
        # A well-behaved client meanwhile gets its answer.
        spec, _, frame = bike_model
        row = json.dumps(frame.iloc[0].to_dict()).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict", data=row, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
        time.sleep(0.5)
    for s in sockets:
        s.close()
    assert not open_, f"{len(open_)} of 20 slow connections still open {HEADER_TIMEOUT + GRACE} s later"
    assert min(closed_after.values()) >= HEADER_TIMEOUT * 0.5, (
        closed_after
    )  # closed by the timeout, not at once


def test_a_body_that_stops_arriving_gets_408(granian_url):
    port = granian_url
    with socket.create_connection(("127.0.0.1", port), timeout=HEADER_TIMEOUT + BODY_TIMEOUT + GRACE) as s:
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"hr": 1'
        )
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
        waited = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:500]
    assert json.loads(body)["error_code"] == "body_timeout"
    assert waited >= BODY_TIMEOUT * 0.9, waited


def test_a_timeout_that_is_not_a_number_is_refused_before_the_server_starts(bike_model):
    _, folder, _ = bike_model
    proc = subprocess.run(
        [sys.executable, "-m", "mlcycle", "serve", "--model-uri", str(folder), "--port", str(free_port())],
        env=os.environ | {"MLCYCLE_SERVING_BODY_TIMEOUT_SECONDS": "30s"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "MLCYCLE_SERVING_BODY_TIMEOUT_SECONDS must be a number of seconds" in proc.stderr
