"""The request schema a model carries, and the pydantic models generated from it.

At training time ``schema_from_spec`` turns the pipeline spec (feature types, ranges, allowed
values, target, task) and the fitted model (class labels, the dtype each column was trained with)
into a plain mapping stored in the MLmodel file's ``metadata`` under ``mlcycle_serving``. The
server reads it back with ``ServingSchema.from_dict`` and generates its request models from it, so
the OpenAPI page documents every feature, and a model folder needs nothing else to be served.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

#: Key of the serving schema in the MLmodel file's ``metadata``.
METADATA_KEY = "mlcycle_serving"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class FeatureSchema:
    name: str
    type: str  # numeric, integer, categorical, string (the spec's column type)
    dtype: str  # what the model was trained with: double, long or string
    min: float | None = None
    max: float | None = None
    values: tuple[Any, ...] | None = None
    nullable: bool = False

    @property
    def is_categorical(self) -> bool:
        return self.type in ("categorical", "string")


@dataclass(frozen=True)
class ServingSchema:
    pipeline: str
    task: str  # regression or classification
    target: str
    features: tuple[FeatureSchema, ...]
    classes: tuple[Any, ...] | None = None
    unknown_categories: str = "reject"  # or "accept": the model's encoder ignores them
    tolerance: float = 1e-6
    max_rows: int = 10_000
    version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["features"] = [
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(f).items()} for f in self.features
        ]
        out["classes"] = list(self.classes) if self.classes is not None else None
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ServingSchema:
        features = tuple(
            FeatureSchema(**{**f, "values": tuple(f["values"]) if f.get("values") else None})
            for f in raw["features"]
        )
        return cls(
            pipeline=raw["pipeline"],
            task=raw["task"],
            target=raw["target"],
            features=features,
            classes=tuple(raw["classes"]) if raw.get("classes") is not None else None,
            unknown_categories=raw.get("unknown_categories", "reject"),
            tolerance=float(raw.get("tolerance", 1e-6)),
            max_rows=int(raw.get("max_rows", 10_000)),
            version=int(raw.get("version", SCHEMA_VERSION)),
            extra=dict(raw.get("extra") or {}),
        )


def _dtype_of(kind: str) -> str:
    """MLflow signature type (or a pandas dtype's kind) to the three dtypes the encoder knows."""
    if kind in ("long", "integer", "int", "i", "u", "b", "boolean"):
        return "long"
    if kind in ("double", "float", "f"):
        return "double"
    return "string"


def schema_from_spec(spec: Any, dtypes: dict[str, str], classes: list[Any] | None = None) -> ServingSchema:
    """The serving schema of a pipeline spec; ``dtypes`` maps each feature to its training dtype kind.

    ``spec`` is a ``mlcycle.spec.PipelineSpec`` (typed loosely so the server never needs the spec module).
    """
    serving = getattr(spec, "serving", None)
    features = []
    for col in spec.feature_columns:
        dtype = _dtype_of(dtypes.get(col.name, "string"))
        if col.type in ("numeric",):
            dtype = "double"
        values = tuple(col.values) if col.values else None
        if values is not None and dtype == "long":
            values = tuple(int(v) for v in values)
        elif values is not None and dtype == "string":
            values = tuple(str(v) for v in values)
        features.append(
            FeatureSchema(
                name=col.name,
                type=col.type,
                dtype=dtype,
                min=None if col.min is None else float(col.min),
                max=None if col.max is None else float(col.max),
                # A null category has no encoding the fast path shares with the
                # Pipeline: only numbers may be null (NaN, which both handle).
                values=values,
                nullable=col.max_null_share > 0 and col.type not in ("categorical", "string"),
            )
        )
    return ServingSchema(
        pipeline=spec.name,
        task=spec.task,
        target=spec.target,
        features=tuple(features),
        classes=tuple(_plain(c) for c in classes) if classes is not None else None,
        unknown_categories=getattr(serving, "unknown_categories", "reject"),
        tolerance=float(getattr(serving, "tolerance", 1e-6)),
        max_rows=int(getattr(serving, "max_rows", 10_000)),
    )


def _plain(value: Any) -> Any:
    """numpy scalars to plain Python, so the schema serialises to YAML and JSON."""
    return value.item() if hasattr(value, "item") else value


# --------------------------------------------------------------------------------------------
# Pydantic models generated from the schema


def _whole(value: Any) -> Any:
    """A whole-valued float (``5.0``) is a JSON Schema ``integer``: take it as the integer it is.

    Anything else goes to the strict integer check unchanged (``5.5``, ``"5"``, ``true`` stay refused).
    """
    if type(value) is float and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value


def _not_bool(value: Any) -> Any:
    """``true``/``false`` for a category of numbers: JSON's booleans are no integers (Python's are)."""
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be one of the numbers allowed, not a boolean")
    return value


def _feature_field(f: FeatureSchema, schema: ServingSchema) -> tuple[Any, Any]:
    doc = [f"{f.type} feature"]
    kwargs: dict[str, Any] = {}
    before: list[Any] = []
    if f.is_categorical and f.values and schema.unknown_categories == "reject":
        annotation: Any = Literal[tuple(f.values)]  # type: ignore[valid-type]
        if not any(isinstance(v, bool) for v in f.values):
            before.append(BeforeValidator(_not_bool))  # a Literal of 0 and 1 takes False and True
        doc.append("one of " + ", ".join(map(str, f.values)))
    elif f.dtype == "long" or f.type == "integer":
        annotation = int
        kwargs["strict"] = True
        before.append(BeforeValidator(_whole))
        if f.values:
            doc.append("known values " + ", ".join(map(str, f.values)) + " (others are accepted)")
    elif f.dtype == "double":
        annotation = float
        kwargs.update(strict=True, allow_inf_nan=False)
    else:
        annotation = str
        kwargs["strict"] = True
        if f.values:
            doc.append("known values " + ", ".join(map(str, f.values)) + " (others are accepted)")
    if not f.is_categorical:
        if f.min is not None and math.isfinite(f.min):
            kwargs["ge"] = int(f.min) if annotation is int else f.min
        if f.max is not None and math.isfinite(f.max):
            kwargs["le"] = int(f.max) if annotation is int else f.max
        if "ge" in kwargs or "le" in kwargs:
            doc.append(f"range [{kwargs.get('ge', '-inf')}, {kwargs.get('le', 'inf')}]")
    if f.nullable:
        doc.append("may be null")
        annotation = annotation | None
    # The whole-float conversion wraps the constrained integer (after Field, so the JSON Schema keeps
    # its minimum and maximum) and so runs before the strict check.
    return Annotated[annotation, Field(alias=f.name, description="; ".join(doc), **kwargs), *before], ...


def row_model(schema: ServingSchema) -> type[BaseModel]:
    """One input row: every feature required, nothing else allowed."""
    # Aliases carry the real names: a feature name need not be a valid Python identifier.
    fields = {f"f_{i}": _feature_field(f, schema) for i, f in enumerate(schema.features)}
    return create_model(
        f"{_camel(schema.pipeline)}Row",
        __config__=ConfigDict(
            extra="forbid",
            populate_by_name=False,
            json_schema_extra={
                "description": f"One row of `{schema.pipeline}` features; predicts `{schema.target}`."
            },
        ),
        **fields,
    )


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_") if part) or "Model"


def prediction_type(schema: ServingSchema) -> Any:
    if schema.task == "classification" and schema.classes:
        kinds = {type(c) for c in schema.classes}
        return int if kinds == {int} else (str if kinds == {str} else Any)
    return float


def response_models(schema: ServingSchema) -> tuple[type[BaseModel], type[BaseModel]]:
    """(PredictResponse, InvocationsResponse), for the OpenAPI page."""
    pred = prediction_type(schema)
    fields: dict[str, Any] = {
        "request_id": (str, Field(description="echoed in the X-Request-ID header and the prediction log")),
        "model_name": (str, ...),
        "model_version": (str, ...),
        "predictions": (list[pred], Field(description=f"one `{schema.target}` per input row, in order")),
    }
    if schema.task == "classification":
        fields["probabilities"] = (
            list[dict[str, float]],
            Field(description="per row, the probability of each class label"),
        )
    predict = create_model(f"{_camel(schema.pipeline)}PredictResponse", **fields)
    invocations = create_model(
        f"{_camel(schema.pipeline)}InvocationsResponse",
        predictions=(list[pred], Field(description="MLflow scoring protocol response")),
    )
    return predict, invocations
