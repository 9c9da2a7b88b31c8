"""Data parallelism over processes with MPI: ``mpiexec -n N python -m nnscratch.train ...``.

The way the field scales an engine like this one (ChainerMN, Horovod, PyTorch's
DistributedDataParallel): N processes (ranks), each with the whole model, each computing the
gradient of its share of every batch; the shares' gradients are summed across the ranks before each
optimizer step, so every rank takes the same step and the parameters stay equal everywhere.

    ns.distributed.init()                    # under mpiexec / srun: joins the job; alone: a world of 1
    step = ns.TrainStep(model, loss_fn, opt) # every rank passes the same global batch; each computes
    loss, correct = step(x, labels)          # its share (distributed.shard) and they meet twice a step

What makes N processes compute what one process computes on the same global batch:

- the same parameters at the start (``broadcast_state`` from rank 0: a resumed run, a user's model);
- the same global batches: every rank shuffles and augments with the same seeded generators and takes
  its rows, ``shard(B)`` (``--batch-size`` stays the global batch, so the learning rate means the
  same at any N);
- the gradient of the batch's loss: rank r's loss is the mean over its rows, so the gradient it
  sends back is weighted by its share of the batch (n_r / B, or of the loss's sample weights);
- batch norm's statistics over the whole batch (the planner's batch-norm step pools the ranks'
  (n, mean, var), and in backward their sums, as it pools the parts of a split batch);
- sums that come out the same on every rank: ``allreduce_sum`` reduces each slice of a buffer on
  one rank and sends it to all (reduce-scatter, then all-gather: NCCL's ring does the same), and the
  small sums (loss, batch-norm statistics) are all-gathered and added in rank order. A plain
  MPI_Allreduce may add in another order on each rank, and the ranks' parameters would drift apart.

Only the order of the sums differs from one process: the results agree to float32 rounding.

The job is started by ``mpiexec`` (or ``srun``), detected from its environment; ``init`` needs
mpi4py then (``pip install -e '.[mpi]'``, which brings MPICH's wheel too). A rank that raises ends
the job (``abort``: MPI_Abort) with a line naming the rank and the error, so the others do not wait
for it for ever; a rank that dies is noticed by ``mpiexec``, which ends the others.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import socket
import sys
import time

import numpy as np

from .errors import UsageError
from .scoped import scoped

# what launchers set: MPICH's and Intel MPI's hydra (PMI_*), Open MPI, MVAPICH, PMIx, SLURM's srun
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS")

ABORT_GRACE_S = 0.3                  # output's time to reach the launcher before MPI_Abort (see abort)
_comm = [None]                       # the world's communicator once init() joined a job of 2 or more
_SYNCED = contextvars.ContextVar("nnscratch_distributed_synced", default=False)
_ALONE = contextvars.ContextVar("nnscratch_distributed_alone", default=False)


def _world():
    """The communicator, or None outside a job and inside ``alone()``."""
    return None if _ALONE.get() else _comm[0]


def launched_size() -> int:
    """How many processes the launcher started (1 when none: a plain ``python``)."""
    for name in _SIZE_VARS:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def init() -> int:
    """Join the job the launcher started, once; returns the world size (1 outside mpiexec/srun, and
    then nothing is imported). Each rank's threads (OpenBLAS, numba) are set to its share of the
    node's cores, so that N ranks on one machine do not fight over them."""
    if _comm[0] is not None or launched_size() < 2:
        return world_size()
    try:
        from mpi4py import MPI
    except ImportError:
        raise UsageError(f"started by a launcher with {launched_size()} processes, but mpi4py is not installed: "
                         f"pip install -e '.[mpi]' (or run without mpiexec)") from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() < 2:
        return 1
    _comm[0] = comm
    _share_cores(comm)
    return comm.Get_size()


def _share_cores(comm):
    """Threads per rank = the cores this process may run on (a batch system's allocation, else the
    node's) / the ranks on that node (at least 1)."""
    from mpi4py import MPI

    from . import threads
    local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_rank = max(1, cores // local)
    threads.set_blas_threads(per_rank)
    with contextlib.suppress(Exception):             # numba's default layer accepts 1..NUMBA_NUM_THREADS
        import numba
        numba.set_num_threads(min(per_rank, numba.config.NUMBA_NUM_THREADS))


def refuse_launcher(command: str):
    """A UsageError for a command that runs in one process, started by mpiexec/srun with several."""
    if launched_size() > 1:
        raise UsageError(f"{command} runs in one process; start it without mpiexec (python -m nnscratch.train and "
                         f"python -m nnscratch.reproduce are the commands that run as a job of several)")


def active() -> bool:
    """Whether this process is one of several ranks of a job (and not inside ``alone()``)."""
    return _world() is not None


def rank() -> int:
    return 0 if _world() is None else _world().Get_rank()


def world_size() -> int:
    return 1 if _world() is None else _world().Get_size()


def alone():
    """Within this block (in this thread) this rank works as a process of its own: a world of one,
    rank 0, writing its own files (``reproduce`` shares its runs out over the ranks this way)."""
    return scoped(_ALONE, True)


def job_rank() -> int:
    """This process's rank in the job, inside ``alone()`` too."""
    return 0 if _comm[0] is None else _comm[0].Get_rank()


def job_size() -> int:
    return 1 if _comm[0] is None else _comm[0].Get_size()


def is_main() -> bool:
    """Rank 0: the one that prints, shows progress and writes the run folder."""
    return rank() == 0


def shard(n: int) -> slice:
    """This rank's rows of n: contiguous shares in rank order whose sizes differ by at most one."""
    r, size = rank(), world_size()
    return slice(n * r // size, n * (r + 1) // size)


def processes() -> list:
    """[{"rank", "host", "pid"}] of every rank, in rank order, on every rank: a job's record (a rank
    that dies is named by ``mpiexec`` by its pid and host)."""
    me = {"rank": rank(), "host": socket.gethostname(), "pid": os.getpid()}
    return [me] if _world() is None else _world().allgather(me)


def barrier():
    if _world() is not None:
        _world().Barrier()


# ---- collectives whose results are the same bits on every rank -----------------------------------

def sum_in_rank_order(values) -> np.ndarray:
    """values (any shape, float64) of every rank -> their sum, added in rank order on every rank."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    if _world() is None:
        return values.copy()
    every = np.empty((world_size(),) + values.shape, np.float64)
    _world().Allgather(values, every)
    total = every[0].copy()
    for k in range(1, len(every)):
        total += every[k]
    return total


def gather_in_rank_order(values) -> np.ndarray:
    """values (any shape, float64) of every rank -> (world_size, *shape), the same on every rank."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    if _world() is None:
        return values[None].copy()
    every = np.empty((world_size(),) + values.shape, np.float64)
    _world().Allgather(values, every)
    return every


def allreduce_sum(flat: np.ndarray):
    """In place: a 1-D float32/float64 buffer becomes the sum of every rank's, the same bits on all:
    each rank sums one slice of it (reduce-scatter) and sends its slice to all (all-gather)."""
    comm = _world()
    if comm is None:
        return flat
    from mpi4py import MPI
    size = world_size()
    counts = [len(flat) * (k + 1) // size - len(flat) * k // size for k in range(size)]
    displs = [len(flat) * k // size for k in range(size)]
    mine = np.empty(counts[rank()], flat.dtype)
    comm.Reduce_scatter(flat, mine, recvcounts=counts, op=MPI.SUM)
    comm.Allgatherv(mine, [flat, counts, displs, MPI._typedict[flat.dtype.char]])
    return flat


class GradientSum:
    """The parameters' gradients summed across the ranks through one flat buffer (one message a step:
    the ResNet's 308 k float32 gradients are 1.2 MB), the sum written back into each ``p.grad``."""

    def __init__(self):
        self._flat = None

    def __call__(self, params):
        if _world() is None:
            return
        grads = [p.grad for p in params]
        n = sum(g.size for g in grads)
        dtype = np.result_type(*grads) if grads else np.float32
        if self._flat is None or self._flat.size != n or self._flat.dtype != dtype:
            self._flat = np.empty(n, dtype)
        flat, at = self._flat, 0
        for g in grads:
            flat[at:at + g.size] = g.reshape(-1)
            at += g.size
        allreduce_sum(flat)
        at = 0
        for g in grads:
            g[...] = flat[at:at + g.size].reshape(g.shape)
            at += g.size


def broadcast_state(model, optimizer=None):
    """Rank 0's parameters and buffers (and with ``optimizer`` its moments) into every rank's arrays."""
    comm = _world()
    if comm is None:
        return
    arrays = [value.data for _, value in model.named_state()]
    if optimizer is not None:
        arrays += [v for state in optimizer.state for v in state.values() if isinstance(v, np.ndarray)]
    for a in arrays:
        if a.flags.c_contiguous:
            comm.Bcast(a, root=0)
        else:                           # (Linear's weight is Fortran-ordered: through a C-ordered copy)
            c = np.ascontiguousarray(a)
            comm.Bcast(c, root=0)
            a[...] = c


def gather_rows(local: np.ndarray) -> np.ndarray:
    """Every rank's rows (its shard of a split's predictions) -> all of them in rank order, on every rank."""
    if _world() is None:
        return local
    parts = _world().allgather(np.ascontiguousarray(local))
    return np.concatenate(parts)


# ---- batch norm across the ranks -----------------------------------------------------------------

def synced(rows=None):
    """Within this block the planner's batch-norm steps pool their statistics across the ranks
    (``TrainStep`` runs its forward and backward passes in it: every rank runs the same layers in
    the same order, so their n-th meetings match; a forward pass elsewhere stays local). ``rows``:
    (B, slice), this rank's rows of the global batch of B, for the layers that draw random numbers
    per image (``batch_rows``)."""
    return scoped(_SYNCED, (True, rows) if active() else False)


def batch_norm_synced_now() -> bool:
    return bool(_SYNCED.get())


def batch_rows():
    """(B, rows) inside a rank's step of a job (``synced(rows=...)``): the global batch's size and this
    rank's slice of it; else None. Dropout draws its mask for the whole global batch and keeps these
    rows, so that the ranks draw what one process draws (the same generator state on every rank
    would otherwise give every rank's rows the same mask)."""
    state = _SYNCED.get()
    return state[1] if state else None


# ---- faults --------------------------------------------------------------------------------------

def abort(message: str | None, code: int = 1):
    """Print ``message`` (if any) naming this rank, then end every rank of the job (MPI_Abort): the
    others may be waiting for this one in a collective and would otherwise wait for ever."""
    if message is not None:
        print(f"nnscratch: rank {job_rank()} of {job_size()}: {message}", file=sys.stderr, flush=True)
    if _comm[0] is not None:
        # the launcher's proxy forwards this rank's output from a pipe; told to abort first, it may end
        # the job before reading what is in the pipe (the line above lost, about 1 run in 15 here)
        sys.stdout.flush()
        time.sleep(ABORT_GRACE_S)
        _comm[0].Abort(code)
    raise SystemExit(code)
