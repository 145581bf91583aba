"""Any spec path runs: `make run PIPELINE=/any/folder/new.yaml` gets that spec its own DAGs.

``MLCYCLE_PIPELINES_DIR`` lists folders and spec files separated by ``:``; `scripts/pipeline_run.py`
(what `make run` asks) adds a spec of a new name as a file entry, so the DAG processor builds its DAGs
where the file is. Before, the path was only passed as the Param of a DAG that did not exist, and
`airflow dags test` failed with "Dag 'training_<name>' could not be found".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pipeline_support.specs import discover, resolve_spec
from tests.conftest import ROOT
from tests.datasets import BIKESHARE_SPEC, make_classification_dataset, write_spec_variant

DAGS = ROOT / "dags"


def _plan(pipeline: str, date: str, env_dirs: str) -> list[str]:
    env = {**os.environ, "MLCYCLE_PIPELINES_DIR": env_dirs}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "pipeline_run.py"), pipeline, date],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_a_spec_of_a_new_name_in_any_folder_gets_its_own_dags(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import BundleDagBag

    specs = tmp_path / "specs"
    specs.mkdir()
    write_spec_variant(BIKESHARE_SPEC, specs / "bikeshare.yaml")
    elsewhere = make_classification_dataset(tmp_path / "elsewhere" / "deep", days=30, name="shop_events")
    (elsewhere.parent / "not_a_spec.yaml").write_text("just: notes\n")  # a neighbour that must stay out

    dag_id, conf, dirs = _plan(str(elsewhere), "2011-03-25", str(specs))
    assert (dag_id, json.loads(conf)) == ("training_shop_events", {})
    assert dirs == f"{specs}{os.pathsep}{elsewhere}"

    monkeypatch.setenv("MLCYCLE_PIPELINES_DIR", dirs)
    bag = BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)
    assert bag.import_errors == {}, bag.import_errors
    assert {"training_shop_events", "training_bikeshare", "monitoring_shop_events"} <= set(bag.dags)
    assert resolve_spec("shop_events") == elsewhere.resolve()  # named, found in the file entry


def test_a_variant_keeping_a_known_name_runs_through_that_dag(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    write_spec_variant(BIKESHARE_SPEC, specs / "bikeshare.yaml")
    variant = write_spec_variant(
        BIKESHARE_SPEC, tmp_path / "ci" / "bikeshare-ci.yaml", model={"search": {"n_iter": 1}}
    )
    dag_id, conf, dirs = _plan(str(variant), "2011-06-30", str(specs))
    assert (dag_id, json.loads(conf), dirs) == ("training_bikeshare", {"pipeline": str(variant)}, str(specs))
    assert _plan("bikeshare", "2011-06-30", str(specs)) == ["training_bikeshare", "{}", str(specs)]


def test_several_folders_and_a_name_used_twice(tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    make_classification_dataset(one, days=30, name="alpha")
    make_classification_dataset(two, days=30, name="beta")
    write_spec_variant(one / "alpha.yaml", two / "alpha_again.yaml")  # the same `name: alpha`
    monkeypatch.setenv("MLCYCLE_PIPELINES_DIR", f"{one}{os.pathsep}{two}")
    entries, broken = discover()
    assert sorted(e.name for e in entries) == ["alpha", "beta"]
    assert list(broken) == [(two / "alpha_again.yaml").resolve()]
    assert "already used by" in broken[(two / "alpha_again.yaml").resolve()]
