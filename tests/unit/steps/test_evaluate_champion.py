"""evaluate against a real second model: the champion is scored, not the candidate again.

A real MLflow store (SQLite and files under a temp folder) holds two models whose scores on the
evaluation slice are known exactly: a logistic regression that separates the slice perfectly
(ROC AUC 1.0) and a constant-probability DummyClassifier (ROC AUC 0.5). Whichever is @champion,
the gate must report that model's score, and decide with it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from pathlib import Path

import pandas as pd
import pytest

from mlcycle.spec import load_spec
from mlcycle.steps._common import training_window
from mlcycle.steps.evaluate import evaluate
from mlcycle.store import Store
from mlcycle.tracking import CHAMPION
from tests.datasets import make_classification_dataset
from tests.unit.conftest import apply_env, day_interval

PERFECT, CONSTANT = 1.0, 0.5  # ROC AUC of each model on the slice below


def _slice(n: int = 40) -> pd.DataFrame:
    """An evaluation slice whose label is exactly ``x1 > 0.5``: separable, both classes present."""
    x1 = [(i + 0.5) / n for i in range(n)]
    return pd.DataFrame(
        {
            "hour": [i % 24 for i in range(n)],
            "x1": x1,
            "x2": [0.0] * n,
            "visits": [i % 60 for i in range(n)],
            "color": ["red", "blue"] * (n // 2),
            "label": [int(v > 0.5) for v in x1],
        }
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store and evaluation slice for the module (creating a store costs seconds)."""
    import mlflow

    from mlcycle.tracking import connect

    tmp = tmp_path_factory.mktemp("gate")
    with pytest.MonkeyPatch.context() as mp:
        settings = apply_env(mp, tmp)
        mp.setattr(mlflow.models, "infer_pip_requirements", lambda uri, flavor, fallback=None, **kw: fallback)
        spec = load_spec(make_classification_dataset(tmp / "data", days=10))
        spec = dataclasses.replace(
            spec, evaluation=dataclasses.replace(spec.evaluation, threshold=0.4, tolerance=0.1)
        )
        interval = day_interval(spec.data_end)
        _, end = training_window(spec, interval, None)
        features = Store(settings.store, spec.name).features_dir(end)
        features.mkdir(parents=True)
        _slice().to_parquet(features / "eval.parquet")
        experiment_id = connect(settings, spec)
        yield spec, settings, interval, experiment_id


@pytest.fixture
def gate(store, request):
    """The spec under a registered name of this test's own, and helpers to log and crown models."""
    import mlflow
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    from mlcycle.modeling import build_pipeline, trusted_types

    spec, settings, interval, experiment_id = store
    spec = dataclasses.replace(
        spec, model=dataclasses.replace(spec.model, registered_name=request.node.name[:60])
    )
    data = _slice()
    x, y = data[spec.feature_names], data[spec.target]

    def logged(kind: str) -> tuple[str, str]:
        model = build_pipeline(spec)
        model.steps[-1] = ("model", LogisticRegression(C=100.0) if kind == "perfect" else DummyClassifier())
        model.fit(x, y)
        with mlflow.start_run(experiment_id=experiment_id) as run:
            info = mlflow.sklearn.log_model(
                model, name="model", serialization_format="skops", skops_trusted_types=trusted_types(spec)
            )
        return run.info.run_id, info.model_uri

    def crown(run_id: str, model_uri: str) -> str:
        version = mlflow.register_model(model_uri, spec.model.registered_name).version
        mlflow.MlflowClient().set_registered_model_alias(spec.model.registered_name, CHAMPION, version)
        return str(version)

    return dataclasses.make_dataclass(
        "Gate", ["spec", "settings", "interval", "logged", "crown", "experiment_id"]
    )(spec, settings, interval, logged, crown, experiment_id)


def _run_data(run_id: str):
    from mlflow import MlflowClient

    return MlflowClient().get_run(run_id).data


def test_a_better_candidate_is_scored_against_the_worse_champion(gate, caplog):
    champion = gate.logged("constant")
    assert gate.crown(*champion) == "1"
    run_id, uri = gate.logged("perfect")
    with caplog.at_level(logging.INFO, logger="mlcycle.steps.evaluate"):
        result = evaluate(gate.spec, gate.settings, gate.interval, run_id, uri)
    assert caplog.messages[-1] == "gate: candidate BLESSED. " + "; ".join(result.reasons)
    assert (result.candidate_score, result.champion_score) == (PERFECT, CONSTANT)
    assert (result.blessed, result.first_run, result.champion_version) == (True, False, "1")
    assert result.reasons == [
        "roc_auc 1.0000 meets the threshold (at least 0.4)",
        "champion roc_auc 0.5000 on the same slice; with tolerance 0.1 the candidate must be at least 0.4500: yes",
    ]
    data = _run_data(run_id)
    assert data.metrics == {"gate_candidate_roc_auc": PERFECT, "gate_champion_roc_auc": CONSTANT}
    assert data.tags["gate.blessed"] == "true" and data.tags["gate.first_run"] == "false"
    assert data.tags["gate.champion_version"] == "1"
    assert data.tags["gate.reason"] == "; ".join(result.reasons)


def test_a_worse_candidate_is_refused_because_of_the_champion(gate, caplog):
    gate.crown(*gate.logged("perfect"))
    run_id, uri = gate.logged("constant")
    with caplog.at_level(logging.INFO, logger="mlcycle.steps.evaluate"):
        result = evaluate(gate.spec, gate.settings, gate.interval, run_id, uri)
    assert caplog.messages[-1] == "gate: candidate NOT blessed. " + "; ".join(result.reasons)
    assert (result.candidate_score, result.champion_score) == (CONSTANT, PERFECT)
    assert result.blessed is False and result.reasons[0].endswith("meets the threshold (at least 0.4)")
    assert result.reasons[1].endswith("the candidate must be at least 0.9000: no")
    data = _run_data(run_id)
    assert data.tags["gate.blessed"] == "false"
    assert data.metrics["gate_champion_roc_auc"] == PERFECT


def test_the_first_run_has_no_champion_score(gate):
    run_id, uri = gate.logged("perfect")
    result = evaluate(gate.spec, gate.settings, gate.interval, run_id, uri)
    assert result.to_dict() == {
        "pipeline": "synthclass",
        "run_id": run_id,
        "experiment_id": gate.experiment_id,
        "model_uri": uri,
        "metric": "roc_auc",
        "blessed": True,
        "first_run": True,
        "candidate_score": PERFECT,
        "champion_score": None,
        "champion_version": None,
        "reasons": [
            "roc_auc 1.0000 meets the threshold (at least 0.4)",
            "no champion yet: first run, the threshold alone decides",
        ],
    }
    data = _run_data(run_id)
    assert data.metrics == {"gate_candidate_roc_auc": PERFECT}
    assert data.tags["gate.first_run"] == "true" and data.tags["gate.champion_version"] == "none"
    assert dt.date.fromisoformat("2011-03-10") == gate.spec.data_end  # the slice is keyed on the data end


def test_the_decision_is_saved_with_the_run(gate, tmp_path):
    import json

    from mlflow import MlflowClient

    gate.crown(*gate.logged("constant"))
    run_id, uri = gate.logged("perfect")
    result = evaluate(gate.spec, gate.settings, gate.interval, run_id, uri)
    saved = MlflowClient().download_artifacts(run_id, "gate/decision.json", str(tmp_path / "dl"))
    assert json.loads(open(saved).read()) == result.to_dict()


def test_a_champion_whose_artifacts_are_gone_is_reported_and_the_threshold_decides(gate, caplog):
    """The champion's files deleted from the real store: no crash, a reason naming the version and the fix."""
    import shutil
    from urllib.parse import urlparse

    from mlflow import MlflowClient

    champion_run, champion_uri = gate.logged("perfect")
    version = gate.crown(champion_run, champion_uri)
    artifacts = MlflowClient().get_model_version(gate.spec.model.registered_name, version).source
    import mlflow

    folder = Path(urlparse(mlflow.get_logged_model(champion_uri.rsplit("/", 1)[-1]).artifact_location).path)
    assert (folder / "MLmodel").is_file()
    shutil.rmtree(folder)  # the champion's model files are gone; the registry still points at them
    run_id, uri = gate.logged("perfect")
    with caplog.at_level(logging.WARNING, logger="mlcycle.steps.evaluate"):
        result = evaluate(gate.spec, gate.settings, gate.interval, run_id, uri)
    assert result.blessed is True and result.champion_score is None and result.champion_version == version
    assert result.reasons[0] == "roc_auc 1.0000 meets the threshold (at least 0.4)"
    reason = result.reasons[1]
    assert reason.startswith(
        f"champion version {version} of {gate.spec.model.registered_name} cannot be loaded"
    )
    assert artifacts in reason and "the threshold alone decides, as on a first run" in reason
    repair = f"mlcycle alias --pipeline {gate.spec.name} --alias champion"
    assert f"{repair} --version <version>" in reason and f"{repair} --clear" in reason
    assert any(m == f"gate: {reason}" for m in caplog.messages) and "Traceback" not in caplog.text
    assert _run_data(run_id).tags["gate.reason"] == "; ".join(result.reasons)[:4900]

    # The repair the reason names: typos change nothing, clearing makes the next gate a first run.
    from mlcycle.aliases import set_alias
    from mlcycle.errors import RegistryError
    from mlcycle.tracking import champion_version

    name = gate.spec.model.registered_name
    with pytest.raises(RegistryError, match="unknown alias 'champoin'; did you mean `champion`"):
        set_alias(gate.spec, gate.settings, "champoin", None)
    with pytest.raises(RegistryError, match=rf"{name} has no version '99' \(its versions: {version}\)"):
        set_alias(gate.spec, gate.settings, "champion", "99")
    assert str(champion_version(MlflowClient(), name).version) == version
    cleared = set_alias(gate.spec, gate.settings, "champion", None)
    assert cleared == {"model_name": name, "alias": "champion", "version": None, "previous": version}
    assert champion_version(MlflowClient(), name) is None
    assert evaluate(gate.spec, gate.settings, gate.interval, run_id, uri).reasons == [
        result.reasons[0],
        "no champion yet: first run, the threshold alone decides",
    ]
    assert set_alias(gate.spec, gate.settings, "champion", version)["version"] == version


def test_the_alias_command_needs_a_version_or_clear(capsys):
    from mlcycle.cli import _parser

    for extra in ([], ["--version", "1", "--clear"]):
        with pytest.raises(SystemExit) as exited:
            _parser().parse_args(["alias", "--pipeline", "bikeshare", "--alias", "champion", *extra])
        assert exited.value.code == 2
    assert "--version" in capsys.readouterr().err
