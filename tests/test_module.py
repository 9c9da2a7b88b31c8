"""Module plumbing: parameters, names, modes, state dicts, dtype and device moves."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import nnscratch as ns


def small():
    return ns.Sequential(ns.Conv2d(1, 2, 3, rng=0), ns.ReLU(), ns.Flatten(), ns.Linear(8, 3, rng=1))


def test_parameters_are_named_like_pytorch():
    model = small()
    assert list(model.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert [p.shape for p in model.parameters()] == [(2, 1, 3, 3), (2,), (3, 8), (3,)]
    assert model.num_parameters() == 18 + 2 + 24 + 3


def test_custom_module_finds_attribute_children_in_order():
    class Net(ns.Module):
        def __init__(self):
            self.features = ns.Conv2d(1, 1, 1, rng=0)
            self.head = ns.Linear(4, 2, rng=0)

    assert list(Net().state_dict()) == ["features.weight", "features.bias", "head.weight", "head.bias"]


def test_state_dict_is_a_copy_and_load_restores_it():
    model = small()
    state = model.state_dict()
    model.parameters()[0].data += 1
    assert not np.array_equal(state["0.weight"], model.state_dict()["0.weight"])
    model.load_state_dict(state)
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in state.items())


def test_load_state_dict_reports_missing_unexpected_and_shape_mismatch():
    model = small()
    state = model.state_dict()
    with pytest.raises(KeyError, match=r"missing keys \['3.bias'\], unexpected keys \['extra'\]"):
        model.load_state_dict({**{k: v for k, v in state.items() if k != "3.bias"}, "extra": np.zeros(1)})
    state["3.weight"] = np.zeros((3, 9))
    with pytest.raises(ValueError, match=r"3.weight has shape \(3, 9\) in the state but \(3, 8\) in the model"):
        model.load_state_dict(state)


def test_train_and_eval_set_the_flag_everywhere():
    model = small()
    assert model.eval() is model and not any(m.training for m in model.modules())
    assert all(m.training for m in model.train().modules())


def test_to_dtype_casts_parameters_and_gradients():
    model = small().to(dtype=np.float64)
    assert all(p.dtype == np.float64 and p.grad.dtype == np.float64 for p in model.parameters())
    assert model(np.zeros((1, 1, 4, 4))).dtype == np.float64


def test_forward_keeps_float32():
    out = ns.models.cnn()(np.zeros((2, 3, 28, 28), np.float32))
    assert out.dtype == np.float32 and out.shape == (2, 8)


def test_backward_accumulates_until_zero_grad():
    layer = ns.Linear(2, 1, rng=0)
    x, g = np.ones((1, 2), np.float32), np.ones((1, 1), np.float32)
    layer(x)
    layer.backward(g)
    layer.backward(g)
    np.testing.assert_array_equal(layer.weight.grad, [[2.0, 2.0]])
    layer.zero_grad()
    assert (layer.weight.grad == 0).all()


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0), (1, 2)])
def test_conv_backward_twice_after_one_forward_adds_the_same_gradients_again(stride, padding):
    """Backward writes the input gradient's columns over the column matrix; a second backward
    rebuilds the columns from the input, so it gives the same gradients as the first."""
    conv = ns.Conv2d(3, 4, 3, stride=stride, padding=padding, rng=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    y = conv(x)
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx1 = conv.backward(g)
    dw1, db1 = conv.weight.grad.copy(), conv.bias.grad.copy()
    dx2 = conv.backward(g)
    np.testing.assert_array_equal(dx2, dx1)
    np.testing.assert_array_equal(conv.weight.grad, 2 * dw1)      # doubling is exact in floating point
    np.testing.assert_array_equal(conv.bias.grad, 2 * db1)
    conv.zero_grad()
    conv(x)
    conv.backward(g, need_input_grad=False)
    np.testing.assert_array_equal(conv.weight.grad, dw1)


@pytest.mark.parametrize("make", [lambda: ns.Linear(3, 2, rng=0), lambda: ns.Conv2d(2, 2, 1, rng=0)])
def test_lazy_zero_grad_keeps_what_was_added_by_hand(make):
    # zero_grad only marks the gradient; a value added to it before backward must still count
    layer = make()
    shape = (1, 3) if isinstance(layer, ns.Linear) else (1, 2, 2, 2)
    x = np.ones(shape, np.float32)
    g = np.ones(layer.output_shape(shape) if hasattr(layer, "output_shape") else (1, 2), np.float32)
    layer(x)
    layer.backward(g)
    once = {k: p.grad.copy() for k, p in layer.named_parameters()}
    layer.zero_grad()
    for p in layer.parameters():
        p.grad += 1.0
    layer(x)
    layer.backward(g)
    for k, p in layer.named_parameters():
        np.testing.assert_array_equal(p.grad, once[k] + 1.0)
    layer.zero_grad()
    layer(x)
    layer.backward(g)                       # straight after zero_grad: written in place, same values
    for k, p in layer.named_parameters():
        np.testing.assert_array_equal(p.grad, once[k])


def test_repr_reads_like_pytorch():
    text = repr(small())
    assert "(0): Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1), padding=(0, 0))" in text
    assert "(3): Linear(in_features=8, out_features=3, bias=True)" in text


def test_cpu_kernel_choice_gives_the_same_results():
    ns.manual_seed(0)
    model = ns.models.cnn()
    x = np.random.default_rng(0).standard_normal((3, 3, 28, 28)).astype(np.float32)
    try:
        ns.kernels.set_cpu_kernels("reference")
        ref = model(x)
        ref_dx = model.backward(np.ones_like(ref))
        ns.kernels.set_cpu_kernels("numba")
        assert ns.kernels.cpu_kernels() == "numba"
        np.testing.assert_allclose(model(x), ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model.backward(np.ones_like(ref)), ref_dx, rtol=1e-4, atol=1e-6)
    finally:
        ns.kernels.set_cpu_kernels("numba")
    with pytest.raises(ValueError):
        ns.kernels.set_cpu_kernels("fortran")


def test_backward_without_input_gradient_gives_the_same_parameter_gradients():
    ns.manual_seed(0)
    for model in (ns.models.cnn(), ns.models.mlnn(hidden_size=20)):
        x = np.random.default_rng(1).standard_normal((3, 3, 28, 28)).astype(np.float32)
        g = np.ones((3, 8), np.float32)
        model(x)
        assert model.backward(g) is not None
        full = [p.grad.copy() for p in model.parameters()]
        model.zero_grad()
        model(x)
        assert model.backward(g, need_input_grad=False) is None
        for a, p in zip(full, model.parameters()):
            np.testing.assert_array_equal(a, p.grad)


class _UsesInputTwice(ns.Module):
    """relu(x) + x: a layer that must not have its input overwritten under it."""

    def __init__(self):
        self.relu = ns.ReLU()

    def forward(self, x):
        return self.relu(x) + x

    def backward(self, grad, need_input_grad=True):
        return self.relu.backward(grad) + grad


def _layer_by_layer(layers, x):
    for layer in layers:
        x = layer(x.copy())                     # each layer on a private copy: nothing can be overwritten
    return x


@pytest.mark.parametrize("make", [
    lambda: [ns.ReLU(), ns.Flatten(), ns.ReLU()],                 # the caller's array goes straight in
    lambda: [ns.Flatten(), ns.ReLU(), ns.Linear(48, 5), ns.ReLU(), ns.ReLU()],
    lambda: [ns.Conv2d(3, 4, 3, padding=1), ns.ReLU(), ns.MaxPool2d(2), ns.ReLU(), ns.Flatten(), ns.ReLU()],
    lambda: [ns.Conv2d(3, 4, 3, padding=1), _UsesInputTwice(), ns.Flatten()],
    lambda: [ns.Conv2d(3, 4, 3, padding=1), ns.Sequential(ns.ReLU(), ns.Flatten()), ns.ReLU()],
])
def test_sequential_overwrites_only_arrays_its_own_layers_made(make):
    """ReLU may overwrite its input inside a Sequential when the layer before made it; the caller's input,
    and an input a layer uses twice, stay untouched, and the outputs and gradients equal layer-by-layer ones."""
    ns.manual_seed(0)
    layers = make()
    model = ns.Sequential(*layers)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    kept = x.copy()
    np.testing.assert_array_equal(model(x), _layer_by_layer(layers, x))
    np.testing.assert_array_equal(x, kept)
    y = model(x)
    g = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    dx = model.backward(g)
    model.zero_grad()
    xs = [x]
    for layer in layers:
        xs.append(layer(xs[-1].copy()))
    dx_ref = g
    for layer in reversed(layers):
        dx_ref = layer.backward(dx_ref)
    np.testing.assert_array_equal(dx, dx_ref)


def test_relu_in_place_happens_inside_a_sequential():
    conv, relu = ns.Conv2d(3, 4, 3, padding=1), ns.ReLU()
    y = ns.Sequential(conv, relu)(np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32))
    assert np.shares_memory(y, relu._y) and not relu._input_owned
    alone = np.random.default_rng(1).standard_normal((2, 4, 5, 5)).astype(np.float32)
    assert not np.shares_memory(relu(alone), alone)


@st.composite
def relu_pool_case(draw):
    """(x shape, pool k, pool stride, dtype, layout, ReLU first?), odd sizes and overlapping windows included."""
    k, stride = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(k, 9)), draw(st.integers(k, 9)))
    return shape, k, stride, draw(st.sampled_from([np.float32, np.float64])), draw(st.booleans())


def _relu_pool_model(shape, k, stride, dtype, relu_first):
    """[Conv2d,] ReLU, MaxPool2d(k, stride), Flatten, Linear: the pair the Sequential reorders."""
    ns.manual_seed(0)
    C = shape[1]
    head = [] if relu_first else [ns.Conv2d(C, C, 3, padding=1, dtype=dtype)]
    pool = ns.MaxPool2d(k, stride)
    B, _, OH, OW = pool.output_shape(shape)
    return ns.Sequential(*head, ns.ReLU(), pool, ns.Flatten(), ns.Linear(C * OH * OW, 3, dtype=dtype))


@settings(max_examples=60, deadline=None)
@given(relu_pool_case(), st.integers(0, 2**32 - 1))
def test_relu_then_pool_runs_fused_with_the_same_bits(case, seed):
    """Sequential runs ReLU then MaxPool2d as one pooling that rectifies its output (4x fewer values,
    no pass of its own) and masks the gradient; the output, the input gradient and every parameter
    gradient equal those of the layers run strictly as listed, bit for bit, also with ties, zeros,
    all-negative windows (small integers), odd sizes, overlapping windows and the caller's input."""
    shape, k, stride, dtype, relu_first = case
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=shape).astype(dtype)            # many ties, zeros, all-negative windows
    if rng.random() < 0.5:
        x += rng.standard_normal(shape).astype(dtype) * dtype(0.5)
    kept = x.copy()
    results = []
    for fuse in (True, False):
        model = _relu_pool_model(shape, k, stride, dtype, relu_first)
        model.fuse_relu_pool = fuse
        model.crop_before_pool = False        # the convolution's crop changes rounding (tested below)
        y = model(x)
        relu = next(m for m in model if isinstance(m, ns.ReLU))
        pool = next(m for m in model if isinstance(m, ns.MaxPool2d))
        g = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(dtype)
        dx = model.backward(g)
        results.append((y, dx, [p.grad.copy() for p in model.parameters()], model._steps(), relu._y.shape,
                        pool._cache[3] is not None))
    (y1, dx1, g1, steps1, relu_shape1, fused1), (y0, dx0, g0, steps0, relu_shape0, fused0) = results
    assert fused1 and not fused0 and len(steps1) == len(steps0) - 1         # the fusion did happen
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(dx1, dx0)
    for a, b in zip(g1, g0):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(x, kept)                               # the caller's input untouched
    assert relu_shape1 == y1.shape[:1] + model[-3].output_shape(shape)[1:] if relu_first else True


@settings(max_examples=40, deadline=None)
@given(relu_pool_case(), st.booleans(), st.integers(0, 2**32 - 1))
def test_convolution_computes_only_what_the_pooling_reads(case, fuse, seed):
    """A Conv2d followed by a MaxPool2d (through a fused ReLU, or directly) computes only the rows and
    columns the windows read; the model's output, its input gradient and every parameter gradient are
    those of the whole map (float64: up to rounding), and the map is cut exactly where the windows end."""
    shape, k, stride, _, relu_first = case
    assume(not relu_first)                       # that model has no convolution
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    results = []
    for crop in (True, False):
        model = _relu_pool_model(shape, k, stride, np.float64, relu_first=False)
        if not fuse:                             # Conv2d straight into MaxPool2d
            model = ns.Sequential(*[m for m in model if type(m) is not ns.ReLU])
        model.crop_before_pool = crop
        y = model(x)
        g = np.random.default_rng(seed + 1).standard_normal(y.shape)
        dx = model.backward(g)
        results.append((y, dx, [p.grad.copy() for p in model.parameters()], model[0]._cache[2]))
    (y1, dx1, g1, hw1), (y0, dx0, g0, hw0) = results
    full = model[0].output_shape(shape)[2:]
    assert hw0 == full and hw1 == tuple(((n - k) // stride) * stride + k for n in full)
    np.testing.assert_allclose(y1, y0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_the_cnn_computes_conv3_on_the_six_by_six_pixels_pool3_reads():
    model = ns.models.cnn()
    model(np.zeros((2, 3, 28, 28), np.float32))
    assert [model[i]._cache[2] for i in (0, 3, 6)] == [(28, 28), (14, 14), (6, 6)]
    assert model[6]._pooled_by is None                      # set for the one call only
    conv = model[6]                                         # called alone it computes the whole map
    assert conv(np.zeros((2, 64, 7, 7), np.float32)).shape == (2, 128, 7, 7)


class _MyReLU(ns.ReLU):
    pass


def test_only_exact_relu_maxpool_and_linear_are_fused():
    """A subclass may do something else, so the Sequential runs it as listed."""
    assert ns.Sequential(ns.ReLU(), ns.MaxPool2d(2), ns.ReLU())._steps() == [(1, 0), (2,)]
    assert ns.Sequential(_MyReLU(), ns.MaxPool2d(2))._steps() == [(0,), (1,)]
    assert ns.Sequential(ns.MaxPool2d(2), ns.ReLU())._steps() == [(0,), (1,)]
    assert ns.Sequential(ns.Linear(2, 2), _MyReLU())._steps() == [(0,), (1,)]
    assert ns.models.cnn()._steps() == [(0,), (2, 1), (3,), (5, 4), (6,), (8, 7), (9,), (10, 11), (12, 13), (14,)]
    assert ns.models.mlnn()._steps() == [(0,), (1, 2), (3,)]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 9), st.integers(1, 9), st.sampled_from([np.float32, np.float64]),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_linear_then_relu_runs_fused_with_the_same_bits(B, n_in, n_hidden, dtype, bias, seed):
    """Sequential runs Linear then ReLU as one product and one pass (bias and ReLU together); the Linear's
    backward applies the mask. Output, input gradient and parameter gradients equal the listed order's
    bit for bit, with units whose pre-activation is exactly 0 (integer inputs) among them."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(B, n_in)).astype(dtype)
    results = []
    for fuse in (True, False):
        ns.manual_seed(0)
        model = ns.Sequential(ns.Linear(n_in, n_hidden, bias=bias, dtype=dtype), ns.ReLU(),
                              ns.Linear(n_hidden, 3, dtype=dtype))
        model[0].weight.data[...] = np.round(model[0].weight.data * 2)      # integer weights: exact zeros
        model.fuse_linear_relu = fuse
        y = model(x)
        dx = model.backward(np.random.default_rng(seed + 1).standard_normal(y.shape).astype(dtype))
        results.append((y, dx, [p.grad.copy() for p in model.parameters()], model[1]._y.copy(),
                        model[0]._y is not None))
    (y1, dx1, g1, r1, fused1), (y0, dx0, g0, r0, fused0) = results
    assert fused1 and not fused0
    for a, b in [(y1, y0), (dx1, dx0), (r1, r0)] + list(zip(g1, g0)):
        np.testing.assert_array_equal(a, b)


def test_linear_weight_is_fortran_ordered_with_the_values_of_a_c_draw():
    """Linear stores its (out, in) weight transposed in memory (a plain row-major product in forward);
    the seed gives the same values as before, and gradients accumulate into the same layout."""
    lin = ns.Linear(6, 4, rng=3)
    expected = ns.init.he_normal((4, 6), rng=np.random.default_rng(3))
    assert lin.weight.data.flags.f_contiguous and not lin.weight.data.flags.c_contiguous
    np.testing.assert_array_equal(lin.weight.data, expected)
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    g = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    for _ in range(2):                                        # written into, then added to
        lin(x)
        lin.backward(g)
    assert lin.weight.grad.flags.f_contiguous
    np.testing.assert_allclose(lin.weight.grad, 2 * g.T @ x, rtol=1e-6)


@pytest.mark.parametrize("pad", [0, 1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_winograd_conv2d_equals_im2col_forward_and_backward(pad, bias):
    from nnscratch.layers.conv import Conv2d
    rng = np.random.default_rng(pad)
    for shape in ((3, 16, 14, 14), (2, 17, 7, 9), (1, 16, 3, 2)):
        if shape[2] + 2 * pad < 3 or shape[3] + 2 * pad < 3:
            continue
        a = Conv2d(shape[1], 5, 3, padding=pad, bias=bias, rng=rng).to(dtype=np.float64)
        b = Conv2d(shape[1], 5, 3, padding=pad, bias=bias).to(dtype=np.float64)
        b.load_state_dict(a.state_dict())
        a.winograd = False
        x = rng.standard_normal(shape)
        ya, yb = a(x), b(x)
        assert b._cache[1].ndim == 3                                   # Winograd ran (V, not columns)
        np.testing.assert_allclose(yb, ya, rtol=1e-12, atol=1e-12)
        g = rng.standard_normal(ya.shape)
        for _ in range(2):                     # twice: backward again after one forward (V rebuilt)
            np.testing.assert_allclose(b.backward(g), a.backward(g), rtol=1e-12, atol=1e-12)
        for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
            np.testing.assert_allclose(q.grad, p.grad, rtol=1e-10, atol=1e-12, err_msg=name)


def test_cnn_with_winograd_equals_im2col_crop_included():
    from nnscratch.layers.conv import Conv2d
    ns.manual_seed(0)
    a, b = ns.models.cnn().to(dtype=np.float64), ns.models.cnn().to(dtype=np.float64)
    b.load_state_dict(a.state_dict())
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 3, 28, 28)), rng.integers(0, 8, 5)
    grads = []
    for model, wino in ((a, False), (b, True)):
        Conv2d.winograd = wino
        try:
            loss = ns.CrossEntropyLoss()
            loss(model(x), y)
            grads.append(model.backward(loss.backward()))
        finally:
            Conv2d.winograd = True
    assert b[6]._cache[1].ndim == 3 and b[6]._cache[2] == (6, 6)     # conv3: Winograd on the cropped 6 x 6
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-9, atol=1e-14)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_allclose(q.grad, p.grad, rtol=1e-8, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [True, False])
def test_conv_with_fused_pooling_gives_the_same_bits_as_the_layers_in_turn(dtype, relu):
    # Sequential.fuse_conv_pool: a Winograd Conv2d writes the 2x2 pooling's maxima itself; only the
    # bias gradient's sum runs in another grouping (it adds the windows' gradients, not the map's)
    def net():
        layers = [ns.Conv2d(16, 8, 3, padding=1, rng=1)] + ([ns.ReLU()] if relu else []) + [ns.MaxPool2d(2)]
        return ns.Sequential(*layers, ns.Conv2d(8, 4, 3, padding=1, rng=2), ns.Flatten()).to(dtype=dtype)
    a, b = net(), net()
    a.fuse_conv_pool = False
    x = np.random.default_rng(0).standard_normal((3, 16, 7, 9)).astype(dtype)   # 7 x 9: crop to 6 x 8
    ya, yb = a(x), b(x)
    assert b._ran[0] == (0,) and len(b._ran) == 3                  # conv + (ReLU +) pool as one step
    np.testing.assert_array_equal(yb, ya)
    g = np.random.default_rng(1).standard_normal(ya.shape).astype(dtype)
    np.testing.assert_array_equal(b.backward(g), a.backward(g))
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        if name == "0.bias":
            np.testing.assert_allclose(q.grad, p.grad, rtol=1e-5 if dtype == np.float32 else 1e-12)
        else:
            np.testing.assert_array_equal(q.grad, p.grad, err_msg=name)


def test_a_forward_pass_lets_go_of_the_last_ones_activations_first():
    import gc
    import weakref
    model = ns.models.mlnn(hidden_size=32)
    x = np.random.default_rng(0).standard_normal((4, 3, 28, 28)).astype(np.float32)
    model(x)
    hidden = weakref.ref(model[1]._y)                 # Linear + fused ReLU keeps its output (the mask)
    model(x)
    gc.collect()
    assert hidden() is None                           # freed, not held until the new one replaced it
    model.backward(np.ones((4, 8), np.float32))       # the new pass's state is there
