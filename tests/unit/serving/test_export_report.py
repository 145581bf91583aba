"""Why a model is served by the Pipeline reaches ``/metadata``: training's export report beside the
model (``onnx_export.json``) is what the server says when the folder has no ONNX graph."""

from __future__ import annotations

import json
import shutil

from mlcycle.serving.export import OnnxExport, write_export_report
from mlcycle.serving.model import ONNX_EXPORT_FILE, ONNX_FILE


def test_the_export_report_holds_the_outcome_without_the_graph(tmp_path):
    export = OnnxExport(b"graph", 1.5e-3, 2, 480, "max abs difference 0.0015 on 480 evaluation rows")
    path = write_export_report(export, tmp_path, logged=False)
    assert path == tmp_path / ONNX_EXPORT_FILE
    assert json.loads(path.read_text()) == {
        "logged": False,
        "max_abs_diff": 1.5e-3,
        "label_mismatches": 2,
        "rows": 480,
        "reason": "max abs difference 0.0015 on 480 evaluation rows",
    }


def test_metadata_says_why_training_made_no_graph(bike_model, tmp_path):
    from tests.unit.serving.conftest import app_client

    _, folder, _ = bike_model
    served = tmp_path / "model"
    shutil.copytree(folder, served, ignore=shutil.ignore_patterns(ONNX_FILE))
    reason = "skl2onnx could not convert SomeRegressor: TypeError: no converter"
    write_export_report(OnnxExport(None, None, None, 400, reason), served, logged=False)
    with app_client(
        served, tmp_path / "store", flush_rows=1000, flush_seconds=60, max_body_bytes=64 * 1024
    ) as client:
        meta = client.get("/metadata").json()
    assert meta["inference_path"] == "pipeline"
    assert meta["inference_path_reason"] == f"no ONNX model in the folder: {reason}"


def test_a_model_the_tree_rewrite_refuses_is_exported_without_a_graph_and_says_why(bike_model, monkeypatch):
    from mlcycle.serving import export as export_module
    from mlcycle.serving.model import ServedModel
    from mlcycle.serving.onnx_trees import Unsupported

    _, folder, x_eval = bike_model
    served = ServedModel(folder, force_path="pipeline")

    def refuse(onx, estimator):
        raise Unsupported("categorical features whose values are not numbers")

    monkeypatch.setattr(export_module, "double_trees", refuse)
    result = export_module.to_onnx(served.schema, served.pipeline, x_eval.head(20))
    assert result.model is None and result.max_abs_diff is None
    assert result.reason == (
        "no exact ONNX graph for HistGradientBoostingRegressor: categorical features whose values are not numbers"
    )
