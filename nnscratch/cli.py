"""Shared command-line plumbing: one clear line and exit status 2 for bad input, no traceback."""
from __future__ import annotations

import argparse
import sys

from .errors import UsageError  # noqa: F401  (the commands import it from here)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with defaults shown in --help and a one-line error (exit status 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(body) -> int:
    """Run ``body()``; user-facing errors (``UsageError``, ``data.DataError`` among them) become one line
    on stderr and exit status 2, Ctrl-C one word and status 130."""
    try:
        return body() or 0
    except KeyboardInterrupt:           # Ctrl-C outside training (loading data, starting up)
        print("interrupted", file=sys.stderr)
        return 130
    except UsageError as e:
        first, *rest = str(e).splitlines() or [""]
        print(f"error: {first}", file=sys.stderr)
        for line in rest:
            print(line, file=sys.stderr)
        return 2
