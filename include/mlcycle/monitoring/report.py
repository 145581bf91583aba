"""The Evidently 0.7 report: data drift per monitored feature and, where labels arrived, performance.

Evidently is imported here only, inside the function (it costs seconds to import). The drift test per
column is Evidently's default for its type and size unless ``monitoring.method`` (and ``threshold``)
set one for every column; what counts as a drifted column is Evidently's own per-column verdict.
Performance uses Evidently's regression or classification preset for the HTML report; the figure
the decision compares with the hold-out score is the pipeline's own gate metric
(``mlcycle.modeling.score``), so that both sides are the same computation.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mlcycle.spec import PipelineSpec

log = logging.getLogger(__name__)

PREDICTION = "prediction"


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftReport:
    columns: tuple[ColumnDrift, ...]
    html: str
    #: Every metric of the snapshot (Evidently's own ids and values), for metrics.json.
    metrics: list[dict[str, Any]]

    @property
    def drifted(self) -> tuple[str, ...]:
        """The drifted columns, most drifted first (p-values ascending, distances descending)."""
        flagged = [c for c in self.columns if c.drifted]
        return tuple(c.column for c in sorted(flagged, key=lambda c: _strength(c), reverse=True))


def _strength(c: ColumnDrift) -> float:
    if _is_p_value(c.method):
        return -c.score
    return c.score


def _is_p_value(method: str) -> bool:
    return "p_value" in method.replace("-", "_").lower()


def _definition(spec: PipelineSpec, columns: list[str], with_target: bool):
    from evidently import BinaryClassification, DataDefinition, MulticlassClassification, Regression

    numeric = [c for c in columns if spec.column(c).type in ("numeric", "integer")]
    categorical = [c for c in columns if c not in numeric]
    kwargs: dict[str, Any] = {"numerical_columns": numeric, "categorical_columns": categorical}
    if with_target:
        if spec.task == "regression":
            kwargs["numerical_columns"] = [*numeric, spec.target, PREDICTION]
            kwargs["regression"] = [Regression(target=spec.target, prediction=PREDICTION)]
        else:
            values = spec.column(spec.target).values or ()
            kwargs["categorical_columns"] = [*categorical, spec.target, PREDICTION]
            if len(values) == 2:
                kwargs["classification"] = [
                    BinaryClassification(
                        target=spec.target, prediction_labels=PREDICTION, pos_label=values[1]
                    )
                ]
            else:
                kwargs["classification"] = [
                    MulticlassClassification(target=spec.target, prediction_labels=PREDICTION)
                ]
    return DataDefinition(**kwargs)


def build_report(
    spec: PipelineSpec,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    with_performance: bool,
    html: bool = True,
) -> DriftReport:
    """Run the report. With ``with_performance``, both frames carry the target and a ``prediction`` column."""
    from evidently import Dataset, Report
    from evidently.presets import ClassificationPreset, DataDriftPreset, RegressionPreset

    config = spec.monitoring
    columns = list(config.columns)
    keep = [*columns, spec.target, PREDICTION] if with_performance else columns
    definition = _definition(spec, columns, with_performance)
    ref = Dataset.from_pandas(reference[keep].reset_index(drop=True), data_definition=definition)
    cur = Dataset.from_pandas(current[keep].reset_index(drop=True), data_definition=definition)
    metrics: list[Any] = [
        DataDriftPreset(
            columns=columns, method=config.method, threshold=config.threshold, drift_share=config.drift_share
        )
    ]
    if with_performance:
        metrics.append(RegressionPreset() if spec.task == "regression" else ClassificationPreset())
    with warnings.catch_warnings():  # the presets' per-point R² on single rows: noise, not a finding
        warnings.filterwarnings("ignore", message="R\\^2 score is not well-defined")
        snapshot = Report(metrics, include_tests=True).run(cur, ref)
    return DriftReport(
        columns=tuple(_value_drifts(snapshot)),
        html=snapshot.get_html_str(as_iframe=False) if html else "",
        metrics=_plain(snapshot.dict().get("metrics", [])),
    )


def _value_drifts(snapshot) -> list[ColumnDrift]:
    """Each column's drift score, its test and Evidently's own verdict (its drift test failed)."""
    found = []
    for result in snapshot.metric_results.values():
        params = result.metric_value_location.metric.params
        if not str(params.get("type", "")).endswith(":ValueDrift"):
            continue
        found.append(
            ColumnDrift(
                column=params["column"],
                method=str(params.get("method")),
                score=float(result.value),
                threshold=float(params.get("threshold") or 0.0),
                drifted=any(t.id == "drift" and t.status.value == "FAIL" for t in result.tests),
            )
        )
    return found


def _plain(value: Any) -> Any:
    """JSON-safe copy (NaN and infinities become None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value
