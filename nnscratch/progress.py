"""Progress bars on a terminal only: in a log file (a job scheduler, a pipe) a bar's every redraw would
be written out, so there each command prints one line per epoch (or per run) instead."""
from __future__ import annotations

import sys


def bars(wanted: bool = True) -> bool:
    """Whether to draw progress bars: asked for, and stderr (where tqdm draws) is a terminal."""
    return bool(wanted) and sys.stderr.isatty()
