"""The lifecycle page of a pipeline: what the project recorded about its model, in one page.

Served by the Airflow API server (plugins/mlcycle_ui.py, behind Airflow's login), read from where
each part is recorded:

- the MLflow registry and tracking store: the model versions of the pipeline (tag
  ``mlcycle.pipeline``), their hold-out metric and gate decision (run metrics ``gate_candidate_*``,
  tags ``gate.*``), the aliases ``@champion``, ``@production``, ``@staging`` and the deploy tags;
- the drift ledger, ``<store>/<pipeline>/reports/drift/ledger.json`` (days, episodes, triggers);
- the deploy state, ``<store>/<pipeline>/deploy/state.json`` (slots, the proxy's switches);
  both opened as the reports route opens a report: no symlink is followed from the store down;
- serving figures: Prometheus when ``MLCYCLE_PROMETHEUS_URL`` is set, else each slot's ``/metrics``.

The Airflow environment has no MLflow library (by design: the plugin runs in every Airflow process),
so the registry is read without it: over MLflow's REST API when the tracking URI is an HTTP server,
else straight from its SQL store (SQLite or PostgreSQL, with the SQLAlchemy Airflow already has),
read-only. Only the standard library is imported at module level.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALIASES = ("champion", "production", "staging")
#: The endpoints whose requests are the serving figures (not the probes' /health, /ready, /metrics).
PREDICTION_ENDPOINTS = ("/predict", "/invocations")
_PREDICTING = 'endpoint=~"/predict|/invocations"'
HTTP_TIMEOUT = 3.0


# --- reading -------------------------------------------------------------------------------------


@dataclass
class Version:
    version: int
    created: dt.datetime
    run_id: str
    experiment_id: str = ""
    metric: str = ""
    score: float | None = None
    blessed: bool | None = None
    reason: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)


def _ms(value: Any) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(value or 0) / 1000, dt.UTC)


def _decorate(version: Version, run_tags: dict[str, str], metrics: dict[str, float]) -> Version:
    scores = {k: v for k, v in metrics.items() if k.startswith("gate_candidate_")}
    if scores:
        key = sorted(scores)[0]
        version.metric, version.score = key.removeprefix("gate_candidate_"), scores[key]
    blessed = run_tags.get("gate.blessed", version.tags.get("gate.blessed"))
    version.blessed = None if blessed is None else blessed == "true"
    version.reason = run_tags.get("gate.reason", version.tags.get("gate.reason", ""))
    return version


def versions_from_sql(uri: str, pipeline: str) -> list[Version]:
    """The pipeline's model versions from MLflow's SQL store (read-only queries)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(uri)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT v.name, v.version, v.creation_time, v.run_id FROM model_versions v "
                    "JOIN model_version_tags t ON t.name = v.name AND t.version = v.version "
                    "WHERE t.key = 'mlcycle.pipeline' AND t.value = :p ORDER BY v.version"
                ),
                {"p": pipeline},
            ).all()
            out = []
            for name, number, created, run_id in rows:
                tags = dict(
                    conn.execute(
                        text("SELECT key, value FROM model_version_tags WHERE name = :n AND version = :v"),
                        {"n": name, "v": number},
                    ).all()
                )
                aliases = [
                    a
                    for (a,) in conn.execute(
                        text("SELECT alias FROM registered_model_aliases WHERE name = :n AND version = :v"),
                        {"n": name, "v": number},
                    ).all()
                ]
                run_tags = dict(
                    conn.execute(text("SELECT key, value FROM tags WHERE run_uuid = :r"), {"r": run_id}).all()
                )
                metrics = {
                    k: float(v)
                    for k, v in conn.execute(
                        text("SELECT key, value FROM latest_metrics WHERE run_uuid = :r"), {"r": run_id}
                    ).all()
                }
                experiment = conn.execute(
                    text("SELECT experiment_id FROM runs WHERE run_uuid = :r"), {"r": run_id}
                ).scalar()
                version = Version(int(number), _ms(created), run_id or "", str(experiment or ""), tags=tags)
                version.aliases = sorted(aliases)
                out.append(_decorate(version, run_tags, metrics))
            return out
    finally:
        engine.dispose()


def _rest(base: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
    url = f"{base.rstrip('/')}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:  # noqa: S310 (the configured server)
        return json.loads(response.read())


def versions_from_rest(base: str, pipeline: str) -> list[Version]:
    """The pipeline's model versions from an MLflow tracking server's REST API."""
    found = _rest(
        base,
        "model-versions/search",
        {"filter": f"tags.`mlcycle.pipeline` = '{pipeline}'", "max_results": 1000},
    )
    out = []
    aliases: dict[str, dict[str, list[str]]] = {}  # model -> version -> its aliases
    for raw in found.get("model_versions", []):
        name = raw.get("name", "")
        if name not in aliases:  # a search of versions leaves their aliases out: the model holds them
            model = _rest(base, "registered-models/get", {"name": name}).get("registered_model", {})
            aliases[name] = {}
            for entry in model.get("aliases", []):
                aliases[name].setdefault(str(entry.get("version")), []).append(entry.get("alias", ""))
        tags = {t["key"]: t.get("value", "") for t in raw.get("tags", [])}
        run = (
            _rest(base, "runs/get", {"run_id": raw.get("run_id", "")}).get("run", {})
            if raw.get("run_id")
            else {}
        )
        data = run.get("data", {})
        version = Version(
            int(raw["version"]),
            _ms(raw.get("creation_timestamp")),
            raw.get("run_id", ""),
            str(run.get("info", {}).get("experiment_id", "")),
            tags=tags,
        )
        version.aliases = sorted(
            set(raw.get("aliases", [])) | set(aliases[name].get(str(raw["version"]), []))
        )
        out.append(
            _decorate(
                version,
                {t["key"]: t.get("value", "") for t in data.get("tags", [])},
                {m["key"]: float(m["value"]) for m in data.get("metrics", [])},
            )
        )
    return sorted(out, key=lambda v: v.version)


def model_versions(pipeline: str) -> tuple[list[Version], str]:
    """Versions and a problem ("" when the registry could be read)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    try:
        if uri.startswith(("http://", "https://")):
            return versions_from_rest(uri, pipeline), ""
        if uri.startswith(("sqlite:", "postgresql", "mysql")):
            if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
                return [], "no MLflow store yet (make run creates it)"
            return versions_from_sql(uri, pipeline), ""
        return [], f"MLFLOW_TRACKING_URI {uri or '(unset)'} is neither an HTTP server nor a SQL store"
    except Exception as exc:  # the page shows what it could not read, and the rest
        return [], f"cannot read the MLflow registry at {uri}: {type(exc).__name__}: {exc}"


def read_json(store: Any, *parts: str) -> Any:
    """The JSON file ``store/parts...`` (a folder or a ``BucketStore``), opened as the reports route
    opens a report (no symlink followed from the store down, a regular file only); None when there is
    none or it is unreadable."""
    from mlcycle_ui import open_in_store, read_text

    try:
        return json.loads(read_text(open_in_store(store, parts)))
    except (OSError, ValueError):
        return None


def _prometheus(base: str, query: str) -> float | None:
    url = f"{base.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:  # noqa: S310 (the configured server)
        result = json.loads(response.read()).get("data", {}).get("result", [])
    values = [float(r["value"][1]) for r in result]
    value = sum(values) if values else None
    return None if value is None or math.isnan(value) else value


def parse_exposition(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus' text format: metric name -> (labels, value) samples."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        parsed = {}
        for part in labels.rstrip("}").split(","):
            key, _, raw = part.partition("=")
            if key:
                parsed[key.strip()] = raw.strip().strip('"')
        try:
            out.setdefault(name, []).append((parsed, float(value)))
        except ValueError:
            continue
    return out


def figures_from_exposition(text: str) -> dict[str, Any]:
    """Requests, 4xx/5xx share and p99 (from the latency histogram) of one slot since it started."""
    samples = parse_exposition(text)
    by_status: dict[str, float] = {}
    for labels, value in samples.get("mlcycle_requests_total", []):
        if labels.get("endpoint") not in PREDICTION_ENDPOINTS:
            continue
        status = labels.get("status", "")
        by_status[status[:1]] = by_status.get(status[:1], 0.0) + value
    total = sum(by_status.values())
    buckets: dict[float, float] = {}
    for labels, value in samples.get("mlcycle_request_latency_seconds_bucket", []):
        if labels.get("endpoint") not in PREDICTION_ENDPOINTS:
            continue
        le = float("inf") if labels.get("le") == "+Inf" else float(labels.get("le", "nan"))
        buckets[le] = buckets.get(le, 0.0) + value
    p99 = None
    if buckets and buckets.get(float("inf"), 0) > 0:
        target = 0.99 * buckets[float("inf")]
        p99 = next(le for le in sorted(buckets) if buckets[le] >= target)
    return {
        "requests": total,
        "p99_seconds": p99,
        "share_4xx": by_status.get("4", 0.0) / total if total else None,
        "share_5xx": by_status.get("5", 0.0) / total if total else None,
    }


def serving_figures(state: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str, str]:
    """Live figures, where they come from, and a problem ("" when read)."""
    prometheus = os.environ.get("MLCYCLE_PROMETHEUS_URL", "")
    if prometheus:
        try:
            window = "1h"
            total = _prometheus(
                prometheus, f"sum(increase(mlcycle_requests_total{{{_PREDICTING}}}[{window}]))"
            )
            err4 = _prometheus(
                prometheus, f'sum(increase(mlcycle_requests_total{{{_PREDICTING},status=~"4.."}}[{window}]))'
            )
            err5 = _prometheus(
                prometheus, f'sum(increase(mlcycle_requests_total{{{_PREDICTING},status=~"5.."}}[{window}]))'
            )
            p99 = _prometheus(
                prometheus,
                f"histogram_quantile(0.99, sum by (le) (rate(mlcycle_request_latency_seconds_bucket{{{_PREDICTING}}}[{window}])))",
            )
            figures = {
                "requests": total,
                "p99_seconds": p99,
                "share_4xx": (err4 or 0) / total if total else None,
                "share_5xx": (err5 or 0) / total if total else None,
            }
            return figures, f"Prometheus {prometheus} (last {window})", ""
        except Exception as exc:
            return None, f"Prometheus {prometheus}", f"{type(exc).__name__}: {exc}"
    live = ((state or {}).get("slots") or {}).get((state or {}).get("live") or "")
    if not live:
        return None, "the live slot's /metrics", "nothing deployed yet"
    url = f"http://127.0.0.1:{live['port']}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:  # noqa: S310 (a local slot)
            return figures_from_exposition(response.read().decode()), f"{url} (since the slot started)", ""
    except Exception as exc:
        return None, url, f"{type(exc).__name__}: {exc}"


# --- links ---------------------------------------------------------------------------------------


def mlflow_ui() -> str:
    return os.environ.get("MLCYCLE_MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/")


def run_link(version: Version) -> str:
    if version.experiment_id:
        return f"{mlflow_ui()}/#/experiments/{version.experiment_id}/runs/{version.run_id}"
    return f"{mlflow_ui()}/#/models/{version.tags.get('mlcycle.pipeline', '')}/versions/{version.version}"


def dag_run_link(dag_id: str | None, run_id: str | None) -> str:
    if not dag_id or not run_id:
        return ""
    return f"/dags/{urllib.parse.quote(dag_id)}/runs/{urllib.parse.quote(run_id)}"


def report_link(store: Any, pipeline: str, path: str | None) -> str:
    """The reports route's address of a report file in the pipeline's reports folder, else ""."""
    if not path:
        return ""
    if str(store).startswith("s3://"):  # a key of the bucket: the part below the reports folder
        prefix = f"{store}/{pipeline}/reports/"
        if not path.startswith(prefix) or ".." in path.removeprefix(prefix).split("/"):
            return ""
        relative = Path(path.removeprefix(prefix))
        return f"/mlcycle/reports/{urllib.parse.quote(pipeline)}/reports/{urllib.parse.quote(relative.as_posix())}"
    try:
        relative = Path(path).resolve().relative_to((store / pipeline / "reports").resolve())
    except ValueError:
        return ""
    return (
        f"/mlcycle/reports/{urllib.parse.quote(pipeline)}/reports/{urllib.parse.quote(relative.as_posix())}"
    )


# --- rendering -----------------------------------------------------------------------------------

e = html.escape


def _a(href: str, label: str) -> str:
    return f'<a href="{e(href)}" target="_top">{e(label)}</a>' if href else e(label)


def chart(versions: list[Version]) -> str:
    """An inline SVG: each version's hold-out score over time, blessed green, rejected red."""
    scored = [v for v in versions if v.score is not None]
    if not scored:
        return "<p class='muted'>No evaluated version yet.</p>"
    width, height, pad = 720, 220, 44
    lo, hi = min(v.score for v in scored), max(v.score for v in scored)
    span = (hi - lo) or abs(hi) or 1.0
    lo, hi = lo - 0.1 * span, hi + 0.1 * span
    n = len(scored)

    def x(i: int) -> float:
        return pad + (width - 2 * pad) * (i / (n - 1) if n > 1 else 0.5)

    def y(score: float) -> float:
        return height - pad - (height - 2 * pad) * (score - lo) / (hi - lo)

    points = " ".join(f"{x(i):.1f},{y(v.score):.1f}" for i, v in enumerate(scored))
    marks = []
    for i, v in enumerate(scored):
        colour = "#2f855a" if v.blessed else "#c53030" if v.blessed is False else "#718096"
        tags = "".join(f" @{a}" for a in v.aliases)
        marks.append(
            f'<a href="{e(run_link(v))}" target="_top"><circle cx="{x(i):.1f}" cy="{y(v.score):.1f}" r="6" '
            f'fill="{colour}"><title>v{v.version} {e(v.metric)} {v.score:.4f} '
            f"{'blessed' if v.blessed else 'rejected' if v.blessed is False else ''}{e(tags)}</title></circle></a>"
            f'<text x="{x(i):.1f}" y="{height - pad + 18}" text-anchor="middle">v{v.version}{e(tags)}</text>'
        )
    metric = e(scored[-1].metric)
    return (
        f'<svg role="img" aria-label="hold-out {metric} per version" viewBox="0 0 {width} {height}" '
        f'width="100%" style="max-width:{width}px">'
        f'<text x="{pad}" y="16">hold-out {metric} per version (green: blessed, red: rejected)</text>'
        f'<text x="4" y="{y(hi - 0.1 * span * 0) + 4:.1f}" font-size="11">{hi:.3g}</text>'
        f'<text x="4" y="{y(lo) + 4:.1f}" font-size="11">{lo:.3g}</text>'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#a0aec0"/>'
        f'<polyline points="{points}" fill="none" stroke="#4a5568" stroke-width="1.5"/>'
        + "".join(marks)
        + "</svg>"
    )


STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:16px 24px;color:#1a202c}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 6px}
table{border-collapse:collapse;margin:4px 0}td,th{border-bottom:1px solid #e2e8f0;padding:3px 10px;text-align:left}
.muted{color:#718096}.ok{color:#2f855a}.bad{color:#c53030}.pill{border-radius:8px;padding:1px 7px;background:#edf2f7}
.summary{display:flex;gap:24px;flex-wrap:wrap}.summary div{background:#f7fafc;padding:8px 14px;border-radius:6px}
"""


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def index_page(pipelines: list[str]) -> str:
    """The list of the pipelines given: those whose DAG the user may read (plugins/mlcycle_ui.py)."""
    items = "".join(f"<li>{_a(f'/mlcycle/lifecycle/{p}', p)}</li>" for p in pipelines)
    empty = "<li>no pipeline whose DAG you may read</li>"
    return _page("Model lifecycle", f"<h1>Model lifecycle</h1><ul>{items or empty}</ul>")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def lifecycle_page(pipeline: str, store: Path) -> str:
    versions, problem = model_versions(pipeline)
    holders = {alias: next((v for v in versions if alias in v.aliases), None) for alias in ALIASES}
    ledger = read_json(store, pipeline, "reports", "drift", "ledger.json") or {}
    days = ledger.get("days", ledger) if isinstance(ledger, dict) else {}
    days = {k: v for k, v in days.items() if isinstance(v, dict)}
    state = read_json(store, pipeline, "deploy", "state.json")
    figures, source, serving_problem = serving_figures(state)

    parts = [f"<h1>Model lifecycle: {e(pipeline)}</h1>"]
    cells = []
    for alias in ALIASES:
        v = holders[alias]
        cells.append(
            f"<div>@{alias}: <b>{_a(run_link(v), f'version {v.version}') if v else 'none'}</b></div>"
        )
    drifted = sorted(d for d, entry in days.items() if entry.get("status", "ok") != "ok")
    cells.append(
        f"<div>drifted days: <b>{len(drifted)}</b>{f' (last {e(drifted[-1])})' if drifted else ''}</div>"
    )
    parts.append(f"<div class='summary'>{''.join(cells)}</div>")

    parts.append("<h2>Model versions</h2>")
    if problem:
        parts.append(f"<p class='bad'>{e(problem)}</p>")
    parts.append(chart(versions))
    rows = []
    for v in reversed(versions):
        decision = "blessed" if v.blessed else "rejected" if v.blessed is False else "no decision"
        css = "ok" if v.blessed else "bad" if v.blessed is False else "muted"
        dag_id = v.tags.get("airflow.dag_id")
        run = v.tags.get("airflow.run_id") or v.tags.get("airflow.registered_by_run_id")
        rows.append(
            "<tr>"
            f"<td>{_a(run_link(v), f'v{v.version}')}</td><td>{e(v.created.strftime('%Y-%m-%d %H:%M'))}</td>"
            f"<td>{e(v.metric)} {'' if v.score is None else f'{v.score:.4f}'}</td>"
            f"<td class='{css}' title='{e(v.reason)}'>{decision}</td>"
            f"<td>{' '.join(f'<span class=pill>@{e(a)}</span>' for a in v.aliases)}</td>"
            f"<td>{_a(dag_run_link(dag_id, run), run or '')}</td><td class='muted'>{e(v.reason[:160])}</td>"
            "</tr>"
        )
    parts.append(
        "<table><tr><th>version</th><th>registered</th><th>hold-out</th><th>gate</th><th>aliases</th>"
        f"<th>DAG run</th><th>why</th></tr>{''.join(rows)}</table>"
        if rows
        else "<p class='muted'>No registered version yet.</p>"
    )

    parts.append("<h2>Drift</h2>")
    if days:
        rows = []
        for day in sorted(days, reverse=True)[:60]:
            entry = days[day]
            status = entry.get("status", "ok")
            link = report_link(store, pipeline, entry.get("report"))
            rows.append(
                f"<tr><td>{e(day)}</td><td class='{'ok' if status == 'ok' else 'bad'}'>{e(status)}</td>"
                f"<td>{e(entry.get('episode') or '')}</td>"
                f"<td>{'retrain triggered' if entry.get('trigger') else ''}</td>"
                f"<td>{_a(link, 'report') if link else ''}</td>"
                f"<td class='muted'>{e(str(entry.get('why', ''))[:160])}</td></tr>"
            )
        parts.append(
            "<table><tr><th>day</th><th>status</th><th>episode</th><th>trigger</th><th>report</th>"
            f"<th>why</th></tr>{''.join(rows)}</table>"
        )
    else:
        parts.append("<p class='muted'>No monitoring day recorded yet (the drift ledger is empty).</p>")

    parts.append("<h2>Deploys</h2>")
    deployed = [v for v in versions if v.tags.get("deploy.deployed_at")]
    switches = list((state or {}).get("switches") or [])
    if deployed or switches or state:
        rows = []
        for v in sorted(deployed, key=lambda v: v.tags["deploy.deployed_at"], reverse=True):
            previous = v.tags.get("deploy.previous_version", "")
            rows.append(
                f"<tr><td>{e(v.tags['deploy.deployed_at'])}</td><td>{_a(run_link(v), f'v{v.version}')}</td>"
                f"<td>{e(v.tags.get('deploy.slot', ''))}</td><td>{e(previous and f'from v{previous}')}</td>"
                f"<td>{_a(dag_run_link(v.tags.get('deploy.dag_id'), v.tags.get('deploy.dag_run')), v.tags.get('deploy.dag_run', ''))}</td></tr>"
            )
        for s in reversed(switches):
            when = dt.datetime.fromtimestamp(float(s.get("done") or 0), dt.UTC).isoformat(timespec="seconds")
            reason = str(s.get("reason", ""))
            label = "rollback" if "rollback" in reason.lower() else "switch"
            rows.append(
                f"<tr><td>{e(when)}</td><td>v{e(str(s.get('version', '')))}</td><td>{e(str(s.get('slot', '')))}</td>"
                f"<td>{label}</td><td class='muted'>{e(reason[:160])}</td></tr>"
            )
        live = (state or {}).get("live")
        parts.append(f"<p>live slot: <b>{e(live or 'none')}</b></p>")
        parts.append(
            "<table><tr><th>when</th><th>version</th><th>slot</th><th>change</th><th>by</th></tr>"
            f"{''.join(rows)}</table>"
        )
    else:
        parts.append("<p class='muted'>Nothing deployed yet.</p>")

    parts.append("<h2>Serving</h2>")
    if figures:
        p99 = figures.get("p99_seconds")
        parts.append(
            "<table><tr><th>requests</th><th>p99</th><th>4xx</th><th>5xx</th></tr>"
            f"<tr><td>{figures['requests'] or 0:.0f}</td><td>{'n/a' if p99 is None else f'{1000 * p99:.1f} ms'}</td>"
            f"<td>{_pct(figures['share_4xx'])}</td><td>{_pct(figures['share_5xx'])}</td></tr></table>"
        )
    else:
        parts.append(f"<p class='muted'>No serving figures: {e(serving_problem)}.</p>")
    parts.append(f"<p class='muted'>from {e(source)}</p>")
    return _page(f"{pipeline}: model lifecycle", "".join(parts))
