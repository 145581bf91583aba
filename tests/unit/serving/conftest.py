"""Model folders to serve: a HistGradientBoosting Pipeline on bikeshare and a logistic regression on
the generated classification data set, fitted in-process (small, seconds) and saved the way the
train step logs them (skops, signature, input example, serving schema, ``model.onnx``)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.datasets import BIKESHARE_CSV, make_classification_dataset

os.environ.setdefault("OMP_NUM_THREADS", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, url: str, what: str = "the server") -> None:
    """Until ``url``/ready answers 200; fails at once if the server process exits first."""
    for _ in range(600):
        if proc.poll() is not None:
            err = proc.stderr.read()[-3000:] if proc.stderr else ""
            pytest.fail(f"{what} exited with {proc.returncode}: {err}")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{what} at {url} was not ready after 600 tries")


def app_client(folder: Path, store: Path, **settings):
    """A TestClient of the serving app on the model ``folder`` (enter it to start the app), with the
    prediction log under ``store``; ``settings`` override the ServingSettings below."""
    from fastapi.testclient import TestClient

    from mlcycle.serving.app import create_app
    from mlcycle.serving.settings import ServingSettings

    defaults = {"log_enabled": False, "flush_rows": 100_000, "flush_seconds": 3600, "path": "auto"}
    return TestClient(create_app(ServingSettings(model_dir=folder, store=store, **{**defaults, **settings})))


def save_model_folder(spec, model, x_train, x_eval, folder: Path) -> Path:
    """Save like ``mlcycle.steps.train``: the Pipeline plus what the server needs, ONNX when it matches."""
    import mlflow
    from mlflow.models import infer_signature

    from mlcycle.modeling import trusted_types
    from mlcycle.serving.export import serving_metadata, serving_schema, to_onnx
    from mlcycle.serving.model import ONNX_FILE

    example = x_train.head(5)
    mlflow.sklearn.save_model(
        model,
        str(folder),
        signature=infer_signature(example, model.predict(example)),
        input_example=example,
        serialization_format="skops",
        skops_trusted_types=trusted_types(spec),
        pip_requirements=["scikit-learn"],
        metadata=serving_metadata(spec, model, x_train),
    )
    export = to_onnx(serving_schema(spec, model, x_train), model, x_eval)
    if export.model is not None and export.max_abs_diff <= 1e-6 and not export.label_mismatches:
        (folder / ONNX_FILE).write_bytes(export.model)
    return folder


@pytest.fixture(scope="session")
def bike_model(tmp_path_factory):
    """(spec, folder, eval frame) for a small HistGradientBoosting Pipeline on bikeshare."""
    import pandas as pd

    from mlcycle.modeling import build_pipeline
    from mlcycle.spec import load_spec

    spec = load_spec("bikeshare")
    df = pd.read_csv(BIKESHARE_CSV)
    x, y = df[spec.feature_names], df[spec.target]
    model = build_pipeline(spec).set_params(model__max_iter=40, model__max_leaf_nodes=31)
    model.fit(x.iloc[:2000], y.iloc[:2000])
    folder = save_model_folder(
        spec, model, x.iloc[:2000], x.iloc[2000:2400], tmp_path_factory.mktemp("bike") / "model"
    )
    return spec, folder, x.iloc[2000:2400].reset_index(drop=True)


@pytest.fixture(scope="session")
def clf_model(tmp_path_factory):
    """(spec, folder, eval frame) for a logistic regression on the generated classification data set."""
    import pandas as pd

    from mlcycle.modeling import build_pipeline
    from mlcycle.spec import load_spec

    spec = load_spec(make_classification_dataset(tmp_path_factory.mktemp("clfdata"), days=20))
    df = pd.read_csv(spec.source.path())
    x, y = df[spec.feature_names], df[spec.target]
    model = build_pipeline(spec).fit(x.iloc[:300], y.iloc[:300])
    folder = save_model_folder(
        spec, model, x.iloc[:300], x.iloc[300:], tmp_path_factory.mktemp("clf") / "model"
    )
    return spec, folder, x.iloc[300:].reset_index(drop=True)
