"""Request parsing: the body read within its limit, and the two routes' accepted shapes turned into rows.

- ``/predict``: one JSON object (one row) or a list of objects, validated straight from the bytes.
- ``/invocations``: MLflow's scoring protocol (``dataframe_split``, ``dataframe_records``,
  ``instances``, ``inputs``), each turned into a list of rows, then validated like ``/predict``'s.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request

from mlcycle.serving.validation import BadRequest, RowValidator, field_errors, reason_of

JSON = "application/json"
MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The body, refused past ``limit`` bytes (declared or streamed) or with another content type,
    and with 408 when it has not all arrived within ``timeout`` seconds (a slow or stalled client)."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != JSON:
        raise BadRequest(415, f"content type must be {JSON} (got {ctype or 'none'})", reason="content_type")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(
            413,
            f"request body of {declared} bytes exceeds the limit of {limit} bytes",
            reason="too_large",
        )
    if timeout is None:
        return await _stream(request, limit)
    try:
        return await asyncio.wait_for(_stream(request, limit), timeout)
    except TimeoutError:
        raise BadRequest(
            408,
            f"the request body did not arrive within {timeout:g} s (MLCYCLE_SERVING_BODY_TIMEOUT_SECONDS)",
            reason="body_timeout",
        ) from None


async def _stream(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"request body exceeds the limit of {limit} bytes", reason="too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_predict(rows: RowValidator, body: bytes) -> tuple[list[dict[str, Any]], bool]:
    text = body.lstrip()[:1]
    try:
        if text == b"{":
            return rows.derive([rows.one.validate_json(body)], single=True), True
        if text == b"[":
            return rows.derive(rows.many.validate_json(body)), False
    except ValidationError as exc:
        errors = field_errors(exc)
        if errors and errors[0]["type"] == "json_invalid":
            raise BadRequest(400, f"invalid JSON: {errors[0]['msg']}", reason="invalid_json") from None
        if any(e["type"] == "too_long" and len(e["loc"]) == 0 for e in errors):
            raise BadRequest(
                413, f"more than {rows.schema.max_rows} rows in one request", reason="too_many_rows"
            ) from None
        if any(e["type"] == "too_short" and len(e["loc"]) == 0 for e in errors):
            raise BadRequest(422, "the request holds no rows", reason="empty") from None
        raise BadRequest(422, f"{len(errors)} problem(s) in the row", errors, reason_of(errors)) from None
    except ValueError as exc:
        raise BadRequest(400, f"invalid JSON: {exc}", reason="invalid_json") from None
    if not text:
        raise BadRequest(400, "empty request body", reason="invalid_json")
    try:
        json.loads(body)
    except ValueError as exc:
        raise BadRequest(400, f"invalid JSON: {exc}", reason="invalid_json") from None
    raise BadRequest(422, "expected a JSON object (one row) or a list of objects (rows)", reason="wrong_type")


def parse_invocations(rows_of: RowValidator, body: bytes) -> list[dict[str, Any]]:
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
    if "params" in payload and not isinstance(payload["params"], dict):
        raise BadRequest(
            400,
            f"params must be a JSON object of inference parameters (got {type(payload['params']).__name__})",
            reason="wrong_type",
        )
    key = keys[0]
    data = payload[key]
    if key == "dataframe_split":
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise BadRequest(
                400, "dataframe_split needs `columns` and `data` (a list of rows)", reason="wrong_type"
            )
        columns = data.get("columns") or [f.name for f in rows_of.schema.request_features]
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
    return rows_of.validate_rows(rows, (key,))
