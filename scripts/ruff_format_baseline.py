#!/usr/bin/env python3
"""Rewrite `[tool.ruff.format] exclude` in pyproject.toml: the files `ruff format` would still change.

The list is a ratchet: files written before the format was enforced keep their layout, every other
file must be formatted. Run it (`make format-baseline`) after merging a branch whose new files were
not formatted, or after formatting some listed files, and review the diff.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUFF = ROOT / ".venv" / "bin" / "ruff"
SECTION = re.compile(r"(\[tool\.ruff\.format\].*?^exclude = \[\n).*?(^\])", re.S | re.M)


def unformatted() -> list[str]:
    out = subprocess.run(
        [
            str(RUFF),
            "format",
            "--check",
            "--output-format",
            "concise",
            "--config",
            "format.exclude = []",
            ".",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    return sorted({line.split(":", 1)[0] for line in out.splitlines() if ": unformatted" in line})


def main() -> int:
    pyproject = ROOT / "pyproject.toml"
    text = pyproject.read_text()
    files = unformatted()
    body = "".join(f'    "{name}",\n' for name in files)
    new, count = SECTION.subn(lambda m: m.group(1) + body + m.group(2), text)
    if count != 1:
        print("error: no `exclude = [` list under [tool.ruff.format] in pyproject.toml", file=sys.stderr)
        return 1
    pyproject.write_text(new)
    print(f"{len(files)} files excluded from ruff format (pyproject.toml [tool.ruff.format])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
