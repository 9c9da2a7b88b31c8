"""He initialisation and seeding: same seed, same weights, same training, bit for bit."""
import numpy as np
import pytest

import nnscratch as ns


def test_he_normal_has_variance_two_over_fan_in():
    w = ns.init.he_normal((512, 64, 3, 3), dtype=np.float64, rng=0)
    assert ns.init.fan_in(w.shape) == 576
    assert w.std() == pytest.approx(np.sqrt(2 / 576), rel=0.01)
    assert abs(w.mean()) < 0.001


def test_layers_start_with_he_weights_and_zero_biases():
    lin = ns.Linear(1000, 300, rng=1)
    conv = ns.Conv2d(16, 64, 3, rng=2)
    assert lin.weight.data.std() == pytest.approx(np.sqrt(2 / 1000), rel=0.02)
    assert conv.weight.data.std() == pytest.approx(np.sqrt(2 / 144), rel=0.03)
    assert (lin.bias.data == 0).all() and (conv.bias.data == 0).all()
    assert lin.weight.dtype == np.float32 and lin.weight.grad.dtype == np.float32


def test_manual_seed_gives_identical_weights_and_other_seeds_do_not():
    ns.manual_seed(0)
    a = ns.models.cnn().state_dict()
    ns.manual_seed(0)
    b = ns.models.cnn().state_dict()
    ns.manual_seed(1)
    c = ns.models.cnn().state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["0.weight"], c["0.weight"])


def test_explicit_rng_is_independent_of_the_default_generator():
    a = ns.models.mlnn(hidden_size=16, rng=5).state_dict()
    ns.manual_seed(123)
    np.random.default_rng().standard_normal(10)
    b = ns.models.mlnn(hidden_size=16, rng=np.random.default_rng(5)).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def train_steps(seed, steps=3):
    ns.manual_seed(seed)
    model = ns.models.cnn()
    opt = ns.Adam(model.parameters())
    loss_fn = ns.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, 3, 28, 28)).astype(np.float32)
    y = rng.integers(0, 8, 8)
    losses = []
    for _ in range(steps):
        losses.append(loss_fn(model(x), y))
        model.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()
    return losses, model.state_dict()


def test_training_on_the_cpu_is_bit_identical_for_the_same_seed():
    (la, wa), (lb, wb) = train_steps(7), train_steps(7)
    assert la == lb
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_manual_seed_refuses_non_integers(bad):
    with pytest.raises(ValueError, match="seed"):
        ns.manual_seed(bad)
