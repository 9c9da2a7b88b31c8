"""One training step as a unit: forward, loss, backward, optimizer step, gradients cleared.

    step = ns.TrainStep(model, loss_fn, optimizer)
    loss, correct = step(x, labels)      # loss: float, correct: int (argmax of the logits == label;
                                         # multi-label targets: the rows' shares of labels right)

On the CPU this is exactly the five lines every training loop writes (and the loss is checked
before the backward pass, so a step that would diverge changes nothing), with two ways to be fast:

- a convolutional network's batch of at least ``2 * MIN_PART`` images is split into one part per
  core (``workers``; ``parallel.DataParallel.step``): each part runs forward, its own loss and
  backward through its own replica of the model (the same parameter arrays, its own gradients) in
  a thread of its own, and the parts' gradients are summed before the optimizer step. Only the
  order of the gradient's sums changes. Each part checks its own loss before its backward pass, so
  a non-finite loss still leaves the parameters and the optimizer as they were.
- on a GPU, after an ordinary step for a given input shape (and optimizer state: the very first
  step creates it), the next is recorded as a CUDA graph and replayed from then on
  (``cuda_graphs.py``). If recording fails (a CuPy version without stream capture, say), a warning
  says why and the steps run op by op from then on; ``graph=False`` asks for that from the start.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np

from . import distributed, execution, parallel
from .backend import is_gpu_array
from .clip import clip_grad_norm_
from .cuda_graphs import GraphedSteps, RecordingFailed
from .distributed import GradientSum


class NonFiniteLoss(FloatingPointError):
    """The loss of a step came out NaN or infinite (the value is in ``.loss``)."""

    def __init__(self, loss: float, applied: bool):
        self.loss, self.applied = loss, applied
        super().__init__(f"the loss became {loss}" + (
            "; the step had already been applied (a recorded CUDA graph learns the loss after running)"
            if applied else "; the parameters were left as they were"))


class TrainStep:
    """forward, loss, backward, ``optimizer.step()``, ``optimizer.zero_grad()`` on one batch.

    model: a ``Module``; loss_fn: a ``Loss``; optimizer: an ``Optimizer`` over the model's parameters.
    target: maps the labels (B,) to what ``loss_fn`` compares the predictions with (default: the
    labels themselves; ``lambda y: ns.one_hot(y, K)`` for ``MSELoss`` on logits).
    graph: on a GPU, record and replay CUDA graphs (default True); ignored on the CPU.
    workers: on the CPU, the parts a batch is split into, one thread each (see the module notes);
    default: one per core OpenBLAS uses (``OPENBLAS_NUM_THREADS`` or all), at most one per
    ``MIN_PART`` images; 1 runs the batch whole. Ignored on a GPU.
    max_grad_norm: when given, the gradients are clipped to this global norm before the optimizer
    steps (``ns.clip_grad_norm_``); on a GPU the steps then run op by op (the norm is read on the host).
    distributed: as one rank of an MPI job (``ns.distributed``): every rank passes the same global
    batch, computes the gradient of its share (``distributed.shard``) and the ranks' gradients are
    summed before the update; default: when ``ns.distributed.init()`` joined a job of 2 or more.
    """

    WARMUP = 1            # ordinary steps per input shape before recording: kernels compiled, state made
    MIN_PART = parallel.MIN_PART     # images per part at least when ``workers`` is left to choose

    def __init__(self, model, loss_fn, optimizer, target=None, graph: bool = True, workers: int | None = None,
                 max_grad_norm: float | None = None, distributed: bool | None = None):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.target = target if target is not None else (lambda y: y)
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"TrainStep: max_grad_norm must be positive or None, got {max_grad_norm!r}")
        self.max_grad_norm = max_grad_norm
        self.graph = bool(graph) and max_grad_norm is None
        parallel.check_workers("TrainStep", workers)
        self.workers = workers
        self._losses, self._losses_of = [], None   # copies of loss_fn for parts 1, 2, ... of a split batch
        self._graphs = GraphedSteps(model, loss_fn, optimizer, self.target)
        self._seen = {}                   # graph key -> ordinary steps run so far
        self.replays = 0                  # steps served by a graph (for benches and tests)
        self.distributed = distributed
        self._gradient_sum, self._broadcast = GradientSum(), False     # (``distributed`` is the flag here)

    def __call__(self, x, labels):
        """x: the model's input (B, ...); labels: (B,) ints -> (loss: float, correct: int)."""
        if self.distributed or (self.distributed is None and distributed.active()):
            return self._ranks(x, labels)
        if not is_gpu_array(x):
            ways = self._ways(x)
            if ways > 1:
                return self._split(x, labels, ways)
            with parallel.whole_batches():              # workers=1: the model does not split it either
                return self._eager(x, labels)
        if not self.graph:
            return self._eager(x, labels)
        graphs = self._graphs
        key = graphs.key(x, labels)
        recorded = graphs.get(key)
        if recorded is None and self._seen.get(key, 0) < self.WARMUP:
            self._seen[key] = self._seen.get(key, 0) + 1
            with graphs.stream():
                return self._eager(x, labels)
        if recorded is None:
            try:
                recorded = graphs.record(key, x, labels)
            except RecordingFailed as e:
                warnings.warn(f"TrainStep: recording a CUDA graph failed ({e.__cause__!r}); running every step "
                              "op by op from now on", RuntimeWarning, stacklevel=2)
                self.graph = False
                graphs.clear()
                return self._eager(x, labels)
        loss, hits = graphs.replay(recorded, x, labels, self)
        self.replays += 1
        if not np.isfinite(loss):
            raise NonFiniteLoss(loss, applied=True)
        return loss, hits

    def _eager(self, x, labels):
        """The plain step: the loss is checked before anything changes."""
        with np.errstate(over="ignore", invalid="ignore"):      # a diverging step is reported below
            logits = self.model(x)
            loss = self.loss_fn(logits, self.target(labels))
        if not np.isfinite(loss):
            raise NonFiniteLoss(loss, applied=False)
        self.model.backward(self.loss_fn.backward(), need_input_grad=False)
        self._update()
        return loss, hits(logits, labels)

    def _update(self):
        """The optimizer's step on the gradients (clipped first, with ``max_grad_norm``), then zero_grad."""
        if self.max_grad_norm is not None:
            clip_grad_norm_(self.optimizer.params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()

    # ---- a batch split across cores (CPU) ---------------------------------------------------

    def _ways(self, x) -> int:
        """How many parts to split the CPU batch x into (1: not at all)."""
        return 1 if x.ndim == 0 else self.parts_for(x.shape[0])

    def parts_for(self, batch: int) -> int:
        """How many parts a CPU batch of ``batch`` images is split into (1: run whole); see
        ``parallel.parts_for`` for the choice when ``workers`` is None."""
        if not self.loss_fn._splittable():
            return 1
        return parallel.parts_for(self.model, batch, self.workers)

    def _loss_copies(self, ways: int) -> list:
        """The loss for each part: ``loss_fn`` itself, then a copy for each replica."""
        if len(self._losses) != ways - 1 or self._losses_of != id(self.loss_fn):
            self._losses = [copy.deepcopy(self.loss_fn) for _ in range(ways - 1)]
            self._losses_of = id(self.loss_fn)
        return [self.loss_fn] + self._losses

    def _check_labels(self, x, labels):
        B = x.shape[0]
        if np.ndim(labels) < 1 or np.shape(labels)[0] != B:     # before the parts see halves of them
            raise ValueError(f"{self}: expected labels of shape (B,) = ({B},) for a batch of {B} images, "
                             f"got shape {tuple(np.shape(labels))}")

    def _shares(self, target, cuts) -> list:
        """Each slice's share of the batch's loss: its rows' share, or of the loss's sample weights
        (a class-weighted loss is a weighted mean over the batch)."""
        weights = self.loss_fn._sample_weights(target)
        if weights is None:
            B = cuts[-1].stop
            return [(cut.stop - cut.start) / B for cut in cuts]
        weights = np.asarray(weights, dtype=np.float64)
        total = weights.sum()
        return [float(weights[cut].sum() / total) for cut in cuts]

    def _split(self, x, labels, ways: int):
        """The step on ``ways`` parts of the batch at once (see the module notes)."""
        self._check_labels(x, labels)
        dp = parallel.DataParallel(self.model, ways)
        target = self.target(labels)
        cuts = parallel.cuts(x.shape[0], ways)
        shares = self._shares(target, cuts)
        outs = dp.step(x, target, cuts, self._loss_copies(ways), shares)
        loss = sum(share * part_loss for share, (_, part_loss) in zip(shares, outs))
        if not np.isfinite(loss):
            dp.clear_grads()                              # what the finite parts' backward passes added
            raise NonFiniteLoss(loss, applied=False)
        dp.gather_grads()
        self._update()
        return loss, sum(hits(logits, labels[cut]) for (logits, _), cut in zip(outs, cuts))

    # ---- one rank of an MPI job (distributed.py) ---------------------------------------------

    def _ranks(self, x, labels):
        """The step as rank r of the job: x, labels are the global batch (the same on every rank);
        rank r computes the loss of its rows and the gradient of its share of the batch's loss, and
        the ranks' gradients are summed (the same bits on all) before the same update everywhere.
        The loss is checked, summed across the ranks, before anything changes."""
        if is_gpu_array(x):
            raise NotImplementedError(f"{self}: ranks on GPUs (NCCL) are not built yet; run the job's ranks on "
                                      f"the CPU (--device cpu)")
        self._check_labels(x, labels)
        B, size = x.shape[0], distributed.world_size()
        if B < size:
            raise ValueError(f"{self}: a batch of {B} images cannot be shared among {size} ranks; give batches "
                             f"of at least {size} images")
        if not self._broadcast:          # the same start everywhere (a user's model, a resumed run)
            distributed.broadcast_state(self.model)
            self._warn_unsynced_batch_norm()
            self._broadcast = True
        target = self.target(labels)
        cuts = parallel.cuts(B, size)
        shares = self._shares(target, cuts)
        me = cuts[distributed.rank()]
        with parallel.whole_batches(), distributed.synced(rows=(B, me)):
            with np.errstate(over="ignore", invalid="ignore"):      # a diverging step is reported below
                logits = self.model(x[me])
                loss = self.loss_fn(logits, target[me])
            correct = hits(logits, labels[me])
            loss, correct = distributed.sum_in_rank_order([shares[distributed.rank()] * loss, correct])
            if not np.isfinite(loss):
                raise NonFiniteLoss(float(loss), applied=False)
            # this rank's share of the batch's mean loss, before backward: batch norm's backward sums
            # across the ranks then add gradients of one loss
            grad = self.loss_fn.backward()
            grad *= shares[distributed.rank()]
            self.model.backward(grad, need_input_grad=False)
        self._gradient_sum(self.optimizer.params)
        self._update()
        return float(loss), (float(correct) if np.ndim(labels) == 2 else int(round(correct)))

    def _warn_unsynced_batch_norm(self):
        from .layers import BatchNorm1d, BatchNorm2d
        if (any(isinstance(m, (BatchNorm1d, BatchNorm2d)) and m.training for m in self.model.modules())
                and not execution.batch_norm_synced(self.model)):
            warnings.warn(f"{self}: some batch norm runs outside the planner's batch-norm steps (a BatchNorm1d, "
                          f"one nested in a custom module, or the rules off), and normalizes each rank's share "
                          f"by its own statistics: the job computes something other than one process",
                          RuntimeWarning, stacklevel=3)

    def __repr__(self):
        return f"TrainStep({type(self.model).__name__}, {self.loss_fn!r}, {self.optimizer!r})"


def hits(logits, labels):
    """How many rows of logits (B, K) have their largest value at the label (B,); for multi-label
    targets (B, K) of 0 and 1, the rows' shares of labels right (logit > 0 where the target is 1)
    summed, a float: divided by B, the mean per-label accuracy (MedMNIST's for these tasks)."""
    if labels.ndim == 2:
        return float(((logits > 0) == (labels > 0.5)).mean(axis=1).sum())
    return int((logits.argmax(axis=1) == labels).sum())
