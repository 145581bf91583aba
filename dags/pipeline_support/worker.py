"""The name an Airflow process gives itself (``[core] hostname_callable``).

In the compose stack every container shares the host's network, and so its hostname. There each
Airflow process is named ``<hostname>-<container id>``, so that each Celery worker, and the hostname
a task instance records, names the container it ran in (the id is read from the container's mount
of ``/etc/hostname``). Outside a container this is the machine's fully qualified name, Airflow's
default. ``MLCYCLE_HOSTNAME`` overrides both. ``python -m pipeline_support.worker`` prints it.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

_CONTAINER = re.compile(r"/containers/([0-9a-f]{64})/hostname ")


def container_id(mountinfo: str | None = None) -> str | None:
    """This process's Docker container id, or None outside a container."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    found = _CONTAINER.search(mountinfo)
    return found.group(1) if found else None


def hostname() -> str:
    if os.environ.get("MLCYCLE_HOSTNAME"):
        return os.environ["MLCYCLE_HOSTNAME"]
    cid = container_id()
    return f"{socket.gethostname()}-{cid[:12]}" if cid else socket.getfqdn()


if __name__ == "__main__":
    print(hostname())
