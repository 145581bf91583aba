"""Airflow UI extensions of the project: MLflow and each pipeline's lifecycle page in the UI, and the store's reports.

The per-task "MLflow" and "Report" buttons are operator extra links of the step operators
(dags/pipeline_support/links.py). This plugin adds:

- the MLflow UI to the "Browse" menu (its address from MLCYCLE_MLFLOW_UI_URL, default `make mlflow-ui`'s);
- "Model lifecycle" in the navigation bar and as a tab of every pipeline DAG: a page per pipeline
  (``/mlcycle/lifecycle/<pipeline>``, plugins/mlcycle_lifecycle.py) with the model versions and
  their gate decisions, the aliases, the drift ledger, the deploys and the live serving figures;
- a read-only route, ``/mlcycle/reports/<pipeline>/reports/...``, that serves the reports the steps
  write into the data store (validation summaries and Great Expectations Data Docs, drift reports),
  so that a "Report" button and an alert open them in a browser. Data Docs pages get their styles
  and scripts from the same route (``/mlcycle/reports/_assets/``), not from public CDNs.

Every route is behind Airflow's own login: the UI's session (the ``_token`` cookie) or an API token
(``Authorization: Bearer``), checked by the API server's auth manager; a pipeline's pages need read
access to its DAG ``training_<pipeline>``, and the lifecycle index lists only the pipelines whose DAG
the user may read. Access is decided before existence: a user without access gets the same 403 for a
pipeline that exists and for one that does not. The pipeline must be a known spec, each path segment
is checked (no ``..``, no NUL, no backslash, no over-long name) and no symlink is followed: the file is
opened one component at a time from the store's root (``<pipeline>``, ``reports``, then the path),
each relative to its folder's descriptor with ``O_NOFOLLOW``, checked to be a regular file with
``fstat`` and served from that descriptor, so what was checked is what is sent. Only regular files
under that pipeline's ``reports/`` folder are served; raw, validated and quarantined data never are.

A store in object storage (``MLCYCLE_STORE=s3://bucket/prefix``) is read with the keys of the
Airflow connection ``mlcycle_s3`` (the tasks' own), through the same path checks; a bucket has no
symbolic links to follow.
Importing this module costs little (Airflow imports plugins in every process): the pages' own code
is imported when a page is asked for.
"""

import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from airflow.plugins_manager import AirflowPlugin

MLFLOW_UI_URL = os.environ.get("MLCYCLE_MLFLOW_UI_URL", "http://127.0.0.1:5000")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
REPORTS_PREFIX = "/mlcycle/reports"
LIFECYCLE_PREFIX = "/mlcycle/lifecycle"
#: Limits of a report path: a file name a filesystem accepts, and a sane depth.
MAX_SEGMENT, MAX_SEGMENTS = 255, 32
DAG_KINDS = ("training", "monitoring", "deploy")
#: How each component on the way to a served file is opened: never through a symlink, never
#: blocking on a FIFO (it would hold a server thread), never as a controlling terminal, never
#: inherited by a process Airflow starts.
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
CHUNK = 64 * 1024
#: The local copies of Data Docs' CDN assets (plugins/data_docs_assets/README.md lists them).
ASSETS_DIR = Path(__file__).resolve().parent / "data_docs_assets"


def store_root() -> "Path | BucketStore":
    """The data store: a folder, or a ``BucketStore`` for ``MLCYCLE_STORE=s3://bucket/prefix``."""
    location = os.environ.get("MLCYCLE_STORE", "")
    if location.startswith("s3://"):
        return BucketStore(location)
    if location:
        return Path(location.removeprefix("file://")).resolve()
    return (Path(os.environ.get("MLCYCLE_HOME", PROJECT_ROOT / ".local")) / "store").resolve()


@dataclass
class Opened:
    """A file of the store opened for reading: ``file`` has ``read(n)`` and ``close()``."""

    file: Any
    size: int
    mtime: float


class BucketStore:
    """A store in object storage, read with boto3 and the keys the tasks use: the Airflow connection
    ``mlcycle_s3`` (``MLCYCLE_S3_CONN_ID``), else the API server's own ``AWS_*`` environment.

    A key is the store's prefix and the checked path segments joined by ``/``: there is no symbolic
    link in a bucket, and ``..`` never gets this far (``checked_file``).
    """

    def __init__(self, uri: str):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self.uri, self.bucket, self.prefix = uri.rstrip("/"), bucket, prefix.strip("/")
        self._client: Any = None

    def __str__(self) -> str:
        return self.uri

    def client(self) -> Any:
        if self._client is None:
            import boto3

            _dag_helpers_on_path()
            from pipeline_support.object_store import object_store_env

            env = {**os.environ, **object_store_env()}
            self._client = boto3.client(
                "s3",
                endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
                region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
                aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
                aws_session_token=env.get("AWS_SESSION_TOKEN"),
            )
        return self._client

    def open(self, segments: Sequence[str]) -> Opened:
        """The object ``segments`` names; FileNotFoundError when there is none (or it cannot be read)."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = "/".join([p for p in (self.prefix, *segments) if p])
        try:
            found = self.client().get_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise FileNotFoundError(f"{self.uri}/{'/'.join(segments)}: {exc}") from None
        return Opened(found["Body"], int(found["ContentLength"]), found["LastModified"].timestamp())


def open_in_store(root: Path | BucketStore, segments: Sequence[str]) -> Opened:
    """``root/segments...`` opened for reading: ``open_regular`` on a disk, a GET in a bucket.

    A bucket is told by not being a path rather than by its class: Airflow's plugin manager loads
    this file again under the same module name, so a ``BucketStore`` made by one copy must still
    be recognised by the other's ``open_in_store``.
    """
    if not isinstance(root, (str, os.PathLike)):
        _check_segments(root, segments)
        return root.open(segments)
    fd = open_regular(root, segments)
    info = os.fstat(fd)
    return Opened(os.fdopen(fd, "rb"), info.st_size, info.st_mtime)


def _dag_helpers_on_path() -> None:
    """``dags/`` importable, for its ``pipeline_support`` (imported when a page is asked for)."""
    dags = str(PROJECT_ROOT / "dags")
    if dags not in sys.path:
        sys.path.append(dags)


def valid_pipeline_name(name: str) -> bool:
    """Whether ``name`` is a pipeline name as specs allow it (``mlcycle.spec_schema.NAME``)."""
    _dag_helpers_on_path()
    from pipeline_support.specs import spec_schema

    return bool(spec_schema.NAME.match(name))


def known_pipelines() -> list[str]:
    """The names of the loadable specs in the specs folder (what the DAG files build DAGs from)."""
    _dag_helpers_on_path()
    from pipeline_support.specs import discover

    return sorted(entry.name for entry in discover()[0])


def pipeline_of_dag(dag_id: str) -> str | None:
    kind, _, name = dag_id.partition("_")
    return name if kind in DAG_KINDS and name else None


def _check_segments(root: Any, segments: Sequence[str]) -> None:
    """FileNotFoundError unless every segment is one plain name (no ``..``, no ``/``, no NUL)."""
    if not segments or any(s in ("", ".", "..") or "/" in s or "\0" in s for s in segments):
        raise FileNotFoundError(f"not a path below {root}: {'/'.join(segments)[:200]!r}")


def open_regular(root: Path, segments: Sequence[str]) -> int:
    """A read-only descriptor of the regular file ``root/segments[0]/.../segments[-1]``.

    Each component is opened relative to its folder's descriptor with ``O_NOFOLLOW`` (a folder also
    with ``O_DIRECTORY``), so a symlink anywhere below ``root`` (a pipeline folder, its ``reports``
    folder, a file) is refused, and a component renamed or swapped for a symlink after a check
    cannot redirect the open: the descriptor returned is the file that was checked. OSError
    (FileNotFoundError, ELOOP for a symlink, ENOTDIR, ...) otherwise; the caller closes the descriptor.
    """
    _check_segments(root, segments)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, segment in enumerate(segments):
            folder = i < len(segments) - 1
            child = os.open(segment, OPEN_FLAGS | (os.O_DIRECTORY if folder else 0), dir_fd=fd)
            os.close(fd)
            fd = child
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"not a regular file: {'/'.join(segments)[:200]!r}")
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def checked_file(root: Path | BucketStore, prefix: Sequence[str], path: str) -> Opened:
    """The regular file ``path`` names under ``root/prefix``, opened; else HTTPException (4xx).

    ``prefix`` (a pipeline and ``reports``) and each segment of ``path`` are opened as in
    :func:`open_regular`: no symlink is followed from ``root`` down.
    """
    from fastapi import HTTPException

    def refuse(status: int, why: str) -> HTTPException:
        return HTTPException(status_code=status, detail=f"no file {path[:200]!r}: {why}")

    segments = (path or "index.html").split("/")
    if len(segments) > MAX_SEGMENTS:
        raise refuse(400, f"more than {MAX_SEGMENTS} path segments")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise refuse(400, "empty, '.' or '..' path segment")
        if len(segment.encode()) > MAX_SEGMENT:
            raise refuse(400, f"a path segment longer than {MAX_SEGMENT} bytes")
        if "\\" in segment or any(ord(c) < 32 or ord(c) == 127 for c in segment):
            raise refuse(400, "a backslash or a control character in the path")
    try:
        return open_in_store(root, [*prefix, *segments])
    except OSError:  # missing, a symlink on the way (ELOOP, ENOTDIR), or not a regular file
        raise refuse(404, "no such file (a symbolic link is never followed)") from None


def checked_report(pipeline: str, path: str) -> Opened:
    """The report ``path`` names in the pipeline's reports folder (a known pipeline), else 4xx."""
    from fastapi import HTTPException

    if not valid_pipeline_name(pipeline) or pipeline not in known_pipelines():
        raise HTTPException(status_code=404, detail=f"no pipeline {pipeline[:80]!r}")
    return checked_file(store_root(), (pipeline, "reports"), path)


def file_response(opened: Opened, name: str, headers: dict[str, str] | None = None) -> Any:
    """A response that streams the opened file (closed when sent); its type guessed from ``name``."""
    import mimetypes
    from email.utils import formatdate

    from fastapi.responses import StreamingResponse

    file = opened.file  # owned from here: closed when sent, or when dropped

    def chunks():
        try:
            left = opened.size  # never more than the Content-Length announced
            while left > 0:
                chunk = file.read(min(CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk
        finally:
            file.close()

    return StreamingResponse(
        chunks(),
        media_type=mimetypes.guess_type(name)[0] or "application/octet-stream",
        headers={
            "Content-Length": str(opened.size),
            "Last-Modified": formatdate(opened.mtime, usegmt=True),
            **(headers or {}),
        },
    )


def read_text(opened: Opened) -> str:
    """The whole text of the opened file (undecodable bytes replaced), closing it."""
    try:
        return opened.file.read().decode(errors="replace")
    finally:
        opened.file.close()


def request_token(request: Any) -> str | None:
    """The credential of a request as Airflow's ``get_user`` takes it: a bearer token, else the UI's cookie."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:]
    return request.cookies.get("_token")


async def current_user(request: Any) -> Any:
    """A dependency: the request's user, checked by the auth manager; 401 without a credential."""
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    return await resolve_user_from_token(request_token(request))


def may_read(user: Any, pipeline: str, method: str = "GET") -> bool:
    """Whether ``user`` may read the pipeline's training DAG (the auth manager decides)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    details = DagDetails(id=f"training_{pipeline}")
    return get_auth_manager().is_authorized_dag(method=method, details=details, user=user)


def authorize(user: Any, pipeline: str, method: str = "GET") -> None:
    """403 unless ``user`` may read the pipeline's training DAG.

    Called before the pipeline is looked up, so that a user without access gets the same answer
    whether the pipeline exists or not.
    """
    from fastapi import HTTPException

    if not may_read(user, pipeline, method):
        raise HTTPException(status_code=403, detail=f"no read access to the DAG training_{pipeline}")


def offline_data_docs(page: str) -> str:
    """A Data Docs page with its CDN stylesheets, scripts and fonts pointed at the local copies."""
    import data_docs_offline

    return data_docs_offline.rewrite(page, f"{REPORTS_PREFIX}/_assets")


def reports_app():
    """A FastAPI app serving ``<store>/<pipeline>/reports/**`` (HTML, JSON, images) to Airflow users."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, Response

    app = FastAPI(title="mlcycle reports", docs_url=None, redoc_url=None, openapi_url=None)

    async def user_of(request: Request) -> Any:
        return await current_user(request)

    User = Annotated[Any, Depends(user_of)]

    @app.get("/_assets/{path:path}")
    def asset(path: str, user: User) -> Response:
        if path.endswith(".md"):
            raise HTTPException(status_code=404, detail="not an asset")
        opened = checked_file(ASSETS_DIR, (), path)
        return file_response(opened, path, headers={"Cache-Control": "max-age=86400"})

    @app.get("/{pipeline}/reports/{path:path}")
    def report(pipeline: str, path: str, user: User) -> Response:
        if not valid_pipeline_name(pipeline):
            raise HTTPException(status_code=404, detail=f"no pipeline {pipeline[:80]!r}")
        authorize(user, pipeline)
        opened = checked_report(pipeline, path)
        name = path or "index.html"
        if name.endswith(".html") and "data_docs" in name.split("/"):
            return HTMLResponse(offline_data_docs(read_text(opened)))
        return file_response(opened, name)

    return app


def lifecycle_app():
    """A FastAPI app serving the lifecycle pages (server-rendered HTML with an inline SVG chart)."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, RedirectResponse

    app = FastAPI(title="mlcycle lifecycle", docs_url=None, redoc_url=None, openapi_url=None)

    async def page_user(request: Request) -> Any:
        from airflow.api_fastapi.app import get_auth_manager

        if not request_token(request):  # a person without a session goes to Airflow's login, and back
            login = get_auth_manager().get_url_login(next_url=str(request.url))
            raise HTTPException(status_code=307, headers={"Location": login}, detail="login first")
        return await current_user(request)

    User = Annotated[Any, Depends(page_user)]

    @app.get("/", response_class=HTMLResponse)
    def index(user: User) -> str:
        import mlcycle_lifecycle

        return mlcycle_lifecycle.index_page([p for p in known_pipelines() if may_read(user, p)])

    @app.get("/dag/{dag_id}")
    def for_dag(dag_id: str, user: User) -> RedirectResponse:
        pipeline = pipeline_of_dag(dag_id)
        if not pipeline or not valid_pipeline_name(pipeline):
            raise HTTPException(status_code=404, detail=f"the DAG {dag_id[:100]!r} belongs to no pipeline")
        authorize(user, pipeline)
        if pipeline not in known_pipelines():
            raise HTTPException(status_code=404, detail=f"the DAG {dag_id[:100]!r} belongs to no pipeline")
        return RedirectResponse(f"{LIFECYCLE_PREFIX}/{pipeline}", status_code=307)

    @app.get("/{pipeline}", response_class=HTMLResponse)
    def lifecycle(pipeline: str, user: User) -> str:
        import mlcycle_lifecycle

        if not valid_pipeline_name(pipeline):
            raise HTTPException(status_code=404, detail=f"no pipeline {pipeline[:80]!r}")
        authorize(user, pipeline)
        if pipeline not in known_pipelines():
            raise HTTPException(status_code=404, detail=f"no pipeline {pipeline[:80]!r}")
        return mlcycle_lifecycle.lifecycle_page(pipeline, store_root())

    return app


class MlcycleUiPlugin(AirflowPlugin):
    name = "mlcycle_ui"
    external_views = [
        {
            "name": "MLflow",
            "href": MLFLOW_UI_URL,
            "destination": "nav",
            "category": "browse",
            "url_route": "mlflow",
        },
        {
            "name": "Model lifecycle",
            "href": f"{LIFECYCLE_PREFIX}/",
            "destination": "nav",
            "url_route": "mlcycle-lifecycle",
        },
        {
            "name": "Model lifecycle",
            "href": f"{LIFECYCLE_PREFIX}/dag/{{DAG_ID}}",
            "destination": "dag",
            "url_route": "mlcycle-lifecycle-dag",
        },
    ]
    fastapi_apps = [
        {"app": reports_app(), "url_prefix": REPORTS_PREFIX, "name": "mlcycle reports"},
        {"app": lifecycle_app(), "url_prefix": LIFECYCLE_PREFIX, "name": "mlcycle lifecycle"},
    ]
