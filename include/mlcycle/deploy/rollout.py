"""Staging, blue/green rollout, the watch window, and the way back.

- ``stage``: the version starts in the staging container, must get ready, and must pass the smoke test.
- ``rollout``: the version starts on the idle slot (or is already there: an instant rollback), must
  get ready, then the proxy switches to it with a graceful reload. The previous slot keeps running,
  drained, until the next deploy replaces it.
- ``watch``: for ``deploy.watch_seconds`` the new slot's ``/metrics`` (5xx share, p99 latency) is
  read while a light probe load goes through the proxy; a breach switches the proxy back to the
  previous slot, removes the new container and fails.

Every change holds the pipeline's state lock; every failure leaves production as it was: the
proxy forwards to the slot it forwarded to before, and the state file says so.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from mlcycle.deploy.figures import breach_of, read_metrics, window_figures
from mlcycle.deploy.load import Load, summary
from mlcycle.deploy.proxy import Proxy
from mlcycle.deploy.record import mark_staging
from mlcycle.deploy.slots import (
    DeployError,
    NotReady,
    online_location,
    ready_version,
    remove,
    running,
    start,
    wait_ready,
)
from mlcycle.deploy.smoke import eval_rows, latest_eval_slice, smoke_test
from mlcycle.deploy.state import Slot, StateStore, namespace
from mlcycle.settings import Settings
from mlcycle.spec import PipelineSpec
from mlcycle.steps._common import Result

log = logging.getLogger(__name__)

WATCH_PROBE_RATE = 5.0  # requests/s the watch sends through the proxy, so there is always a signal


class WatchBreach(DeployError):
    """The new version broke its error or latency budget in the watch window."""


def container_name(pipeline: str, role: str) -> str:
    return f"{namespace()}-{pipeline}-{role}"


def proxy_of(spec: PipelineSpec, states: StateStore) -> Proxy:
    return Proxy(container_name(spec.name, "proxy"), states.proxy_dir, spec.deploy.production_port)


def production_url(spec: PipelineSpec) -> str:
    return f"http://127.0.0.1:{spec.deploy.production_port}"


def _kept(states: StateStore) -> str:
    live = states.read().live_slot
    return (
        f"production keeps serving version {live.version} (slot {live.name})"
        if live
        else "production serves nothing yet (no earlier deploy)"
    )


def build(spec: PipelineSpec, settings: Settings, version: str, image: str) -> dict[str, Any]:
    """The serving image of ``version`` (``mlcycle.serving.image``: reused when the same version and code exist)."""
    from mlcycle.errors import StepError
    from mlcycle.serving.fetch import resolve_model
    from mlcycle.serving.image import build_serving_image

    model_uri = f"models:/{spec.model.registered_name}/{version}"
    try:
        folder = resolve_model(model_uri, settings.home / "serving", settings.tracking_uri)
        return build_serving_image(spec.name, folder, settings, image).to_dict()
    except StepError as exc:
        raise DeployError(
            f"the image of version {version} was not built, {_kept(StateStore(settings.store, spec.name, settings.home))}: "
            f"{exc}"
        ) from exc


@dataclass(frozen=True)
class StageResult(Result):
    pipeline: str
    version: str
    image: str
    image_id: str
    staging_url: str
    ready_seconds: float
    smoke: dict[str, Any]


def stage(spec: PipelineSpec, settings: Settings, version: str, image: str) -> StageResult:
    """Start ``image`` in the staging container, wait for ``/ready``, run the smoke test."""
    states = StateStore(settings.store, spec.name, settings.home)
    deploy = spec.deploy
    model_uri = f"models:/{spec.model.registered_name}/{version}"
    container = container_name(spec.name, "staging")
    with states.locked():
        try:
            eval_path = latest_eval_slice(settings.store, spec.name)
            online = online_location(spec, settings.store)
            started = start(container, image, deploy.staging_port, deploy.workers, store=None, online=online)
            ready = wait_ready(
                container, f"http://127.0.0.1:{deploy.staging_port}", version, deploy.ready_timeout_seconds
            )
            smoke = smoke_test(
                spec, model_uri, deploy.staging_port, eval_path, settings.tracking_uri, str(settings.store)
            )
        except DeployError as exc:
            remove(container)
            state = states.read()
            state.staging = None
            states.write(state)
            raise type(exc)(f"staging of version {version} failed, {_kept(states)}: {exc}") from exc
        state = states.read()
        state.staging = Slot(
            "staging", container, deploy.staging_port, version, image, started.image_id, started.started_at
        )
        states.write(state)
        mark_staging(spec, settings, version)
    return StageResult(spec.name, version, image, started.image_id, started.url, ready, smoke.to_dict())


@dataclass(frozen=True)
class RolloutResult(Result):
    pipeline: str
    version: str
    slot: str
    image: str
    image_id: str
    production_url: str
    previous_version: str | None
    previous_slot: str | None
    reused_slot: bool  # the idle slot already served this version and image: an instant switch
    ready_seconds: float
    switch_seconds: float


def rollout(spec: PipelineSpec, settings: Settings, version: str, image: str) -> RolloutResult:
    """Put ``image`` (model ``version``) into production through the idle slot."""
    from mlcycle.deploy.slots import image_id as image_id_of
    from mlcycle.errors import NothingToDo

    states = StateStore(settings.store, spec.name, settings.home)
    deploy = spec.deploy
    proxy = proxy_of(spec, states)
    wanted_id = image_id_of(image)
    with states.locked():
        state = states.read()
        live = state.live_slot
        if (
            live
            and live.version == version
            and live.image_id == wanted_id
            and running(live.container)
            and proxy.running()
            and proxy.upstream() == live.port
        ):
            raise NothingToDo(f"production already serves version {version} from {image} (slot {live.name})")
        name = state.idle
        port = deploy.slot_ports[0 if name == "blue" else 1]
        idle = state.slots.get(name)
        url = f"http://127.0.0.1:{port}"
        reused = bool(
            idle
            and idle.version == version
            and idle.image_id == wanted_id
            and running(idle.container)
            and ready_version(url) == version
        )
        try:
            if reused:
                slot, ready = idle, 0.0
                log.info("slot %s still serves version %s: switching back to it", name, version)
            else:
                container = container_name(spec.name, name)
                state.slots[name] = None  # whatever ran there is replaced now
                states.write(state)
                online = online_location(spec, settings.store)
                started = start(container, image, port, deploy.workers, store=settings.store, online=online)
                ready = wait_ready(container, url, version, deploy.ready_timeout_seconds)
                slot = Slot(name, container, port, version, image, started.image_id, started.started_at)
            switch_began = time.time()
            # The slot that served until now stays up behind the new one (nginx's backup): it takes
            # the requests the new slot cannot while Docker restarts it, and makes a rollback instant.
            backup = live.port if live and live.name != name and running(live.container) else None
            if proxy.running():
                switched = proxy.switch(port, backup)
            else:
                began = time.monotonic()
                proxy.start(spec.name, port, backup=backup)
                switched = round(time.monotonic() - began, 3)
            _confirm(proxy, version)
            switch_done = time.time()
        except DeployError as exc:
            if not reused:
                remove(container_name(spec.name, name))
            if live and proxy.running() and proxy.upstream() != live.port:
                proxy.switch(live.port)
            elif not live:
                proxy.stop()  # nothing was served before: nothing is served now
            raise type(exc)(f"rollout of version {version} failed, {_kept(states)}: {exc}") from exc
        state.slots[name] = slot
        state.live = name
        state.switched(version, name, switch_began, switch_done, "rollout")
        states.write(state)
    log.info(
        "production %s now serves version %s from slot %s (was %s)",
        proxy.url,
        version,
        name,
        live.version if live else "nothing",
    )
    return RolloutResult(
        spec.name,
        version,
        name,
        image,
        slot.image_id,
        proxy.url,
        live.version if live else None,
        live.name if live else None,
        reused,
        ready,
        switched,
    )


def _confirm(proxy: Proxy, version: str, seconds: float = 10.0) -> None:
    """The proxy answers with ``version`` (the reload has taken effect)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready_version(proxy.url) == version:
            return
        time.sleep(0.1)
    raise NotReady(f"the proxy {proxy.url} does not answer with version {version} after the switch")


# --- the watch window --------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchResult(Result):
    pipeline: str
    version: str
    slot: str
    seconds: float
    figures: dict[str, Any]
    probe: dict[str, Any]


def watch(spec: PipelineSpec, settings: Settings, version: str) -> WatchResult:
    """Watch the live slot for ``deploy.watch_seconds``; on a breach switch back and raise ``WatchBreach``."""
    states = StateStore(settings.store, spec.name, settings.home)
    deploy = spec.deploy
    proxy = proxy_of(spec, states)
    with states.locked():
        state = states.read()
        slot = state.live_slot
        if slot is None or slot.version != version:
            raise DeployError(
                f"production does not serve version {version} (live: "
                f"{slot.version if slot else 'nothing'}): nothing to watch"
            )
        url = f"http://127.0.0.1:{slot.port}"
        _, rows = eval_rows(latest_eval_slice(settings.store, spec.name), spec.row_feature_names, 100)
        before = read_metrics(url)
        began = time.monotonic()
        figures = window_figures(before, before)
        breach = None
        with Load(proxy.port, rows, rate=WATCH_PROBE_RATE, threads=2) as probe:
            while time.monotonic() - began < deploy.watch_seconds:
                time.sleep(min(1.0, max(0.0, deploy.watch_seconds - (time.monotonic() - began))))
                try:
                    figures = window_figures(before, read_metrics(url))
                except OSError as exc:
                    breach = f"the new slot's /metrics does not answer ({exc})"
                    break
                breach = breach_of(figures, deploy)
                if breach:
                    break
            probe_samples = probe.stop()
        probed = summary(probe_samples) if probe_samples else {"requests": 0, "failed": 0}
        if not breach and probed["failed"]:
            breach = f"{probed['failed']} of {probed['requests']} probe requests through the proxy failed"
        if breach:
            kept = _switch_back(spec, states, proxy, slot)
            raise WatchBreach(f"watch window breached by version {version}, {kept}: {breach}")
    log.info("watch: version %s held for %.0f s: %s", version, time.monotonic() - began, figures)
    return WatchResult(spec.name, version, slot.name, round(time.monotonic() - began, 1), figures, probed)


def _switch_back(spec: PipelineSpec, states: StateStore, proxy: Proxy, bad: Slot) -> str:
    """Forward to the other slot again, remove the bad one; what production serves now."""
    state = states.read()
    other = state.slots.get("green" if bad.name == "blue" else "blue")
    if (
        other
        and running(other.container)
        and ready_version(f"http://127.0.0.1:{other.port}") == other.version
    ):
        began = time.time()
        proxy.switch(other.port)
        _confirm(proxy, other.version)
        state.live = other.name
        state.switched(
            other.version, other.name, began, time.time(), f"watch breach of version {bad.version}"
        )
        kept = f"switched back: production serves version {other.version} again (slot {other.name})"
    else:
        proxy.stop()
        state.live = None
        kept = "no earlier version to switch back to: the proxy is stopped, production serves nothing"
    remove(bad.container)
    state.slots[bad.name] = None
    states.write(state)
    log.warning("%s", kept)
    return kept


def status(spec: PipelineSpec, settings: Settings) -> dict[str, Any]:
    """What each environment serves now (the state file, checked against the running containers)."""
    states = StateStore(settings.store, spec.name, settings.home)
    state = states.read()
    out = state.to_dict()
    out["production_url"] = production_url(spec)
    out["production_version"] = ready_version(production_url(spec))
    return out


def stop_all(spec: PipelineSpec, settings: Settings) -> None:
    """Remove the proxy, both slots and staging, and forget the state (tests, ``make clean``)."""
    states = StateStore(settings.store, spec.name, settings.home)
    with states.locked():
        for role in ("proxy", "blue", "green", "staging"):
            remove(container_name(spec.name, role))
        states.path.unlink(missing_ok=True)
