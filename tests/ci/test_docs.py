"""The documentation site builds with `mkdocs build --strict`: README, operations guide, API reference."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import AIRFLOW_BIN


def mkdocs_build(repo: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(AIRFLOW_BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_site_builds_strictly_with_readme_guide_and_api_reference(scratch_repo, tmp_path):
    site = tmp_path / "site"
    result = mkdocs_build(scratch_repo, site)
    assert result.returncode == 0, result.stderr[-4000:]
    home = (site / "index.html").read_text()
    assert "a model lifecycle on Apache Airflow" in home
    assert 'href="operations/"' in home  # README's docs/operations.md link, rewritten for the site
    assert (site / "include" / "pipelines" / "bikeshare.yaml").is_file()  # a linked repository file
    reference = (site / "reference" / "index.html").read_text()
    for anchor in ("mlcycle.steps.train.train", "mlcycle.steps.evaluate.decide", "mlcycle.errors.StepError"):
        assert f'id="{anchor}"' in reference, anchor


def test_strict_build_fails_on_a_dangling_link_and_on_a_missing_module(scratch_repo, tmp_path):
    guide = scratch_repo / "docs" / "operations.md"
    guide.write_text(guide.read_text() + "\nSee [the runbook](runbook.md).\n")
    dangling = mkdocs_build(scratch_repo, tmp_path / "a")
    assert dangling.returncode == 1 and "runbook.md" in dangling.stderr, dangling.stderr[-2000:]

    subprocess.run(["git", "-C", str(scratch_repo), "checkout", "docs/operations.md"], check=True)
    reference = scratch_repo / "docs" / "reference.md"
    reference.write_text(reference.read_text() + "\n::: mlcycle.no_such_module\n")
    missing = mkdocs_build(scratch_repo, tmp_path / "b")
    assert missing.returncode == 1 and "no_such_module" in missing.stderr, missing.stderr[-2000:]
