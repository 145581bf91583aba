"""The BentoML anchor of the serving benchmark: the model's fitted scikit-learn Pipeline behind one
endpoint, ``POST /predict`` with ``{"rows": [{feature: value, ...}, ...]}``, answering the list of
predictions. Started by scripts/bench_serving.py in its own environment (requirements-bentoml.txt):

    BENCH_MODEL_JOBLIB=/path/model.joblib BENCH_COLUMNS=a,b,c \
        bentoml serve bentoml_service:Pipeline --host 127.0.0.1 --port 3000
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import joblib
import pandas as pd


# Worker count: BentoML's guide for CPU workloads ("Parallelize requests handling", section "CPU
# workloads", https://docs.bentoml.com/en/latest/build-with-bentoml/parallelize-requests.html)
# recommends one worker process per available core, spelled workers="cpu_count".
@bentoml.service(workers="cpu_count", traffic={"timeout": 60})
class Pipeline:
    def __init__(self) -> None:
        self.model = joblib.load(os.environ["BENCH_MODEL_JOBLIB"])
        self.columns = os.environ["BENCH_COLUMNS"].split(",")

    @bentoml.api
    def predict(self, rows: list[dict[str, Any]]) -> list[Any]:
        frame = pd.DataFrame.from_records(rows, columns=self.columns)
        return self.model.predict(frame).tolist()
