"""Small, dependency-free HTML reports a person can open in a browser (a run's summary and index)."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
td, th { border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } .pass { color: #1a7f37; } .fail { color: #c62828; font-weight: 600; }
code { background: #f6f8fa; padding: 0 .2rem; }
"""


def validation_report(
    title: str, summary: dict[str, Any], partitions: list[dict[str, Any]], folder: Path | None = None
) -> str:
    """Render one validation run: a summary, then each partition, linked to its Data Docs pages.

    A partition that Great Expectations judged links to GX's own pages (every expectation, the
    observed values, samples of unexpected values) and lists here only what failed; a check of the
    pipeline's own (dropped rows, a shrinking restatement) is listed in full. Links are relative to
    ``folder`` (where the report is written), so they work from the file and from a web server alike.
    """
    esc = html.escape
    rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in summary.items())
    parts = []
    for part in partitions:
        status = '<span class="pass">passed</span>' if part["success"] else '<span class="fail">FAILED</span>'
        pages = [p if hasattr(p, "parent") else Path(p) for p in part.get("data_docs", [])]
        links = " · ".join(
            f'<a href="{esc(os.path.relpath(str(page), str(folder)) if folder else page.as_uri())}">'
            f"{esc(page.parent.parent.name)}</a>"
            for page in pages
        )
        docs = f"<p>Great Expectations Data Docs: {links}</p>" if links else ""
        lines = []
        for item in part["results"]:
            if pages and item["success"]:
                continue  # GX's page shows it with its observed value
            cls = "pass" if item["success"] else "fail"
            lines.append(
                f'<tr><td class="{cls}">{"ok" if item["success"] else "failed"}</td>'
                f"<td><code>{esc(item['expectation'])}</code></td><td>{esc(item['observed'])}</td></tr>"
            )
        extra = f"<p>{esc(part['note'])}</p>" if part.get("note") else ""
        table = (
            f"<table><tr><th>result</th><th>expectation</th><th>observed</th></tr>{''.join(lines)}</table>"
            if lines
            else ""
        )
        parts.append(f"<h2>Partition {esc(part['partition'])}: {status}</h2>{extra}{docs}{table}")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1><table>{rows}</table>"
        f"{''.join(parts)}</body></html>\n"
    )
