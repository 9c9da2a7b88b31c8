"""Module plumbing: parameters, names, modes, state dicts, dtype and device moves."""
import numpy as np
import pytest

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
    with pytest.raises(ns.CheckpointError, match=r"missing keys \['3.bias'\], unexpected keys \['extra'\]"):
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
