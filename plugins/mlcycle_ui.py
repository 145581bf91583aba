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
access to its DAG ``training_<pipeline>``. The pipeline must be a known spec, each path segment is
checked (no ``..``, no NUL, no backslash, no over-long name) and no symlink is followed: only regular
files under that pipeline's ``reports/`` folder are served; raw, validated and quarantined data never are.

Importing this module costs little (Airflow imports plugins in every process): the pages' own code
is imported when a page is asked for.
"""

import os
import re
import stat
import sys
from pathlib import Path
from typing import Annotated, Any

from airflow.plugins_manager import AirflowPlugin

MLFLOW_UI_URL = os.environ.get("MLCYCLE_MLFLOW_UI_URL", "http://127.0.0.1:5000")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
REPORTS_PREFIX = "/mlcycle/reports"
LIFECYCLE_PREFIX = "/mlcycle/lifecycle"
#: A pipeline name as specs allow it (dags/pipeline_support/specs.py).
PIPELINE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
#: Limits of a report path: a file name a filesystem accepts, and a sane depth.
MAX_SEGMENT, MAX_SEGMENTS = 255, 32
DAG_KINDS = ("training", "monitoring", "deploy")
#: The local copies of Data Docs' CDN assets (plugins/data_docs_assets/README.md lists them).
ASSETS_DIR = Path(__file__).resolve().parent / "data_docs_assets"


def store_root() -> Path:
    if os.environ.get("MLCYCLE_STORE"):
        return Path(os.environ["MLCYCLE_STORE"]).resolve()
    return (Path(os.environ.get("MLCYCLE_HOME", PROJECT_ROOT / ".local")) / "store").resolve()


def known_pipelines() -> list[str]:
    """The names of the loadable specs in the specs folder (what the DAG files build DAGs from)."""
    dags = str(PROJECT_ROOT / "dags")
    if dags not in sys.path:
        sys.path.append(dags)
    from pipeline_support.specs import discover

    return sorted(entry.name for entry in discover()[0])


def pipeline_of_dag(dag_id: str) -> str | None:
    kind, _, name = dag_id.partition("_")
    return name if kind in DAG_KINDS and name else None


def checked_file(folder: Path, path: str) -> Path:
    """The regular file ``path`` names under ``folder``, never through a symlink; else HTTPException (4xx)."""
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
    target = folder
    try:
        for segment in segments:  # one component at a time, refusing any symlink on the way
            target = target / segment
            mode = os.lstat(target).st_mode
            if stat.S_ISLNK(mode):
                raise refuse(404, "a symbolic link is never followed")
    except OSError:
        raise refuse(404, "no such file") from None
    if not stat.S_ISREG(mode):
        raise refuse(404, "not a file")
    return target


def checked_report(pipeline: str, path: str) -> Path:
    """The report file ``path`` names in the pipeline's reports folder (a known pipeline), else 4xx."""
    from fastapi import HTTPException

    if not PIPELINE_NAME.match(pipeline) or pipeline not in known_pipelines():
        raise HTTPException(status_code=404, detail=f"no pipeline {pipeline[:80]!r}")
    return checked_file(store_root() / pipeline / "reports", path)


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


def authorize(user: Any, pipeline: str, method: str = "GET") -> None:
    """403 unless ``user`` may read the pipeline's training DAG (the auth manager decides)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from fastapi import HTTPException

    dag_id = f"training_{pipeline}"
    if not get_auth_manager().is_authorized_dag(method=method, details=DagDetails(id=dag_id), user=user):
        raise HTTPException(status_code=403, detail=f"no read access to the DAG {dag_id}")


def offline_data_docs(page: str) -> str:
    """A Data Docs page with its CDN stylesheets, scripts and fonts pointed at the local copies."""
    import data_docs_offline

    return data_docs_offline.rewrite(page, f"{REPORTS_PREFIX}/_assets")


def reports_app():
    """A FastAPI app serving ``<store>/<pipeline>/reports/**`` (HTML, JSON, images) to Airflow users."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse, HTMLResponse, Response

    app = FastAPI(title="mlcycle reports", docs_url=None, redoc_url=None, openapi_url=None)

    async def user_of(request: Request) -> Any:
        return await current_user(request)

    User = Annotated[Any, Depends(user_of)]

    @app.get("/_assets/{path:path}")
    def asset(path: str, user: User) -> FileResponse:
        if path.endswith(".md"):
            raise HTTPException(status_code=404, detail="not an asset")
        return FileResponse(checked_file(ASSETS_DIR, path), headers={"Cache-Control": "max-age=86400"})

    @app.get("/{pipeline}/reports/{path:path}")
    def report(pipeline: str, path: str, user: User) -> Response:
        if not PIPELINE_NAME.match(pipeline):
            raise HTTPException(status_code=404, detail=f"no pipeline {pipeline[:80]!r}")
        authorize(user, pipeline)
        target = checked_report(pipeline, path)
        if target.suffix == ".html" and "data_docs" in target.parts:
            return HTMLResponse(offline_data_docs(target.read_text(errors="replace")))
        return FileResponse(target)

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

        return mlcycle_lifecycle.index_page(known_pipelines())

    @app.get("/dag/{dag_id}")
    def for_dag(dag_id: str, user: User) -> RedirectResponse:
        pipeline = pipeline_of_dag(dag_id)
        if not pipeline or pipeline not in known_pipelines():
            raise HTTPException(status_code=404, detail=f"the DAG {dag_id[:100]!r} belongs to no pipeline")
        return RedirectResponse(f"{LIFECYCLE_PREFIX}/{pipeline}", status_code=307)

    @app.get("/{pipeline}", response_class=HTMLResponse)
    def lifecycle(pipeline: str, user: User) -> str:
        import mlcycle_lifecycle

        if not PIPELINE_NAME.match(pipeline) or pipeline not in known_pipelines():
            raise HTTPException(status_code=404, detail=f"no pipeline {pipeline[:80]!r}")
        authorize(user, pipeline)
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
