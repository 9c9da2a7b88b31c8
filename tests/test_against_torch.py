"""Forward, backward and optimizer steps equal PyTorch's in float64 (PyTorch is a test-only oracle)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nnscratch as ns

from conftest import away_from_zero, distinct

torch = pytest.importorskip("torch", reason="PyTorch is the oracle of these tests: pip install -e '.[test]'")
F = torch.nn.functional
SEEDS = st.integers(0, 2**32 - 1)
TOL = dict(rtol=1e-10, atol=1e-12)


def t(a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


@given(st.integers(1, 5), st.integers(1, 7), st.integers(1, 6), SEEDS)
def test_linear_matches_torch(B, n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    layer = ns.Linear(n_in, n_out, rng=rng).to(dtype=np.float64)
    layer.bias.data[...] = rng.standard_normal(n_out)
    x, g = rng.standard_normal((B, n_in)), rng.standard_normal((B, n_out))
    tx, tw, tb = t(x, True), t(layer.weight.data, True), t(layer.bias.data, True)
    ty = F.linear(tx, tw, tb)
    ty.backward(t(g))
    np.testing.assert_allclose(layer(x), ty.detach().numpy(), **TOL)
    np.testing.assert_allclose(layer.backward(g), tx.grad.numpy(), **TOL)
    np.testing.assert_allclose(layer.weight.grad, tw.grad.numpy(), **TOL)
    np.testing.assert_allclose(layer.bias.grad, tb.grad.numpy(), **TOL)


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3),
       st.integers(0, 2), st.integers(0, 6), st.integers(0, 6), SEEDS)
def test_conv2d_matches_torch(B, C, OC, k, stride, pad, extra_h, extra_w, seed):
    rng = np.random.default_rng(seed)
    H, W = max(1, k - 2 * pad) + extra_h, max(1, k - 2 * pad) + extra_w
    layer = ns.Conv2d(C, OC, k, stride=stride, padding=pad, rng=rng).to(dtype=np.float64)
    layer.bias.data[...] = rng.standard_normal(OC)
    x = rng.standard_normal((B, C, H, W))
    tx, tw, tb = t(x, True), t(layer.weight.data, True), t(layer.bias.data, True)
    ty = F.conv2d(tx, tw, tb, stride=stride, padding=pad)
    g = rng.standard_normal(tuple(ty.shape))
    ty.backward(t(g))
    np.testing.assert_allclose(layer(x), ty.detach().numpy(), **TOL)
    np.testing.assert_allclose(layer.backward(g), tx.grad.numpy(), **TOL)
    np.testing.assert_allclose(layer.weight.grad, tw.grad.numpy(), **TOL)
    np.testing.assert_allclose(layer.bias.grad, tb.grad.numpy(), **TOL)


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(0, 6),
       st.integers(0, 6), SEEDS)
def test_maxpool2d_matches_torch_on_odd_sizes(B, C, k, stride, extra_h, extra_w, seed):
    rng = np.random.default_rng(seed)
    x = distinct(rng, (B, C, k + extra_h, k + extra_w))
    layer = ns.MaxPool2d(k, stride)
    tx = t(x, True)
    ty = F.max_pool2d(tx, k, stride)
    g = rng.standard_normal(tuple(ty.shape))
    ty.backward(t(g))
    np.testing.assert_array_equal(layer(x), ty.detach().numpy())
    np.testing.assert_allclose(layer.backward(g), tx.grad.numpy(), **TOL)


def test_relu_and_flatten_match_torch():
    rng = np.random.default_rng(0)
    x, g = away_from_zero(rng, (2, 3, 4, 5)), rng.standard_normal((2, 60))
    tx = t(x, True)
    ty = torch.flatten(F.relu(tx), 1)
    ty.backward(t(g))
    model = ns.Sequential(ns.ReLU(), ns.Flatten())
    np.testing.assert_array_equal(model(x), ty.detach().numpy())
    np.testing.assert_array_equal(model.backward(g), tx.grad.numpy())


@given(st.integers(1, 8), st.integers(2, 9), st.sampled_from([1e-3, 1.0, 50.0, 1e3]), st.booleans(), SEEDS)
def test_cross_entropy_matches_torch_for_logits_of_any_size(B, K, scale, weighted, seed):
    rng = np.random.default_rng(seed)
    logits, y = rng.standard_normal((B, K)) * scale, rng.integers(0, K, B)
    weight = rng.uniform(0.1, 3.0, K) if weighted else None
    loss_fn = ns.CrossEntropyLoss(weight=weight)
    tl = t(logits, True)
    tloss = F.cross_entropy(tl, torch.tensor(y), weight=None if weight is None else t(weight))
    tloss.backward()
    loss = loss_fn(logits, y)
    assert isinstance(loss, float) and np.isfinite(loss)
    assert loss == pytest.approx(tloss.item(), rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(loss_fn.backward(), tl.grad.numpy(), **TOL)


def test_cross_entropy_does_not_overflow_at_plus_minus_1e3():
    logits = np.array([[1e3, -1e3, 0.0], [-1e3, -1e3, 1e3]], dtype=np.float32)
    loss_fn = ns.CrossEntropyLoss()
    loss = loss_fn(logits, np.array([1, 2]))
    assert loss == pytest.approx(F.cross_entropy(torch.tensor(logits), torch.tensor([1, 2])).item())
    assert np.isfinite(loss_fn.backward()).all()


@given(st.lists(st.integers(1, 5), min_size=1, max_size=3), SEEDS)
def test_mse_matches_torch(shape, seed):
    rng = np.random.default_rng(seed)
    p, q = rng.standard_normal(shape), rng.standard_normal(shape)
    tp = t(p, True)
    tloss = F.mse_loss(tp, t(q))
    tloss.backward()
    loss_fn = ns.MSELoss()
    assert loss_fn(p, q) == pytest.approx(tloss.item(), rel=1e-12)
    np.testing.assert_allclose(loss_fn.backward(), tp.grad.numpy(), **TOL)


@given(st.integers(1, 6), st.integers(2, 6), st.sampled_from([0.1, 1.0, 30.0]), SEEDS)
def test_softmax_mse_matches_torch(B, K, scale, seed):
    rng = np.random.default_rng(seed)
    logits, y = rng.standard_normal((B, K)) * scale, rng.integers(0, K, B)
    tl = t(logits, True)
    tloss = F.mse_loss(F.softmax(tl, dim=1), F.one_hot(torch.tensor(y), K).double())
    tloss.backward()
    loss_fn = ns.SoftmaxMSELoss()
    assert loss_fn(logits, y) == pytest.approx(tloss.item(), rel=1e-10, abs=1e-15)
    np.testing.assert_allclose(loss_fn.backward(), tl.grad.numpy(), **TOL)


def run_both(make_ours, make_theirs, steps=7, seed=0):
    """The same random gradients fed to both optimizers for ``steps`` steps; returns both parameter lists."""
    rng = np.random.default_rng(seed)
    shapes = [(4, 3), (3,), (2, 2, 3)]
    ours = [ns.Parameter(rng.standard_normal(s)) for s in shapes]
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    opt, topt = make_ours(ours), make_theirs(theirs)
    for _ in range(steps):
        for p, tp in zip(ours, theirs):
            g = rng.standard_normal(p.shape)
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    return ours, theirs


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.01), dict(lr=0.01, momentum=0.9), dict(lr=0.1, momentum=0.5, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, nesterov=True), dict(lr=0.05, momentum=0.9, dampening=0.3),
])
def test_sgd_matches_torch_after_several_steps(kwargs):
    ours, theirs = run_both(lambda ps: ns.SGD(ps, **kwargs), lambda ps: torch.optim.SGD(ps, **kwargs))
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs", [
    dict(lr=1e-3), dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6), dict(lr=0.01, weight_decay=0.1),
])
def test_adam_matches_torch_after_several_steps(kwargs):
    ours, theirs = run_both(lambda ps: ns.Adam(ps, **kwargs), lambda ps: torch.optim.Adam(ps, **kwargs))
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-12)


def torch_cnn_from(model):
    """A torch copy of ``ns.models.cnn()`` with the same weights, in float64."""
    seq = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(1152, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 8)).double()
    seq.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    return seq


def test_paper_cnn_training_step_matches_torch():
    ns.manual_seed(0)
    model = ns.models.cnn().to(dtype=np.float64)
    tmodel = torch_cnn_from(model)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 3, 28, 28)), rng.integers(0, 8, 6)
    opt, topt = ns.Adam(model.parameters()), torch.optim.Adam(tmodel.parameters())
    loss_fn = ns.CrossEntropyLoss()
    for _ in range(3):
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()
        tloss = F.cross_entropy(tmodel(torch.tensor(x)), torch.tensor(y))
        topt.zero_grad()
        tloss.backward()
        topt.step()
        assert loss == pytest.approx(tloss.item(), rel=1e-9)
    for k, v in model.state_dict().items():
        np.testing.assert_allclose(v, tmodel.state_dict()[k].numpy(), rtol=1e-7, atol=1e-9)
