"""The git hooks of .pre-commit-config.yaml on a scratch clone: a defect is refused, a clean commit
passes, and a push with a broken DAG is stopped by the pre-push stage."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.ci.conftest import git, tool_env
from tests.conftest import AIRFLOW_BIN

#: A private key header, assembled so that this file itself does not trip the hook.
KEY = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END " + "RSA PRIVATE KEY-----\n"


@pytest.fixture
def hooked(scratch_repo, tmp_path) -> Path:
    """The scratch clone with both hook types installed, as `make hooks` does."""
    env = tool_env(PRE_COMMIT_HOME=str(tmp_path / "pre-commit-home"))
    result = subprocess.run(
        [str(AIRFLOW_BIN / "pre-commit"), "install", "--hook-type", "pre-commit", "--hook-type", "pre-push"],
        cwd=scratch_repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout
    assert (scratch_repo / ".git" / "hooks" / "pre-push").is_file()
    return scratch_repo


def commit(repo: Path, tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", *files)
    return git_with_hooks(repo, tmp_path, "commit", "-m", "change")


def git_with_hooks(repo: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """A git command whose hooks run; their output (on stdout and stderr alike) in ``stdout``."""
    env = tool_env(
        PRE_COMMIT_HOME=str(tmp_path / "pre-commit-home"),
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.org",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.org",
    )
    return subprocess.run(
        ["git", *args],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize(
    ("files", "hook"),
    [
        ({"scripts/leak.txt": KEY}, "no private keys"),
        ({"scripts/unused.py": "import os\n"}, "ruff check"),
        ({"scripts/ugly.py": "x = {'a':1}\n"}, "ruff format"),
        ({"include/pipelines/bad.yaml": "a: [1, 2\n"}, "YAML syntax"),
        ({"docs/notes.md": "a line with trailing spaces   \n"}, "trailing whitespace"),
    ],
)
def test_a_commit_with_a_defect_is_refused(hooked, tmp_path, files, hook):
    head = git(hooked, "rev-parse", "HEAD").stdout
    result = commit(hooked, tmp_path, files)
    assert result.returncode != 0, result.stdout
    assert f"{hook}" in result.stdout and "Failed" in result.stdout, result.stdout
    assert git(hooked, "rev-parse", "HEAD").stdout == head


def test_a_clean_commit_passes(hooked, tmp_path):
    result = commit(hooked, tmp_path, {"scripts/clean.py": 'x = {"a": 1}\n', "docs/notes.md": "# Notes\n"})
    assert result.returncode == 0, result.stdout
    assert "ruff check" in result.stdout and "Passed" in result.stdout


def test_a_push_with_a_broken_dag_is_refused(hooked, tmp_path):
    """The pre-push stage runs DAG integrity first and stops there (fail_fast)."""
    remote = tmp_path / "remote.git"
    git(hooked, "init", "-q", "--bare", str(remote))
    git(hooked, "remote", "add", "origin", str(remote))
    broken = (  # lint-clean, but without tags, owner or failure notifier
        "import pendulum\nfrom airflow.sdk import dag, task\n\n\n"
        '@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"))\n'
        "def untagged():\n    @task\n    def noop():\n        return None\n\n    noop()\n\n\nuntagged()\n"
    )
    committed = commit(hooked, tmp_path, {"dags/broken.py": broken})
    assert committed.returncode == 0, committed.stdout
    pushed = git_with_hooks(hooked, tmp_path, "push", "-q", "origin", "main")
    assert pushed.returncode != 0, pushed.stdout[-3000:]
    assert "DAG integrity" in pushed.stdout and "Failed" in pushed.stdout, pushed.stdout[-3000:]
    assert "unit tests" not in pushed.stdout  # fail_fast: the slow stage did not run
    assert git(hooked, "ls-remote", str(remote)).stdout == ""  # nothing reached the remote
