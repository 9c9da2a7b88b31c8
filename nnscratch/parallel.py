"""Data parallelism on one machine: a CPU batch split into parts, one per core, each run by a replica.

A CNN step at the paper's batch of 64 is some forty calls; left whole, each call is split across
the cores by whoever runs it (OpenBLAS's threads, numba's), which wake up and wait for each other
forty times a step. Split by images instead, each core runs every call single-threaded on its own
part, start to end (``threads.run_parallel``), and the cores meet once per pass.

``DataParallel`` is the one implementation, with two schedules:

- ``forward`` / ``backward``: the plain loop of the API contract (``loss_fn(model(x), y)``,
  ``model.backward(loss_fn.backward())``), which the planner runs split in training and in eval
  mode (``fast.SplitPlan``): the parts meet after the forward pass (the loss sees the whole batch's
  output) and after the backward pass (the parameters' gradients are summed);
- ``step``: ``TrainStep``'s, which meets once a step: each part also computes its own loss.

Each part runs through a replica of the model: a deep copy that shares the model's parameter and
buffer arrays (so an optimizer's in-place update, a loaded state or a batch norm's running
statistics reach every replica) and has its own gradients and layer buffers. Part 0 is the model itself. Only the order of the gradient's sums differs from the
whole batch's.
"""
from __future__ import annotations

import contextvars
import copy
import functools
import threading

import numpy as np

from . import execution
from .checks import check_grad
from .layers import BatchNorm1d, BatchNorm2d, Conv2d, Dropout
from .threads import (Secondary, blas_thread_count, run_parallel, splitting_allowed as allowed,  # noqa: F401
                      whole_batches)

MIN_PART = 16          # images per part at least, when the number of parts is left to choose


def parts_for(model, batch: int, workers: int | None) -> int:
    """``workers`` parts (at most one per image), or when it is None the default: one per OpenBLAS
    thread (that is, per core, or ``OPENBLAS_NUM_THREADS``), at most one per ``MIN_PART`` images, and
    only for a network with a Conv2d. Convolutions reuse each weight at every pixel, so their
    gradients are small next to the work; the MLNN's 2.8 M gradient sums would cost more than the
    split gains (measured in benches/NOTES.md, "Splitting the batch"). Without a reachable OpenBLAS
    (whose threads could not be held to one per part) nothing is split by default.

    A model with a layer whose ``forward`` or ``backward`` was replaced on the instance (a timing
    wrapper, a hook) runs whole: its replicas would copy the replacement, which still calls the
    original layer. So does a model with dropout, or with batch norm in training whose parts could not
    pool their statistics (``BatchGroup``, where the planner runs every batch norm), whose results
    would depend on the split; ``workers`` is then ignored."""
    convolutional, synced = False, None
    for m in model.modules():
        own = vars(m)
        if "forward" in own or "backward" in own:
            return 1
        # (whether the planner pools batch norm's statistics is asked only of a model that has one in
        # training: this runs on every plan lookup)
        if isinstance(m, (BatchNorm1d, BatchNorm2d)) and m.training and synced is None:
            synced = execution.batch_norm_synced(model)         # once: it walks the whole model
        if (isinstance(m, Dropout) and m.training and m.p > 0
                or isinstance(m, (BatchNorm1d, BatchNorm2d)) and m.training and not synced):
            # the parts would draw their dropout masks in another order than the whole batch, and
            # batch statistics over a part are not the batch's unless the parts pool them
            # (``BatchGroup``): split, the model would compute something else
            return 1
        convolutional = convolutional or isinstance(m, Conv2d)
    if workers is not None:
        return max(1, min(int(workers), batch))
    if not convolutional:
        return 1
    cores = blas_thread_count()
    return 1 if cores is None else max(1, min(cores, batch // MIN_PART))


def check_workers(owner, workers):
    """None or a positive int, or a ValueError naming ``owner`` (a name, or a module shown by its repr)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer))
                                or workers < 1):
        raise ValueError(f"{owner}: workers must be a positive int or None, got {workers!r}")


def cuts(batch: int, ways: int) -> list:
    """``ways`` slices of ``range(batch)`` whose sizes differ by at most one, in order."""
    return [slice(batch * k // ways, batch * (k + 1) // ways) for k in range(ways)]


class BatchGroup:
    """The parts of one split batch, meeting wherever a layer needs the whole batch (batch norm's
    statistics): each part hands in what it computed over its rows and gets every part's back, in
    part order, so that all compute the same whole-batch value from them. The parts run the same
    layers in the same order, so their n-th meetings match. A part that fails breaks the meeting:
    the others then raise ``Secondary`` instead of waiting for ever."""

    def __init__(self, ways: int):
        self.ways = ways
        self._barrier = threading.Barrier(ways)
        # two sets of slots, used by turns: meeting n fills set n % 2, so a part that has gone on
        # to meeting n + 1 writes the other set while a slower one still reads this one; it cannot
        # reach meeting n + 2 (this set again) before every part has arrived at n + 1, that is,
        # has read meeting n's values. One wait a meeting (a meeting of two threads costs 82 us
        # here, and a ResNet step has 18 of them a part)
        self._slots = [[None] * ways, [None] * ways]
        self._turn = [0] * ways

    def exchange(self, k: int, value) -> list:
        """Part k's ``value`` in; every part's value out, once all have handed theirs in."""
        slots = self._slots[self._turn[k]]
        self._turn[k] ^= 1
        slots[k] = value
        self._wait()
        return list(slots)

    def _wait(self):
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            raise Secondary("another part of the split batch failed") from None

    def abort(self):
        self._barrier.abort()


_GROUP = contextvars.ContextVar("nnscratch_batch_group", default=None)


def batch_group():
    """(BatchGroup, part index) while a part of a split batch runs in this thread, else None."""
    return _GROUP.get()


def _in_group(group: BatchGroup, k: int, task):
    """``task`` run as part k of ``group``; if it fails, the group's meetings are broken for the others."""
    def run():
        token = _GROUP.set((group, k))
        try:
            return task()
        except BaseException:
            group.abort()
            raise
        finally:
            _GROUP.reset(token)
    return run


class Replicas:
    """The copies of a model that run parts 1, 2, ... of a split batch (part 0 is the model).

    A copy is made again when the model's parameter or buffer arrays were replaced (``model.to``, a
    loaded state of another dtype). Copies and deep copies of a model carry no replicas: they would
    share nothing with the copy."""

    def __init__(self):
        self._copies = []                 # [(model, parameters)]
        self._shared = []                 # the model's arrays the copies were made to share

    def parts(self, model, ways: int) -> list:
        """[(model, parameters)] for ``ways`` parts: the model first, then its replicas."""
        params = model.parameters()
        arrays = [v.data for _, v in model.named_state()]
        stale = (len(self._copies) != ways - 1 or len(arrays) != len(self._shared)
                 or any(a is not b for a, b in zip(arrays, self._shared)))
        if stale:
            self._copies = [_replica(model) for _ in range(ways - 1)]
            self._shared = arrays
        for copy_, _ in self._copies:
            if copy_.training != model.training:
                copy_.train(model.training)
        return [(model, params)] + self._copies

    def __deepcopy__(self, memo):
        return Replicas()

    def __getstate__(self):
        return {"_copies": [], "_shared": []}


def replicas_of(model) -> Replicas:
    """The model's replicas (kept on the model, made on first use)."""
    replicas = model.__dict__.get("_replicas")
    if replicas is None:
        replicas = model._replicas = Replicas()
    return replicas


def _replica(model) -> tuple:
    """(copy, its parameters): a deep copy whose parameter and buffer values are the model's own
    arrays (a buffer of its own would keep the running statistics of the model's past: a model
    trained whole, or given another state by ``load_state_dict``, and then run split, would compute
    part of the batch with stale statistics); its gradients start at zero."""
    shared = {id(v.data): v.data for _, v in model.named_state()}
    twin = copy.deepcopy(model, shared)
    params = twin.parameters()
    for p in params:
        p.zero_grad()
    return twin, params


class DataParallel:
    """A model's batch run in ``ways`` parts at once, part k by ``parts[k]`` (the model, then its
    replicas), each in a thread of its own (``threads.run_parallel``)."""

    def __init__(self, model, ways: int):
        self.model, self.ways = model, ways
        self.parts = replicas_of(model).parts(model, ways)

    def _run(self, tasks: list) -> list:
        """The parts' tasks at once, each as its part of a new batch group (``batch_group``)."""
        group = BatchGroup(self.ways)
        return run_parallel([_in_group(group, k, task) for k, task in enumerate(tasks)])

    # ---- the plain loop: the parts meet after forward and after backward ------------------------

    def forward(self, x, part_forward):
        """part_forward(part_model, x_part) -> y_part, on every part at once -> y, the parts' outputs in
        order. If a part fails with a ValueError or TypeError, ``part_forward(model, x)`` runs on the
        whole batch to raise its error (a part's shape would mislead), or the part's error is raised."""
        self._cuts = cuts(x.shape[0], self.ways)
        try:
            outs = self._run([functools.partial(part_forward, model, x[cut])
                              for (model, _), cut in zip(self.parts, self._cuts)])
        except (ValueError, TypeError) as e:
            failed = e
        else:
            failed = None
        if failed is not None:
            with whole_batches():
                part_forward(self.model, x)
            raise failed
        y = np.concatenate(outs)
        self._out = (y.shape, y.dtype)
        return y

    def backward(self, grad, need_input_grad: bool, part_backward, last_layer):
        """part_backward(part_model, grad_part, need_input_grad) on every part at once; the replicas'
        parameter gradients are then added to the model's. Returns dL/dx (None without
        ``need_input_grad``)."""
        check_grad(last_layer, grad, *self._out)
        try:
            outs = self._run([functools.partial(part_backward, model, grad[cut], need_input_grad)
                              for (model, _), cut in zip(self.parts, self._cuts)])
        except BaseException:
            self._clear(self.parts[1:])                   # the replicas' gradients from the failed pass
            raise
        self.gather_grads()
        return np.concatenate(outs) if need_input_grad else None

    # ---- TrainStep: the parts meet once a step ---------------------------------------------------

    def step(self, x, target, batch_cuts: list, loss_fns: list, shares: list):
        """Each part k, the rows ``batch_cuts[k]`` (``cuts(len(x), ways)``): forward, its own loss
        (``loss_fns[k]``), and, when that is finite, backward of its share (``shares[k]``) of the whole
        batch's mean loss. Returns [(logits, loss)] per part. The whole batch's loss, a weighted mean
        of the parts', is finite exactly when every part's is; when it is not, the caller clears the
        gradients (``clear_grads``)."""

        def part(k):
            model, loss_fn = self.parts[k][0], loss_fns[k]

            def task():
                with np.errstate(over="ignore", invalid="ignore"):     # a diverging step is reported later
                    logits = model(x[batch_cuts[k]])
                    loss = loss_fn(logits, target[batch_cuts[k]])
                if np.isfinite(loss):
                    grad = loss_fn.backward()
                    grad *= shares[k]                     # this part's share of the whole batch's mean
                    model.backward(grad, need_input_grad=False)
                return logits, loss
            return task

        return self._run([part(k) for k in range(self.ways)])

    def clear_grads(self):
        """Clear every part's gradients, the model's too (after a step whose loss was not finite)."""
        self._clear(self.parts)

    def gather_grads(self):
        """Add the replicas' gradients to the model's (part 0's) and clear the replicas'."""
        for own, *others in zip(self.parts[0][1], *(params for _, params in self.parts[1:])):
            for other in others:
                own.grad += other.grad
                other.zero_grad()

    @staticmethod
    def _clear(parts: list):
        for _, params in parts:
            for p in params:
                p.zero_grad()
