"""``scoped(var, value)``: a context variable set for the length of a ``with`` block.

The package keeps a few per-thread switches this way (a batch that must run whole, writes to
discard, inputs already checked, a rank working alone or in step with the others): each is a
``contextvars.ContextVar`` whose value holds inside its block, in the thread that entered it, and
returns to what it was on the way out, whether the block ends or raises.
"""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def scoped(var, value):
    """Within this block (in this thread) the context variable ``var`` holds ``value``; afterwards what it
    held before."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)
