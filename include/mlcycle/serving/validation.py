"""Validation of rows against the model's serving schema: pydantic models generated from it.

Every problem is a :class:`BadRequest` naming each bad field (``loc``, ``field``, ``type``,
``msg``, the offending ``input``) and one ``reason`` that the server counts in its metrics.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, NotRequired

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from mlcycle.serving.derivation import RowDerivation
from mlcycle.serving.schema import ServingSchema, _camel, request_fields, row_description


class BadRequest(Exception):
    def __init__(
        self, status: int, message: str, errors: list[dict[str, Any]] | None = None, reason: str = "invalid"
    ):
        super().__init__(message)
        self.status, self.message, self.errors, self.reason = status, message, errors or [], reason


def row_typeddict(schema: ServingSchema) -> type:
    """One row as a TypedDict: validation returns a plain dict keyed by the real column names."""
    fields = {
        name: annotation if required else NotRequired[annotation]
        for name, annotation, required in request_fields(schema)
    }
    row = TypedDict(f"{_camel(schema.pipeline)}Row", fields)  # type: ignore[operator]
    config = ConfigDict(
        extra="forbid",
        title=f"{_camel(schema.pipeline)}Row",
        json_schema_extra={"description": row_description(schema)},
    )
    return with_config(config)(row)


def field_errors(exc: ValidationError, prefix: tuple = ()) -> list[dict[str, Any]]:
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


def reason_of(errors: list[dict[str, Any]]) -> str:
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


#: The reason a derivation problem is counted under, most telling first.
_DERIVATION_REASONS = (
    ("filtered", "filtered"),
    ("unparseable_timestamp", "unparseable_timestamp"),
    ("timestamp_out_of_range", "timestamp_out_of_range"),
    ("missing", "missing_field"),
    ("derived_mismatch", "derived_mismatch"),
    ("derive_failed", "derive_failed"),
)


class RowValidator:
    """The row and the list-of-rows validators of one schema (a row comes back as a plain dict), and
    the spec's derive and filter rules that turn a source row into the model's features."""

    def __init__(self, schema: ServingSchema):
        self.schema = schema
        self.row_type = row = row_typeddict(schema)
        self.one = TypeAdapter(row)
        self.many = TypeAdapter(Annotated[list[row], Field(min_length=1, max_length=schema.max_rows)])
        self.derivation = RowDerivation(schema) if schema.derive or schema.filters else None

    def derive(
        self, rows: list[dict[str, Any]], prefix: tuple = (), single: bool = False
    ) -> list[dict[str, Any]]:
        """Validated rows with the features the spec derives computed; 422 for a row the rules refuse."""
        if self.derivation is None:
            return rows
        errors = self.derivation.apply(rows, prefix, single)
        if errors:
            kinds = {e["type"] for e in errors}
            reason = next((r for kind, r in _DERIVATION_REASONS if kind in kinds), None) or reason_of(errors)
            more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
            raise BadRequest(422, errors[0]["msg"] + more, errors, reason)
        return rows

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
                rows = self.many.validate_python(raw)
            except ValidationError as exc:
                errors = field_errors(exc, prefix)
                raise BadRequest(
                    422, f"{len(errors)} problem(s) in the rows", errors, reason_of(errors)
                ) from None
            return self.derive(rows, prefix)
        raise BadRequest(
            422, "expected a JSON object (one row) or a list of objects (rows)", reason="wrong_type"
        )
