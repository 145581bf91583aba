"""The prediction API: FastAPI over one model folder.

- ``POST /predict``: one JSON row or a list of rows, validated against models generated from the
  model's serving schema (the OpenAPI page at ``/docs`` documents every feature).
- ``POST /invocations``: MLflow's scoring protocol (``dataframe_split``, ``dataframe_records``,
  ``instances``, ``inputs``), answered like ``mlflow models serve``: ``{"predictions": [...]}``.
- ``GET /health`` (alive), ``GET /ready`` (loaded and warmed up), ``GET /metadata``, ``GET /metrics``.

Bad input never reaches the model: every problem gets a 4xx whose body lists each bad field.
The model is loaded and warmed in the lifespan handler; the prediction log is flushed on shutdown.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import logging
import math
import os
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from mlcycle import __version__
from mlcycle.serving import metrics as m
from mlcycle.serving.model import ServedModel, read_schema
from mlcycle.serving.predlog import LoggedRequest, PredictionLog
from mlcycle.serving.schema import ServingSchema, _camel, _feature_field, response_models
from mlcycle.serving.settings import ServingSettings

log = logging.getLogger(__name__)

JSON = "application/json"
MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")


class BadRequest(Exception):
    def __init__(
        self, status: int, message: str, errors: list[dict[str, Any]] | None = None, reason: str = "invalid"
    ):
        super().__init__(message)
        self.status, self.message, self.errors, self.reason = status, message, errors or [], reason


def row_typeddict(schema: ServingSchema) -> type:
    """One row as a TypedDict: validation returns a plain dict keyed by the real feature names."""
    fields = {f.name: _feature_field(f, schema)[0] for f in schema.features}
    row = TypedDict(f"{_camel(schema.pipeline)}Row", fields)  # type: ignore[operator]
    return with_config(ConfigDict(extra="forbid", title=f"{_camel(schema.pipeline)}Row"))(row)


ERROR_DESCRIPTIONS = {
    400: "malformed JSON, or a body that is not one of the accepted shapes",
    413: "body or row count over the limit",
    415: f"a content type other than {JSON}",
    422: "invalid rows: each bad field",
    503: "the model is still loading",
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


def _errors(exc: ValidationError, prefix: tuple = ()) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors(include_url=False, include_context=False):
        loc = [*prefix, *err["loc"]]
        item = {
            "loc": loc,
            "field": next((p for p in reversed(loc) if isinstance(p, str)), None),
            "type": err["type"],
            "msg": err["msg"],
        }
        if err["type"] not in ("missing",) and "input" in err:
            value = err["input"]
            item["input"] = (
                value
                if isinstance(value, (int, str, bool, type(None)))
                or (isinstance(value, float) and math.isfinite(value))
                else repr(value)[:200]
            )
        out.append(item)
    return out


def _reason(errors: list[dict[str, Any]]) -> str:
    kinds = {e["type"] for e in errors}
    for kind, reason in (
        ("missing", "missing_field"),
        ("extra_forbidden", "extra_field"),
        ("finite_number", "not_finite"),
        ("literal_error", "unknown_category"),
        ("greater_than_equal", "out_of_range"),
        ("less_than_equal", "out_of_range"),
        ("too_long", "too_many_rows"),
        ("too_short", "empty"),
    ):
        if kind in kinds:
            return reason
    return "wrong_type"


class Server:
    """State of one worker: settings, schema, validators, the model once loaded, the prediction log."""

    def __init__(self, settings: ServingSettings):
        self.settings = settings
        self.schema = read_schema(settings.model_dir)
        row = row_typeddict(self.schema)
        self.row_type = row
        self.one = TypeAdapter(row)
        self.many = TypeAdapter(Annotated[list[row], Field(min_length=1, max_length=self.schema.max_rows)])
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

    # -- request parsing ----------------------------------------------------------------------

    async def body(self, request: Request) -> bytes:
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != JSON:
            raise BadRequest(
                415, f"content type must be {JSON} (got {ctype or 'none'})", reason="content_type"
            )
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadRequest(
                413,
                f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                reason="too_large",
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"request body exceeds the limit of {limit} bytes", reason="too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def validate_rows(self, raw: Any, prefix: tuple = ()) -> list[dict[str, Any]]:
        if isinstance(raw, list):
            if not raw:
                raise BadRequest(422, "the request holds no rows", reason="empty")
            if len(raw) > self.schema.max_rows:
                raise BadRequest(
                    413,
                    f"{len(raw)} rows exceed the limit of {self.schema.max_rows} per request",
                    reason="too_many_rows",
                )
            try:
                return self.many.validate_python(raw)
            except ValidationError as exc:
                errors = _errors(exc, prefix)
                raise BadRequest(
                    422, f"{len(errors)} problem(s) in the rows", errors, _reason(errors)
                ) from None
        raise BadRequest(
            422, "expected a JSON object (one row) or a list of objects (rows)", reason="wrong_type"
        )

    def parse_predict(self, body: bytes) -> tuple[list[dict[str, Any]], bool]:
        text = body.lstrip()[:1]
        try:
            if text == b"{":
                return [self.one.validate_json(body)], True
            if text == b"[":
                return self.many.validate_json(body), False
        except ValidationError as exc:
            errors = _errors(exc)
            if errors and errors[0]["type"] == "json_invalid":
                raise BadRequest(400, f"invalid JSON: {errors[0]['msg']}", reason="invalid_json") from None
            if any(e["type"] == "too_long" and len(e["loc"]) == 0 for e in errors):
                raise BadRequest(
                    413, f"more than {self.schema.max_rows} rows in one request", reason="too_many_rows"
                ) from None
            if any(e["type"] == "too_short" and len(e["loc"]) == 0 for e in errors):
                raise BadRequest(422, "the request holds no rows", reason="empty") from None
            raise BadRequest(422, f"{len(errors)} problem(s) in the row", errors, _reason(errors)) from None
        except ValueError as exc:
            raise BadRequest(400, f"invalid JSON: {exc}", reason="invalid_json") from None
        if not text:
            raise BadRequest(400, "empty request body", reason="invalid_json")
        try:
            json.loads(body)
        except ValueError as exc:
            raise BadRequest(400, f"invalid JSON: {exc}", reason="invalid_json") from None
        raise BadRequest(
            422, "expected a JSON object (one row) or a list of objects (rows)", reason="wrong_type"
        )

    def parse_invocations(self, body: bytes) -> list[dict[str, Any]]:
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise BadRequest(400, f"invalid JSON: {exc}", reason="invalid_json") from None
        if not isinstance(payload, dict):
            raise BadRequest(
                400,
                f"the body must be a JSON object with one of the keys {', '.join(MLFLOW_KEYS)}",
                reason="wrong_type",
            )
        keys = [k for k in MLFLOW_KEYS if k in payload]
        unknown = sorted(set(payload) - set(MLFLOW_KEYS) - {"params"})
        if len(keys) != 1 or unknown:
            raise BadRequest(
                400,
                f"the body must hold exactly one of the keys {', '.join(MLFLOW_KEYS)} (got "
                f"{', '.join(sorted(payload)) or 'none'})",
                reason="wrong_type",
            )
        key = keys[0]
        data = payload[key]
        if key == "dataframe_split":
            if not isinstance(data, dict) or not isinstance(data.get("data"), list):
                raise BadRequest(
                    400, "dataframe_split needs `columns` and `data` (a list of rows)", reason="wrong_type"
                )
            columns = data.get("columns") or self.schema.feature_names
            if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
                raise BadRequest(400, "dataframe_split.columns must be a list of names", reason="wrong_type")
            twice = sorted({c for c in columns if columns.count(c) > 1})
            if twice:
                raise BadRequest(
                    400,
                    f"dataframe_split.columns names {', '.join(map(repr, twice))} more than once",
                    [
                        {
                            "loc": [key, "columns"],
                            "field": c,
                            "type": "duplicate_column",
                            "msg": "named twice",
                        }
                        for c in twice
                    ],
                    reason="duplicate_column",
                )
            index = data.get("index")
            if index is not None and (not isinstance(index, list) or len(index) != len(data["data"])):
                raise BadRequest(
                    400,
                    f"dataframe_split.index must be a list of one label per row of data "
                    f"({len(data['data'])} rows, got {len(index) if isinstance(index, list) else type(index).__name__})",
                    reason="wrong_shape",
                )
            unknown_keys = sorted(set(data) - {"columns", "data", "index"})
            if unknown_keys:
                raise BadRequest(
                    400,
                    f"dataframe_split takes columns, data and index (got {', '.join(unknown_keys)})",
                    reason="wrong_type",
                )
            rows = []
            for i, values in enumerate(data["data"]):
                if not isinstance(values, list) or len(values) != len(columns):
                    raise BadRequest(
                        400,
                        f"dataframe_split.data[{i}] must be a list of {len(columns)} values",
                        [
                            {
                                "loc": [key, "data", i],
                                "field": None,
                                "type": "wrong_length",
                                "msg": f"expected {len(columns)} values",
                            }
                        ],
                        reason="wrong_type",
                    )
                rows.append(dict(zip(columns, values, strict=True)))
        elif isinstance(data, dict):  # columnar: {"feature": [values], ...}
            lengths = {len(v) if isinstance(v, list) else -1 for v in data.values()}
            if len(lengths) != 1 or -1 in lengths:
                raise BadRequest(
                    400, f"{key} as columns needs a list of equal length per column", reason="wrong_type"
                )
            n = lengths.pop()
            rows = [{c: v[i] for c, v in data.items()} for i in range(n)]
        elif isinstance(data, list):
            rows = data
        else:
            raise BadRequest(
                400,
                f"{key} must be a list of records (or, for inputs/instances, columns)",
                reason="wrong_type",
            )
        return self.validate_rows(rows, (key,))

    # -- prediction -----------------------------------------------------------------------------

    def predict(
        self,
        rows: list[dict[str, Any]],
        request_id: str,
        endpoint: str,
        started: float,
        day: dt.date | None = None,
    ):
        model = self.model
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
        "scoring protocol.",
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

    def rejected(exc: BadRequest, mlflow_style: bool) -> Response:
        m.REJECTED.labels(exc.reason).inc()
        payload: dict[str, Any] = {
            "error_code": "BAD_REQUEST" if mlflow_style else exc.reason,
            "message": exc.message,
        }
        if exc.errors:
            payload["errors"] = exc.errors
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
        responses=error_responses(400, 413, 415, 422, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
                        "schema": {
                            "anyOf": [
                                {"$ref": f"#/components/schemas/{server.row_type.__name__}"},
                                {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": schema.max_rows,
                                    "items": {"$ref": f"#/components/schemas/{server.row_type.__name__}"},
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
            rows, _single = server.parse_predict(await server.body(request))
        except BadRequest as exc:
            return rejected(exc, mlflow_style=False)
        request_id = request_id_of(request)
        result = server.predict(rows, request_id, "predict", started, event_day_of(request))
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

    @app.post(
        "/invocations",
        response_model=invocations_response,
        summary="MLflow scoring protocol (same request and response as `mlflow models serve`)",
        responses=error_responses(400, 413, 415, 422, 503),
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
                                    ("dataframe_records", {"type": "array"}),
                                    ("instances", {"type": ["array", "object"]}),
                                    ("inputs", {"type": ["array", "object"]}),
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
            rows = server.parse_invocations(await server.body(request))
        except BadRequest as exc:
            return rejected(exc, mlflow_style=True)
        request_id = request_id_of(request)
        result = server.predict(rows, request_id, "invocations", started, event_day_of(request))
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
        body, ctype = m.exposition()
        return Response(body, media_type=ctype)

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        row_schema = server.one.json_schema(ref_template="#/components/schemas/{model}")
        defs = row_schema.pop("$defs", {})
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs)
        components[server.row_type.__name__] = row_schema
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
