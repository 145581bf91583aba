"""Integration modules are scenarios: their tests build on each other's state, in file order.

pytest-randomly shuffles the unit and DAG tests to catch order dependence; here the order is the
point (a first run, then a second that the gate decides...), so these items go back to file order.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    scenario = [item for item in items if item.get_closest_marker("integration")]
    if not scenario:
        return
    others = [item for item in items if not item.get_closest_marker("integration")]
    scenario.sort(key=lambda item: (str(item.path), item.location[1] or 0))
    items[:] = others + scenario
