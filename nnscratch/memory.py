"""The process's allocator told to keep freed memory for the next step (glibc on Linux).

A training step allocates its maps anew each time (a ResNet's first stage: 6.4 MB a map for 64
images) and frees them before the next. glibc's malloc gives such blocks back to the kernel (large
ones are mmap'ed and unmapped; the heap's free top is trimmed once it exceeds a threshold), so the
next step's maps are fresh pages, and every 4 KB page costs a page fault on first write: 5,500-7,000
faults and 17-23 ms of the kernel's time a ResNet step at batch 128 here, paid by the cores that
should be computing (and two threads faulting at once take the same lock).

``keep_freed_memory()`` raises glibc's mmap threshold to its maximum (32 MB on 64-bit) and its trim
threshold to 1 GB: blocks up to 32 MB come from the heap and go back to it, and the heap keeps up to
1 GB of free memory for reuse. The faults fall to about one a step and the step takes 6 % less
(benches/NOTES.md). The cost: the process holds the memory of its largest step until it exits,
which is what a training process wants. The planner calls it when it builds its first plan (the
``keep_freed_memory`` rule); ``NNSCRATCH_KEEP_MEMORY=0`` leaves the allocator as it is. It changes
no number: only where memory comes from.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3      # mallopt's parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20                        # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1 << 30

_done = [None]                                   # None: not tried yet; then whether it took effect


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks (see the module notes), once per process; True when
    it took effect (False: not Linux with glibc, or ``NNSCRATCH_KEEP_MEMORY=0``)."""
    if _done[0] is None:
        _done[0] = _apply()
    return _done[0]


def _apply() -> bool:
    if not sys.platform.startswith("linux") or os.environ.get("NNSCRATCH_KEEP_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False                             # musl or another libc: nothing to tell
    mallopt.restype, mallopt.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
