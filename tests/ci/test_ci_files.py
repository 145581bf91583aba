"""The CI definitions: GitHub workflows pass actionlint, .gitlab-ci.yml matches GitLab's schema, both
call make targets only, and the GitLab `install` and `lint` jobs really run (gitlab-ci-local)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.ci.conftest import git, tool_env
from tests.conftest import AIRFLOW_BIN, ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
GITLAB_CI = ROOT / ".gitlab-ci.yml"
GITLAB_SCHEMA = ROOT / ".ci" / "schemas" / "gitlab-ci.json"
STAGES = ["install", "lint", "test", "train", "deploy"]


def actionlint(*files: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(AIRFLOW_BIN / "actionlint"), "-oneline", *map(str, files)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def schema_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(AIRFLOW_BIN / "check-jsonschema"),
            "--schemafile",
            str(GITLAB_SCHEMA),
            "--data-transform",
            "gitlab-ci",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


class _GitLabLoader(yaml.SafeLoader):
    """Reads .gitlab-ci.yml with GitLab's !reference tag kept as a list."""


_GitLabLoader.add_constructor("!reference", lambda loader, node: loader.construct_sequence(node))


def gitlab_config() -> dict:
    return yaml.load(GITLAB_CI.read_text(), Loader=_GitLabLoader)  # noqa: S506 (a SafeLoader subclass)


def test_workflows_pass_actionlint():
    workflows = sorted(WORKFLOWS.glob("*.yml"))
    assert workflows, "no GitHub workflow"
    result = actionlint(*workflows)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "breakage",
    [
        ("needs: checks", "needs: chekcs"),  # a job that does not exist
        ("${{ github.event_name == 'push' }}", "${{ github.event_nme == 'push' }}"),  # a typo in a context
        (
            "runs-on: ubuntu-24.04\n    timeout-minutes: 30",
            "runs-on: ubuntu-24.04\n    timeout-minutes: thirty",
        ),
    ],
)
def test_actionlint_fails_on_a_broken_copy(tmp_path, breakage):
    text = (WORKFLOWS / "ci.yml").read_text()
    old, new = breakage
    if old not in text:  # the expression form used in `if:` of the images job
        old, new = old.replace("${{ ", "").replace(" }}", ""), new.replace("${{ ", "").replace(" }}", "")
    assert old in text, f"the workflow no longer contains {old!r}: update this test"
    broken = tmp_path / ".github" / "workflows" / "ci.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(text.replace(old, new, 1))
    result = actionlint(broken, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ci.yml" in result.stdout


def test_gitlab_ci_matches_the_pinned_schema():
    result = schema_check(GITLAB_CI)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "breakage",
    [
        ("      when: manual", "      when: sometimes"),  # not a value GitLab knows
        ("  timeout: 90 minutes\n", "  timeout: [90]\n"),  # wrong type
        ("  interruptible: false\n", "  interruptable: false\n"),  # a misspelt keyword
    ],
)
def test_schema_check_fails_on_a_broken_copy(tmp_path, breakage):
    text = GITLAB_CI.read_text()
    assert breakage[0] in text, f".gitlab-ci.yml no longer contains {breakage[0]!r}: update this test"
    broken = tmp_path / ".gitlab-ci.yml"
    broken.write_text(text.replace(*breakage, 1))
    result = schema_check(broken)
    assert result.returncode == 1, result.stdout + result.stderr


def test_gitlab_stages_and_deploy_rules():
    config = gitlab_config()
    assert config["stages"] == STAGES
    jobs = {k: v for k, v in config.items() if isinstance(v, dict) and "stage" in v}
    assert {j["stage"] for j in jobs.values()} == set(STAGES)
    assert "make run PIPELINE=.ci/bikeshare-ci.yaml" in jobs["train"]["script"]
    production = jobs["deploy-production"]
    assert production["environment"]["name"] == "production"
    assert production["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH", "when": "manual"}]
    assert production["needs"] == ["deploy-staging"]
    staging = jobs["deploy-staging"]
    assert staging["environment"]["name"] == "staging" and ".main-only" in [staging["extends"]]
    assert config[".main-only"]["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]


def test_github_deploys_only_from_main_and_production_waits_for_staging():
    workflow = yaml.safe_load((WORKFLOWS / "ci.yml").read_text())
    jobs = workflow["jobs"]
    assert "main" in jobs["images"]["if"] and jobs["deploy-staging"]["needs"] == "images"
    assert jobs["deploy-staging"]["environment"] == "staging"
    assert jobs["deploy-production"]["environment"] == "production"
    assert jobs["deploy-production"]["needs"] == "deploy-staging"


def _commands() -> list[str]:
    commands = []
    for workflow in sorted(WORKFLOWS.glob("*.yml")):  # ci.yml and the weekly audit.yml
        for job in yaml.safe_load(workflow.read_text())["jobs"].values():
            commands += [step["run"] for step in job["steps"] if "run" in step]
    for value in gitlab_config().values():
        if isinstance(value, dict):
            for key in ("before_script", "script", "after_script"):
                commands += value.get(key, [])
    return commands


def test_both_ci_systems_call_make_targets_only():
    commands = _commands()
    assert len(commands) > 10
    for command in commands:
        assert re.fullmatch(r"make [a-z-]+( [A-Z_]+=\S+)*", command), f"not a make target call: {command!r}"
        target = command.split()[1]
        dry = subprocess.run(
            ["make", "-n", "-C", str(ROOT), *command.split()[1:]], capture_output=True, text=True, timeout=30
        )
        assert dry.returncode == 0, f"make {target}: {dry.stderr}"


def gitlab_jobs(binary: Path, repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(binary), "--force-shell-executor", "--no-color", *args],
        cwd=repo,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_gitlab_main_pipeline_lists_deploys_with_a_manual_production(gitlab_ci_local, scratch_repo):
    listed = gitlab_jobs(gitlab_ci_local, scratch_repo, "--list-json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    jobs = {j["name"]: j for j in json.loads(listed.stdout[listed.stdout.index("[") :])}
    assert jobs["deploy-production"]["when"] == "manual"
    assert jobs["deploy-staging"]["when"] == "on_success"
    git(scratch_repo, "checkout", "-q", "-b", "feature")
    feature = gitlab_jobs(gitlab_ci_local, scratch_repo, "--list-json")
    names = {
        j["name"] for j in json.loads(feature.stdout[feature.stdout.index("[") :]) if j["when"] != "never"
    }
    assert not names & {"images", "deploy-staging", "deploy-production"}, names


def test_gitlab_install_and_lint_jobs_run(gitlab_ci_local, scratch_repo):
    result = gitlab_jobs(gitlab_ci_local, scratch_repo, "install", "lint")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "environments ready" in output and "All checks passed" in output
    assert "==> installing" not in output, "the scratch copy reinstalled the linked environments"


def test_gitlab_lint_job_fails_on_a_lint_error(gitlab_ci_local, scratch_repo):
    (scratch_repo / "dags" / "pipeline_support" / "sloppy.py").write_text("import os\n")
    git(scratch_repo, "add", "-A")
    git(scratch_repo, "commit", "-q", "-m", "an unused import")
    result = gitlab_jobs(gitlab_ci_local, scratch_repo, "lint")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-4000:]
    assert "F401" in output


def test_gitlab_ci_local_is_pinned():
    package = json.loads((ROOT / ".ci" / "gitlab-ci-local" / "package.json").read_text())
    lock = json.loads((ROOT / ".ci" / "gitlab-ci-local" / "package-lock.json").read_text())
    version = package["devDependencies"]["gitlab-ci-local"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), "pin an exact version"
    assert lock["packages"]["node_modules/gitlab-ci-local"]["version"] == version
    assert shutil.which("make"), "make is needed by every CI job"


def test_make_recipes_that_source_env_sh_see_the_project_root():
    """Recipes such as `make bench-serving` and `make deploy` source scripts/env.sh, which needs bash;
    under Debian's /bin/sh (dash) it resolved the project root to `/` and every path went wrong."""
    probe = subprocess.run(
        ["make", "-s", "--eval", "probe: ; . scripts/env.sh && echo $$MLCYCLE_HOME", "probe"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith(("MLCYCLE_", "MLFLOW_", "AIRFLOW"))},
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == str(ROOT / ".local")


def test_env_sh_refuses_a_shell_that_is_not_bash():
    proc = subprocess.run(["sh", "-c", ". scripts/env.sh"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "must be sourced from bash" in proc.stderr
