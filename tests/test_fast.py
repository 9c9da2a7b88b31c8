"""The planner (nnscratch/fast): every rule computes what the textbook layers compute.

Rules that keep the bits (ReLU into pooling or into Linear, pooling into Winograd, in-place ReLU,
kept buffers, the input check in the bias pass) are compared bit for bit with the rule off; rules
that change the order of sums (the crop, Winograd, the folded bias) are compared in float64 with the
textbook layers (``set_execution("reference")``), and the planned model is gradient-checked.
"""
import gc
import weakref

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import nnscratch as ns
from nnscratch import execution, threads
from nnscratch.fast import rules as fast_rules  # the module
from nnscratch.fast.steps import Im2colStep, LayerStep, LinearStep, PoolStep, ReluStep
from nnscratch.fast.winograd import WinogradStep
from nnscratch.kernels import cpu_kernels

from conftest import requires_gpu

SAME_BITS = ["relu_into_pool", "relu_into_linear", "pool_into_winograd", "relu_in_place", "kept_buffers",
             "input_check_in_bias", "relu_into_batchnorm"]     # (the block rules: their own tests below)


@pytest.fixture
def small_winograd(monkeypatch):
    """Winograd for any channel count, so that small layers take it."""
    monkeypatch.setattr(fast_rules, "WINOGRAD_MIN_CHANNELS", 1)
    fast_rules.set_rules()                       # a new rules version: no cached plan made before is used


def _pass(model, x, g, need_input_grad=True, reference=False, **switches):
    """(y, dL/dx, [every parameter's grad]) of one forward and backward pass."""
    model.zero_grad()
    before = execution.get_execution()
    execution.set_execution("reference" if reference else "plan")
    try:
        with fast_rules.switched(**switches):
            y = model(x)
            dx = model.backward(g if g is not None else np.ones_like(y), need_input_grad=need_input_grad)
    finally:
        execution.set_execution(before)
    return y.copy(), None if dx is None else dx.copy(), [p.grad.copy() for p in model.parameters()]


def _assert_same(a, b, exact: bool, rtol=1e-10, atol=1e-12):
    (ya, dxa, ga), (yb, dxb, gb) = a, b
    pairs = [(ya, yb)] + ([(dxa, dxb)] if dxa is not None else []) + list(zip(ga, gb))
    # a convolution's bias before a batch norm has a gradient of 0 in exact arithmetic, which float64
    # leaves at the rounding of the sums behind it, either way (hypothesis found 4e-11 apart with the
    # model's largest gradients at 40): gradients are held to rtol of the largest of them as well
    scale = max(float(np.abs(v).max()) for v in gb) if gb else 0.0
    for i, (u, v) in enumerate(pairs):
        if exact:
            np.testing.assert_array_equal(u, v)
        else:
            grad = i >= len(pairs) - len(gb)
            np.testing.assert_allclose(u, v, rtol=rtol, atol=atol + (rtol * scale if grad else 0.0))


@st.composite
def cnn_case(draw):
    """A small CNN-like model: [Conv2d (k, stride, pad, bias?), BatchNorm2d?, ReLU?, MaxPool2d(k, s)?] x 1-2,
    Flatten, Linear, ReLU?, Linear; odd sizes, overlapping windows and maps the pooling reads only in part
    included."""
    B, C = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    H, W = draw(st.integers(4, 11)), draw(st.integers(4, 11))
    layers, shape = [], (B, C, H, W)
    for block in range(draw(st.integers(1, 2))):
        k, pad = draw(st.sampled_from([1, 3, 3])), draw(st.integers(0, 1))
        if min(shape[2:]) + 2 * pad < k:
            break
        oc, stride = draw(st.integers(1, 5)), draw(st.sampled_from([1, 1, 2]))
        conv = ns.Conv2d(shape[1], oc, k, stride=stride, padding=pad, bias=draw(st.booleans()), dtype=np.float64,
                         rng=block)
        shape = conv.output_shape(shape)
        layers.append(conv)
        if draw(st.booleans()) and shape[0] * shape[2] * shape[3] > 1:
            layers.append(ns.BatchNorm2d(oc, dtype=np.float64))       # no rule of its own: a LayerStep
        if draw(st.booleans()):
            layers.append(ns.ReLU())
        pk, ps = draw(st.sampled_from([(2, 2), (2, 2), (2, 2), (1, 1), (2, 1), (3, 2), (3, 3), (2, 3)]))
        if draw(st.integers(0, 3)) and min(shape[2:]) >= pk:
            pool = ns.MaxPool2d(pk, ps)
            shape = pool.output_shape(shape)
            layers.append(pool)
    n = int(np.prod(shape[1:]))
    hidden = draw(st.integers(1, 6))
    layers += [ns.Flatten(), ns.Linear(n, hidden, dtype=np.float64, rng=7)]
    if draw(st.booleans()):
        layers.append(ns.ReLU())
    layers.append(ns.Linear(hidden, 3, dtype=np.float64, rng=8))
    for layer in layers:                       # non-zero biases, so that a wrong bias path shows
        if getattr(layer, "bias", None) is not None:
            layer.bias.data[...] = np.random.default_rng(len(layers)).standard_normal(layer.bias.shape)
    return ns.Sequential(*layers), (B, C, H, W), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=40, deadline=None)
@given(cnn_case())
def test_the_plan_equals_the_textbook_layers_on_random_models(small_winograd, case):
    model, shape, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    g = rng.standard_normal((shape[0], 3))
    _assert_same(_pass(model, x, g), _pass(model, x, g, reference=True), exact=False)
    _assert_same(_pass(model, x, g, need_input_grad=False), _pass(model, x, g, need_input_grad=False, reference=True),
                 exact=False)


@settings(max_examples=30, deadline=None)
@given(cnn_case())
def test_the_plan_equals_the_textbook_layers_in_eval_mode(small_winograd, case):
    """Batch norm with running statistics: folded into the convolution before it, or one scale-and-shift
    pass; and inference split over the cores."""
    model, shape, seed = case
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, ns.BatchNorm2d):
            m.running_mean.data[...] = rng.standard_normal(m.num_features)
            m.running_var.data[...] = rng.random(m.num_features) + 0.5
            m.weight.data[...] = rng.standard_normal(m.num_features)
    model.eval()
    x = rng.standard_normal(shape)
    g = rng.standard_normal((shape[0], 3))
    _assert_same(_pass(model, x, g), _pass(model, x, g, reference=True), exact=False)


@settings(max_examples=25, deadline=None)
@given(cnn_case(), st.sampled_from(SAME_BITS))
def test_rules_that_keep_the_bits_keep_them(small_winograd, case, rule):
    model, shape, seed = case
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=shape).astype(np.float64)     # ties, zeros, all-negative windows
    x += rng.standard_normal(shape) * (rng.random() < 0.5)
    kept = x.copy()
    g = rng.standard_normal((shape[0], 3))
    # the crop changes rounding, and it applies only where a pooling reads the convolution, which
    # relu_into_pool decides when a ReLU sits between them: off in both passes; so is F(4x4, 3x3),
    # which a convolution takes when no pooling runs inside its output transform (rounded otherwise)
    off = dict(crop_before_pool=False, winograd_4x4=False)
    (y1, dx1, g1), (y0, dx0, g0) = (_pass(model, x, g, **off), _pass(model, x, g, **off, **{rule: False}))
    _assert_same((y1, dx1, []), (y0, dx0, []), exact=True)
    for (name, _), a, b in zip(model.named_parameters(), g1, g0):
        layer = model[int(name.split(".")[0])]
        if rule in ("relu_into_pool", "pool_into_winograd") and isinstance(layer, ns.Conv2d) and "bias" in name:
            # pooling inside Winograd sums the bias gradient over the windows, not over the map
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)
    np.testing.assert_array_equal(x, kept)                    # the caller's input is never overwritten


@st.composite
def residual_case(draw):
    """A small residual network: a stem, 1-3 blocks each Residual(body, shortcut) then ReLU (basic blocks
    with identity or projection shortcuts and stride 1 or 2, a body that returns its input, a body of
    one ReLU), global pooling, Linear; odd sizes included."""
    B, C = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H, W = draw(st.integers(3, 9)), draw(st.integers(3, 9))
    if B * H * W < 2:
        B = 2
    ch = draw(st.integers(1, 4))
    layers = [ns.Conv2d(C, ch, 3, padding=1, dtype=np.float64, rng=0), ns.BatchNorm2d(ch, dtype=np.float64),
              ns.ReLU()]
    h, w = H, W
    for k in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["basic", "basic", "empty", "relu"]))
        if kind == "empty":
            layers.append(ns.Sequential(ns.Residual(ns.Sequential()), ns.ReLU()))
        elif kind == "relu":
            layers.append(ns.Sequential(ns.Residual(ns.Sequential(ns.ReLU())), ns.ReLU()))
        else:
            out, stride = draw(st.integers(1, 4)), draw(st.sampled_from([1, 2]))
            if B * ((h + 1) // stride) * ((w + 1) // stride) < 2:
                stride = 1
            layers.append(ns.models.basic_block(ch, out, stride, dtype=np.float64, rng=k + 1))
            ch, h, w = out, (h - 1) // stride + 1, (w - 1) // stride + 1
    layers += [ns.AdaptiveAvgPool2d(1), ns.Flatten(), ns.Linear(ch, 3, dtype=np.float64, rng=9)]
    return ns.Sequential(*layers), (B, C, H, W), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=25, deadline=None)
@given(residual_case())
def test_residual_relu_keeps_the_bits_and_the_callers_input(case):
    model, shape, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    kept = x.copy()
    g = rng.standard_normal((shape[0], 3))
    on, off = _pass(model, x, g), _pass(model, x, g, residual_relu=False)
    _assert_same(on, off, exact=True)
    np.testing.assert_array_equal(x, kept)
    _assert_same(on, _pass(model, x, g, reference=True), exact=False)


@settings(max_examples=25, deadline=None)
@given(residual_case(), st.sampled_from([np.float32, np.float64]))
def test_batchnorm_grad_into_winograd_keeps_the_bits(small_winograd, case, dtype):
    """Batch norm's input gradient computed inside F(4x4)'s output-gradient transform: the same bits as
    batch norm's own pass then the transform, every basic block's convolutions taking Winograd."""
    model, shape, seed = case
    model = model.to(dtype=dtype)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal((shape[0], 3)).astype(dtype)
    on, off = _pass(model, x, g), _pass(model, x, g, batchnorm_grad_into_winograd=False)
    _assert_same(on, off, exact=True)
    model.workers = 1                   # unsplit, so that the plans below are the model's own
    model(x)
    deferred = [s for m in model.modules() if isinstance(m, ns.Sequential)
                for s in getattr(execution.last_plan(m), "steps", []) if getattr(s, "defer_input_grad", False)]
    blocks = [m for m in model.modules() if isinstance(m, ns.Residual) and len(m.body.layers) == 5]
    assert len(deferred) >= len(blocks)         # each basic block's second convolution at least


@settings(max_examples=15, deadline=None)
@given(cnn_case())
def test_planned_models_pass_gradcheck(small_winograd, case):
    model, shape, seed = case
    assume(int(np.prod(shape)) + model.num_parameters() <= 1500)
    x = np.random.default_rng(seed).standard_normal(shape)
    assert ns.gradcheck(model, x, mode="auto").ok


def _steps(model, x):
    return [type(step) for step in ns.plan(model, x).plan.steps]


class _MyReLU(ns.ReLU):
    pass


def test_what_the_rules_make_of_the_papers_networks_and_of_subclasses():
    x = np.zeros((2, 3, 28, 28), np.float32)
    numba = cpu_kernels() == "numba"
    conv = WinogradStep if numba else Im2colStep
    cnn = ns.models.cnn()
    cnn.workers = 1
    assert _steps(cnn, x) == ([Im2colStep, PoolStep, WinogradStep, WinogradStep, LayerStep] if numba else
                              [Im2colStep, PoolStep, Im2colStep, PoolStep, Im2colStep, PoolStep, LayerStep]) \
        + [LinearStep] * 3
    steps = ns.plan(cnn, x).plan.steps
    assert steps[-2 if conv is Im2colStep else 3].out_hw == (6, 6)   # conv3: the 6 x 6 pixels pool3 reads
    assert _steps(ns.models.mlnn(), x) == [LayerStep, LinearStep, LinearStep]
    assert ns.plan(ns.models.mlnn(), x).plan.stand_in == 1
    # only exact types fuse: a subclass may do something else
    assert _steps(ns.Sequential(ns.ReLU(), ns.MaxPool2d(2), ns.ReLU()), x) == [PoolStep, ReluStep]
    assert _steps(ns.Sequential(_MyReLU(), ns.MaxPool2d(2)), x) == [LayerStep, PoolStep]
    assert _steps(ns.Sequential(ns.Linear(2, 2), _MyReLU()), np.zeros((2, 2), np.float32)) == [LinearStep, LayerStep]


def test_a_layer_with_a_replaced_forward_runs_as_written():
    model = ns.models.mlnn(hidden_size=4)
    calls = []
    inner = model[1].forward
    model[1].forward = lambda x: calls.append(1) or inner(x)
    x = np.zeros((2, 3, 28, 28), np.float32)
    assert _steps(model, x) == [LayerStep, LayerStep, ReluStep, LinearStep]
    model(x)
    assert calls == [1]


def test_the_plan_prints_what_runs():
    cnn = ns.models.cnn()
    cnn.workers = 2
    x = np.zeros((64, 3, 28, 28), np.float32)
    text = str(ns.plan(cnn, x))
    assert "split in 2 parts" in text and "(32, 3, 28, 28)" in text and "Linear [10] + ReLU [11]" in text
    cnn.eval()
    assert "split in 2 parts" in str(ns.plan(cnn, x)) and "eval mode" in str(ns.plan(cnn, x))
    cnn.workers = 1
    cnn(x)
    text = str(ns.plan(cnn, x))
    assert "eval mode" in text and "kept buffers: cols (50176, 28)" in text
    if cpu_kernels() == "numba":
        assert "Winograd F(2x2, 3x3) on 6x6 outputs, 2x2 max-pooling of the ReLU" in text


def test_reference_execution_runs_the_textbook_layers(monkeypatch):
    model = ns.models.mlnn(hidden_size=5)
    x = np.random.default_rng(0).standard_normal((3, 3, 28, 28)).astype(np.float32)
    ns.set_execution("reference")
    try:
        assert "no plan" in str(ns.plan(model, x))
        model(x)
        assert model[1]._x is x.reshape(3, -1).base or model[1]._x.shape == (3, 2352)   # the layer kept it
        model.backward(np.ones((3, 8), np.float32))
        assert execution.last_plan(model) is None
    finally:
        ns.set_execution("plan")
    with pytest.raises(ValueError, match="expected one of"):
        ns.set_execution("fast")
    monkeypatch.setitem(execution._state, "execution", "bogus")
    with pytest.raises(ValueError, match="NNSCRATCH_EXECUTION='bogus'"):
        model(x)


def test_rules_can_be_switched_and_unknown_ones_are_refused():
    with fast_rules.switched(winograd=False):
        assert not fast_rules.on("winograd")
    assert fast_rules.on("winograd")
    with pytest.raises(ValueError, match="unknown rule"):
        ns.fast.set_rules(wino=False)


@pytest.mark.parametrize("pad", [0, 1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("four", [True, False])
def test_winograd_equals_im2col_forward_and_backward_twice(small_winograd, pad, bias, four, request):
    """F(4x4, 3x3) (``winograd_4x4``, the default without a pooling inside) and F(2x2, 3x3)."""
    switch = fast_rules.switched(winograd_4x4=four)
    switch.__enter__()
    request.addfinalizer(lambda: switch.__exit__(None, None, None))
    rng = np.random.default_rng(pad)
    for shape in ((3, 16, 14, 14), (2, 17, 7, 9), (1, 16, 3, 2), (2, 16, 13, 6)):
        if shape[2] + 2 * pad < 3 or shape[3] + 2 * pad < 3:
            continue
        model = ns.Sequential(ns.Conv2d(shape[1], 5, 3, padding=pad, bias=bias, rng=rng).to(dtype=np.float64))
        if bias:
            model[0].bias.data[...] = rng.standard_normal(5)
        x = rng.standard_normal(shape)
        if cpu_kernels() == "numba":
            assert _steps(model, x) == [WinogradStep]
            assert ns.plan(model, x).plan.steps[0].m == (4 if four else 2)
        g = rng.standard_normal(model[0].output_shape(shape))
        for _ in range(2):                     # twice: backward again after one forward (V rebuilt)
            wino = _pass(model, x, g)
            y, dx, _ = _pass(model, x, g, winograd=False)
            model.zero_grad()
            y2 = model(x)
            model.backward(g)
            np.testing.assert_allclose(model.backward(g), dx, rtol=1e-12, atol=1e-12)
            _assert_same(wino, (y, dx, [p.grad / 2 for p in model.parameters()]), exact=False)
            np.testing.assert_allclose(y2, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [True, False])
def test_pooling_inside_winograd_gives_the_same_bits_as_winograd_then_pooling(dtype, relu):
    # only the bias gradient's sum runs in another grouping (it adds the windows' gradients, not the map's)
    layers = [ns.Conv2d(16, 8, 3, padding=1, rng=1)] + ([ns.ReLU()] if relu else []) + [ns.MaxPool2d(2)]
    model = ns.Sequential(*layers, ns.Conv2d(8, 4, 3, padding=1, rng=2), ns.Flatten()).to(dtype=dtype)
    x = np.random.default_rng(0).standard_normal((3, 16, 7, 9)).astype(dtype)   # 7 x 9: crop to 6 x 8
    if cpu_kernels() == "numba":
        assert _steps(model, x) == [WinogradStep, Im2colStep, LayerStep]
    g = np.random.default_rng(1).standard_normal((3, 4 * 3 * 4)).astype(dtype)
    # (F(2x2, 3x3) both ways: without the pooling inside, the convolution would take F(4x4, 3x3))
    (y1, dx1, g1), (y0, dx0, g0) = _pass(model, x, g), _pass(model, x, g, pool_into_winograd=False, winograd_4x4=False)
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(dx1, dx0)
    for (name, _), a, b in zip(model.named_parameters(), g1, g0):
        if name == "0.bias":
            np.testing.assert_allclose(a, b, rtol=1e-5 if dtype == np.float32 else 1e-12)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_the_crop_computes_only_the_pixels_the_pooling_reads():
    model = ns.Sequential(ns.Conv2d(2, 3, 3, padding=1, dtype=np.float64), ns.MaxPool2d(2), ns.Flatten())
    x = np.random.default_rng(0).standard_normal((2, 2, 7, 9))
    assert ns.plan(model, x).plan.steps[0].out_hw == (6, 8)
    with fast_rules.switched(crop_before_pool=False):
        assert ns.plan(model, x).plan.steps[0].out_hw is None
    g = np.random.default_rng(1).standard_normal((2, 3 * 3 * 4))
    _assert_same(_pass(model, x, g), _pass(model, x, g, crop_before_pool=False), exact=False)
    assert model[0](x).shape == (2, 3, 7, 9)                  # called alone, the layer computes the whole map


def test_relu_in_place_never_touches_the_callers_array():
    relu = ns.Sequential(ns.ReLU())
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    kept = x.copy()
    y = relu(x)
    assert not np.shares_memory(y, x)
    np.testing.assert_array_equal(x, kept)
    with fast_rules.switched(relu_into_linear=False):
        model = ns.Sequential(ns.Linear(5, 4), ns.ReLU())
        assert _steps(model, x) == [LinearStep, ReluStep] and ns.plan(model, x).plan.steps[1].in_place
        np.testing.assert_array_equal(model(x), np.maximum(x @ model[0].weight.data.T, 0))


def test_a_forward_pass_lets_go_of_the_last_ones_activations_first():
    model = ns.models.mlnn(hidden_size=32)
    x = np.random.default_rng(0).standard_normal((4, 3, 28, 28)).astype(np.float32)
    model(x)
    hidden = weakref.ref(ns.plan(model, x).plan.steps[1]._cache[1])   # Linear + ReLU keeps its output (the mask)
    model(x)
    gc.collect()
    assert hidden() is None                           # freed, not held until the new one replaced it
    model(x[:3])                                      # another plan: the last one lets go of its pass too
    gc.collect()
    assert ns.plan(model, x).plan.steps[1]._cache is None
    model.backward(np.ones((3, 8), np.float32))       # the new pass's state is there


@requires_gpu
def test_the_plan_equals_the_textbook_layers_on_the_gpu():
    ns.manual_seed(0)
    model = ns.models.cnn().to("gpu", dtype=np.float64)
    rng = np.random.default_rng(0)
    x = ns.to_device(rng.standard_normal((5, 3, 28, 28)), "gpu")
    g = ns.to_device(rng.standard_normal((5, 8)), "gpu")
    a = [ns.to_numpy(v) if v is not None else None for v in _pass(model, x, g)[:2]]
    b = [ns.to_numpy(v) if v is not None else None for v in _pass(model, x, g, reference=True)[:2]]
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12)


def _assert_float32_rounding(a, b):
    """Two passes' (y, dx, grads) the same up to float32 rounding of products summed in another order:
    within 1e-4 of each array's largest value."""
    for u, v in zip([a[0], a[1]] + a[2], [b[0], b[1]] + b[2]):
        if u is None:
            assert v is None
            continue
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4 * float(np.abs(v).max()))


@st.composite
def blocks_case(draw):
    """A Winograd convolution (then nothing, a max-pooling, or a ReLU and a max-pooling) on a batch,
    in float32 (the dtype that runs in blocks), odd sizes included."""
    pad = draw(st.integers(0, 1))
    H, W = draw(st.integers(3, 16)), draw(st.integers(3, 16))
    after = draw(st.sampled_from(["none", "pool", "relu-pool"]))
    return (dict(B=draw(st.integers(2, 12)), C=draw(st.integers(1, 48)), OC=draw(st.integers(1, 48)), H=H, W=W,
                 pad=pad, bias=draw(st.booleans()), after=after, dtype=np.float32,
                 block=draw(st.integers(1, 1 << 20)), need=draw(st.booleans()), train=draw(st.booleans())))


@given(blocks_case(), st.integers(0, 2**32 - 1))
@settings(max_examples=25, deadline=None)
def test_winograd_in_blocks_computes_what_the_whole_batch_does(small_winograd, monkeypatch, case, seed):
    """On one core (a part of a split batch: serial kernels, OpenBLAS at one thread) a large batch
    runs Winograd a block of images at a time; outputs and gradients are the whole batch's up to the
    products' rounding (BLAS may pick other kernels for a block's size: rules.BLOCKED_DTYPES), in
    training and in eval mode (where backward computes the input transform again); a second backward
    after one forward gives the first's bits."""
    from nnscratch.kernels import serial_kernels
    if cpu_kernels() != "numba":
        pytest.skip("Winograd runs with the numba kernels only")
    monkeypatch.setattr(fast_rules, "WINOGRAD_BLOCK_BYTES", case["block"])
    monkeypatch.setattr(fast_rules, "WINOGRAD_BLOCKS_ABOVE", 0)
    rng = np.random.default_rng(seed)
    dt = case["dtype"]
    layers = [ns.Conv2d(case["C"], case["OC"], 3, padding=case["pad"], bias=case["bias"], rng=rng)]
    layers += {"none": [], "pool": [ns.MaxPool2d(2)], "relu-pool": [ns.ReLU(), ns.MaxPool2d(2)]}[case["after"]]
    model = ns.Sequential(*layers).to(dtype=dt).train(case["train"])   # eval mode: V kept a block only
    model.workers = 1
    x = rng.standard_normal((case["B"], case["C"], case["H"], case["W"])).astype(dt)
    assume(min(model[0].output_shape(x.shape)[2:]) >= (2 if case["after"] != "none" else 1))
    y = model(x)
    g = rng.standard_normal(y.shape).astype(dt)
    with serial_kernels(), threads.blas_threads(1):
        step = ns.plan(model, x).plan.steps[0]
        assert isinstance(step, WinogradStep)
        blocks = step._blocks(x)
        assert blocks[0][0] == 0 and blocks[-1][1] == case["B"]
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        assume(len(blocks) > 1)
        # in blocks with the weight gradient summed over them, in blocks with it summed whole, whole
        runs = [_pass(model, x, g, need_input_grad=case["need"], winograd_in_blocks=on,
                      winograd_weight_grad_in_blocks=summed) for on, summed in ((True, True), (True, False),
                                                                                (False, True))]
        _assert_float32_rounding(runs[0], runs[2])
        _assert_float32_rounding(runs[1], runs[2])
        # the sums over the blocks change the weight gradient (with the input gradient asked for) and
        # nothing else: the outputs and the input gradient keep the bits of the blocks without them
        _assert_same([runs[0][0], runs[0][1], runs[0][2][1:]], [runs[1][0], runs[1][1], runs[1][2][1:]], exact=True)
        model.zero_grad()
        model(x)
        first = model.backward(g, need_input_grad=True)
        again = model.backward(g, need_input_grad=True)         # backward again after one forward
        np.testing.assert_array_equal(first, again)


@st.composite
def compiled_blocks_case(draw):
    """A Winograd F(4x4, 3x3) convolution, alone or with a batch norm and a ReLU after it (whose input
    gradient reaches the convolution as its terms: ``batchnorm_grad_into_winograd``), in float32 on
    a batch that runs in blocks; odd sizes included."""
    H, W = draw(st.integers(3, 14)), draw(st.integers(3, 14))
    return dict(B=draw(st.integers(2, 9)), C=draw(st.integers(2, 40)), OC=draw(st.integers(2, 40)), H=H, W=W,
                pad=draw(st.integers(0, 1)), bias=draw(st.booleans()), bn=draw(st.booleans()),
                block=draw(st.integers(1, 1 << 19)), need=draw(st.booleans()), train=draw(st.booleans()),
                last=draw(st.booleans()))


@given(compiled_blocks_case(), st.integers(0, 2**32 - 1))
@settings(max_examples=30, deadline=None)
def test_the_compiled_block_loop_gives_the_python_loops_bits(small_winograd, monkeypatch, case, seed):
    """``winograd_blocks_compiled``: the block loop of a Winograd convolution on one core as one
    compiled call (kernels/winograd_blocks.py) gives the bits of the same loop in Python, forward and
    backward, in training and in eval mode, with and without batch norm's deferred input gradient, and
    is the path taken."""
    from nnscratch.kernels import cblas, serial_kernels
    if cpu_kernels() != "numba" or not cblas.AVAILABLE:
        pytest.skip("the compiled loop needs the numba kernels and NumPy's bundled OpenBLAS")
    monkeypatch.setattr(fast_rules, "WINOGRAD_BLOCK_BYTES", case["block"])
    monkeypatch.setattr(fast_rules, "WINOGRAD_BLOCKS_ABOVE", 0)
    taken = []
    for name in ("_forward_compiled", "_backward_compiled"):
        real = getattr(WinogradStep, name)
        monkeypatch.setattr(WinogradStep, name,
                            lambda self, *a, _real=real, _name=name: taken.append(_name) or _real(self, *a))
    rng = np.random.default_rng(seed)
    layers = [ns.Conv2d(case["C"], case["OC"], 3, padding=case["pad"], bias=case["bias"], rng=rng)]
    layers += [ns.BatchNorm2d(case["OC"]), ns.ReLU()] if case["bn"] else []
    model = ns.Sequential(*layers).to(dtype=np.float32).train(case["train"])
    model.workers = 1
    x = rng.standard_normal((case["B"], case["C"], case["H"], case["W"])).astype(np.float32)
    if case["last"]:                                # a channels-last input, as a ResNet's maps are
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    y = model(x)
    g = rng.standard_normal(y.shape).astype(np.float32)
    with serial_kernels(), threads.blas_threads(1):
        step = ns.plan(model, x).plan.steps[0]
        step = getattr(step, "inner", step)       # in eval mode batch norm folded into the convolution
        assert isinstance(step, WinogradStep) and step.m == 4
        assume(len(step._blocks(x)) > 1)
        off = _pass(model, x, g, need_input_grad=case["need"], winograd_blocks_compiled=False)
        assert not taken
        on = _pass(model, x, g, need_input_grad=case["need"])
    _assert_same(on, off, exact=True)
    assert "_forward_compiled" in taken
    assert ("_backward_compiled" in taken) == case["need"]      # (blocks in backward only for an input gradient)


@given(st.integers(2, 40), st.integers(2, 40), st.integers(2, 40), st.integers(1, 5), st.booleans(), st.booleans(),
       st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_products_through_numpys_blas_from_numba_equal_numpys_to_the_bit(M, K, N, stack, ta, tb, seed):
    """kernels.cblas.batched makes np.matmul's BLAS calls: the same bits for any sizes of at least two
    (a row, a column or a sum of one term NumPy computes otherwise; the block loops' products have at
    least 8 rows and 2 columns and sum at least 2 terms), operands plain or transposed views, cut out
    of larger arrays."""
    from nnscratch.kernels import cblas
    if not cblas.AVAILABLE:
        pytest.skip("NumPy does not use its bundled OpenBLAS here")
    rng = np.random.default_rng(seed)
    side = 2 * (M + K)
    big = rng.standard_normal((stack, side, side)).astype(np.float32)
    a = big[:, M:2 * M, K:2 * K] if not ta else big[:, K:2 * K, M:2 * M].transpose(0, 2, 1)
    b = rng.standard_normal((stack, N, K) if tb else (stack, K, N)).astype(np.float32)
    b = b.transpose(0, 2, 1) if tb else b
    c = np.empty((stack, M, N), np.float32)
    with threads.blas_threads(1):
        cblas.batched(a, b, c)
        np.testing.assert_array_equal(c, np.matmul(a, b))


@st.composite
def im2col_blocks_case(draw):
    """A convolution in float32 (the dtype that runs in blocks), odd sizes and strides included."""
    k, stride, pad = draw(st.sampled_from([1, 3, 3])), draw(st.integers(1, 2)), draw(st.integers(0, 1))
    H, W = draw(st.integers(4, 16)), draw(st.integers(4, 16))
    return dict(B=draw(st.integers(2, 12)), C=draw(st.integers(1, 24)), OC=draw(st.integers(1, 96)), H=H, W=W, k=k,
                stride=stride, pad=pad, bias=draw(st.booleans()), dtype=np.float32,
                block=draw(st.integers(1, 400_000)), need=draw(st.booleans()), last=draw(st.booleans()))


@given(im2col_blocks_case(), st.integers(0, 2**32 - 1))
@settings(max_examples=25, deadline=None)
def test_im2col_in_blocks_computes_what_the_whole_batch_does(monkeypatch, case, seed):
    """On one core an im2col convolution with large columns runs im2col, its product and, in backward,
    the input gradient's product and col2im a block of images at a time: the whole batch's values up to
    the products' rounding; a second backward after one forward gives the first's bits."""
    from nnscratch.fast.steps import Im2colStep
    from nnscratch.kernels import serial_kernels
    monkeypatch.setattr(fast_rules, "IM2COL_BLOCK_BYTES", case["block"])
    monkeypatch.setattr(fast_rules, "IM2COL_BLOCKS_ABOVE", 0)
    rng = np.random.default_rng(seed)
    dt = case["dtype"]
    model = ns.Sequential(ns.Conv2d(case["C"], case["OC"], case["k"], stride=case["stride"], padding=case["pad"],
                                    bias=case["bias"], rng=rng)).to(dtype=dt)
    model.workers = 1
    shape = (case["B"], case["C"], case["H"], case["W"])
    x = rng.standard_normal(shape).astype(dt)
    if case["last"]:                                # a channels-last input, as a ResNet's maps are
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    y = model(x)
    g = rng.standard_normal(y.shape).astype(dt)
    # as a part of a split batch runs: serial kernels, OpenBLAS at one thread (its threads would
    # share a product's columns out otherwise for a block than for the batch, rounding some otherwise)
    with serial_kernels(), threads.blas_threads(1), fast_rules.switched(winograd=False):
        step = ns.plan(model, x).plan.steps[0]
        assert isinstance(step, Im2colStep)
        pixels = y.shape[2] * y.shape[3]
        blocks = step._blocks(case["B"], pixels, case["k"] ** 2 * case["C"] + case["bias"], x.dtype)
        assert blocks[0][0] == 0 and blocks[-1][1] == case["B"] and all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        assume(len(blocks) > 1)
        runs = [_pass(model, x, g, need_input_grad=case["need"], im2col_in_blocks=on, winograd=False)
                for on in (True, False)]
        _assert_float32_rounding(*runs)
        with fast_rules.switched(winograd=False):
            model.zero_grad()
            model(x)
            first = model.backward(g, need_input_grad=True)
            np.testing.assert_array_equal(first, model.backward(g, need_input_grad=True))


def test_the_resnets_layers_keep_their_bits_in_blocks():
    """What one core runs of the ResNet's training step (64 images, ``ns.models.resnet()``), with both
    block rules and without: the same bits, at the shapes the preset trains (random shapes are held
    to rounding above: BLAS picks its kernels by a product's size); with the weight gradients summed
    over the blocks, the same up to float32 rounding, and the same bits with the block loops
    compiled (``winograd_blocks_compiled``) or in Python."""
    from nnscratch.kernels import serial_kernels
    if cpu_kernels() != "numba":
        pytest.skip("the blocks run with the numba kernels only")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3, 28, 28)).astype(np.float32)
    g = rng.standard_normal((64, 8)).astype(np.float32)
    model = ns.models.resnet()
    model.workers = 1
    with serial_kernels(), threads.blas_threads(1):
        on = _pass(model, x, g, winograd_weight_grad_in_blocks=False)
        off = _pass(model, x, g, winograd_in_blocks=False, im2col_in_blocks=False)
        summed = _pass(model, x, g)
        in_python = _pass(model, x, g, winograd_blocks_compiled=False)
    _assert_same(on, off, exact=True)
    _assert_float32_rounding(summed, off)
    _assert_same(summed, in_python, exact=True)         # the block loops compiled or in Python


def test_im2col_blocks_are_cache_sized_and_only_on_one_core_in_float32(monkeypatch):
    from nnscratch.kernels import serial_kernels
    model = ns.Sequential(ns.Conv2d(3, 4, 3, padding=1, bias=False))
    x = np.zeros((10, 3, 5, 5), np.float32)          # columns of 25 rows x 27 an image: 2,700 bytes
    step = ns.plan(model, x).plan.steps[0]
    monkeypatch.setattr(fast_rules, "IM2COL_BLOCK_BYTES", 3 * 2700)
    monkeypatch.setattr(fast_rules, "IM2COL_BLOCKS_ABOVE", 0)
    f32 = np.float32
    assert step._blocks(10, 25, 27, f32) == [(0, 10)]                 # all cores: no blocks
    with serial_kernels():
        assert step._blocks(10, 25, 27, f32) == [(0, 3), (3, 6), (6, 10)]     # the short last block joins
        assert step._blocks(10, 25, 27, np.float64) == [(0, 10)]      # float64: whole (rules.BLOCKED_DTYPES)
        with fast_rules.switched(im2col_in_blocks=False):
            assert step._blocks(10, 25, 27, f32) == [(0, 10)]
        monkeypatch.setattr(fast_rules, "IM2COL_BLOCK_BYTES", 5 * 2700)
        assert step._blocks(10, 25, 27, f32) == [(0, 5), (5, 10)]
        monkeypatch.setattr(fast_rules, "IM2COL_BLOCKS_ABOVE", 10 * 2700)
        assert step._blocks(10, 25, 27, f32) == [(0, 10)]             # small enough to stay in the cache whole


def test_winograd_blocks_are_cache_sized_and_only_on_one_core_for_large_batches(small_winograd, monkeypatch, request):
    from nnscratch.kernels import serial_kernels
    if cpu_kernels() != "numba":
        pytest.skip("Winograd runs with the numba kernels only")
    two = fast_rules.switched(winograd_4x4=False)             # F(2x2, 3x3)'s 16 values a tile, as counted below
    two.__enter__()
    request.addfinalizer(lambda: two.__exit__(None, None, None))
    model = ns.Sequential(ns.Conv2d(3, 5, 3, padding=1))
    x = np.zeros((9, 3, 6, 6), np.float32)                   # 9 tiles an image: 16 * 9 * 8 * 4 = 4,608 bytes
    step = ns.plan(model, x).plan.steps[0]
    monkeypatch.setattr(fast_rules, "WINOGRAD_BLOCK_BYTES", 2 * 4608)
    monkeypatch.setattr(fast_rules, "WINOGRAD_BLOCKS_ABOVE", 0)
    assert step._blocks(x) == [(0, 9)]                       # all cores: the kernels' threads share the batch
    with serial_kernels():
        assert step._blocks(x) == [(0, 2), (2, 4), (4, 6), (6, 9)]         # the short last block joins
        assert step._blocks(x.astype(np.float64)) == [(0, 9)]       # float64: whole (rules.BLOCKED_DTYPES)
        monkeypatch.setattr(fast_rules, "WINOGRAD_BLOCK_BYTES", 3 * 4608)
        assert step._blocks(x) == [(0, 3), (3, 6), (6, 9)]
        monkeypatch.setattr(fast_rules, "WINOGRAD_BLOCK_BYTES", 2 * 4608)
        with fast_rules.switched(winograd_in_blocks=False):
            assert step._blocks(x) == [(0, 9)]
        monkeypatch.setattr(fast_rules, "WINOGRAD_BLOCKS_ABOVE", 9 * 4608)
        assert step._blocks(x) == [(0, 9)]                   # small enough to stay in the cache whole
        monkeypatch.setattr(fast_rules, "WINOGRAD_BLOCKS_ABOVE", 0)
        one_tile = np.zeros((9, 3, 3, 3), np.float32)      # a 1 x 1 output: one tile an image
        small = ns.plan(ns.Sequential(ns.Conv2d(3, 5, 3)), one_tile).plan.steps[0]
        monkeypatch.setattr(fast_rules, "WINOGRAD_BLOCK_BYTES", 1)
        # blocks of 8 images (8 tiles at least); the last image, one row alone, joins the block before
        assert small._blocks(one_tile) == [(0, 9)]
        assert small._blocks(np.zeros((17, 3, 3, 3), np.float32)) == [(0, 8), (8, 17)]
