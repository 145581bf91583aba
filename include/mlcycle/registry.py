"""The extension points of the step package, as tables: one registration adds a source kind or a model family.

Kept free of pandas and scikit-learn (the spec's parser reads it): an entry names its code as
``"module:attribute"``, imported only when a spec uses it.

- :data:`SOURCES`: ``source.kind`` -> :class:`SourceKind`, the reader's class (constructed with the
  spec; ``read(start, end)`` returns a :class:`mlcycle.sources.base.Selection`) and the keys of the
  spec's ``source:`` section it needs and takes.
- :data:`MODELS`: ``model.family`` -> :class:`ModelFamily`, the scikit-learn estimator per task, the
  types skops must trust to load it, and how its inputs are prepared. The ONNX fast path needs no
  entry: skl2onnx converts any estimator it knows, and the server measures every conversion.

Registrations run when their module is imported: a module named in ``MLCYCLE_EXTENSIONS``
(comma-separated) or published under the ``mlcycle.extensions`` entry-point group of an installed
package; :func:`load_extensions` imports them before a step reads its spec. ``docs/extending.md``
walks through adding one of each.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlcycle.errors import SpecError


@dataclass(frozen=True)
class SourceKind:
    #: The reader: a class (or factory) taking the spec, or its ``"module:Class"``.
    reader: str | Callable[..., Any]
    #: Keys of ``source:`` a spec of this kind must set (besides ``kind``).
    required: tuple[str, ...] = ()
    #: Keys it may set.
    optional: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return ("kind", *self.required, *self.optional)

    def load(self) -> Callable[..., Any]:
        return _resolve(self.reader)


def _resolve(target: str | Callable[..., Any]) -> Callable[..., Any]:
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


SOURCES: dict[str, SourceKind] = {
    "file": SourceKind("mlcycle.sources.file:FileReader", required=("path",), optional=("format",)),
    "postgres": SourceKind(
        "mlcycle.sources.postgres:PostgresReader", required=("table", "conn_id", "timestamp_column")
    ),
    "http": SourceKind(
        "mlcycle.sources.http:HttpReader", required=("url",), optional=("format", "timeout_seconds")
    ),
}


def register_source(
    kind: str,
    reader: str | Callable[..., Any],
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
) -> None:
    """Make ``source.kind: <kind>`` a valid spec, read by ``reader`` (see :class:`SourceKind`)."""
    if kind in SOURCES:
        raise ValueError(f"source kind {kind!r} is already registered")
    SOURCES[kind] = SourceKind(reader, tuple(required), tuple(optional))


@dataclass(frozen=True)
class ModelFamily:
    #: task (``regression``, ``classification``) -> the estimator class, or its ``"module:Class"``.
    estimators: dict[str, str | Callable[..., Any]]
    #: Types skops must be told to trust to load a fitted model of this family (explicit, not blanket).
    trusted_types: tuple[str, ...] = ()
    #: Numeric inputs imputed (median) and standardised, as linear models need; else passed through
    #: (trees take missing values natively).
    scaled_inputs: bool = False
    #: Takes wide categoricals natively (scikit-learn's HistGradientBoosting API: ``categorical_features``
    #: as a mask, ``early_stopping``); the others get them one-hot.
    native_categoricals: bool = False

    def estimator(self, task: str) -> Any:
        return _resolve(self.estimators[task])()


MODELS: dict[str, ModelFamily] = {
    "hist_gradient_boosting": ModelFamily(
        {
            "regression": "sklearn.ensemble:HistGradientBoostingRegressor",
            "classification": "sklearn.ensemble:HistGradientBoostingClassifier",
        },
        # With native categorical features, the trees keep their own input check: a partial of check_array.
        trusted_types=(
            "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
            "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
            "functools.partial",
            "sklearn.utils.validation.check_array",
        ),
        native_categoricals=True,
    ),
    "random_forest": ModelFamily(
        {
            "regression": "sklearn.ensemble:RandomForestRegressor",
            "classification": "sklearn.ensemble:RandomForestClassifier",
        },
        trusted_types=("sklearn.tree._tree.Tree",),
    ),
    "ridge": ModelFamily({"regression": "sklearn.linear_model:Ridge"}, scaled_inputs=True),
    "logistic_regression": ModelFamily(
        {"classification": "sklearn.linear_model:LogisticRegression"}, scaled_inputs=True
    ),
}


def families_for(task: str) -> tuple[str, ...]:
    """The model families that can learn ``task``, in registration order."""
    return tuple(name for name, family in MODELS.items() if task in family.estimators)


def register_model_family(name: str, family: ModelFamily) -> None:
    """Make ``model.family: <name>`` a valid spec (see :class:`ModelFamily`)."""
    if name in MODELS:
        raise ValueError(f"model family {name!r} is already registered")
    MODELS[name] = family


#: Environment variable naming modules to import for their registrations (comma-separated).
EXTENSIONS_ENV = "MLCYCLE_EXTENSIONS"
_loaded: set[str] = set()


def load_extensions() -> list[str]:
    """Import every extension module (``MLCYCLE_EXTENSIONS``, then the ``mlcycle.extensions`` entry
    points), once each; return the names imported now. A module that fails to import is an error that
    names it: a spec that needs its kind or family would otherwise fail with "one of file, ..."."""
    from importlib.metadata import entry_points

    names = [n.strip() for n in os.environ.get(EXTENSIONS_ENV, "").split(",") if n.strip()]
    names += [ep.value.split(":")[0] for ep in entry_points(group="mlcycle.extensions")]
    imported = []
    for name in names:
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise SpecError(
                f"extension module {name!r} ({EXTENSIONS_ENV} or the mlcycle.extensions "
                f"entry points) cannot be imported: {type(exc).__name__}: {exc}"
            ) from exc
        _loaded.add(name)
        imported.append(name)
    return imported
