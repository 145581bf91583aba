"""The request schema a model carries, and the pydantic models generated from it.

At training time ``schema_from_spec`` turns the pipeline spec (feature types, ranges, allowed
values, target, task) and the fitted model (class labels, the dtype each column was trained with)
into a plain mapping stored in the MLmodel file's ``metadata`` under ``mlcycle_serving``. The
server reads it back with ``ServingSchema.from_dict`` and generates its request models from it, so
the OpenAPI page documents every feature, and a model folder needs nothing else to be served.

Since version 2 the schema also carries what the server needs to take a row as the source writes it:
the source columns a request may hold besides the features (``inputs``: those the derivations and
filters read, the timestamp's, and the spec's other columns), the timestamp rule (column, format,
zone), and the spec's ``derive`` rules the features need and its ``filter`` rules. A version 1 schema
(features only) is served as before: a request holds exactly the features.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

#: Key of the serving schema in the MLmodel file's ``metadata``.
METADATA_KEY = "mlcycle_serving"
SCHEMA_VERSION = 2
#: The calendar parts and their ``local_`` spellings, ``source_<part>`` for a source column named like a
#: part (as ``mlcycle.expressions`` declares them; repeated here so that the schema imports nothing heavy).
_PARTS = ("hour", "day_of_week", "day", "month", "year", "day_of_year", "is_weekend")
CALENDAR_NAMES = frozenset((*_PARTS, *(f"local_{p}" for p in _PARTS)))
SOURCE_ALIASES = {f"source_{p}": p for p in _PARTS}
EVENT_TIME = "event_time"


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
class InputSchema:
    """A source column a request may carry besides the features: read by ``used_by`` (the derive and
    filter rules), or accepted and not used (a row of the source, sent as it is)."""

    name: str
    type: str  # the spec's column type
    dtype: str  # double, long or string: how the rules read it
    used_by: tuple[str, ...] = ()


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
    #: Source columns accepted besides the features (version 2).
    inputs: tuple[InputSchema, ...] = ()
    #: ``(column, expression)`` of the spec's ``derive``, in order: those the features and filters need.
    derive: tuple[tuple[str, str], ...] = ()
    #: The spec's ``filter`` rules: a row one of them drops is refused.
    filters: tuple[str, ...] = ()
    #: The spec's ``timestamp`` section (kind, column, format, year, day_column, hour_column, timezone).
    timestamp: dict[str, Any] | None = None
    #: History features the server reads from the online store (``mlcycle.serving.online``): the Feast
    #: project and its feature views (entity columns and types, features and fills); None: none.
    history: dict[str, Any] | None = None

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def history_names(self) -> list[str]:
        if not self.history:
            return []
        return [f["name"] for view in self.history["views"] for f in view["features"]]

    @property
    def request_features(self) -> tuple[FeatureSchema, ...]:
        """The features a request row carries (or the server derives from it): all but the history
        features, which the server fetches."""
        fetched = set(self.history_names)
        return tuple(f for f in self.features if f.name not in fetched)

    @property
    def derived_features(self) -> list[str]:
        """Features the server computes from the source columns (a request may send them too)."""
        derived, raw = {name for name, _ in self.derive}, {i.name for i in self.inputs}
        return [f.name for f in self.features if f.name in derived and f.name not in raw]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["features"] = [
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(f).items()} for f in self.features
        ]
        out["classes"] = list(self.classes) if self.classes is not None else None
        out["inputs"] = [{**asdict(i), "used_by": list(i.used_by)} for i in self.inputs]
        out["derive"] = [list(pair) for pair in self.derive]
        out["filters"] = list(self.filters)
        out["timestamp"] = dict(self.timestamp) if self.timestamp is not None else None
        out["history"] = self.history
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
            inputs=tuple(
                InputSchema(**{**i, "used_by": tuple(i.get("used_by") or ())})
                for i in raw.get("inputs") or ()
            ),
            derive=tuple((str(name), str(source)) for name, source in raw.get("derive") or ()),
            filters=tuple(str(f) for f in raw.get("filters") or ()),
            timestamp=dict(raw["timestamp"]) if raw.get("timestamp") else None,
            history=dict(raw["history"]) if raw.get("history") else None,
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
    history = getattr(spec, "history", None)
    fetched = set(history.names) if history else set()
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
                nullable=(col.max_null_share > 0 or col.name in fetched)
                and col.type not in ("categorical", "string"),
            )
        )
    inputs, derive, filters, timestamp = _source_side(spec)
    if fetched:
        from mlcycle.feature_store import serving_history  # training side only: the server reads the result
    return ServingSchema(
        pipeline=spec.name,
        task=spec.task,
        target=spec.target,
        features=tuple(features),
        classes=tuple(_plain(c) for c in classes) if classes is not None else None,
        unknown_categories=getattr(serving, "unknown_categories", "reject"),
        tolerance=float(getattr(serving, "tolerance", 1e-6)),
        max_rows=int(getattr(serving, "max_rows", 10_000)),
        inputs=inputs,
        derive=derive,
        filters=filters,
        timestamp=timestamp,
        history=serving_history(spec) if fetched else None,
    )


def read_as(name: str, columns: set[str] | frozenset[str]) -> tuple[str, str]:
    """What a name in an expression reads when the rows hold ``columns``, as ingest resolves it (the
    batch's columns first, then ``source_<part>``, then the calendar part of the row's local time):
    ``("column", c)``, ``("calendar", part)``, ``("time", "event_time")`` or ``("unknown", name)``."""
    if name == EVENT_TIME:
        return "time", name
    if name in columns:
        return "column", name
    alias = SOURCE_ALIASES.get(name)
    if alias is not None and alias in columns:
        return "column", alias
    if name in CALENDAR_NAMES:
        return "calendar", name.removeprefix("local_")
    return "unknown", name


def source_columns(
    rules: list[tuple[str, frozenset[str]]], spec_columns: list[str], timestamp_columns: list[str]
) -> set[str]:
    """The columns a row of the source holds: the spec's columns that no rule derives, the timestamp's,
    and a derived column that a rule reads before it is derived (a replaced source column; a calendar
    part's name read so is the calendar part, as ``hour: hour`` means)."""
    derived = {name for name, _ in rules}
    source = {c for c in spec_columns if c not in derived} | set(timestamp_columns)
    defined: set[str] = set()
    for name, names in rules:
        source |= {n for n in names if n in derived and n not in defined and n not in CALENDAR_NAMES}
        defined.add(name)
    return source


def needed_rules(rules: list[tuple[str, frozenset[str]]], wanted: set[str], source: set[str]) -> list[int]:
    """The positions of the rules that compute ``wanted`` columns, with the rules those read."""
    wanted, needed = set(wanted), []
    for i in range(len(rules) - 1, -1, -1):
        name, names = rules[i]
        if name not in wanted:
            continue
        needed.append(i)
        before = {n for n, _ in rules[:i]}
        for n in names:
            kind, column = read_as(n, source | before)
            if kind == "column" and column in before:
                wanted.add(column)
    return sorted(needed)


def _input_dtype(col: Any) -> str:
    if col.type == "numeric":
        return "double"
    if col.type == "integer":
        return "long"
    if (
        col.type == "categorical"
        and col.values
        and all(isinstance(v, int) and not isinstance(v, bool) for v in col.values)
    ):
        return "long"
    return "string"


def _source_side(
    spec: Any,
) -> tuple[tuple[InputSchema, ...], tuple[tuple[str, str], ...], tuple[str, ...], dict[str, Any] | None]:
    """The source columns a request may carry, the derive rules the features and filters need, the
    filter rules and the timestamp section (empty for a stand-in spec without them)."""
    ts = getattr(spec, "timestamp", None)
    timestamp = None
    ts_columns: list[str] = []
    if ts is not None:
        timestamp = {
            k: getattr(ts, k, None)
            for k in ("kind", "column", "format", "year", "day_column", "hour_column", "timezone")
        }
        ts_columns = [
            c for c in (timestamp["column"], timestamp["day_column"], timestamp["hour_column"]) if c
        ]
    derivations = getattr(spec, "derivations", None)
    all_rules = [(name, e.names) for name, e in getattr(derivations, "derive", ())]
    sources = {name: e.source for name, e in getattr(derivations, "derive", ())}
    filters = [(f"filter[{i}]", e) for i, e in enumerate(getattr(derivations, "filters", ()))]
    columns = list(getattr(spec, "columns", None) or spec.feature_columns)
    source = source_columns(all_rules, [c.name for c in columns], ts_columns)
    derived = {name for name, _ in all_rules}
    features = {c.name for c in spec.feature_columns}
    wanted = features & derived
    for _, e in filters:
        wanted |= {
            c for kind, c in (read_as(n, source | derived) for n in e.names) if kind == "column"
        } & derived
    rules = [all_rules[i] for i in needed_rules(all_rules, wanted, source)]
    used: dict[str, list[str]] = {}
    reads = [
        (f"derive.{name}", names, {n for n, _ in all_rules[: all_rules.index((name, names))]})
        for name, names in rules
    ]
    reads += [(where, e.names, derived) for where, e in filters]
    for where, names, before in reads:
        for n in sorted(names):
            kind, column = read_as(n, source | before)
            targets = (
                [column]
                if kind == "column" and column not in before
                else ts_columns
                if kind in ("calendar", "time")
                else []
            )
            for c in targets:
                used.setdefault(c, [])
                if where not in used[c]:
                    used[c].append(where)
    by_name = {c.name: c for c in columns}
    inputs = []
    for name in [c.name for c in columns] + [c for c in ts_columns if c not in by_name]:
        if name not in source or (name in features and name not in derived):
            continue
        col = by_name.get(name) or SimpleNamespace(type="string", values=None)
        inputs.append(
            InputSchema(name=name, type=col.type, dtype=_input_dtype(col), used_by=tuple(used.get(name, ())))
        )
    derive = tuple((name, str(sources[name])) for name, _ in rules)
    return tuple(inputs), derive, tuple(str(e.source) for _, e in filters), timestamp


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


def _feature_field(f: FeatureSchema, schema: ServingSchema, note: str | None = None) -> tuple[Any, Any]:
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
    if note:
        doc.append(note)
    # The whole-float conversion wraps the constrained integer (after Field, so the JSON Schema keeps
    # its minimum and maximum) and so runs before the strict check.
    return Annotated[annotation, Field(alias=f.name, description="; ".join(doc), **kwargs), *before], ...


def _input_field(i: InputSchema) -> Any:
    """A source column besides the features: typed as the spec declares it, null allowed (the rules
    read a missing value as NaN), no range (a filter, not the request, decides which rows count)."""
    kwargs: dict[str, Any] = {"strict": True}
    before: list[Any] = []
    if i.dtype == "long":
        annotation: Any = int
        before.append(BeforeValidator(_whole))
    elif i.dtype == "double":
        annotation = float
        kwargs["allow_inf_nan"] = False
    else:
        annotation = str
    if i.used_by:
        doc = f"{i.type} source column, read by {', '.join(i.used_by)}; may be null"
    else:
        doc = f"{i.type} source column, not used by the model (accepted so that a source row can be sent as it is)"
    return Annotated[annotation | None, Field(alias=i.name, description=doc, **kwargs), *before]


def request_fields(schema: ServingSchema) -> list[tuple[str, Any, bool]]:
    """``(name, annotation, required)`` of every column a request row may hold: the features (a feature
    the spec derives is optional: computed by the server, and checked when sent), then the other
    source columns (optional)."""
    derive_rules = dict(schema.derive)
    derived = set(schema.derived_features)
    inputs = {i.name: i for i in schema.inputs}
    fields = []
    for f in schema.request_features:
        if f.name in inputs:  # a source column the spec replaces: the request holds the source's value
            continue
        note = (
            (
                f"computed from the source columns by `{f.name}: {derive_rules[f.name]}` (sent, it must "
                "equal the computed value)"
            )
            if f.name in derived
            else None
        )
        annotation = _feature_field(f, schema, note)[0]
        fields.append((f.name, annotation, f.name not in derived))
    fields.extend((i.name, _input_field(i), i.name in schema.feature_names) for i in schema.inputs)
    return fields


def row_description(schema: ServingSchema) -> str:
    text = f"One row of `{schema.pipeline}` features; predicts `{schema.target}`."
    if schema.inputs:
        text += (
            " A row of the source as it is written is accepted: the server computes the derived "
            "features from it, as training did, and refuses a row a `filter` rule drops."
        )
    return text


def row_model(schema: ServingSchema) -> type[BaseModel]:
    """One input row: every feature required (a derived one optional), the other source columns optional,
    nothing else allowed."""
    # Aliases carry the real names: a feature name need not be a valid Python identifier.
    fields = {
        f"f_{i}": (annotation, ... if required else None)
        for i, (_, annotation, required) in enumerate(request_fields(schema))
    }
    return create_model(
        f"{_camel(schema.pipeline)}Row",
        __config__=ConfigDict(
            extra="forbid",
            populate_by_name=False,
            json_schema_extra={"description": row_description(schema)},
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
