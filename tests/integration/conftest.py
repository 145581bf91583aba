"""Integration modules are scenarios: their tests build on each other's state, in file order.

pytest-randomly shuffles the unit and DAG tests to catch order dependence; here the order is the
point (a first run, then a second that the gate decides...), so these items go back to file order.

`make test` runs these tests on two pytest-xdist workers (``--dist loadfile``): a module runs whole,
in file order, on one worker with its module fixtures. The longest scenarios start first, so that
neither worker is left alone with one at the end.
"""

from __future__ import annotations

import pytest

#: The longest scenarios, longest first (minutes on two quiet cores, two workers, as measured by the
#: per-test lines of a CI log: about 8, 6, 6, 5, 5, 4, 4, 4, 4, 4, 3).
LONGEST_FIRST = (
    "test_deploy.py",
    "test_compose_stack.py",
    "test_training_dag.py",
    "test_lifecycle_loop.py",
    "test_object_store.py",
    "test_backfill.py",
    "test_monitoring_backfill.py",
    "test_docker_runner.py",
    "test_draft_spec.py",
    "test_scoring_dag.py",
    "test_faults.py",
)


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outside pytest-randomly's wrapper: its shuffle comes first
def pytest_collection_modifyitems(items: list[pytest.Item]):
    """After pytest-randomly's shuffle: scenarios first (longest first, then by path), each in file
    order; then everything else, as shuffled."""
    result = yield
    scenario = [item for item in items if item.get_closest_marker("integration")]
    others = [item for item in items if not item.get_closest_marker("integration")]

    def rank(item: pytest.Item) -> tuple:
        name = item.path.name
        first = LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
        return (first, str(item.path), item.location[1] or 0)

    scenario.sort(key=rank)
    items[:] = scenario + others
    return result
