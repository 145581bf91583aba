"""Fixtures of the repository-check tests: the pinned tools, and scratch copies of the working tree."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import AIRFLOW_BIN, ROOT, _unavailable

NODE_TOOLS = ROOT / ".ci" / "gitlab-ci-local"
#: What the checks link into a scratch copy instead of rebuilding: the environments and node tools.
LINKED = (".venv", ".venv-steps", ".ci/gitlab-ci-local/node_modules")


@pytest.fixture(scope="session")
def gitlab_ci_local() -> Path:
    """The pinned gitlab-ci-local (installed by `make setup` where npm is available)."""
    binary = NODE_TOOLS / "node_modules" / ".bin" / "gitlab-ci-local"
    if not shutil.which("node"):
        _unavailable("node", "no node on PATH (needed by gitlab-ci-local)", "MLCYCLE_REQUIRE_NODE")
    if not binary.exists():
        _unavailable(
            "gitlab-ci-local",
            f"{binary} is missing (make setup installs it with npm)",
            "MLCYCLE_REQUIRE_NODE",
        )
    return binary


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "CI check",
        "GIT_AUTHOR_EMAIL": "ci@example.org",
        "GIT_COMMITTER_NAME": "CI check",
        "GIT_COMMITTER_EMAIL": "ci@example.org",
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=check, env=env, timeout=600
    )


@pytest.fixture(scope="session")
def environments_current() -> None:
    """The environments match the working tree's requirement files, so that `make setup` run in a
    scratch copy (which links them) finds nothing to do and never reinstalls them from there."""
    subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, check=True, capture_output=True, timeout=1800)


@pytest.fixture
def scratch_repo(tmp_path, environments_current) -> Path:
    """A git repository holding the working tree as it is now (tracked and new files, not ignored ones),
    committed once, with the project's environments linked in rather than rebuilt."""
    repo = tmp_path / "repo"
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "scratch copy of the working tree")
    for name in LINKED:
        if (ROOT / name).exists():
            (repo / name).symlink_to(ROOT / name, target_is_directory=True)
    return repo


def tool_env(**extra: str) -> dict[str, str]:
    """The environment of a check: the Airflow environment's tools first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLCYCLE_HOME", "MLFLOW"))}
    env["PATH"] = f"{AIRFLOW_BIN}:{env.get('PATH', '')}"
    env.update(extra)
    return env
