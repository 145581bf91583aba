"""The name each Airflow process of the compose stack gives itself (pipeline_support.worker)."""

from __future__ import annotations

import socket

from pipeline_support import worker

CID = "3f1c2a9b8d7e" + "0" * 52
MOUNTINFO = (
    "611 590 0:52 / / rw,relatime - overlay overlay rw\n"
    f"640 611 254:1 /var/lib/docker/containers/{CID}/resolv.conf /etc/resolv.conf rw - ext4 /dev/vda rw\n"
    f"641 611 254:1 /var/lib/docker/containers/{CID}/hostname /etc/hostname rw - ext4 /dev/vda rw\n"
)


def test_the_container_id_comes_from_the_mount_of_etc_hostname():
    assert worker.container_id(MOUNTINFO) == CID
    assert worker.container_id("611 590 0:52 / / rw,relatime - overlay overlay rw\n") is None


def test_a_process_in_a_container_is_named_after_it(monkeypatch):
    monkeypatch.delenv("MLCYCLE_HOSTNAME", raising=False)
    monkeypatch.setattr(worker, "container_id", lambda: CID)
    assert worker.hostname() == f"{socket.gethostname()}-3f1c2a9b8d7e"
    monkeypatch.setattr(worker, "container_id", lambda: None)
    assert worker.hostname() == socket.getfqdn()  # Airflow's default, outside a container
    monkeypatch.setenv("MLCYCLE_HOSTNAME", "worker-a")
    assert worker.hostname() == "worker-a"
