"""The verdict on one interval (drift, decay, neither) and whether it triggers a retrain.

**Verdict** (``judge``): *drift* when the share of monitored features whose distribution drifted is
above ``monitoring.drift_share``; *decay* when the gate metric on the interval's labelled rows is
worse than the model's hold-out score at training time by more than ``performance_tolerance``
(relative). Both can hold; the reasons say which.

**Episodes and cool-down** (``Ledger.decide``): a drift day whose previous day drifted continues
that day's episode. Any other drift day starts a new episode, and triggers one retrain, only when it
is at least ``cooldown_days`` after the first day of the last episode that triggered; within the
cool-down it joins that episode. Either way a joining day is recorded, not triggered. So consecutive
drift days (and a drift that comes back within the cool-down) give one retrain, and a backfill over
months gives one trigger per episode, not one per drifted day.

The ledger is durable state in the store (``reports/drift/ledger.json``), read and written under the
store's lock, keyed by the interval's first day. A day already in the ledger keeps its recorded
decision: re-running a monitoring day gives the same decision and never a second trigger. Days are
decided in date order (the monitoring DAG's ``monitor`` task depends on its past), so a day's
decision depends only on the days before it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlcycle.objects import update_document
from mlcycle.spec import MonitoringSpec
from mlcycle.store import objects_at, write_json

log = logging.getLogger(__name__)

LEDGER_FILE = "ledger.json"


@dataclass(frozen=True)
class Figures:
    """What the report measured, reduced to what the decision needs."""

    drifted: tuple[str, ...]  # monitored features whose drift test fired, most drifted first
    monitored: int
    metric: str | None = None
    current_score: float | None = None  # the gate metric on the interval's labelled rows
    holdout_score: float | None = None  # the same metric on the hold-out slice at training time
    greater_is_better: bool = False

    @property
    def share(self) -> float:
        return len(self.drifted) / self.monitored if self.monitored else 0.0


@dataclass(frozen=True)
class Verdict:
    drift: bool
    decay: bool
    reasons: tuple[str, ...]
    line: str  # the one-line decision for the log

    @property
    def status(self) -> str:
        return "drift" if self.drift else "decay" if self.decay else "ok"


def decay_of(figures: Figures) -> float | None:
    """Relative decay of the metric against the hold-out score (positive: worse), or None if unmeasured."""
    if figures.current_score is None or figures.holdout_score is None:
        return None
    base = abs(figures.holdout_score) or 1e-12
    change = (figures.current_score - figures.holdout_score) / base
    return -change if figures.greater_is_better else change


def judge(figures: Figures, config: MonitoringSpec) -> Verdict:
    share = figures.share
    drift = share > config.drift_share
    shown = ", ".join(figures.drifted[:6]) + (", ..." if len(figures.drifted) > 6 else "")
    sign = ">" if drift else "<="
    drift_part = (
        f"{len(figures.drifted)} of {figures.monitored} features drifted "
        f"(share {share:.2f} {sign} {config.drift_share:g})" + (f": {shown}" if figures.drifted else "")
    )
    decay = decay_of(figures)
    decayed = decay is not None and decay > config.performance_tolerance
    reasons: list[str] = []
    if drift:
        reasons.append(f"data drift: {drift_part}")
    if decayed:
        reasons.append(
            f"performance decay: {figures.metric} {figures.current_score:.4g} against "
            f"{figures.holdout_score:.4g} at training ({decay:+.0%} > {config.performance_tolerance:.0%})"
        )
    if decay is None:
        perf_part = "performance not measured (no labelled rows)"
    else:
        perf_part = (
            f"{figures.metric} {figures.current_score:.4g} vs {figures.holdout_score:.4g} at training "
            f"({decay:+.0%}, tolerance {config.performance_tolerance:.0%})"
        )
    status = "drift" if drift else "decay" if decayed else "no drift"
    return Verdict(
        drift=drift, decay=decayed, reasons=tuple(reasons), line=f"{status}: {drift_part}; {perf_part}"
    )


@dataclass(frozen=True)
class Decision:
    day: str
    status: str  # ok | drift | decay
    trigger: bool
    episode: str | None  # first day of the episode this day belongs to
    why: str
    replayed: bool = False  # the day was decided before: its recorded decision is returned
    reasons: tuple[str, ...] = ()


@dataclass
class Ledger:
    """Per-pipeline record of every monitored day's decision: ``{day: entry}``."""

    path: Path
    days: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Ledger:
        try:
            return cls(path, json.loads(path.read_text())["days"])
        except FileNotFoundError:
            return cls(path)

    def last_trigger(self, before: str) -> str | None:
        triggered = [d for d, e in self.days.items() if e.get("trigger") and d < before]
        return max(triggered) if triggered else None

    def decide(self, day: dt.date, verdict: Verdict, cooldown_days: int, report: str = "") -> Decision:
        """The decision for ``day``: a recorded one is returned as it was; a new one is recorded."""
        key = day.isoformat()
        if key in self.days:
            e = self.days[key]
            return Decision(
                day=key,
                status=e["status"],
                trigger=bool(e["trigger"]),
                episode=e.get("episode"),
                why=e["why"],
                replayed=True,
                reasons=tuple(e.get("reasons", ())),
            )
        changed = verdict.drift or verdict.decay
        trigger, episode = False, None
        if not changed:
            why = "no drift and no decay: nothing to trigger"
        else:
            last = self.last_trigger(key)
            since = (day - dt.date.fromisoformat(last)).days if last else None
            previous = self.days.get((day - dt.timedelta(days=1)).isoformat()) or {}
            if previous.get("status", "ok") != "ok" and previous.get("episode"):
                episode = previous["episode"]
                why = f"continues the drift episode that began {episode}: recorded, no retrain triggered"
            elif since is not None and since < cooldown_days:
                episode = last
                why = (
                    f"joins the drift episode that began {last} ({since} day(s) ago, within cooldown_days "
                    f"{cooldown_days}): recorded, no retrain triggered"
                )
            else:
                trigger, episode = True, key
                why = (
                    "new drift episode: retrain triggered"
                    if last is None
                    else f"new drift episode ({since} days after the last one, began {last}): retrain triggered"
                )
        self.days[key] = {
            "status": verdict.status,
            "trigger": trigger,
            "episode": episode,
            "why": why,
            "reasons": list(verdict.reasons),
            "line": verdict.line,
            "report": report,
        }
        return Decision(
            day=key, status=verdict.status, trigger=trigger, episode=episode, why=why, reasons=verdict.reasons
        )

    def save(self) -> None:
        write_json({"days": dict(sorted(self.days.items()))}, self.path)


def decide_and_record(
    folder: Path, day: dt.date, verdict: Verdict, cooldown_days: int, report: str = ""
) -> Decision:
    """Read the ledger in ``folder``, decide ``day`` and write it back as one compare-and-swap.

    Two monitoring runs deciding days at once (a backfill on two workers) never lose each other's
    days: the one whose write finds the ledger changed decides again on the other's ledger.
    """
    decided: list[Decision] = []

    def change(document: dict[str, Any] | None) -> dict[str, Any] | None:
        ledger = Ledger(folder / LEDGER_FILE, dict((document or {}).get("days", {})))
        decided[:] = [ledger.decide(day, verdict, cooldown_days, report)]
        return None if decided[0].replayed else {"days": dict(sorted(ledger.days.items()))}

    update_document(objects_at(folder), LEDGER_FILE, change)
    return decided[0]
