"""Every layer and loss, checked against central differences in float64."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import nnscratch as ns

from conftest import away_from_zero, distinct

SEEDS = st.integers(0, 2**32 - 1)


def f64(module):
    return module.to(dtype=np.float64)


@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5), st.booleans(), SEEDS)
def test_linear_gradients(batch, n_in, n_out, bias, seed):
    rng = np.random.default_rng(seed)
    layer = f64(ns.Linear(n_in, n_out, bias=bias, rng=rng))
    if bias:
        layer.bias.data[...] = rng.standard_normal(n_out)   # non-zero biases exercise the bias path
    result = ns.gradcheck(layer, rng.standard_normal((batch, n_in)), mode="full")
    assert result.ok and {t.name for t in result.tensors} == ({"input", "weight", "bias"} if bias
                                                              else {"input", "weight"})


@st.composite
def conv_layer_case(draw):
    k = draw(st.integers(1, 3))
    stride, pad = draw(st.integers(1, 2)), draw(st.integers(0, 1))
    H = draw(st.integers(max(1, k - 2 * pad), 7))
    W = draw(st.integers(max(1, k - 2 * pad), 7))
    return draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3)), H, W, k, stride, pad


@given(conv_layer_case(), SEEDS)
def test_conv2d_gradients(case, seed):
    B, C, OC, H, W, k, stride, pad = case
    rng = np.random.default_rng(seed)
    layer = f64(ns.Conv2d(C, OC, k, stride=stride, padding=pad, rng=rng))
    layer.bias.data[...] = rng.standard_normal(OC)
    assert ns.gradcheck(layer, rng.standard_normal((B, C, H, W)), mode="full").ok


@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(0, 4),
       st.integers(0, 4), SEEDS)
def test_maxpool2d_gradients_odd_sizes_and_overlaps(B, C, k, stride, extra_h, extra_w, seed):
    rng = np.random.default_rng(seed)
    x = distinct(rng, (B, C, k + extra_h, k + extra_w))    # no ties: the max is unique in every window
    assert ns.gradcheck(ns.MaxPool2d(k, stride), x, mode="full").ok


@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), SEEDS)
def test_relu_gradients(shape, seed):
    x = away_from_zero(np.random.default_rng(seed), tuple(shape))
    assert ns.gradcheck(ns.ReLU(), x, mode="full").ok


@given(st.lists(st.integers(1, 4), min_size=2, max_size=4), SEEDS)
def test_flatten_gradients(shape, seed):
    assert ns.gradcheck(ns.Flatten(), np.random.default_rng(seed).standard_normal(shape), mode="full").ok


@given(st.integers(1, 6), st.integers(2, 6), st.sampled_from([0.1, 1.0, 30.0]), st.booleans(), SEEDS)
def test_cross_entropy_gradients(B, K, scale, weighted, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((B, K)) * scale
    y = rng.integers(0, K, B)
    weight = rng.uniform(0.5, 2.0, K) if weighted else None
    assert ns.gradcheck(ns.CrossEntropyLoss(weight=weight), logits, y, mode="full").ok


@given(st.integers(1, 6), st.integers(2, 6), st.sampled_from([0.1, 1.0, 5.0]), SEEDS)
def test_softmax_mse_gradients(B, K, scale, seed):
    rng = np.random.default_rng(seed)
    assert ns.gradcheck(ns.SoftmaxMSELoss(), rng.standard_normal((B, K)) * scale, rng.integers(0, K, B),
                        mode="full").ok


@given(st.lists(st.integers(1, 5), min_size=1, max_size=3), SEEDS)
def test_mse_gradients(shape, seed):
    rng = np.random.default_rng(seed)
    assert ns.gradcheck(ns.MSELoss(), rng.standard_normal(shape), rng.standard_normal(shape), mode="full").ok


@given(st.integers(1, 3), st.integers(1, 3), st.integers(4, 9), st.integers(4, 9), SEEDS)
def test_small_cnn_gradients_end_to_end(B, C, H, W, seed):
    rng = np.random.default_rng(seed)
    model = f64(ns.Sequential(
        ns.Conv2d(C, 4, 3, padding=1, rng=rng), ns.ReLU(), ns.MaxPool2d(2),
        ns.Conv2d(4, 3, 2, stride=1, rng=rng), ns.ReLU(),
        ns.Flatten(), ns.Linear(3 * (H // 2 - 1) * (W // 2 - 1), 5, rng=rng), ns.ReLU(), ns.Linear(5, 3, rng=rng)))
    randomize_biases(model, rng)
    x = rng.standard_normal((B, C, H, W))
    # a central difference across a kink is not the derivative: about one draw in a hundred puts a
    # pre-activation within 1e-5 of 0 (B=3, C=3, H=9, W=4, seed=5: 2e-6), which fails the check
    assume(kink_margin(model, x) > 1e-4)
    assert ns.gradcheck(model, x, mode="random", seed=seed % 1000).ok


def randomize_biases(model, rng):
    """Zero biases can leave a dead unit's pre-activation at exactly 0, on the ReLU kink:
    random biases keep every pre-activation off it (almost surely)."""
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.data[...] = rng.standard_normal(p.shape)


def kink_margin(model, x) -> float:
    """How far a Sequential's forward pass on x stays from the kinks where its gradient jumps: the
    smallest |input| of a ReLU and the smallest gap between the largest and second-largest value of
    a max-pooling window (layers run one by one, as listed)."""
    margin = np.inf
    for layer in model:
        if isinstance(layer, ns.ReLU):
            margin = min(margin, float(np.abs(x).min()))
        elif isinstance(layer, ns.MaxPool2d) and layer.kernel_size > 1:
            k, s = layer.kernel_size, layer.stride
            windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s]
            top = np.sort(windows.reshape(windows.shape[:4] + (-1,)), axis=-1)
            gaps = (top[..., -1] - top[..., -2])[top[..., -1] > 0]   # windows of ReLU zeros pass nothing
            margin = min(margin, float(gaps.min()) if gaps.size else margin)
        x = layer(x)
    return margin


def test_paper_cnn_gradients_in_random_mode():
    ns.manual_seed(3)
    model = f64(ns.models.cnn())
    rng = np.random.default_rng(3)
    randomize_biases(model, rng)
    x = rng.standard_normal((2, 3, 28, 28))
    result = ns.gradcheck(model, x, mode="random")
    assert result.ok and len(result.tensors) == 1 + 12


def test_gradcheck_catches_a_wrong_backward_and_names_the_worst_element():
    class ScaledWeightGrad(ns.Linear):
        def backward(self, grad):
            dx = super().backward(grad)
            self.weight.grad[1, 2] *= 1.01          # a 1 % error in one element
            return dx

    rng = np.random.default_rng(0)
    layer = f64(ScaledWeightGrad(4, 3, rng=rng))
    with pytest.raises(ns.GradcheckError) as info:
        ns.gradcheck(layer, rng.standard_normal((2, 4)), mode="full")
    report = info.value.result
    assert not report.ok and report.worst.name == "weight"
    assert "weight[1, 2]" in str(info.value) and "BAD" in str(info.value)


def test_gradcheck_random_mode_catches_a_wrong_input_gradient():
    class HalfInputGrad(ns.ReLU):
        def backward(self, grad):
            return super().backward(grad) * 0.5

    x = away_from_zero(np.random.default_rng(1), (3, 5))
    result = ns.gradcheck(HalfInputGrad(), x, mode="random", raise_exception=False)
    assert not result.ok and result.worst.name == "input"


def test_gradcheck_refuses_float32_and_leaves_input_and_grads_untouched():
    layer = ns.Linear(2, 2)
    with pytest.raises(TypeError, match="float64"):
        ns.gradcheck(layer, np.ones((1, 2), dtype=np.float32))
    layer = f64(layer)
    layer.weight.grad[...] = 7.0
    x = np.random.default_rng(0).standard_normal((2, 2))
    before = x.copy()
    ns.gradcheck(layer, x)
    np.testing.assert_array_equal(x, before)
    assert (layer.weight.grad == 7.0).all()
