"""The prediction API: FastAPI over one model folder.

- ``POST /predict``: one JSON row or a list of rows, validated against models generated from the
  model's serving schema (the OpenAPI page at ``/docs`` documents every feature).
- ``POST /invocations``: MLflow's scoring protocol (``dataframe_split``, ``dataframe_records``,
  ``instances``, ``inputs``), answered like ``mlflow models serve``: ``{"predictions": [...]}``.
- ``GET /health`` (alive), ``GET /ready`` (loaded and warmed up), ``GET /metadata``, ``GET /metrics``.

Bad input never reaches the model: every problem gets a 4xx whose body lists each bad field
(mlcycle.serving.parsing reads the bodies, mlcycle.serving.validation checks the rows; this module
holds the routes and the worker's state). The model is loaded and warmed in the lifespan handler; the prediction log is flushed on shutdown.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response

from mlcycle import __version__
from mlcycle.serving import metrics as m
from mlcycle.serving.model import ServedModel, read_schema
from mlcycle.serving.online import OnlineStoreUnavailable, locate, open_online
from mlcycle.serving.parsing import JSON, parse_invocations, parse_predict, read_body
from mlcycle.serving.predlog import LoggedRequest, PredictionLog
from mlcycle.serving.schema import response_models
from mlcycle.serving.settings import ServingSettings
from mlcycle.serving.validation import BadRequest, RowValidator

log = logging.getLogger(__name__)

ERROR_DESCRIPTIONS = {
    400: "malformed JSON, or a body that is not one of the accepted shapes",
    408: "the request body did not arrive within MLCYCLE_SERVING_BODY_TIMEOUT_SECONDS (a slow client)",
    413: "body or row count over the limit",
    415: f"a content type other than {JSON}",
    422: "invalid rows: each bad field, a derived column that differs from the computed one, or a row "
    "a `filter` rule of the spec drops",
    503: "the model is still loading, or the online store of its history features does not answer",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of each error ``codes`` a route really returns: JSON ``Error`` bodies."""
    return {
        code: {
            "description": ERROR_DESCRIPTIONS[code],
            "content": {
                JSON: {
                    "schema": {
                        "type": "object",
                        "required": ["error_code", "message"],
                        "properties": {
                            "error_code": {"type": "string"},
                            "message": {"type": "string"},
                            "errors": {"type": "array", "items": {"type": "object"}},
                        },
                    }
                }
            },
        }
        for code in codes
    }


def _json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    return Response(body, status_code=status, media_type=JSON, headers=headers)


class Server:
    """State of one worker: settings, schema, validators, the model once loaded, the prediction log."""

    def __init__(self, settings: ServingSettings):
        self.settings = settings
        self.schema = read_schema(settings.model_dir)
        self.rows = RowValidator(self.schema)
        # History features come from the online store, by each row's entity (mlcycle.serving.online).
        store = None if settings.store is None else str(settings.store)
        self.online = (
            open_online(self.schema.history, locate(self.schema.history, store))
            if self.schema.history
            else None
        )
        if self.online is not None and not any(
            v["newest_snapshot"] for v in self.online.freshness().values()
        ):
            log.warning(
                "the online store %s (%s) holds no history snapshot yet: every history feature gets its "
                "fill, or null, until the training DAG's materialize task loads one",
                self.online.where,
                self.online.kind,
            )
        self.model: ServedModel | None = None
        self.predlog: PredictionLog | None = None
        self.ready = False

    def load(self) -> None:
        model = ServedModel(self.settings.model_dir, force_path=self.settings.path)
        model.warm_up()
        self.model = model
        if self.settings.log_enabled and self.settings.store is not None:
            self.predlog = PredictionLog(
                self.settings.store,
                self.schema.pipeline,
                model.info.name,
                model.info.version,
                model.names,
                model.classes,
                flush_rows=self.settings.flush_rows,
                flush_seconds=self.settings.flush_seconds,
            )
        m.model_loaded(model)
        # What is loaded now lives as long as the worker: out of the collector's sight, a full
        # collection walks only what requests allocate (it walked the whole model and framework, a
        # pause of several ms in the slowest requests).
        gc.collect()
        gc.freeze()
        self.ready = True

    def close(self) -> None:
        self.ready = False
        if self.predlog is not None:
            self.predlog.close()

    def predict(
        self,
        rows: list[dict[str, Any]],
        request_id: str,
        endpoint: str,
        started: float,
        day: dt.date | None = None,
    ):
        model = self.model
        if self.online is not None:  # the fetched values are the model's inputs, and logged with the rows
            rows = self.online.add(rows)
        result = model.predict(rows)
        latency = time.perf_counter() - started
        m.observe_predictions(model, result.predictions)
        if self.predlog is not None:
            self.predlog.append(
                LoggedRequest(
                    request_id=request_id,
                    time=dt.datetime.now(dt.UTC),
                    endpoint=endpoint,
                    rows=rows,
                    predictions=result.predictions,
                    probabilities=result.probabilities,
                    latency_ms=latency * 1000.0,
                    day=day,
                )
            )
        return result


class FastLane:
    """Pure ASGI: ``POST /predict`` and ``POST /invocations`` go straight to their handlers.

    The handlers take the request and return a complete response, so FastAPI's routing and
    dependency solving add nothing to them; skipping both takes about a third off the server's own
    cost of a one-row request. FastAPI still declares both routes for the OpenAPI page; every other
    path and method goes through it as usual.
    """

    def __init__(self, app: Any, routes: dict[str, Any]):
        self.app, self.routes = app, routes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.routes.get(scope["path"])
            if handler is not None:
                response = await handler(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    settings = settings or ServingSettings.from_env()
    server = Server(settings)
    schema = server.schema
    predict_response, invocations_response = response_models(schema)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(server.load)
        log.info(
            "ready: %s version %s on the %s path (worker pid %d)",
            server.model.info.name,
            server.model.info.version,
            server.model.path,
            os.getpid(),
        )
        yield
        server.close()

    app = FastAPI(
        title=f"mlcycle serving: {schema.pipeline}",
        version="1",
        description=f"Predicts `{schema.target}` ({schema.task}) for the `{schema.pipeline}` pipeline. "
        "`/predict` takes one row or a list of rows; `/invocations` speaks MLflow's "
        "scoring protocol."
        + (
            " A row may be sent as the source writes it: the server computes the spec's derived "
            "features (checking any that are sent) and refuses a row a `filter` rule drops."
            if schema.derive or schema.filters
            else ""
        ),
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry asks the global providers on every request whether it is
        # on (tens of microseconds); the server's metrics are Prometheus', on /metrics.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.server = server
    fast_routes: dict[str, Any] = {}  # filled below, once the handlers exist
    app.add_middleware(FastLane, routes=fast_routes)
    app.add_middleware(m.MetricsMiddleware)  # added last: the outermost, it also counts the fast lane

    def not_ready() -> Response:
        return _json_response({"error_code": "NOT_READY", "message": "the model is still loading"}, 503)

    def online_unavailable(exc: OnlineStoreUnavailable) -> Response:
        m.REJECTED.labels("ONLINE_STORE_UNAVAILABLE").inc()
        return _json_response({"error_code": "ONLINE_STORE_UNAVAILABLE", "message": str(exc)}, 503)

    def rejected(exc: BadRequest, mlflow_style: bool) -> Response:
        m.REJECTED.labels(exc.reason).inc()
        payload: dict[str, Any] = {
            "error_code": "BAD_REQUEST" if mlflow_style else exc.reason,
            "message": exc.message,
        }
        if exc.errors:
            payload["errors"] = exc.errors
        if exc.status == 408:  # the rest of a stalled body is not waited for
            return _json_response(payload, exc.status, headers={"connection": "close"})
        return _json_response(payload, exc.status)

    def request_id_of(request: Request) -> str:
        given = request.headers.get("x-request-id", "")
        return given if 0 < len(given) <= 128 and given.isprintable() else uuid.uuid4().hex

    def event_day_of(request: Request) -> dt.date | None:
        """The ``X-Event-Date`` a replay of past traffic states (YYYY-MM-DD): the log's partition day."""
        given = request.headers.get("x-event-date", "")
        try:
            return dt.date.fromisoformat(given) if len(given) == 10 else None
        except ValueError:
            return None

    @app.post(
        "/predict",
        response_model=predict_response,
        summary="Predict one row or a list of rows",
        responses=error_responses(400, 408, 413, 415, 422, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
                        "schema": {
                            "anyOf": [
                                {"$ref": f"#/components/schemas/{server.rows.row_type.__name__}"},
                                {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": schema.max_rows,
                                    "items": {
                                        "$ref": f"#/components/schemas/{server.rows.row_type.__name__}"
                                    },
                                },
                            ]
                        }
                    }
                },
            }
        },
    )
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        if server.model is None:
            return not_ready()
        try:
            body = await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds)
            rows, _single = parse_predict(server.rows, body)
        except BadRequest as exc:
            return rejected(exc, mlflow_style=False)
        request_id = request_id_of(request)
        try:
            result = server.predict(rows, request_id, "predict", started, event_day_of(request))
        except OnlineStoreUnavailable as exc:
            return online_unavailable(exc)
        payload: dict[str, Any] = {
            "request_id": request_id,
            "model_name": server.model.info.name,
            "model_version": server.model.info.version,
            "predictions": result.predictions,
        }
        if result.probabilities is not None:
            labels = [str(c) for c in server.model.classes]
            payload["probabilities"] = [dict(zip(labels, p, strict=True)) for p in result.probabilities]
        return _json_response(payload, headers={"x-request-id": request_id})

    row_ref = {"$ref": f"#/components/schemas/{server.rows.row_type.__name__}"}
    records_or_columns = {
        "anyOf": [
            {"type": "array", "minItems": 1, "maxItems": schema.max_rows, "items": row_ref},
            {
                "type": "object",
                "description": "columns: {feature: [one value per row]}, every list of one length",
                "minProperties": 1,
                "additionalProperties": {"type": "array", "minItems": 1, "maxItems": schema.max_rows},
            },
        ]
    }

    @app.post(
        "/invocations",
        response_model=invocations_response,
        summary="MLflow scoring protocol (same request and response as `mlflow models serve`)",
        responses=error_responses(400, 408, 413, 415, 422, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
                        "schema": {
                            "description": "exactly one of dataframe_split {columns, data, index}, "
                            "dataframe_records [rows], instances [rows], inputs [rows] or {column: [values]}",
                            "oneOf": [
                                {
                                    "type": "object",
                                    "required": [key],
                                    "properties": {key: body, "params": {"type": "object"}},
                                    "additionalProperties": False,
                                }
                                for key, body in (
                                    (
                                        "dataframe_split",
                                        {
                                            "type": "object",
                                            "required": ["data"],
                                            "properties": {
                                                "columns": {"type": "array", "items": {"type": "string"}},
                                                "data": {"type": "array", "items": {"type": "array"}},
                                                "index": {"type": "array"},
                                            },
                                            "additionalProperties": False,
                                        },
                                    ),
                                    ("dataframe_records", records_or_columns),
                                    ("instances", records_or_columns),
                                    ("inputs", records_or_columns),
                                )
                            ],
                        }
                    }
                },
            }
        },
    )
    async def invocations(request: Request) -> Response:
        started = time.perf_counter()
        if server.model is None:
            return not_ready()
        try:
            rows = parse_invocations(
                server.rows, await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds)
            )
        except BadRequest as exc:
            return rejected(exc, mlflow_style=True)
        request_id = request_id_of(request)
        try:
            result = server.predict(rows, request_id, "invocations", started, event_day_of(request))
        except OnlineStoreUnavailable as exc:
            return online_unavailable(exc)
        return _json_response({"predictions": result.predictions}, headers={"x-request-id": request_id})

    fast_routes.update({"/predict": predict, "/invocations": invocations})

    @app.get("/health", summary="alive")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="model loaded and warmed up", responses=error_responses(503))
    async def ready() -> Response:
        if not server.ready:
            return not_ready()
        return _json_response(
            {
                "status": "ready",
                "model_version": server.model.info.version,
                "inference_path": server.model.path,
            }
        )

    @app.get(
        "/metadata",
        summary="which model this is, where it came from, how it is served",
        responses=error_responses(503),
    )
    async def metadata() -> Response:
        model = server.model
        if model is None:
            return not_ready()
        info = model.info
        return _json_response(
            {
                "pipeline": schema.pipeline,
                "model_name": info.name,
                "model_version": info.version,
                "run_id": info.run_id,
                "model_uri": info.model_uri,
                "data_fingerprint": info.fingerprint,
                "window": {"start": info.window_start, "end": info.window_end},
                "code_version": info.code_version,
                "serving_code_version": os.environ.get("MLCYCLE_CODE_VERSION") or __version__,
                "signature": model.signature,
                "task": schema.task,
                "target": schema.target,
                "classes": [str(c) for c in model.classes] if model.classes else None,
                "inference_path": model.path,
                "inference_path_reason": model.path_reason,
                "onnx_max_abs_diff": model.parity,
                "tolerance": schema.tolerance,
                "features": [
                    f.__dict__ | {"values": list(f.values) if f.values else None} for f in schema.features
                ],
                "source_columns": [i.__dict__ | {"used_by": list(i.used_by)} for i in schema.inputs],
                "derive": [{"column": name, "expression": rule} for name, rule in schema.derive],
                "filters": list(schema.filters),
                "timestamp": schema.timestamp,
                "history": None
                if server.online is None
                else {
                    **schema.history,
                    "online_store": {"kind": server.online.kind, "location": server.online.where},
                    "freshness": server.online.freshness(),
                },
                "load_seconds": round(model.load_seconds, 3),
                "prediction_log": str(server.predlog.folder) if server.predlog else None,
                "tags": info.tags,
            }
        )

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus' text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    async def metrics() -> Response:
        if server.online is not None:
            m.observe_history_age(server.online)
        body, ctype = m.exposition()
        return Response(body, media_type=ctype)

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        row_schema = server.rows.one.json_schema(ref_template="#/components/schemas/{model}")
        defs = row_schema.pop("$defs", {})
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs)
        components[server.rows.row_type.__name__] = row_schema
        app.openapi_schema = doc
        return doc

    app.openapi = custom_openapi  # type: ignore[method-assign]
    return app


def app_from_env() -> FastAPI:
    """Factory for the ASGI server (granian or uvicorn ``--factory``)."""
    logging.basicConfig(
        level=os.environ.get("MLCYCLE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return create_app()
