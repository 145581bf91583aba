"""
### Training pipeline

Trains, evaluates and (when it earns it) promotes a model for one pipeline spec, every day.

| task | what it does | writes |
|---|---|---|
| `extract` | for a `postgres` source only: each day of the window, streamed from the table (COPY) | `landing/date=…` |
| `ingest` | rows of the training window from the spec's source, one raw partition per day | `raw/date=…` |
| `validate` | the Great Expectations suite on each new partition; failures are quarantined with a report, and the run stops | `validated/date=…`, `quarantine/…`, `reports/validation/…` |
| `build_features` | validated partitions of the window, split by time: the last `holdout_days` are the evaluation slice | `features/end=…` |
| `train` | bounded hyper-parameter search, tracked in MLflow (params, metrics, plots, dataset, model) | MLflow run |
| `evaluate` | candidate vs `@champion` on the same slice; blessed = above the floor and within tolerance | `gate.*` tags on the run |
| `register` | new model version as `@challenger`; `@champion` moves only when blessed | MLflow registry |

**Keyed on the data interval**: a run for `[start, end)` trains on the `window_days` before `end`.
Every partition is written atomically and deterministically, so re-running a date is safe.

**Params** (Trigger DAG w/ config): `pipeline` (a spec in `include/pipelines`, or a path to one),
`window_days` (training window; empty: the spec's `window.days`).

**Backfill**: *Trigger* → *Backfill* in the UI, or
`airflow backfill create --dag-id training --from-date 2011-03-01 --to-date 2011-03-07 --max-active-runs 1`.
A backfill has its own max active runs (default 10, whatever this DAG's `max_active_runs=1` says):
set it to 1 so that each day is gated against the champion the day before left. The `training`
pool (one slot) keeps any two training tasks from running at the same time.

**Where to look**: MLflow UI (`make mlflow-ui`), reports under `.local/store/<pipeline>/reports/`,
rejected batches under `.local/store/<pipeline>/quarantine/`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag

from pipeline_support.alerts import failure_notifier
from pipeline_support.extract import extract_task
from pipeline_support.runner import step_task


@dag(
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2011, 1, 29, tz="UTC"),
    end_date=pendulum.datetime(2011, 12, 31, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["mlcycle", "training"],
    params={
        "pipeline": Param("bikeshare", type="string", minLength=1,
                          description="Pipeline spec: a name in include/pipelines or a path to a YAML file."),
        "window_days": Param(None, type=["null", "integer"], minimum=7, maximum=366,
                             description="Training window: days of data before the interval end. "
                                         "Empty: the spec's window.days."),
    },
    default_args={
        "owner": "mlops",
        "retries": 1,
        "retry_delay": timedelta(minutes=2),
        "on_failure_callback": [failure_notifier()],
    },
    on_failure_callback=[failure_notifier()],
)
def training():
    extract = extract_task()
    ingest = step_task("ingest")
    validate = step_task("validate", retries=0, pool="validation")  # a rejected batch does not improve on retry
    build_features = step_task("build_features")
    train = step_task("train", pool="training")
    evaluate = step_task("evaluate", args=["--run-id", "{{ ti.xcom_pull(task_ids='train')['run_id'] }}",
                                           "--model-uri", "{{ ti.xcom_pull(task_ids='train')['model_uri'] }}"])
    register = step_task("register", interval=False,
                         args=["--run-id", "{{ ti.xcom_pull(task_ids='evaluate')['run_id'] }}",
                               "--model-uri", "{{ ti.xcom_pull(task_ids='evaluate')['model_uri'] }}"])

    extract >> ingest >> validate >> build_features >> train >> evaluate >> register


training()
