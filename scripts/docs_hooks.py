"""MkDocs hooks of the documentation site (mkdocs.yml): the README is the home page.

The README lives at the repository root, where GitHub shows it, so it is not in ``docs/``. This
hook adds it as ``index.md`` with its links rewritten for the site: ``docs/x.md`` becomes ``x.md``,
and every other repository file it links to (the data set's README, a pipeline spec) is added to
the site at the same path, so that ``mkdocs build --strict`` checks every link and none dangles.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

log = logging.getLogger("mkdocs.hooks.docs_hooks")
ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def on_files(files: Files, config) -> Files:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in sorted({m.group(1) for m in LINK.finditer(readme)}):
        if "://" in target or target.startswith(("docs/", "mailto:")):
            continue
        path = ROOT / target
        if not path.is_file():
            continue  # --strict reports the dangling link when the page is built
        if files.get_file_from_path(target) is None:
            log.debug("adding %s to the site", target)
            files.append(
                File.generated(config, target, abs_src_path=str(path), inclusion=InclusionLevel.NOT_IN_NAV)
            )
    files.append(File.generated(config, "index.md", content=readme.replace("](docs/", "](")))
    return files
