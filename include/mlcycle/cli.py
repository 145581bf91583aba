"""Command-line entry point: ``mlcycle <step> --pipeline NAME --start DATE --end DATE ...``.

Each step logs its progress to stderr; its result (the value Airflow pushes to XCom) is one JSON
document, written to the file named by ``MLCYCLE_RESULT_FILE`` when that is set, and printed as the
last line of stdout. Exit codes: 0 done, 1 failed (the message says what to
do), 2 bad arguments, 99 nothing to do (Airflow marks the task skipped). A failure's result names
its ``failure_class``: ``permanent`` (the task fails with no retry) or ``transient`` (Airflow retries
it); see ``mlcycle.errors``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mlcycle.errors import EXIT_FAILED, NothingToDo, StepError, failure_class, storage_problem
from mlcycle.memory import memory_limited

log = logging.getLogger("mlcycle")

#: Environment variable naming the file the result is written to (the runners' channel).
RESULT_FILE_ENV = "MLCYCLE_RESULT_FILE"


def _date(value: str) -> dt.date:
    try:
        if len(value) != 10 or value[4] != "-" or value[7] != "-":
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date in the form YYYY-MM-DD: {value!r}") from exc


def _optional_int(value: str) -> int | None:
    if value.strip() in ("", "None"):
        return None
    try:
        days = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number of days: {value!r}") from exc
    if days < 1:
        raise argparse.ArgumentTypeError(f"the window must be at least one day (got {days})")
    return days


def _check_interval(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    start, end = getattr(args, "start", None), getattr(args, "end", None)
    if start is not None and end is not None and end <= start:
        parser.error(f"--end {end} must be after --start {start} (the interval is [start, end), end excluded)")


def _interval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--start", type=_date, required=True, help="data interval start (inclusive), YYYY-MM-DD")
    p.add_argument("--end", type=_date, required=True, help="data interval end (exclusive), YYYY-MM-DD")
    p.add_argument("--window-days", type=_optional_int, default=None,
                   help="training window in days (default, or empty: the spec's window.days)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlcycle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default=os.environ.get("MLCYCLE_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    def step(name: str, help_text: str, interval: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--pipeline", required=True, help="spec name in include/pipelines, or a path to a YAML spec")
        if interval:
            _interval_args(p)
        return p

    step("ingest", "copy the window's rows from the source into daily raw partitions")
    step("validate", "run the expectation suite on each raw partition; quarantine failures")
    step("build_features", "build the time-split feature table of the training window")
    step("train", "search hyper-parameters, train and log the candidate to MLflow")
    p = step("evaluate", "score candidate and champion on the same slice; decide whether it is blessed")
    p.add_argument("--run-id", required=True, help="MLflow run id of the candidate (from train)")
    p.add_argument("--model-uri", required=True, help="model URI of the candidate (from train)")
    p = step("register", "register the candidate (@challenger); move @champion when blessed", interval=False)
    p.add_argument("--run-id", required=True)
    p.add_argument("--model-uri", required=True)
    p = step("score", "predict every validated row of the interval with one model version (batch scoring)")
    p.add_argument("--version", default="", help="model version (empty: the alias of scoring.alias, now)")
    p.add_argument("--alias", default="", help="the alias --version was resolved from (recorded)")
    p.add_argument("--resolve", action="store_true", help="only name the version the alias points at")
    step("materialize", "write the interval's history feature snapshots to the offline and online stores")
    p = step("feature-ui", "serve Feast's UI on the pipeline's feature repository (views, entities, sources)",
             interval=False)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8888)
    step("monitor", "drift and performance of the interval against the production model's training data")
    p = step("replay", "send a day's real rows to a serving endpoint at a set rate", interval=False)
    p.add_argument("--date", type=_date, required=True, help="the day whose rows are replayed, YYYY-MM-DD")
    p.add_argument("--rate", type=float, default=10.0, help="rows per second (default 10)")
    p.add_argument("--url", default=os.environ.get("MLCYCLE_SERVING_URL", "http://127.0.0.1:8000"),
                   help="the serving endpoint's base URL (default $MLCYCLE_SERVING_URL or http://127.0.0.1:8000)")
    p.add_argument("--batch", type=int, default=1, help="rows per request (default 1)")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N rows of the day")
    p = step("alias", "point a registry alias (@champion ...) at a version, or clear it", interval=False)
    p.add_argument("--alias", required=True, help="champion, challenger, production or staging")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--version", help="the model version the alias points at from now on")
    target.add_argument("--clear", action="store_true", help="remove the alias")
    p = step("close-runs", "mark FAILED the MLflow runs a killed try of an Airflow run left RUNNING",
             interval=False)
    p.add_argument("--dag-id", default=None, help="the Airflow DAG (default: $MLCYCLE_DAG_ID, as a task sets it)")
    p.add_argument("--run-id", default=None, help="the Airflow run (default: $MLCYCLE_RUN_ID)")
    p = step("suite", "print (or --write) the expectation suite derived from the spec", interval=False)
    p.add_argument("--write", action="store_true", help="write it to the path the spec names")
    _serving_args(sub, step)
    _deploy_args(step)
    __import__("mlcycle.draft").draft.add_parser(sub)  # draft-spec: its own module, its own handler
    p = sub.add_parser("spec-schema", help="print the JSON Schema of a pipeline spec (for editors)",
                       description="Print the JSON Schema of a pipeline spec, derived from mlcycle.spec_schema: "
                       "point an editor's YAML support at it (docs/pipeline-spec.schema.json is a copy).")
    p.add_argument("--output", default=None, help="write it to this file instead of standard output")
    return parser


def _flag(value: str) -> bool | None:
    text = value.strip().lower()
    if text in ("", "none", "null"):
        return None
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true, false or empty (got {value!r})")


def _deploy_args(step) -> None:
    """``deploy-*``: the deploy DAG's steps (``mlcycle.deploy``), one per task."""
    p = step("deploy-resolve", "which model version a deploy run works on (empty: @champion)", interval=False)
    p.add_argument("--version", default="", help="model version number; empty: the one behind @champion")
    p.add_argument("--target", default="production", help="staging (stop after it) or production")
    p.add_argument("--auto-approve", type=_flag, default=None, help="true, false or empty (the spec's setting)")
    for name, text in (("deploy-build", "build the serving image of the version (reused when unchanged)"),
                       ("deploy-stage", "start the version on the staging slot, wait for /ready, smoke test"),
                       ("deploy-rollout", "start the version on the idle slot and switch the proxy to it")):
        p = step(name, text, interval=False)
        p.add_argument("--version", required=True)
        p.add_argument("--image", required=True, help="the serving image of that version")
    p = step("deploy-watch", "watch the new slot's errors and latency; switch back on a breach", interval=False)
    p.add_argument("--version", required=True)
    p = step("deploy-record", "point @production at the served version; tag it with the deploy", interval=False)
    p.add_argument("--version", required=True)
    p.add_argument("--previous", default="", help="the version production served before")
    step("deploy-status", "what the proxy, the slots and staging serve now", interval=False)
    step("deploy-stop", "remove the proxy, the slots and staging of this pipeline", interval=False)


def _deploy(args: argparse.Namespace, settings, spec) -> dict[str, Any]:
    from mlcycle.deploy import record, rollout

    if args.step == "deploy-resolve":
        return record.resolve(spec, settings, args.version, args.target, args.auto_approve).to_dict()
    if args.step == "deploy-build":
        return rollout.build(spec, settings, args.version, args.image)
    if args.step == "deploy-stage":
        return rollout.stage(spec, settings, args.version, args.image).to_dict()
    if args.step == "deploy-rollout":
        return rollout.rollout(spec, settings, args.version, args.image).to_dict()
    if args.step == "deploy-watch":
        return rollout.watch(spec, settings, args.version).to_dict()
    if args.step == "deploy-record":
        return record.record(spec, settings, args.version, args.previous or None).to_dict()
    if args.step == "deploy-status":
        return rollout.status(spec, settings)
    rollout.stop_all(spec, settings)
    return {"pipeline": spec.name, "stopped": True}


def _serving_args(sub, step) -> None:
    """``serve`` (runs the prediction server) and ``serving-image`` (builds its image for one version)."""
    env = os.environ
    p = sub.add_parser("serve", help="serve a model over HTTP (/predict, /invocations, /docs, /metrics)",
                       description="serve a model over HTTP (/predict, /invocations, /docs, /metrics)")
    p.add_argument("--model-uri", default=env.get("MLCYCLE_SERVING_MODEL_URI"), required=not env.get(
        "MLCYCLE_SERVING_MODEL_URI"), help="models:/<name>@<alias>, models:/<name>/<version> or a model folder")
    p.add_argument("--host", default=env.get("MLCYCLE_SERVING_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env.get("MLCYCLE_SERVING_PORT", "8000")))
    p.add_argument("--workers", type=int, default=int(env.get("MLCYCLE_SERVING_WORKERS", "0") or 0),
                   help="worker processes (default: one per core)")
    p = step("serving-image", "build the serving image holding one model version (reused when unchanged)",
             interval=False)
    p.add_argument("--model-uri", required=True, help="models:/<name>@<alias>, models:/<name>/<version> or a folder")
    p.add_argument("--tag", default=None, help="image tag (default mlcycle-serving-<pipeline>:v<version>)")
    p.add_argument("--base-image", default=None, help="default: python:3.11-slim, else local/python-base:3.11")
    p.add_argument("--force", action="store_true", help="rebuild even if an image for this version and code exists")


def _serve(args: argparse.Namespace) -> int:
    from mlcycle.serving.fetch import resolve_model
    from mlcycle.serving.serve import default_workers, run
    from mlcycle.settings import Settings

    settings = Settings.from_env()
    folder = resolve_model(args.model_uri, settings.home / "serving", settings.tracking_uri)
    os.environ.setdefault("MLCYCLE_STORE", str(settings.store))
    return run(folder, args.host, args.port, args.workers or default_workers())


def _serving_image(args: argparse.Namespace, settings, spec) -> dict[str, Any]:
    from mlcycle.serving.fetch import resolve_model
    from mlcycle.serving.image import build_serving_image

    folder = resolve_model(args.model_uri, settings.home / "serving", settings.tracking_uri)
    return build_serving_image(spec.name, folder, settings, args.tag, args.base_image, args.force).to_dict()


@memory_limited  # every step runs under its own memory limit (MLCYCLE_STEP_MEMORY_LIMIT)
def _run(args: argparse.Namespace) -> dict[str, Any]:
    from mlcycle.threads import limit_threads

    limit_threads()  # before the numeric libraries load (see mlcycle.threads)
    from mlcycle.settings import Settings
    from mlcycle.spec import load_spec

    if getattr(args, "handler", None):  # a command that reads no spec (draft-spec)
        return args.handler(args)
    settings = Settings.from_env()
    from mlcycle.registry import load_extensions

    load_extensions()  # their source kinds and model families, before the spec is read
    spec = load_spec(args.pipeline, settings.pipelines_dir)
    if args.step == "suite":
        from mlcycle.expectations import suite_from_spec, write_suite

        if args.write:
            return {"written": str(write_suite(spec))}
        return suite_from_spec(spec)
    if args.step == "serving-image":
        return _serving_image(args, settings, spec)
    if args.step == "feature-ui":
        from mlcycle.feature_store import serve_ui
        from mlcycle.store import Store

        if not spec.history:
            raise StepError(f"{spec.name} declares no history features (no `features:` section): no Feast repository")
        serve_ui(spec, Store(settings.store, spec.name).base, args.host, args.port)
        return {"pipeline": spec.name, "stopped": True}
    if args.step == "replay":
        from mlcycle.monitoring.replay import replay

        return replay(spec, settings, args.date, args.url, args.rate, args.batch, args.limit).to_dict()
    if args.step.startswith("deploy-"):
        return _deploy(args, settings, spec)
    if args.step == "close-runs":
        return _close_runs(spec, settings, args.dag_id or settings.dag_id, args.run_id or settings.run_id)
    if args.step == "alias":
        from mlcycle.aliases import set_alias

        return set_alias(spec, settings, args.alias, None if args.clear else args.version)
    if args.step == "register":
        from mlcycle.steps.register import register

        return register(spec, settings, args.run_id, args.model_uri).to_dict()

    from mlcycle.steps._common import Interval, require_data

    interval = Interval(args.start, args.end)
    require_data(spec, interval)  # one rule for every step: outside the data's bounds is nothing to do
    window = args.window_days
    attempt = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{settings.run_id}".replace(":", "_").replace("/", "_")
    steps: dict[str, Callable[[], Any]] = {
        "ingest": lambda: _step("ingest").ingest(spec, settings, interval, window, attempt),
        "validate": lambda: _step("validate").validate(spec, settings, interval, window, attempt),
        "build_features": lambda: _step("features").build_features(spec, settings, interval, window),
        "train": lambda: _step("train").train(spec, settings, interval, window),
        "evaluate": lambda: _step("evaluate").evaluate(spec, settings, interval, args.run_id, args.model_uri, window),
        "materialize": lambda: _step("materialize").materialize(spec, settings, interval),
        "monitor": lambda: _monitor(spec, settings, interval),
        "score": lambda: _step("score").resolve_version(spec, settings) if args.resolve
        else _step("score").score(spec, settings, interval, args.version or None, args.alias),
    }
    return steps[args.step]().to_dict()


def _monitor(spec, settings, interval):
    from mlcycle.monitoring.step import monitor

    return monitor(spec, settings, interval)


def _step(module: str):
    import importlib

    return importlib.import_module(f"mlcycle.steps.{module}")


def main(argv: Sequence[str] | None = None, *, warm_from: int | None = None) -> int:
    if argv is None and sys.argv[1:2] != ["serve"]:
        from mlcycle import warm

        if warm.enabled() and (code := warm.forward(sys.argv[1:])) is not None:
            return code
    parser = _parser()
    args = parser.parse_args(argv)
    _check_interval(parser, args)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "great_expectations", "urllib3", "matplotlib", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if warm_from is not None:
        log.info("%s: started warm as pid %d, forked from the warm step server (pid %d)",
                 args.step, os.getpid(), warm_from)
    try:
        if args.step == "serve":
            return _serve(args)
        if args.step == "spec-schema":
            return _spec_schema(args.output)
        result = _run(args)
    except NothingToDo as exc:
        log.warning("nothing to do: %s", exc)
        _emit({"status": "skipped", "reason": str(exc)})
        return exc.exit_code
    except StepError as exc:
        log.error("%s failed: %s", args.step, exc)
        _emit({"status": "failed", "step": args.step, "error": str(exc), "failure_class": failure_class(exc),
               "report": getattr(exc, "report", None), "data_docs": getattr(exc, "data_docs", None),
               "failures": getattr(exc, "failures", [])[:50]})
        return exc.exit_code
    except Exception as exc:  # still one clean result line: the task's error and the alert stay readable
        message = storage_problem(exc)
        if message is None:
            log.exception("%s failed with an unexpected error", args.step)
            message = f"unexpected {type(exc).__name__}: {exc} (the traceback is in the log above)"
        else:
            log.debug("%s failed writing", args.step, exc_info=True)
            log.error("%s failed: %s", args.step, message)
        _emit({"status": "failed", "step": args.step, "error": message, "failure_class": failure_class(exc),
               "report": None, "failures": []})
        return EXIT_FAILED
    _emit(result)
    return 0


def _close_runs(spec, settings, dag_id: str, run_id: str) -> dict[str, Any]:
    """After a task's last try failed: its killed step's MLflow runs end FAILED instead of RUNNING."""
    import mlflow

    from mlcycle.tracking import ENDED_BY_CALLBACK, connect, fail_stale_runs

    experiment_id = connect(settings, spec)
    closed = fail_stale_runs(mlflow.MlflowClient(), experiment_id, dag_id, run_id, ENDED_BY_CALLBACK)
    log.info("close-runs: %d MLflow run(s) of %s / %s were left RUNNING and are now FAILED", len(closed), dag_id,
             run_id)
    return {"pipeline": spec.name, "dag_id": dag_id, "run_id": run_id, "closed": closed}


def _spec_schema(output: str | None) -> int:
    from mlcycle.spec_schema import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if output:
        Path(output).write_text(text)
        log.info("wrote the spec's JSON Schema to %s", output)
    else:
        sys.stdout.write(text)
    return 0


def _emit(payload: dict[str, Any]) -> None:
    """The result: written to ``$MLCYCLE_RESULT_FILE`` for the runner, and printed as the last stdout line.

    The file is the runner's channel (no log line can overtake it); it is written to a temporary
    name in the same folder and renamed, so a reader sees the whole document or none. The printed
    line is for a person at a shell.
    """
    document = json.dumps(payload, default=str)
    target = os.environ.get(RESULT_FILE_ENV)
    if target:
        _write_atomically(Path(target), document)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    sys.stdout.write(document + "\n")
    sys.stdout.flush()


def _write_atomically(target: Path, text: str) -> None:
    """Temporary name, then rename; on failure, log (the runner then reports a missing result)."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, target)
    except OSError as exc:
        log.error("cannot write the result file %s (named by %s): %s", target, RESULT_FILE_ENV, exc)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
