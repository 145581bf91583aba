"""The reverse proxy in front of the two slots: nginx on the production port.

nginx runs in its own container (``docker/proxy``; the official ``nginx`` image works too) with the
host network, and reads its configuration from ``<store>/<pipeline>/deploy/proxy/``, mounted
read-only: ``nginx.conf`` (written once from the template below) includes ``upstream.conf``, which
names the live slot's port and, when the other slot still runs, that slot as nginx's ``backup``.
A request the live slot cannot take (its process died, its port refuses) is passed to the backup
within the same request, so a crashed live slot costs no failed request while Docker restarts it
(slots run with ``--restart on-failure``); the answer names the version that made it. A switch
rewrites ``upstream.conf`` atomically, checks the whole
configuration with ``nginx -t`` (restoring the previous file when it fails) and reloads nginx
gracefully (``nginx -s reload``): new workers take new connections at once, the old ones finish
the requests they hold, so no request is dropped.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from mlcycle.deploy.slots import DeployError, docker, labels, mount, remove, running
from mlcycle.deploy.state import write_atomically
from mlcycle.settings import PACKAGE_DIR

log = logging.getLogger(__name__)

REPO_ROOT = PACKAGE_DIR.parent.parent
MOUNT = "/etc/mlcycle-proxy"
IMAGE_ENV = "MLCYCLE_PROXY_IMAGE"

NGINX_CONF = """\
# Written by mlcycle deploy for pipeline {pipeline}; the live slot is in upstream.conf.
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path /tmp/nginx-body;
    proxy_temp_path /tmp/nginx-proxy;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;
    client_max_body_size 16m;
    # Slow clients: request headers and each read of a body have 10 s and 30 s, an idle keep-alive
    # connection 30 s, a client that stops reading the answer 30 s (docs/security.md).
    client_header_timeout 10s;
    client_body_timeout 30s;
    keepalive_timeout 30s;
    send_timeout 30s;
    upstream serving {{
        include {mount}/upstream.conf;
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://serving;
            # A prediction is a pure function of its body: a request the live slot did not answer
            # (connection refused or reset, a timeout, 503 while a restarted slot loads its model)
            # is sent to the backup slot, POST included.
            proxy_next_upstream error timeout http_503 non_idempotent;
            proxy_next_upstream_tries 2;
            proxy_connect_timeout 2s;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


def proxy_image() -> str:
    from mlcycle import __version__

    return os.environ.get(IMAGE_ENV) or f"mlcycle-proxy:{__version__}"


def ensure_image(image: str | None = None) -> str:
    """The proxy image, built from ``docker/proxy`` when it is missing."""
    image = image or proxy_image()
    if docker("image", "inspect", image, check=False).returncode == 0:
        return image
    from mlcycle.serving.image import default_base_image

    base = os.environ.get("MLCYCLE_PROXY_BASE_IMAGE") or _proxy_base(default_base_image())
    log.info("building the proxy image %s on %s", image, base)
    proc = docker(
        "build",
        "--network",
        "host",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "-t",
        image,
        str(REPO_ROOT / "docker" / "proxy"),
        check=False,
        timeout=900,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise DeployError(f"building the proxy image {image} failed:\n{tail}")
    return image


def _proxy_base(serving_base: str) -> str:
    """debian:bookworm-slim when present, else the base the serving image uses (Debian too)."""
    if docker("image", "inspect", "debian:bookworm-slim", check=False).returncode == 0:
        return "debian:bookworm-slim"
    return serving_base


class Proxy:
    """The nginx container of one pipeline, listening on 127.0.0.1:``port``."""

    def __init__(self, container: str, folder: Path, port: int):
        self.container, self.folder, self.port = container, folder, port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def upstream(self) -> int | None:
        """The slot port the configuration forwards to, or None before the first deploy."""
        return self._ports()[0]

    def backup(self) -> int | None:
        """The port of the slot that takes the requests the live one cannot, or None."""
        return self._ports()[1]

    def _ports(self) -> tuple[int | None, int | None]:
        try:
            text = (self.folder / "upstream.conf").read_text()
        except FileNotFoundError:
            return None, None
        live = backup = None
        for line in text.splitlines():
            words = line.replace(";", " ").split()
            if len(words) < 2 or words[0] != "server" or not words[1].startswith("127.0.0.1:"):
                continue
            port = int(words[1].split(":")[1])
            if "backup" in words:
                backup = port
            else:
                live = port
        return live, backup

    def _write_upstream(self, port: int, backup: int | None = None) -> None:
        # The live slot is out of the rotation for 1 s after a failed request (then tried again),
        # so requests go straight to the backup while it restarts.
        lines = [f"server 127.0.0.1:{port} max_fails=1 fail_timeout=1s;"]
        if backup is not None and backup != port:
            lines.append(f"server 127.0.0.1:{backup} backup;")
        write_atomically(self.folder / "upstream.conf", "\n".join(lines) + "\n")

    def running(self) -> bool:
        return running(self.container)

    def _mount(self) -> tuple[list[str], str]:
        """The configuration folder's mount, and its path in the container (MOUNT, or its own)."""
        return mount(self.folder, MOUNT, read_only=True)

    @property
    def config(self) -> str:
        return f"{self._mount()[1]}/nginx.conf"

    def start(
        self, pipeline: str, slot_port: int, image: str | None = None, backup: int | None = None
    ) -> None:
        """Start the proxy forwarding to ``slot_port``, ``backup`` behind it (replacing a stopped or
        stale container)."""
        image = ensure_image(image)
        self.folder.mkdir(parents=True, exist_ok=True)
        volume, inside = self._mount()
        write_atomically(
            self.folder / "nginx.conf", NGINX_CONF.format(pipeline=pipeline, port=self.port, mount=inside)
        )
        self._write_upstream(slot_port, backup)
        remove(self.container)
        docker(
            "run",
            "-d",
            "--name",
            self.container,
            "--network",
            "host",
            "--restart",
            "unless-stopped",
            *labels(),
            *volume,
            image,
            "nginx",
            "-c",
            self.config,
            "-g",
            "daemon off;",
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                log.info("proxy %s listens on %s, forwarding to port %d", self.container, self.url, slot_port)
                return
            except OSError:
                if not self.running():
                    break
                time.sleep(0.2)
        logs = docker("logs", "--tail", "10", self.container, check=False)
        remove(self.container)
        raise DeployError(
            f"the proxy {self.container} did not listen on {self.url}: "
            f"{(logs.stdout + logs.stderr).strip()[-800:]}"
        )

    def accepting_workers(self) -> set[int] | None:
        """PIDs of the nginx workers that still take new connections (None: cannot be read).

        A worker told to stop after a reload closes its listening socket first and then shows as
        ``nginx: worker process is shutting down``; it only finishes the requests it holds.
        """
        top = docker("top", self.container, "-eo", "pid,args", check=False)
        if top.returncode != 0:
            return None
        return {
            int(pid)
            for pid, _, args in (line.strip().partition(" ") for line in top.stdout.splitlines()[1:])
            if pid.isdigit() and args.strip() == "nginx: worker process"
        }

    def _wait_for_old_workers(self, old: set[int], seconds: float = 10.0) -> None:
        """Until no worker of the previous configuration accepts connections: a reload starts the new
        workers before it tells the old ones to stop, and in between both accept."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            accepting = self.accepting_workers()
            if accepting is None or not accepting & old:
                return
            time.sleep(0.05)
        log.warning("proxy %s: workers %s of the previous configuration still accept", self.container, old)

    def switch(self, slot_port: int, backup: int | None = None) -> float:
        """Forward to ``slot_port`` from now on, ``backup`` behind it (graceful reload); the seconds
        the reload took, until no worker of the previous configuration accepts a new connection."""
        previous, previous_backup = self._ports()
        began = time.monotonic()
        old = self.accepting_workers() or set()
        self._write_upstream(slot_port, backup)
        for args, failure in (
            (("-t", "-q"), "nginx rejected the new configuration"),
            (("-s", "reload"), "nginx reload failed"),
        ):
            done = docker("exec", self.container, "nginx", *args, "-c", self.config, check=False)
            if done.returncode != 0:
                if previous is not None:
                    self._write_upstream(previous, previous_backup)
                raise DeployError(
                    f"{failure}, kept forwarding to port {previous}: "
                    f"{(done.stderr or done.stdout).strip()[-500:]}"
                )
        self._wait_for_old_workers(old)
        log.info("proxy %s: port %s -> %d (graceful reload)", self.container, previous, slot_port)
        return round(time.monotonic() - began, 3)

    def stop(self) -> None:
        remove(self.container)
