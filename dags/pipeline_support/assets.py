"""Cross-DAG links: one Asset per pipeline and event, named in one place.

``champion_asset(name)`` is emitted by ``training_<name>.announce`` only when ``@champion`` moved
(extra: ``pipeline``, ``model_name``, ``version``); ``deploy_<name>`` is scheduled on it.
``scores_asset(name)`` is emitted by ``scoring_<name>.announce`` once per scored interval (extra:
``pipeline``, ``start``, ``end``, ``model_name``, ``version``, ``fingerprint``, ``code_version``, ``rows``).
``drift_asset(name)`` is emitted by ``monitoring_<name>.retrain_trigger`` when a drift episode calls
for a retrain (``pipeline_support.drift``); ``training_<name>`` runs on it or on its timetable.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset


def champion_asset(name: str) -> Asset:
    return Asset(f"mlcycle://{name}/champion")


def drift_asset(name: str) -> Asset:
    """The Asset a pipeline's monitoring emits when drift or decay calls for a retrain."""
    return Asset(f"mlcycle://{name}/drift")


def champion_moved(registered: dict[str, Any] | None) -> bool:
    """Did the register step move ``@champion``? (Its result: ``aliases`` and the versions before and after.)"""
    registered = registered or {}
    return (
        "champion" in (registered.get("aliases") or [])
        and registered.get("champion_version") is not None
        and registered.get("champion_version") != registered.get("previous_champion_version")
    )


def announce_task(name: str, registered: Any) -> Any:
    """The task after ``register``: one champion event when ``@champion`` moved, none (a skip) otherwise."""
    from airflow.sdk import task

    asset = champion_asset(name)

    @task(task_id="announce", outlets=[asset])
    def announce(result: dict[str, Any], *, outlet_events: Any = None) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        if not champion_moved(result):
            raise AirflowSkipException(
                f"@champion stayed at version {result.get('champion_version')}: no champion event, no deploy"
            )
        extra = {
            "pipeline": name,
            "model_name": result["model_name"],
            "version": str(result["champion_version"]),
        }
        outlet_events[asset].extra = extra
        return extra

    return announce(registered)


def scores_asset(name: str) -> Asset:
    """The Asset ``scoring_<name>`` emits once per scored interval (extra: version, fingerprint, days)."""
    return Asset(f"mlcycle://{name}/scores")
