"""Data integrity on real files and real step processes: dropped rows are counted, validated data is
never overwritten silently, concurrent runs publish only what they judged, failures are clean."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from mlcycle.errors import ValidationFailed
from mlcycle.spec import load_spec
from mlcycle.steps.ingest import ingest
from mlcycle.steps.validate import validate
from mlcycle.store import TEMP_SUFFIX, Store, write_parquet
from tests.datasets import BIKESHARE_CSV, BIKESHARE_SPEC, write_spec_variant
from tests.unit.conftest import day_interval, step_env

DAY = dt.date(2011, 3, 17)  # a day with all 24 hours
DOY = DAY.timetuple().tm_yday


def bikeshare_variant(folder: Path, edit=None, **spec_overrides) -> Path:
    """The bundled bikeshare data, edited by ``edit`` (a frame -> frame function), with its own spec."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(BIKESHARE_CSV)
    csv_path = folder / "bikeshare.csv"
    (edit(frame) if edit else frame).to_csv(csv_path, index=False)
    return write_spec_variant(
        BIKESHARE_SPEC,
        folder / "bikeshare.yaml",
        source={"kind": "file", "path": str(csv_path), "format": "csv"},
        **spec_overrides,
    )


def run_step(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlcycle", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(tmp_path),
        cwd=tmp_path,
        timeout=300,
        **kwargs,
    )


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLCYCLE", "MLFLOW", "AIRFLOW"))}
    return {**env, **step_env(tmp_path), **extra}


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- item 3: no row disappears without a count ------------------------------------------------


def _blank_hours(frame: pd.DataFrame) -> pd.DataFrame:
    rows = frame.index[frame["day"] == DOY][:7]
    frame["hr"] = frame["hr"].astype("object")
    frame.loc[rows, "hr"] = None
    return frame


def test_rows_without_a_timestamp_are_counted_and_fail_the_window(tmp_path, settings):
    spec = load_spec(bikeshare_variant(tmp_path / "data", _blank_hours))
    result = ingest(spec, settings, day_interval(DAY), window_days=2)
    assert result.dropped["unparseable_timestamp"] == 7
    store = Store(settings.store, spec.name)
    record = json.loads(store.ingest_record(DAY + dt.timedelta(days=1)).read_text())
    assert record["dropped"]["unparseable_timestamp"] == 7 and record["source_rows_read"] == 8645
    assert "hr=nan" in record["dropped_examples"]["unparseable_timestamp"][0]

    with pytest.raises(ValidationFailed) as info:
        validate(spec, settings, day_interval(DAY), window_days=2, attempt="a1")
    message = str(info.value)
    assert "rows dropped by ingest as unparseable_timestamp" in message and "7 of 8645 source rows" in message
    assert (
        "validation.max_dropped_share.unparseable_timestamp" in message and "nothing was published" in message
    )
    assert not store.validated(DAY).exists() and not store.validated(DAY - dt.timedelta(days=1)).exists()
    assert "7 of 8645 source rows" in store.validation_report(DAY + dt.timedelta(days=1)).read_text()
    assert json.loads((store.quarantine_dir(DAY, "a1") / "failures.json").read_text())["failures"]


def test_rows_outside_the_sources_bounds_are_counted_and_reported(tmp_path, settings):
    def next_year(frame):  # 7 rows of the day move to day 400: 2012, after window.data_end
        frame.loc[frame.index[frame["day"] == DOY][:7], "day"] = 400
        return frame

    spec = load_spec(bikeshare_variant(tmp_path / "data", next_year))
    assert ingest(spec, settings, day_interval(DAY), window_days=1).dropped["outside_source_bounds"] == 7
    passed = validate(spec, settings, day_interval(DAY), window_days=1)  # the bundled spec allows any share
    store = Store(settings.store, spec.name)
    assert passed.dropped["outside_source_bounds"] == 7 and store.current_validated(DAY).rows == 17
    assert "dropped: outside_source_bounds" in Path(passed.report).read_text()
    strict = load_spec(
        write_spec_variant(
            spec.path,
            tmp_path / "strict.yaml",
            validation={"max_dropped_share": {"outside_source_bounds": 0}},
        )
    )
    with pytest.raises(ValidationFailed, match="as outside_source_bounds.*7 of 8645 source rows"):
        validate(strict, settings, day_interval(DAY), window_days=1)


def test_timestamps_that_overflow_the_rule_are_a_counted_drop_not_a_crash(tmp_path, settings):
    def overflow(frame):
        frame.loc[frame.index[frame["day"] == DOY][:2], "day"] = 10**15
        return frame

    spec = load_spec(bikeshare_variant(tmp_path / "data", overflow))
    assert ingest(spec, settings, day_interval(DAY), window_days=1).dropped["timestamp_out_of_range"] == 2
    with pytest.raises(ValidationFailed, match="2 of 8645 source rows"):
        validate(spec, settings, day_interval(DAY), window_days=1)


def test_a_header_only_source_is_one_clear_line(tmp_path):
    spec = bikeshare_variant(tmp_path / "data", lambda frame: frame.head(0))
    proc = run_step(
        tmp_path, "ingest", "--pipeline", str(spec), "--start", "2011-03-17", "--end", "2011-03-18"
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    error = last_json(proc.stdout)["error"]
    assert "has no rows (columns: season, mnth" in error and "quarantined" in error


# --- item 2: validated data is never overwritten silently -------------------------------------


def _validated_day(tmp_path, settings, **spec_overrides):
    spec = load_spec(bikeshare_variant(tmp_path / "data", **spec_overrides))
    ingest(spec, settings, day_interval(DAY), window_days=1)
    validate(spec, settings, day_interval(DAY), window_days=1)
    store = Store(settings.store, spec.name)
    return spec, store, store.current_validated(DAY)


def test_a_restatement_is_reported_and_both_versions_are_kept(tmp_path, settings):
    spec, store, first = _validated_day(tmp_path, settings)
    frame = pd.read_parquet(store.raw(DAY))
    frame.loc[3, "temp"] = 0.5
    write_parquet(
        frame.drop(index=[0]), store.raw(DAY)
    )  # a source restating the day: one row fewer, one changed
    result = validate(spec, settings, day_interval(DAY), window_days=1)
    assert result.restated == [
        {
            "partition": "2011-03-17",
            "rows_before": first.rows,
            "rows_after": first.rows - 1,
            "previous_sha256": first.sha256,
            "added": 0,
            "removed": 1,
            "changed": 1,
        }
    ]
    assert store.current_validated(DAY).sha256 == sha(store.raw(DAY)) != first.sha256
    assert sha(first.path) == first.sha256  # the earlier version is still there, byte for byte
    assert "2011-03-17 (24 -&gt; 23 rows)" in Path(result.report).read_text()


def test_a_restatement_without_a_key_reports_counts(tmp_path, settings):
    spec, store, first = _validated_day(
        tmp_path,
        settings,
        key=[],  # no key: counts only; suite derived
        validation={"suite": str(tmp_path / "derived-suite.json")},
    )
    write_parquet(pd.read_parquet(store.raw(DAY)).iloc[1:], store.raw(DAY))
    change = validate(spec, settings, day_interval(DAY), window_days=1).restated[0]
    assert (change["rows_before"], change["rows_after"]) == (24, 23) and "changed" not in change


def test_a_restatement_that_shrinks_the_day_is_rejected_and_the_validated_version_kept(tmp_path, settings):
    spec, store, first = _validated_day(tmp_path, settings)
    write_parquet(pd.read_parquet(store.raw(DAY)).head(6), store.raw(DAY))  # passes min_rows_per_partition: 6
    with pytest.raises(ValidationFailed) as info:
        validate(spec, settings, day_interval(DAY), window_days=1, attempt="a1")
    assert "a restatement shrinks the day by at most 10% (validation.max_restatement_shrink)" in str(
        info.value
    )
    assert "24 rows validated before, 6 now (75% fewer)" in str(info.value)
    assert store.current_validated(DAY) == first and sha(store.validated(DAY)) == first.sha256
    assert (store.quarantine_dir(DAY, "a1") / "data.parquet").read_bytes() == store.raw(DAY).read_bytes()


# --- item 1: publish exactly the bytes that were validated, also under concurrency ------------


def _start_validate(tmp_path: Path, spec: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlcycle",
            "validate",
            "--pipeline",
            str(spec),
            "--start",
            DAY.isoformat(),
            "--end",
            (DAY + dt.timedelta(days=1)).isoformat(),
            "--window-days",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(tmp_path),
        cwd=tmp_path,
    )


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 120) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"no {needle!r} in the output of {proc.args}:\n{''.join(seen)}")


def test_two_concurrent_validate_runs_publish_only_what_each_judged(tmp_path, settings):
    spec_path = bikeshare_variant(tmp_path / "data")
    spec = load_spec(spec_path)
    ingest(spec, settings, day_interval(DAY), window_days=1)
    store = Store(settings.store, spec.name)
    good = store.raw(DAY).read_bytes()
    bad_frame = pd.read_parquet(store.raw(DAY))
    bad_frame.loc[0, "temp"] = 7.0  # outside [0, 1]: must never reach validated/
    write_parquet(bad_frame, tmp_path / "bad.parquet")
    bad = (tmp_path / "bad.parquet").read_bytes()

    first = _start_validate(tmp_path, spec_path)  # reads the good bytes ...
    _wait_for_line(first, "validating 1 new partition")
    write_parquet(bad_frame, store.raw(DAY))  # ... then the source is re-ingested with a bad version
    second = _start_validate(tmp_path, spec_path)  # which a second run judges, while the first still runs
    out1, err1 = first.communicate(timeout=300)
    out2, err2 = second.communicate(timeout=300)

    assert first.returncode == 0, err1
    assert (
        second.returncode == 1 and "expect_column_values_to_be_between on `temp`" in last_json(out2)["error"]
    )
    current = store.current_validated(DAY)
    assert current.sha256 == hashlib.sha256(good).hexdigest() and store.validated(DAY).read_bytes() == good
    versions = [p.read_bytes() for p in store.validated_dir(DAY).glob("*.parquet")]
    assert versions == [good] and bad not in versions
    quarantined = list((store.base / "quarantine").rglob("data.parquet"))
    assert [p.read_bytes() for p in quarantined] == [bad]


# --- item 7: nothing half-written is left behind ----------------------------------------------


def test_a_sigkilled_step_leaves_temporaries_that_the_next_run_removes(tmp_path):
    spec = bikeshare_variant(tmp_path / "data")
    base = tmp_path / "home" / "store" / "bikeshare"
    args = (
        "ingest",
        "--pipeline",
        str(spec),
        "--start",
        "2011-06-30",
        "--end",
        "2011-07-01",
        "--window-days",
        "180",
    )
    caught = []
    for _ in range(60):  # pause the writer at random moments until one is caught holding a temporary
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlcycle", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=cli_env(tmp_path),
            cwd=tmp_path,
        )
        while proc.poll() is None:
            os.kill(proc.pid, signal.SIGSTOP)
            caught = list(base.rglob(f"*{TEMP_SUFFIX}")) if base.exists() else []
            if caught:
                os.kill(proc.pid, signal.SIGKILL)
                break
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.002)
        proc.wait()
        if caught:
            break
    assert caught, "never caught the step while it wrote a temporary"
    assert proc.returncode == -signal.SIGKILL and all(p.exists() for p in caught)

    rerun = run_step(tmp_path, *args)
    assert rerun.returncode == 0, rerun.stderr
    assert "left by a step that was killed while writing" in rerun.stderr
    assert list(base.rglob(f"*{TEMP_SUFFIX}")) == []


def _mount(kind: str, target: Path, options: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", kind, "-o", options, kind, str(target)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a {kind} here ({proc.stderr.strip()}): needs root with CAP_SYS_ADMIN")


@pytest.fixture
def small_store(tmp_path):
    """A real, separate file system for the store: a 1 MiB tmpfs, unmounted afterwards."""
    store = tmp_path / "store"
    _mount("tmpfs", store, "size=1m")
    yield store
    subprocess.run(["umount", "-l", str(store)], check=False)


def _ingest_args(spec: Path) -> tuple[str, ...]:
    return (
        "ingest",
        "--pipeline",
        str(spec),
        "--start",
        "2011-03-17",
        "--end",
        "2011-03-18",
        "--window-days",
        "3",
    )


def test_a_full_disk_is_one_clear_line_and_keeps_the_previous_partitions(tmp_path, small_store):
    spec = bikeshare_variant(tmp_path / "data")
    env = cli_env(tmp_path, MLCYCLE_STORE=str(small_store))
    assert run_step(tmp_path, *_ingest_args(spec), env=env).returncode == 0
    raw = small_store / "bikeshare" / "raw"
    before = {p: p.read_bytes() for p in raw.rglob("data.parquet")}
    with pytest.raises(OSError), (small_store / "filler").open("wb") as filler:
        filler.write(b"\0" * (1 << 20))  # fills the disk: the tmpfs stops at its size
    bigger = bikeshare_variant(tmp_path / "bigger", lambda f: f.assign(temp=f["temp"] + 1e-9))  # new bytes
    proc = run_step(tmp_path, *_ingest_args(bigger), env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    error = last_json(proc.stdout)["error"]
    assert "the disk is full (ENOSPC)" in error and "free space there" in error
    assert last_json(proc.stdout)["failure_class"] == "transient"  # space may be freed: Airflow retries
    assert {p: p.read_bytes() for p in raw.rglob("data.parquet")} == before  # checked by bytes
    assert list(small_store.rglob(f"*{TEMP_SUFFIX}")) == []


def test_a_read_only_store_is_one_clear_line(tmp_path, small_store):
    spec = bikeshare_variant(tmp_path / "data")
    env = cli_env(tmp_path, MLCYCLE_STORE=str(small_store))
    assert run_step(tmp_path, *_ingest_args(spec), env=env).returncode == 0
    before = {p: p.read_bytes() for p in small_store.rglob("data.parquet")}
    subprocess.run(["mount", "-o", "remount,ro", str(small_store)], check=True)
    proc = run_step(tmp_path, *_ingest_args(spec), env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "the file system is read-only (EROFS)" in last_json(proc.stdout)["error"]
    assert {p: p.read_bytes() for p in small_store.rglob("data.parquet")} == before


def test_a_store_the_step_may_not_write_is_one_clear_line(tmp_path):
    capsh = shutil.which("capsh")
    if os.getuid() != 0 or capsh is None:
        pytest.skip("needs root and capsh to run the step without the right to override file permissions")
    spec = bikeshare_variant(tmp_path / "data")
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(0o555)  # nobody may write, and root may not either once it drops CAP_DAC_OVERRIDE
    env = cli_env(tmp_path, MLCYCLE_STORE=str(store))
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "mlcycle", *_ingest_args(spec)])
    proc = subprocess.run(
        [capsh, "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", command],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    error = last_json(proc.stdout)["error"]
    assert "permission denied (EACCES)" in error and "give it write access" in error


# --- item 6: an unreachable MLflow server fails fast, in one line -----------------------------


def _silent_server() -> tuple[socket.socket, int]:
    """A real TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return server, server.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_an_unreachable_tracking_server_fails_within_the_configured_time(kind, tmp_path):
    server, port = _silent_server() if kind == "silent" else (None, _free_port())
    try:
        env = cli_env(tmp_path, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}", MLCYCLE_MLFLOW_TIMEOUT="10")
        began = time.monotonic()
        proc = run_step(
            tmp_path,
            "register",
            "--pipeline",
            str(BIKESHARE_SPEC),
            "--run-id",
            "r1",
            "--model-uri",
            "runs:/r1/model",
            env=env,
        )
        elapsed = time.monotonic() - began
    finally:
        if server:
            server.close()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    error = last_json(proc.stdout)["error"]
    assert f"the MLflow tracking server http://127.0.0.1:{port} did not answer" in error
    assert "MLCYCLE_MLFLOW_TIMEOUT=10" in error
    # The step's own measure of its wait on the server. MLflow's defaults wait about 280 s for a
    # refused connection and 120 s a request for a silent one; with the budget it is seconds. How many
    # depends on the machine's load (a busy one adds the client's first-call work): the order of
    # magnitude is judged here, the arithmetic of the bound in the test below.
    waited = float(re.search(r"gave up after (\d+) s", error).group(1))
    assert waited < 60, (waited, elapsed)


@pytest.mark.parametrize("budget", [5, 10, 60, 300])
def test_the_http_bound_fits_the_budget_with_room_for_backoffs(budget, monkeypatch):
    """Every attempt's timeout plus the longest backoffs (factor 1, jitter 0.5) stay within two
    thirds of MLCYCLE_MLFLOW_TIMEOUT, leaving the rest to a busy machine."""
    from mlcycle.tracking import bound_http_waits

    for name in ("MAX_RETRIES", "BACKOFF_FACTOR", "BACKOFF_JITTER", "TIMEOUT"):
        monkeypatch.delenv(f"MLFLOW_HTTP_REQUEST_{name}", raising=False)
    bound_http_waits(budget)
    retries = int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    timeout = int(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    factor, jitter = (float(os.environ[f"MLFLOW_HTTP_REQUEST_BACKOFF_{k}"]) for k in ("FACTOR", "JITTER"))
    backoffs = sum(factor * 2**i + jitter for i in range(retries))
    assert timeout >= 1 and retries >= 1
    assert (retries + 1) * timeout + backoffs <= max(budget * 2 / 3, 3 + backoffs), (timeout, retries)
