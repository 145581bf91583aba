"""The warm step server's process: ``python -m mlcycle.warm_server <socket>``.

mlcycle.warm serves whatever it is handed, and the command line (mlcycle.cli) forwards to it; this
entry point hands one to the other, so neither imports the other's caller.
"""

from __future__ import annotations

import sys

from mlcycle import warm
from mlcycle.cli import main


def run(argv: list[str], server: int) -> int:
    return main(argv, warm_from=server)


if __name__ == "__main__":
    raise SystemExit(warm.main(sys.argv[1:], run))
