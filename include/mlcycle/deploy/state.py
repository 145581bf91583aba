"""The deploy state of one pipeline: which slot is live, what each slot and staging serve.

``state.json`` lives under ``<store>/<pipeline>/deploy/`` (written to a temporary name and renamed on
disk, in one request in object storage), where the UI, the monitoring and the record step read it.
The nginx configuration the proxy container mounts (``proxy/``) and the lock file belong to the host
whose Docker engine runs the proxy and the slots: beside the state when the store is a folder, under
``$MLCYCLE_HOME/deploy/<pipeline>/`` when it is in object storage. ``locked`` holds an exclusive lock
for a whole change (staging, rollout, watch), so two deploys of one pipeline on that host never
interleave, whatever runs them.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlcycle.storepath import StorePath, is_remote

SLOTS = ("blue", "green")
#: Prefix of every container and image name a deploy creates (several projects can share an engine).
NAMESPACE_ENV = "MLCYCLE_DEPLOY_NAMESPACE"


def namespace() -> str:
    return os.environ.get(NAMESPACE_ENV, "").strip() or "mlcycle"


@dataclass
class Slot:
    """A running serving container: which version, from which image, on which port."""

    name: str
    container: str
    port: int
    version: str
    image: str
    image_id: str
    started_at: str

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Slot | None:
        return cls(**raw) if raw else None


@dataclass
class DeployState:
    pipeline: str
    live: str | None = None  # "blue" or "green": the slot the proxy forwards to; None before the first deploy
    slots: dict[str, Slot | None] = field(default_factory=lambda: dict.fromkeys(SLOTS))
    staging: Slot | None = None
    updated_at: str | None = None
    #: The latest switches of the proxy, newest last: version, slot, and when the reload began and ended.
    switches: list[dict[str, Any]] = field(default_factory=list)

    def switched(self, version: str, slot: str, began: float, done: float, reason: str) -> None:
        self.switches = [
            *self.switches,
            {"version": version, "slot": slot, "began": began, "done": done, "reason": reason},
        ][-20:]

    @property
    def live_slot(self) -> Slot | None:
        return self.slots.get(self.live) if self.live else None

    @property
    def idle(self) -> str:
        """The slot a new version goes to: the one the proxy does not forward to."""
        return "green" if self.live == "blue" else "blue"

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "live": self.live,
            "slots": {k: asdict(v) if v else None for k, v in self.slots.items()},
            "staging": asdict(self.staging) if self.staging else None,
            "updated_at": self.updated_at,
            "switches": self.switches,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DeployState:
        slots = {name: Slot.from_dict((raw.get("slots") or {}).get(name)) for name in SLOTS}
        return cls(
            raw["pipeline"],
            raw.get("live"),
            slots,
            Slot.from_dict(raw.get("staging")),
            raw.get("updated_at"),
            list(raw.get("switches") or []),
        )


class StateStore:
    """The deploy state of one pipeline; ``home``: the deploy host's own folder (for a remote store)."""

    def __init__(self, store: StorePath, pipeline: str, home: Path | None = None):
        self.pipeline = pipeline
        self.path = store / pipeline / "deploy" / "state.json"
        self.remote = is_remote(store)
        if self.remote:
            local = Path(home if home is not None else os.environ.get("MLCYCLE_HOME", ".local"))
            self.folder = local.resolve() / "deploy" / pipeline
        else:
            self.folder = store / pipeline / "deploy"
        self.proxy_dir = self.folder / "proxy"

    def read(self) -> DeployState:
        try:
            return DeployState.from_dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return DeployState(self.pipeline)

    def write(self, state: DeployState) -> None:
        import datetime as dt

        state.updated_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        text = json.dumps(state.to_dict(), indent=2, sort_keys=True) + "\n"
        if self.remote:
            self.path.write_text(text)  # one PUT: a reader sees the old object or the new one
        else:
            write_atomically(self.path, text)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive lock on the pipeline's deploy state for the block (blocks until free)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def write_atomically(target: Path, text: str) -> None:
    """Temporary name in the same folder, then rename: a reader sees the old file or the new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
