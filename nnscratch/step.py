"""One training step as a unit: forward, loss, backward, optimizer step, gradients cleared.

    step = ns.TrainStep(model, loss_fn, optimizer)
    loss, correct = step(x, labels)      # loss: float, correct: int (argmax of the logits == label)

On the CPU this is exactly the five lines every training loop writes (and the loss is checked
before the backward pass, so a step that would diverge changes nothing). On a GPU the same
Python code launches about a hundred small kernels per step, and at the paper's batch of 64 the
GPU waits for Python more than Python waits for the GPU. So after an ordinary step for a given
input shape (and optimizer state: the very first step creates it), ``TrainStep`` records the next
one as a CUDA graph (CuPy's stream capture) and from then on replays it: one launch per step
instead of a hundred. What makes the replay right:

- The graph reads and writes fixed addresses. The batch is copied into an input buffer of the
  recorded shape, and every array allocated while recording, and the buffers the layers keep
  across steps, are held here, so that memory is never handed out to anything else while the
  graph may still write to it.
- Nothing inside may wait for the device: the step runs with the layers' finiteness checks off
  and the loss kept as a device array (``Loss._forward``); instead, each call checks the batch
  (finite values, labels in range) with one read from the device before the replay, and reads
  loss and hit count with one more after it.
- Numbers that change from step to step live in device memory: Adam's bias corrections are
  written by the optimizer's host part (``Optimizer._prepare``, run before each replay), which
  also advances its step counts; the graph holds only ``Optimizer._apply``.
- A new input shape (the last, smaller batch of an epoch), a parameter or optimizer state that
  was replaced, or changed hyperparameters select or record another graph.

If recording fails (a CuPy version without stream capture, say), a warning says why and the
steps run op by op from then on; ``graph=False`` asks for that from the start.

On a CPU with several cores, a convolutional network's batch of at least ``2 * MIN_PART`` images
is split into one part per core (``workers``): each part runs forward and backward through its own
replica of the model (the same parameter arrays, its own gradients and layer buffers) in a thread
of its own, every call single-threaded, and the parts' gradients are summed before the optimizer
step. The step is the same step; only the order of the gradient's sums changes (the CNN's step at
batch 64 on two cores 29.0 -> 21.8 ms with the changes around it: ``benches/NOTES.md``, rows 29-33).
Each part checks its own loss before its backward pass, so a non-finite loss still leaves the
parameters and the optimizer as they were (the finite parts' gradients are cleared).
"""
from __future__ import annotations

import copy
import warnings

import numpy as np

from . import split
from .backend import get_array_module, is_gpu_array
from .checks import check_array, trusted_inputs
from .losses import _check_labels
from .threads import run_parallel


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
    """

    WARMUP = 1            # ordinary steps per input shape before recording: kernels compiled, state made
    MAX_GRAPHS = 8        # recorded graphs kept at once (one per input shape, in a training loop two)
    MIN_PART = split.MIN_PART     # images per part at least when ``workers`` is left to choose

    def __init__(self, model, loss_fn, optimizer, target=None, graph: bool = True, workers: int | None = None):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.target = target if target is not None else (lambda y: y)
        self.graph = bool(graph)
        split.check_workers("TrainStep", workers)
        self.workers = workers
        self._losses, self._losses_of = [], None   # copies of loss_fn for parts 1, 2, ... of a split batch
        self._graphs = {}                 # key -> _Recorded
        self._seen = {}                   # key -> ordinary steps run so far
        self._stream = None
        self._held = {}                   # key -> GPU memory held for that key's graph (see _holding)
        self.replays = 0                  # steps served by a graph (for benches and tests)

    def __call__(self, x, labels):
        """x: the model's input (B, ...); labels: (B,) ints -> (loss: float, correct: int)."""
        if not is_gpu_array(x):
            ways = self._ways(x)
            if ways > 1:
                return self._split(x, labels, ways)
            with split.whole_batches():                  # workers=1: the model does not split it either
                return self._eager(x, labels)
        if not self.graph:
            return self._eager(x, labels)
        key = self._key(x, labels)
        recorded = self._graphs.get(key)
        if recorded is not None:
            return self._replay(recorded, x, labels)
        if self._seen.get(key, 0) < self.WARMUP:
            self._seen[key] = self._seen.get(key, 0) + 1
            with self._stream_ctx():
                return self._eager(x, labels)
        if len(self._graphs) >= self.MAX_GRAPHS:          # parameters replaced again and again: start over
            self._graphs.clear()
            self._held.clear()
        try:
            recorded = self._record(key, x, labels)
        except _RecordingFailed as e:
            warnings.warn(f"TrainStep: recording a CUDA graph failed ({e.__cause__!r}); running every step "
                          "op by op from now on", RuntimeWarning, stacklevel=2)
            self.graph = False
            self._graphs.clear()
            self._held.clear()
            return self._eager(x, labels)
        self._graphs[key] = recorded
        return self._replay(recorded, x, labels)

    # ---- op by op -------------------------------------------------------------------------------

    def _eager(self, x, labels):
        """The plain step: the loss is checked before anything changes."""
        with np.errstate(over="ignore", invalid="ignore"):      # a diverging step is reported below
            logits = self.model(x)
            loss = self.loss_fn(logits, self.target(labels))
        if not np.isfinite(loss):
            raise NonFiniteLoss(loss, applied=False)
        self.model.backward(self.loss_fn.backward(), need_input_grad=False)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss, _hits(logits, labels)

    # ---- a batch split across cores (CPU) ---------------------------------------------------

    def _ways(self, x) -> int:
        """How many parts to split the CPU batch x into (1: not at all)."""
        return 1 if x.ndim == 0 else self.parts_for(x.shape[0])

    def parts_for(self, batch: int) -> int:
        """How many parts a CPU batch of ``batch`` images is split into (1: run whole); see
        ``split.parts_for`` for the choice when ``workers`` is None."""
        if not self.loss_fn._splittable():
            return 1
        return split.parts_for(self.model, batch, self.workers)

    def _parts(self, ways: int) -> list:
        """[(model, loss_fn, parameters)] for each part: the model's own first, then its replicas
        (``split.Replicas``) with a copy of the loss each."""
        parts = split.replicas_of(self.model).parts(self.model, ways)
        if len(self._losses) != ways - 1 or self._losses_of != id(self.loss_fn):
            self._losses = [copy.deepcopy(self.loss_fn) for _ in range(ways - 1)]
            self._losses_of = id(self.loss_fn)
        return [(model, loss_fn, params) for (model, params), loss_fn in zip(parts, [self.loss_fn] + self._losses)]

    def _split(self, x, labels, ways: int):
        """The step on ``ways`` parts of the batch at once (see the module notes). Each part checks its
        own loss before its backward pass: the whole batch's loss, a weighted mean of the parts', is
        finite exactly when every part's is. So the threads meet once a step, not twice."""
        parts = self._parts(ways)
        B = x.shape[0]
        cuts = split.cuts(B, ways)
        target = self.target(labels)
        weights = self.loss_fn._sample_weights(target)
        if weights is None:
            shares = [(cut.stop - cut.start) / B for cut in cuts]
        else:
            weights = np.asarray(weights, dtype=np.float64)
            total = weights.sum()
            shares = [float(weights[cut].sum() / total) for cut in cuts]

        def part(k):
            model, loss_fn, _ = parts[k]

            def task():
                with np.errstate(over="ignore", invalid="ignore"):     # a diverging step is reported below
                    logits = model(x[cuts[k]])
                    loss = loss_fn(logits, target[cuts[k]])
                if np.isfinite(loss):
                    grad = loss_fn.backward()
                    grad *= shares[k]                     # this part's share of the whole batch's mean
                    model.backward(grad, need_input_grad=False)
                return logits, loss
            return task

        outs = run_parallel([part(k) for k in range(ways)])
        loss = sum(share * part_loss for share, (_, part_loss) in zip(shares, outs))
        if not np.isfinite(loss):
            for _, _, params in parts:                    # what the finite parts' backward passes added
                for p in params:
                    p.zero_grad()
            raise NonFiniteLoss(loss, applied=False)
        split.gather_grads([(model, params) for model, _, params in parts])
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss, sum(_hits(logits, labels[cut]) for (logits, _), cut in zip(outs, cuts))

    # ---- CUDA graphs ----------------------------------------------------------------------------

    def _key(self, x, labels) -> tuple:
        """What a recorded graph depends on: input shapes and dtypes, the addresses of every parameter,
        gradient and optimizer state array, and the optimizer's hyperparameters."""
        arrays = []
        for p in self.optimizer.params:
            arrays += [p.data, p._grad]
        for state in self.optimizer.state:
            arrays += [v for v in state.values() if hasattr(v, "data")]
        return ((x.shape, x.dtype.str, labels.shape, labels.dtype.str, repr(self.optimizer._hyper()))
                + tuple(a.data.ptr for a in arrays))

    def _stream_ctx(self):
        import cupy as cp
        if self._stream is None:
            # a blocking stream: it waits for work on the default stream (the batch being gathered)
            # and the default stream waits for it (evaluation after training steps)
            self._stream = cp.cuda.Stream(non_blocking=False)
        return self._stream

    def _record(self, key, x, labels) -> "_Recorded":
        import cupy as cp
        stream = self._stream_ctx()
        held = self._held.setdefault(key, [])
        params = self.optimizer.params
        pending = [p._zero_pending for p in params]
        states = [dict(s) for s in self.optimizer.state]
        with stream, _holding(held):
            xs, ys = cp.empty_like(x), cp.empty_like(labels)
            # the host part of a step runs before recording (Adam's factors must exist in device memory)
            # and is undone afterwards: recording runs nothing, and _replay runs the step for real
            try:
                self.optimizer._prepare()
                if not self.optimizer._graph_ready():
                    raise RuntimeError(f"{self.optimizer!r} passes step-dependent numbers as kernel arguments")
                # compile the kernels of the output below now: CuPy compiles on first use
                cp.stack([cp.zeros((), x.dtype).astype(cp.float64), cp.zeros((), cp.int64).astype(cp.float64)])
                stream.begin_capture()
                try:
                    with trusted_inputs():
                        logits = self.model(xs)
                        loss = self.loss_fn._forward(logits, self.target(ys))
                        self.model.backward(self.loss_fn.backward(), need_input_grad=False)
                    self.optimizer._apply()
                    self.optimizer.zero_grad()
                    hits = (logits.argmax(axis=1) == ys).sum()
                    out = cp.stack([loss.astype(cp.float64), hits.astype(cp.float64)])
                finally:
                    graph = stream.end_capture()
            except Exception as e:
                raise _RecordingFailed() from e
            finally:
                for p, flag in zip(params, pending):
                    p._zero_pending = flag
                for s, saved in zip(self.optimizer.state, states):
                    s.clear()
                    s.update(saved)
        # buffers the layers keep from step to step (Conv2d's column matrix and ones) were made by
        # the ordinary steps before recording; the graph uses them, so they are held too
        held += [xs, ys, out] + [a for m in self.model.modules() for a in getattr(m, "_kept", {}).values()]
        return _Recorded(graph, xs, ys, out, logits.shape[1])

    def _replay(self, rec: "_Recorded", x, labels):
        stream = self._stream_ctx()
        xp = get_array_module(x)
        with stream:
            rec.x[...] = x
            rec.y[...] = labels
            ok = xp.stack([xp.isfinite(rec.x).all(), rec.y.min() >= 0, rec.y.max() < rec.classes]).get()
            if not ok.all():
                first = self.model.layers[0] if getattr(self.model, "layers", None) else self.model
                check_array(first, x)
                _check_labels(self.loss_fn, labels, labels.shape[0], rec.classes)
                raise ValueError(f"{self}: the batch has non-finite values or labels outside [0, {rec.classes})")
            self.optimizer._prepare()
            rec.graph.launch(stream=stream)
            loss, hits = (float(v) for v in rec.out.get())
        self.replays += 1
        if not np.isfinite(loss):
            raise NonFiniteLoss(loss, applied=True)
        return loss, int(hits)

    def __repr__(self):
        return f"TrainStep({type(self.model).__name__}, {self.loss_fn!r}, {self.optimizer!r})"


def _hits(logits, labels) -> int:
    """How many rows of logits (B, K) have their largest value at the label (B,)."""
    return int((logits.argmax(axis=1) == labels).sum())


class _Recorded:
    """A recorded step: the graph, its input buffers, its (2,) output (loss, hits), the class count."""

    def __init__(self, graph, x, y, out, classes):
        self.graph, self.x, self.y, self.out, self.classes = graph, x, y, out, classes


class _RecordingFailed(Exception):
    pass


class _holding:
    """Within this block every GPU allocation is also appended to ``held``, which keeps it alive:
    a recorded graph may write to it long after the array that asked for it is gone."""

    def __init__(self, held: list):
        self.held = held

    def __enter__(self):
        import cupy as cp
        pool = cp.get_default_memory_pool()

        def alloc(nbytes):
            mem = pool.malloc(nbytes)
            self.held.append(mem)
            return mem
        self._ctx = cp.cuda.using_allocator(alloc)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
