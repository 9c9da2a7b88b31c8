"""A training step recorded once as a CUDA graph and replayed: one launch per step instead of a hundred.

At the paper's batch of 64 the GPU waits for Python more than Python waits for the GPU: the same
step launches about a hundred small kernels. ``GraphedSteps`` records the step (CuPy's stream
capture) and from then on replays it. What makes the replay right:

- The graph reads and writes fixed addresses. The batch is copied into an input buffer of the
  recorded shape, and every array allocated while recording, and the buffers the model's plans
  keep across steps (``fast.kept_arrays``), are held here, so that memory is never handed out to
  anything else while the graph may still write to it.
- Nothing inside may wait for the device: the step runs with the layers' finiteness checks off
  and the loss kept as a device array (``Loss._forward``); instead, each call checks the batch
  (finite values, labels in range) with one read from the device before the replay, and reads
  loss and hit count with one more after it.
- Numbers that change from step to step live in device memory: Adam's bias corrections are
  written by the optimizer's host part (``Optimizer._prepare``, run before each replay), which
  also advances its step counts; the graph holds only ``Optimizer._apply``.
- A new input shape (the last, smaller batch of an epoch), a parameter or optimizer state that
  was replaced, or changed hyperparameters select or record another graph (``key``).
"""
from __future__ import annotations

from .backend import get_array_module
from .checks import check_array, trusted_inputs
from .fast import kept_arrays
from .layers import Dropout
from .losses import _check_labels


class RecordingFailed(Exception):
    """Recording a graph failed; ``__cause__`` says why."""


class GraphedSteps:
    """Recorded steps of one (model, loss_fn, optimizer, target), by key."""

    MAX_GRAPHS = 8        # recorded graphs kept at once (one per input shape, in a training loop two)

    def __init__(self, model, loss_fn, optimizer, target):
        self.model, self.loss_fn, self.optimizer, self.target = model, loss_fn, optimizer, target
        self._graphs = {}                 # key -> _Recorded
        self._held = {}                   # key -> GPU memory held for that key's graph (see _holding)
        self._stream = None

    def key(self, x, labels) -> tuple:
        """What a recorded graph depends on: input shapes and dtypes, the addresses of every parameter,
        gradient and optimizer state array, and the optimizer's hyperparameters."""
        arrays = []
        for p in self.optimizer.params:
            arrays += [p.data, p._grad]
        for state in self.optimizer.state:
            arrays += [v for v in state.values() if hasattr(v, "data")]
        return ((x.shape, x.dtype.str, labels.shape, labels.dtype.str, repr(self.optimizer._hyper()))
                + tuple(a.data.ptr for a in arrays))

    def get(self, key):
        return self._graphs.get(key)

    def clear(self):
        self._graphs.clear()
        self._held.clear()

    def stream(self):
        import cupy as cp
        if self._stream is None:
            # a blocking stream: it waits for work on the default stream (the batch being gathered)
            # and the default stream waits for it (evaluation after training steps)
            self._stream = cp.cuda.Stream(non_blocking=False)
        return self._stream

    def record(self, key, x, labels) -> "_Recorded":
        """Record the step for ``key`` (raises RecordingFailed); it is run by ``replay``, not here."""
        import cupy as cp
        if len(self._graphs) >= self.MAX_GRAPHS:          # parameters replaced again and again: start over
            self.clear()
        stream = self.stream()
        held = self._held.setdefault(key, [])
        params = self.optimizer.params
        pending = [p._zero_pending for p in params]
        states = [dict(s) for s in self.optimizer.state]
        with stream, _holding(held):
            xs, ys = cp.empty_like(x), cp.empty_like(labels)
            # the host part of a step runs before recording (Adam's factors must exist in device memory)
            # and is undone afterwards: recording runs nothing, and replay runs the step for real
            try:
                self.optimizer._prepare()
                if not self.optimizer._graph_ready():
                    raise RuntimeError(f"{self.optimizer!r} passes step-dependent numbers as kernel arguments")
                if any(isinstance(m, Dropout) and m.training and m.p > 0 for m in self.model.modules()):
                    raise RuntimeError("Dropout draws a new mask on the host every step, which a recorded "
                                       "graph would replay unchanged")
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
                raise RecordingFailed() from e
            finally:
                for p, flag in zip(params, pending):
                    p._zero_pending = flag
                for s, saved in zip(self.optimizer.state, states):
                    s.clear()
                    s.update(saved)
        # the buffers the plans keep from step to step were made by the ordinary steps before
        # recording; the graph uses them, so they are held too
        held += [xs, ys, out] + kept_arrays(self.model)
        self._graphs[key] = recorded = _Recorded(graph, xs, ys, out, logits.shape[1])
        return recorded

    def replay(self, rec: "_Recorded", x, labels, owner) -> tuple:
        """Run the recorded step on (x, labels) -> (loss, hits); the batch is checked first."""
        stream = self.stream()
        xp = get_array_module(x)
        with stream:
            rec.x[...] = x
            rec.y[...] = labels
            ok = xp.stack([xp.isfinite(rec.x).all(), rec.y.min() >= 0, rec.y.max() < rec.classes]).get()
            if not ok.all():
                first = self.model.layers[0] if getattr(self.model, "layers", None) else self.model
                check_array(first, x)
                _check_labels(self.loss_fn, labels, labels.shape[0], rec.classes)
                raise ValueError(f"{owner}: the batch has non-finite values or labels outside [0, {rec.classes})")
            self.optimizer._prepare()
            rec.graph.launch(stream=stream)
            loss, hits = (float(v) for v in rec.out.get())
        return loss, int(hits)


class _Recorded:
    """A recorded step: the graph, its input buffers, its (2,) output (loss, hits), the class count."""

    def __init__(self, graph, x, y, out, classes):
        self.graph, self.x, self.y, self.out, self.classes = graph, x, y, out, classes


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

