"""Running parts of a CPU training step on several cores at once: the thread pool and BLAS's threads.

A CNN step at the paper's batch of 64 is some forty calls, each split across the cores by
whoever runs it (OpenBLAS's threads for the products, numba's for the kernels): every call
wakes the threads and waits for the slowest, and the products run on inputs that the other
core's cache holds. ``parallel.DataParallel`` (for ``TrainStep`` and the planner) can instead hand each core
a slice of the batch: every call then runs single-threaded on its own slice, start to end, and the
cores meet once a pass. For that:

- ``run_parallel(tasks)``: the first task in the calling thread, the others in a pool of
  helper threads, all finished before it returns (or raises the first error);
- ``blas_threads(n)``: OpenBLAS held to n threads within a block (two callers each asking
  OpenBLAS for every core would fight over them);
- ``kernels.serial_kernels()``: numba's serial kernel copies only (its workqueue threads
  may be used by one caller at a time).

Only OpenBLAS's thread count can be set here (found through NumPy's loaded library, as
threadpoolctl does); with any other BLAS ``blas_thread_count()`` is None, ``blas_threads`` does
nothing, and no batch is split unless ``workers`` says so.
"""
from __future__ import annotations

import concurrent.futures
import contextvars
import ctypes
import functools
import threading

from .scoped import scoped


@functools.lru_cache(maxsize=None)
def _openblas():
    """(get, set) for the OpenBLAS that NumPy loaded, or None: the library is found in the process's
    memory map (Linux), its functions under the names OpenBLAS's builds give them."""
    import numpy  # noqa: F401  (loads the BLAS)
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"),
                               ("openblas", "")):
            try:
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}")
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}")
            except AttributeError:
                continue
            get.restype, get.argtypes = ctypes.c_int, []
            put.restype, put.argtypes = None, [ctypes.c_int]
            return get, put
    return None


def blas_thread_count() -> int | None:
    """The threads OpenBLAS uses now (its default is one per core, or ``OPENBLAS_NUM_THREADS``), or
    None when NumPy's BLAS is not an OpenBLAS this module can reach."""
    lib = _openblas()
    return None if lib is None else int(lib[0]())


class blas_threads:
    """Within this block OpenBLAS uses ``n`` threads (setting it costs under a microsecond); without a
    reachable OpenBLAS nothing changes."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        lib = _openblas()
        if lib is not None:
            self._before = lib[0]()
            lib[1](self.n)
        return self

    def __exit__(self, *exc):
        lib = _openblas()
        if lib is not None:
            lib[1](self._before)


def set_blas_threads(n: int):
    """From now on OpenBLAS uses ``n`` threads (a rank of an MPI job sharing a machine's cores with
    others); without a reachable OpenBLAS nothing changes."""
    lib = _openblas()
    if lib is not None:
        lib[1](int(n))


# Set where a batch must run whole (see parallel.py): inside every task of run_parallel, so that a part
# never splits again, and in TrainStep's unsplit step (its ``workers=1`` means one model, whole batch)
_WHOLE = contextvars.ContextVar("nnscratch_whole_batch", default=False)


def whole_batches():
    """Within this block (in this thread) no model splits its batch."""
    return scoped(_WHOLE, True)


def splitting_allowed() -> bool:
    """False inside ``whole_batches()``, and so inside every task of ``run_parallel``."""
    return not _WHOLE.get()


def _whole(task):
    """``task`` run inside ``whole_batches()``, in whichever thread calls it."""
    def run():
        with whole_batches():
            return task()
    return run


class Secondary(RuntimeError):
    """Raised in a task of ``run_parallel`` because another task failed (``run_parallel`` then raises
    the other task's error)."""


_pool = {"executor": None, "size": 0}
# One split step at a time: the BLAS setting and the kernels' serial switch are process-wide
_lock = threading.Lock()


def run_parallel(tasks: list) -> list:
    """Run the callables ``tasks`` at once, each single-threaded (OpenBLAS at one thread, numba's
    serial kernels) and splitting no batch: the first in this thread, the rest in helper threads.
    Returns their results in order once all have finished; if any raised, the first error (in task
    order) is raised then, after the others have finished too (none is left running)."""
    from .kernels import serial_kernels
    with _lock, blas_threads(1), serial_kernels():
        if _pool["size"] < len(tasks) - 1:
            if _pool["executor"] is not None:
                _pool["executor"].shutdown(wait=True)
            _pool["executor"] = concurrent.futures.ThreadPoolExecutor(len(tasks) - 1,
                                                                      thread_name_prefix="nnscratch")
            _pool["size"] = len(tasks) - 1
        futures = [_pool["executor"].submit(_whole(task)) for task in tasks[1:]]
        results, errors = [None] * len(tasks), [None] * len(tasks)
        try:
            results[0] = _whole(tasks[0])()
        except BaseException as e:        # noqa: BLE001  (raised below, once the helpers are done)
            errors[0] = e
        for i, future in enumerate(futures, 1):
            try:
                results[i] = future.result()
            except BaseException as e:    # noqa: BLE001
                errors[i] = e
    raised = [e for e in errors if e is not None]
    if raised:
        # an error a task raised only because another failed (``Secondary``) gives way to that one
        raise next((e for e in raised if not isinstance(e, Secondary)), raised[0])
    return results
