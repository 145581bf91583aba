"""Pieces of the lifecycle page and the offline Data Docs that need no server (the page itself is
checked in a real browser by tests/integration/test_ui.py)."""

from __future__ import annotations

import data_docs_offline
import mlcycle_lifecycle
import mlcycle_ui

GX_HEAD = """<link href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css" rel="stylesheet">
<script src="https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js"></script>
<link href="https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css">
<script src="https://cdn.jsdelivr.net/npm/vega-embed@6"></script>
<link rel="stylesheet" href="https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css">
<a href="../../index.html">Home</a>
<img src="https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png?d=20261202T1">
<a href="https://greatexpectations.io/newsletter">newsletter</a>
<style>@media (prefers-color-scheme: dark) { .navbar-brand a {
  background: url('https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/full_logo_dark.png') 0 0 no-repeat;
} }</style>"""


def test_every_cdn_asset_of_data_docs_has_a_local_copy_and_the_page_points_at_it():
    page = data_docs_offline.rewrite(GX_HEAD, "/mlcycle/reports/_assets")
    assert "cdn" not in page and "unpkg" not in page and "amazonaws" not in page
    assert 'src="../../static/images/logo-long.png"' in page  # Data Docs' own copy of the logo
    # the dark-mode logo, which Data Docs do not keep: the copy shipped with the assets
    assert "url('/mlcycle/reports/_assets/great_expectations/full_logo_dark.png')" in page
    assert 'href="https://greatexpectations.io/newsletter"' in page  # a link, not an asset: left as is
    for target in page.split("/mlcycle/reports/_assets/")[1:]:
        path = target.split('"')[0].split("'")[0]
        assert (mlcycle_ui.ASSETS_DIR / path).is_file(), path


def test_serving_figures_count_prediction_requests_only():
    exposition = "\n".join(
        [
            "# HELP mlcycle_requests_total x",
            'mlcycle_requests_total{endpoint="/predict",status="200"} 97.0',
            'mlcycle_requests_total{endpoint="/predict",status="422"} 2.0',
            'mlcycle_requests_total{endpoint="/invocations",status="500"} 1.0',
            'mlcycle_requests_total{endpoint="/metrics",status="200"} 50.0',
            'mlcycle_request_latency_seconds_bucket{endpoint="/predict",le="0.005"} 90.0',
            'mlcycle_request_latency_seconds_bucket{endpoint="/predict",le="0.01"} 99.0',
            'mlcycle_request_latency_seconds_bucket{endpoint="/predict",le="+Inf"} 100.0',
            'mlcycle_request_latency_seconds_bucket{endpoint="/metrics",le="+Inf"} 50.0',
        ]
    )
    figures = mlcycle_lifecycle.figures_from_exposition(exposition)
    assert figures == {"requests": 100.0, "p99_seconds": 0.01, "share_4xx": 0.02, "share_5xx": 0.01}


def test_a_pipeline_dag_leads_to_its_pipelines_page():
    assert [
        mlcycle_ui.pipeline_of_dag(d) for d in ("training_bikeshare", "deploy_a_b", "other_x", "training_")
    ] == [
        "bikeshare",
        "a_b",
        None,
        None,
    ]
