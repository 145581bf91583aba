"""An extension module: a JSON Lines source and the extra-trees model family.

Import it for its registrations: ``MLCYCLE_EXTENSIONS=tests.extensions.example`` (or an
``mlcycle.extensions`` entry point of an installed package).
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from mlcycle.registry import ModelFamily, register_model_family, register_source
from mlcycle.sources.base import Selection
from mlcycle.sources.file import select_range


class JsonLinesReader:
    """``source: {kind: jsonl, path: events.jsonl}``: one JSON object per line, read once per step."""

    def __init__(self, spec):
        self.spec = spec
        self.frame = pd.read_json(spec.source.path(), lines=True, dtype=False)

    def read(self, start: dt.date, end: dt.date) -> Selection:
        return select_range(self.frame, self.spec, start, end)


register_source("jsonl", JsonLinesReader, required=("path",))

register_model_family(
    "extra_trees",
    ModelFamily(
        {
            "regression": "sklearn.ensemble:ExtraTreesRegressor",
            "classification": "sklearn.ensemble:ExtraTreesClassifier",
        },
        trusted_types=("sklearn.tree._tree.Tree",),  # what skops must trust to load a fitted model
    ),
)
