"""The planner: lowers a Sequential, for one kind of input, to a plan of steps, one rule at a time.

A plan depends on the input's shape, dtype and device, the mode (training or not), whether the
batch may be split, the CPU kernels in use, the rules in force, and the layers. All of that is the
cache key, so a training loop builds two plans (the full batch and the last, smaller one) and then
only looks them up.
"""
from __future__ import annotations

import weakref

import numpy as np

from .. import kernels, memory, parallel
from ..backend import is_gpu_array
from ..layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear,
                      MaxPool2d, ReLU, Residual, Sequential)
from . import rules
from .buffers import Buffers
from .norm import BatchNormStep, FoldedConvStep
from .plan import Plan
from .steps import Im2colStep, LayerStep, LinearStep, PoolStep, ReluStep, ResidualReluStep
from .winograd import WinogradStep


class _Record:
    """What the planner keeps for one model: its plans by key, the last one run, its kept buffers."""

    def __init__(self):
        self.plans, self.last, self.buffers = {}, None, Buffers()


_records = weakref.WeakKeyDictionary()        # model -> _Record (a cache: gone with the model)


def _record(model) -> _Record:
    record = _records.get(model)
    if record is None:
        record = _records[model] = _Record()
    return record


def plan_for(model, x, enabled: bool = True):
    """The plan that runs ``model`` on ``x`` (remembered as the model's last), or None when ``enabled``
    is False (the model runs as written, and its last plan is forgotten)."""
    if not enabled:
        record = _records.get(model)
        if record is not None:
            _switch(record, None)
        return None
    record = _record(model)
    plan = _lookup(record, model, x, _ways(model, x))
    _switch(record, plan)
    return plan


def lookup(model, x):
    """The plan ``plan_for`` would give, without running it or making it the model's last."""
    return _lookup(_record(model), model, x, _ways(model, x))


def whole_plan(model, x):
    """The plan that runs ``model`` on the whole of ``x``, never split (a part of a split batch)."""
    return _lookup(_record(model), model, x, 1)


def last_plan(model):
    record = _records.get(model)
    return None if record is None else record.last


def kept_arrays(model) -> list:
    """Every array the plans of ``model`` keep from step to step (a CUDA graph must hold them)."""
    record = _records.get(model)
    return [] if record is None else record.buffers.arrays()


def batch_norm_synced(model) -> bool:
    """Whether every batch norm of ``model`` that uses batch statistics runs as a BatchNormStep, which
    pools the statistics of a split batch's parts (a BatchNorm2d placed directly in a Sequential, with
    the rule and the numba kernels on)."""
    if not rules.on("batchnorm_kernels") or kernels.cpu_kernels() != "numba":
        return False
    planned = {id(layer) for m in model.modules() if isinstance(m, Sequential) for layer in m.layers
               if type(layer) is BatchNorm2d}
    return all(id(m) in planned for m in model.modules()
               if isinstance(m, (BatchNorm1d, BatchNorm2d)) and (m.training or not m.track_running_stats))


def _switch(record, plan):
    """Make ``plan`` the last one run; the one before lets go of its activations (one set per model)."""
    if record.last is not None and record.last is not plan:
        record.last.drop()
    record.last = plan


def _lookup(record, model, x, ways: int):
    """The model's plan for x in ``ways`` parts, built on first use. The key is all a plan depends on:
    the input's type, shape and dtype, the mode, the split, the CPU kernels, the rules, the layers."""
    layers = tuple((id(layer), "forward" in layer.__dict__ or "backward" in layer.__dict__, layer.training)
                   for layer in model.layers)
    key = (type(x), getattr(x, "shape", None), getattr(x, "dtype", None), model.training, ways,
           kernels.cpu_kernels(), rules.version(), layers)
    plan = record.plans.get(key)
    if plan is None:
        plan = record.plans[key] = SplitPlan(model, ways) if ways > 1 else build(model, x, record.buffers)
    return plan


def _ways(model, x) -> int:
    """How many parts a batch is split into (1: none): only a CPU batch, outside another split, with
    the ``split_batch`` rule on; in training, or in eval mode for a convolutional network (inference:
    each image is computed alone, and the convolutions' products gave the same bits whole or split)."""
    if (not model.layers or not rules.on("split_batch") or not parallel.allowed()
            or not isinstance(x, np.ndarray) or x.ndim < 1 or x.shape[0] < 2
            or type(model).forward is not Sequential.forward or type(model).backward is not Sequential.backward):
        return 1
    workers = getattr(model, "workers", None)
    parallel.check_workers(model, workers)
    if not model.training and not any(type(m) is Conv2d for m in model.modules()):
        # inference of a fully connected network is a few large products that BLAS already spreads
        # over the cores, and a product's rounding may depend on how many rows it has: run whole
        return 1
    return parallel.parts_for(model, x.shape[0], workers)


class SplitPlan:
    """The batch in parts, each run by the whole plan of a replica (``parallel.DataParallel``)."""

    def __init__(self, model, ways: int):
        self._model, self.ways = weakref.ref(model), ways
        self.key_text = f"a batch split in {ways} parts"
        self._plans = {}                  # id(part's model) -> the whole plan that ran it last

    def forward(self, x):
        model = self._model()
        self._parallel = dp = parallel.DataParallel(model, self.ways)
        self._plans = {}

        def part_forward(part, x_part):
            plan = self._plans[id(part)] = whole_plan(part, x_part)
            return plan.forward(x_part)
        return dp.forward(x, part_forward)

    def backward(self, grad, need_input_grad: bool = True):
        def part_backward(part, grad_part, need):
            return self._plans[id(part)].backward(grad_part, need)
        return self._parallel.backward(grad, need_input_grad, part_backward, self._model().layers[-1])

    def drop(self):
        for plan in self._plans.values():
            plan.drop()
        self._plans = {}

    def explain(self, x) -> str:
        """What runs on x: the split, then the plan each part runs (shown for the first part)."""
        part = whole_plan(self._model(), x[:parallel.cuts(x.shape[0], self.ways)[0].stop])
        return (f"Plan for {self.key_text}, one thread (and core) each: every part runs a replica of the "
                f"model (the same parameter arrays) and the replicas' gradients are summed. Each part runs\n"
                + "\n".join("  " + line for line in str(part).splitlines()))

    def __str__(self):
        return f"Plan for {self.key_text}"

    __repr__ = __str__


def build(model, x, buffers) -> Plan:
    """The rules, applied in one pass over the layers (x's shape followed through the known ones)."""
    layers, device = model.layers, "gpu" if is_gpu_array(x) else "cpu"
    if device == "cpu" and rules.on("keep_freed_memory"):
        memory.keep_freed_memory()
    shape = tuple(x.shape) if hasattr(x, "shape") else None
    steps, stand_in, seen_params = [], None, False
    i, n = 0, len(layers)

    def exact(k, kind):
        layer = layers[k] if k < n else None
        return (type(layer) is kind and "forward" not in layer.__dict__ and "backward" not in layer.__dict__)

    while i < n:
        layer = layers[i]
        if exact(i, ReLU) and exact(i + 1, MaxPool2d) and rules.on("relu_into_pool"):
            step, used = PoolStep([(i, layer), (i + 1, layers[i + 1])], relu=True), 2
        elif exact(i, MaxPool2d):
            step, used = PoolStep([(i, layer)], relu=False), 1
        elif exact(i, Linear):
            relu = (exact(i + 1, ReLU) and rules.on("relu_into_linear")
                    and not (exact(i + 2, MaxPool2d) and rules.on("relu_into_pool")))
            step, used = LinearStep([(i, layer)] + ([(i + 1, layers[i + 1])] if relu else []), relu=relu), 1 + relu
            if not seen_params and layer.bias is not None and rules.on("input_check_in_bias"):
                if all(isinstance(s, LayerStep) and type(s.layer) is Flatten for s in steps):
                    stand_in = len(steps)
        elif exact(i, ReLU):
            step, used = ReluStep([(i, layer)], in_place=rules.on("relu_in_place")), 1
        elif exact(i, Residual) and exact(i + 1, ReLU) and device == "cpu" and rules.on("residual_relu"):
            step, used = ResidualReluStep([(i, layer), (i + 1, layers[i + 1])]), 2
        elif (exact(i, Conv2d) and exact(i + 1, BatchNorm2d) and not layers[i + 1].training
              and layers[i + 1].track_running_stats and layers[i + 1].num_features == layer.out_channels
              and device == "cpu" and kernels.cpu_kernels() == "numba" and rules.on("batchnorm_into_conv")):
            step, used = _folded_step(layers, i, shape, device, buffers), 2
        elif exact(i, Conv2d):
            step, used = _conv_step(layers, i, shape, device, buffers, exact)
        elif (exact(i, BatchNorm2d) and device == "cpu" and kernels.cpu_kernels() == "numba"
              and rules.on("batchnorm_kernels")):
            relu = exact(i + 1, ReLU) and rules.on("relu_into_batchnorm")
            step, used = BatchNormStep([(i, layer)] + ([(i + 1, layers[i + 1])] if relu else []), relu), 1 + relu
        else:
            step, used = LayerStep([(i, layer)]), 1
        seen_params = seen_params or step.has_parameters()
        for _, covered in step.layers:
            shape = propagate(covered, shape)
        steps.append(step)
        i += used
    if rules.on("batchnorm_grad_into_winograd"):
        for before, step in zip(steps, steps[1:]):
            if isinstance(step, BatchNormStep) and isinstance(before, WinogradStep) and before.takes_deferred_grad():
                step.defer_input_grad = True
    if not isinstance(x, np.ndarray):
        stand_in = None                 # on a GPU the check would wait for the device: the layer checks
    what = f"{tuple(x.shape)} {x.dtype}" if hasattr(x, "shape") else type(x).__name__
    mode = "training" if model.training else "eval"
    key_text = f"{type(model).__name__} on {device.upper()} input {what} in {mode} mode"
    return Plan(key_text, steps, stand_in, buffers, layers[0] if layers else model)


def _conv_step(layers, i, shape, device, buffers, exact):
    """A Conv2d, the pooling that reads it, and what the rules make of them: im2col or Winograd, the
    pixels the pooling reads, and the pooling (with its ReLU) inside Winograd's output transform."""
    conv = layers[i]
    out = propagate(conv, shape)
    pool_at = None                                   # index of the MaxPool2d reading the conv's output
    if exact(i + 1, MaxPool2d):
        pool_at = i + 1
    elif exact(i + 1, ReLU) and exact(i + 2, MaxPool2d) and rules.on("relu_into_pool"):
        pool_at = i + 2
    out_hw = None
    if out is not None and pool_at is not None and rules.on("crop_before_pool"):
        k, stride = layers[pool_at].kernel_size, layers[pool_at].stride
        out_hw = tuple(((m - k) // stride) * stride + k if m >= k else m for m in out[2:])
        if out_hw == tuple(out[2:]):
            out_hw = None                            # the pooling reads every pixel
    winograd = (out is not None and rules.on("winograd") and conv.kernel_size == (3, 3) and conv.stride[0] == 1
                and conv.in_channels >= rules.WINOGRAD_MIN_CHANNELS and device == "cpu"
                and kernels.cpu_kernels() == "numba")
    if not winograd:
        return Im2colStep([(i, conv)], out_hw, buffers), 1
    hw = out_hw or tuple(out[2:])
    pool = layers[pool_at] if pool_at is not None else None
    if (pool is not None and rules.on("pool_into_winograd") and pool.kernel_size == 2 and pool.stride == 2
            and hw[0] % 2 == 0 and hw[1] % 2 == 0):
        covered = [(k, layers[k]) for k in range(i, pool_at + 1)]
        return WinogradStep(covered, hw, buffers, pool=True, relu=pool_at == i + 2), pool_at + 1 - i
    return WinogradStep([(i, conv)], hw, buffers, m=4 if rules.on("winograd_4x4") else 2), 1


def _folded_step(layers, i, shape, device, buffers):
    """A Conv2d and the eval-mode BatchNorm2d after it, as one convolution with folded weights run by a
    twin Conv2d (the conv step for the twin chosen as for any convolution, with nothing after it)."""
    conv = layers[i]
    twin = Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True,
                  dtype=conv.weight.dtype, rng=0).eval()          # run in eval mode only

    def make_inner(twin):
        return _conv_step([twin], 0, shape, device, buffers, lambda k, kind: False)[0]
    return FoldedConvStep([(i, conv), (i + 1, layers[i + 1])], twin, make_inner)


def propagate(layer, shape):
    """The output shape of a known layer for an input of ``shape``, or None (unknown, or an input the
    layer will refuse: its own check then raises the error)."""
    if shape is None:
        return None
    kind = type(layer)
    if kind in (ReLU, Dropout):
        return shape
    if kind in (BatchNorm1d, BatchNorm2d):
        return shape if len(shape) >= 2 and shape[1] == layer.num_features else None
    if kind in (AvgPool2d, AdaptiveAvgPool2d) and len(shape) == 4:
        out = layer.output_shape(shape)
        return out if min(out[2:]) >= 1 else None
    if kind is Flatten:
        return (shape[0], int(np.prod(shape[1:]))) if len(shape) >= 2 else None
    if kind is Linear:
        return (shape[0], layer.out_features) if len(shape) == 2 and shape[1] == layer.in_features else None
    if kind in (Conv2d, MaxPool2d) and len(shape) == 4:
        if kind is Conv2d and shape[1] != layer.in_channels:
            return None
        out = layer.output_shape(shape)
        return out if min(out[2:]) >= 1 else None
    return None
