"""The step package's seams: no import circle, and a source kind added by one registration.

The test-only source ``memory`` is registered the way docs/extending.md tells a user to add one:
one class and one :func:`mlcycle.registry.register_source` call; the spec's parser, ``ingest`` and
the typo check then know it, with no other edit.
"""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from mlcycle import registry
from mlcycle.errors import SpecError
from mlcycle.sources.base import Selection
from mlcycle.sources.file import read_table, select_range
from mlcycle.spec import load_spec
from mlcycle.steps.ingest import ingest
from mlcycle.store import Store
from tests.datasets import make_classification_dataset, write_spec_variant
from tests.unit.conftest import day_interval

PACKAGE = Path(__file__).resolve().parents[2] / "include" / "mlcycle"


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere (a function's lazy import counts too)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("mlcycle", *path.relative_to(PACKAGE).with_suffix("").parts))
        modules[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            if component:
                found.append(sorted([node, *component]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_step_package_has_no_import_circle():
    graph = _import_graph()
    assert "mlcycle.cli" in graph["mlcycle.warm_server"] and "mlcycle.warm" in graph["mlcycle.warm_server"]
    assert _cycles(graph) == []


def test_the_circle_check_sees_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


class MemoryReader:
    """A test-only source: the rows of a CSV that a test put in :data:`TABLES` under a name."""

    TABLES: dict[str, pd.DataFrame] = {}

    def __init__(self, spec):
        self.spec = spec
        self.frame = self.TABLES[spec.source.options["table"]]

    def read(self, start: dt.date, end: dt.date) -> Selection:
        return select_range(self.frame, self.spec, start, end)


@pytest.fixture
def memory_source():
    registry.register_source("memory", MemoryReader, required=("table",), optional=("note",))
    try:
        yield MemoryReader.TABLES
    finally:
        del registry.SOURCES["memory"]
        MemoryReader.TABLES.clear()


def _memory_spec(tmp_path: Path, **source) -> Path:
    local = make_classification_dataset(tmp_path / "data", days=5)
    return local, write_spec_variant(local, tmp_path / "memory.yaml", source={"path": None, "format": None, **source})


def test_a_registered_source_is_ingested_like_a_file(tmp_path, settings, memory_source):
    local, path = _memory_spec(tmp_path, kind="memory", table="clf")
    file_spec = load_spec(local)
    memory_source["clf"] = read_table(file_spec.source.path(), "csv")
    spec = load_spec(path)
    assert spec.source.kind == "memory"
    result = ingest(spec, settings, day_interval(dt.date(2011, 3, 4)), window_days=2)
    assert result.partitions == 2 and result.rows == 48
    written = pd.read_parquet(Store(settings.store, spec.name).raw(dt.date(2011, 3, 3)))
    expected = select_range(memory_source["clf"], file_spec, dt.date(2011, 3, 3), dt.date(2011, 3, 4)).frame
    assert written["ts"].tolist() == expected["ts"].tolist()


def test_a_registered_source_checks_its_own_keys(tmp_path, memory_source):
    _, missing = _memory_spec(tmp_path, kind="memory")
    with pytest.raises(SpecError, match="source.table"):
        load_spec(missing)
    _, typo = _memory_spec(tmp_path / "typo", kind="memory", table="clf", nte="x")
    with pytest.raises(SpecError, match="source.nte: unknown key; did you mean `note`"):
        load_spec(typo)


def test_an_unregistered_kind_names_the_registered_ones(tmp_path):
    _, path = _memory_spec(tmp_path, kind="memory", table="clf")
    with pytest.raises(SpecError, match="source.kind: one of file, postgres, http"):
        load_spec(path)


def test_a_kind_is_registered_once(memory_source):
    with pytest.raises(ValueError, match="already registered"):
        registry.register_source("memory", MemoryReader)
