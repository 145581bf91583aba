"""train, evaluate and register against a real MLflow store (SQLite and files under a temp folder).

One module-scoped run goes ingest -> validate -> build_features -> train -> evaluate -> register on
the generated classification data set; the tests then inspect what it left in MLflow. A snapshot
of the registry is taken right after the first registration, because later tests add versions.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlcycle.errors import RegistryError
from mlcycle.settings import Settings
from mlcycle.spec import load_spec
from mlcycle.steps.evaluate import evaluate
from mlcycle.steps.features import build_features
from mlcycle.steps.ingest import ingest
from mlcycle.steps.register import register
from mlcycle.steps.train import train
from mlcycle.steps.validate import validate
from mlcycle.tracking import CHALLENGER, CHAMPION
from tests.datasets import make_classification_dataset, write_spec_variant
from tests.unit.conftest import apply_env, day_interval

#: 12 days (7 to train on, the 5 hold-out days to evaluate): fewer partitions through GX than the spec's 21.
WINDOW = 12
LINEAGE_TAGS = ("mlcycle.data_fingerprint", "mlcycle.window_start", "mlcycle.window_end", "mlcycle.code_version",
                "airflow.dag_id", "airflow.run_id")


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("lifecycle")
    with pytest.MonkeyPatch.context() as mp:
        settings = apply_env(mp, tmp)
        spec = load_spec(make_classification_dataset(tmp / "data", days=30))
        interval = day_interval(spec.data_end)  # the daily run for the last day of the data
        ns = SimpleNamespace(spec=spec, settings=settings, interval=interval, tmp=tmp, window=WINDOW)
        ns.ingest = ingest(spec, settings, interval, WINDOW)
        ns.validate = validate(spec, settings, interval, WINDOW)
        ns.features = build_features(spec, settings, interval, WINDOW)
        ns.train = train(spec, settings, interval, WINDOW)
        ns.evaluate = evaluate(spec, settings, interval, ns.train.run_id, ns.train.model_uri, WINDOW)
        ns.register = register(spec, settings, ns.train.run_id, ns.train.model_uri)
        client = MlflowClient()
        ns.client = client
        name = spec.model.registered_name
        ns.snapshot = {  # MLflow gives versions as int or str depending on the call: compare as str
            "champion": str(client.get_model_version_by_alias(name, CHAMPION).version),
            "challenger": str(client.get_model_version_by_alias(name, CHALLENGER).version),
            "versions": [str(v.version) for v in client.search_model_versions(f"name='{name}'")],
        }
        # The first run's record as the steps left it (a later test evaluates the same run again).
        ns.first_run = client.get_run(ns.train.run_id).data
        ns.first_decision = json.loads(open(client.download_artifacts(
            ns.train.run_id, "gate/decision.json", str(tmp / "first-decision"))).read())
        yield ns


def test_the_model_states_its_requirements_pinned_to_what_trained_it(lifecycle):
    import mlflow

    from mlcycle.steps.train import MODEL_PACKAGES, model_requirements

    stated = Path(mlflow.pyfunc.get_model_dependencies(lifecycle.train.model_uri)).read_text().split()
    assert sorted(stated) == sorted([f"mlflow=={mlflow.__version__}", *model_requirements()]), stated
    assert {r.split("==")[0] for r in stated} == {"mlflow", *MODEL_PACKAGES}  # no bystander (pytest, rich)


def test_the_first_run_is_blessed_and_becomes_champion(lifecycle):
    ev, reg = lifecycle.evaluate, lifecycle.register
    assert lifecycle.validate.validated == WINDOW and lifecycle.features.train_rows == 7 * 24
    assert [p for p in lifecycle.settings.store.rglob("*") if p.name.endswith(".tmp")] == []
    assert ev.first_run and ev.blessed and ev.champion_score is None and ev.champion_version is None
    assert ev.candidate_score == pytest.approx(lifecycle.train.holdout_score)
    assert ev.candidate_score > 0.75  # the generated label is learnable
    assert (reg.version, reg.blessed, reg.previous_champion_version) == ("1", True, None)
    assert reg.aliases == [CHALLENGER, CHAMPION]
    assert lifecycle.snapshot == {"champion": "1", "challenger": "1", "versions": ["1"]}


def test_the_version_carries_its_lineage(lifecycle):
    mv = lifecycle.client.get_model_version(lifecycle.spec.model.registered_name, "1")
    assert mv.run_id == lifecycle.train.run_id
    missing = [t for t in LINEAGE_TAGS if t not in mv.tags]
    assert not missing
    assert mv.tags["mlcycle.data_fingerprint"] == lifecycle.features.fingerprint == lifecycle.train.fingerprint
    assert mv.tags["mlcycle.window_start"] == "2011-03-19" and mv.tags["mlcycle.window_end"] == "2011-03-31"
    assert mv.tags["mlcycle.code_version"] == "0.0.0+gtest"
    assert (mv.tags["airflow.dag_id"], mv.tags["airflow.run_id"]) == ("unit_dag", "unit__run_1")
    assert mv.tags["airflow.registered_by_run_id"] == "unit__run_1"
    assert mv.tags["gate.blessed"] == "true"


def test_the_run_has_plots_a_dataset_input_and_the_gate_decision(lifecycle):
    client, run_id = lifecycle.client, lifecycle.train.run_id
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {"plots/feature_importance.png", "plots/confusion_matrix.png"}
    run = client.get_run(run_id)
    inputs = {i.tags[0].value if i.tags else None: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "evaluation"}
    assert inputs["training"].digest == lifecycle.features.fingerprint
    assert inputs["training"].name == "synthclass-train-2011-03-31"
    first = lifecycle.first_run
    assert first.metrics["holdout_roc_auc"] == pytest.approx(lifecycle.train.holdout_score)
    assert "cv_roc_auc" in first.metrics
    assert first.metrics["gate_candidate_roc_auc"] == lifecycle.evaluate.candidate_score
    assert first.params["train_rows"] == "168" and first.params["model_family"] == "logistic_regression"
    assert first.tags["gate.blessed"] == "true" and first.tags["gate.first_run"] == "true"
    assert lifecycle.first_decision == lifecycle.evaluate.to_dict()


def test_the_model_carries_what_serving_needs(lifecycle):
    """The serving schema in the MLmodel metadata, model.onnx in the model folder, the parity as tags."""
    import mlflow

    from mlcycle.serving.export import ONNX_EXPORT_FILE
    from mlcycle.serving.model import ONNX_FILE, ServedModel

    name = lifecycle.spec.model.registered_name
    mv = lifecycle.client.get_model_version(name, "1")
    assert float(mv.tags["mlcycle.onnx_max_abs_diff"]) <= 1e-6 and mv.tags["mlcycle.onnx"].startswith("logged")
    folder = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/1",
                                                 dst_path=str(lifecycle.tmp / "served"))
    model = ServedModel(folder)
    assert (model.folder / ONNX_FILE).is_file() and model.path == "onnx", model.path_reason
    # the export's outcome travels with the model, for /metadata when a graph is refused
    report = json.loads((model.folder / ONNX_EXPORT_FILE).read_text())
    assert report["logged"] is True and report["max_abs_diff"] <= 1e-6, report
    assert model.schema.task == "classification" and model.schema.classes == (0, 1)
    assert [f.name for f in model.schema.features] == lifecycle.spec.feature_names


def test_the_champion_loads_and_predicts(lifecycle):
    import mlflow

    model = mlflow.sklearn.load_model(f"models:/{lifecycle.spec.model.registered_name}@champion")
    import pandas as pd

    rows = pd.DataFrame({"hour": [3, 15], "x1": [0.05, 0.95], "x2": [-3.0, 3.0], "visits": [0, 60],
                         "color": ["blue", "unseen-colour"]})
    proba = model.predict_proba(rows)
    assert proba.shape == (2, 2) and proba[0, 1] < 0.5 < proba[1, 1]


def test_register_refuses_a_run_without_a_gate_decision(lifecycle):
    import mlflow

    exp = mlflow.get_experiment_by_name(lifecycle.spec.experiment)
    with mlflow.start_run(experiment_id=exp.experiment_id) as run:
        mlflow.set_tag("mlcycle.pipeline", "synthclass")
    with pytest.raises(RegistryError, match="no gate decision .*run the evaluate step before register"):
        register(lifecycle.spec, lifecycle.settings, run.info.run_id, f"runs:/{run.info.run_id}/model")
    name = lifecycle.spec.model.registered_name
    assert all(v.run_id != run.info.run_id for v in lifecycle.client.search_model_versions(f"name='{name}'"))


def test_registering_the_same_run_again_reuses_its_version(lifecycle):
    again = register(lifecycle.spec, lifecycle.settings, lifecycle.train.run_id, lifecycle.train.model_uri)
    assert again.champion_version == again.version == "1"  # strings, whatever MLflow returns
    name = lifecycle.spec.model.registered_name
    of_this_run = [str(v.version) for v in lifecycle.client.search_model_versions(f"name='{name}'")
                   if v.run_id == lifecycle.train.run_id]
    assert of_this_run == ["1"]


def test_a_candidate_is_compared_with_the_champion_on_the_same_slice(lifecycle):
    spec, settings = lifecycle.spec, lifecycle.settings
    result = evaluate(spec, settings, lifecycle.interval, lifecycle.train.run_id, lifecycle.train.model_uri,
                      WINDOW)
    assert result.first_run is False and str(result.champion_version) == "1"
    assert result.champion_score == pytest.approx(result.candidate_score)  # the champion is this very model
    assert result.blessed and "with tolerance 0.02" in result.reasons[1]
    tags = lifecycle.client.get_run(lifecycle.train.run_id).data.tags
    assert tags["gate.first_run"] == "false" and tags["gate.champion_version"] == "1"


def test_an_unblessed_candidate_is_challenger_only(lifecycle):

    strict = load_spec(write_spec_variant(lifecycle.spec.path, lifecycle.tmp / "strict.yaml",
                                          evaluation={"threshold": 1}))
    settings = Settings(**{**lifecycle.settings.__dict__, "run_id": "unit__run_2"})
    candidate = train(strict, settings, lifecycle.interval, WINDOW)
    assert candidate.run_id != lifecycle.train.run_id
    gate = evaluate(strict, settings, lifecycle.interval, candidate.run_id, candidate.model_uri, WINDOW)
    assert gate.blessed is False and "misses the threshold (at least 1)" in gate.reasons[0]
    result = register(strict, settings, candidate.run_id, candidate.model_uri)
    assert (result.version, result.blessed, result.aliases) == ("2", False, [CHALLENGER])
    name = strict.model.registered_name
    client = lifecycle.client
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == "2"
    v2 = client.get_model_version(name, "2")
    assert v2.tags["gate.blessed"] == "false" and v2.tags["airflow.run_id"] == "unit__run_2"
    assert dt.date.fromisoformat(v2.tags["mlcycle.window_start"]) == dt.date(2011, 3, 19)
