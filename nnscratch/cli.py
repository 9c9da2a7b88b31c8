"""Shared command-line plumbing: one clear line and exit status 2 for bad input, no traceback."""
from __future__ import annotations

import argparse
import sys
import traceback

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
    on stderr and exit status 2, Ctrl-C one word and status 130. As a rank of an MPI job
    (``distributed``), the line names the rank, and a rank that fails (or raises anything else) ends
    the whole job: the others may be waiting for it in a collective."""
    from . import distributed
    try:
        code = _run(body, distributed)
    except BaseException as e:
        if not distributed.active() or isinstance(e, SystemExit) and not e.code:
            raise
        traceback.print_exc()
        distributed.abort(f"{type(e).__name__}: {e}", 1)
    if code and code != 130 and distributed.active():
        # (130: a stop every rank agreed on, training's checkpoint written by rank 0: each ends itself;
        # otherwise the line above named the error and this rank)
        distributed.abort(None, code)
    return code


def _run(body, distributed) -> int:
    def who():                          # (the body joins the job, so asked when an error is printed)
        return f"rank {distributed.rank()} of {distributed.world_size()}: " if distributed.active() else ""
    try:
        return body() or 0
    except KeyboardInterrupt:           # Ctrl-C outside training (loading data, starting up)
        print(f"{who()}interrupted", file=sys.stderr)
        return 130
    except UsageError as e:
        first, *rest = str(e).splitlines() or [""]
        print(f"error: {who()}{first}", file=sys.stderr)
        for line in rest:
            print(line, file=sys.stderr)
        return 2
