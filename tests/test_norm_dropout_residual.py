"""Batch norm, dropout, average pooling and residual blocks: PyTorch's values and gradients in float64,
gradient checks, modes, state and errors."""
import copy

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import nnscratch as ns
from nnscratch import parallel

torch = pytest.importorskip("torch", reason="PyTorch is the oracle of these tests: pip install -e '.[test]'")
F = torch.nn.functional
SEEDS = st.integers(0, 2**32 - 1)
TOL = dict(rtol=1e-10, atol=1e-12)


def t(a, grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def torch_bn(ours, kind):
    """PyTorch's batch norm with our layer's settings, parameters and running statistics."""
    bn = kind(ours.num_features, eps=ours.eps, momentum=ours.momentum, affine=ours.affine,
              track_running_stats=ours.track_running_stats, dtype=torch.float64)
    bn.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    return bn


# ---- batch norm ---------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["2d", "1d", "1d3"]), st.integers(1, 4), st.integers(1, 4), st.integers(1, 5),
       st.sampled_from([0.1, 0.5, None]), st.booleans(), st.booleans(), SEEDS)
def test_batch_norm_matches_torch_over_steps_in_both_modes(kind, B, C, side, momentum, affine, track, seed):
    rng = np.random.default_rng(seed)
    shape = {"2d": (B, C, side, side + 1), "1d": (B, C), "1d3": (B, C, side)}[kind]
    if np.prod(shape) // C < 2:
        B, shape = 2, (2,) + shape[1:]
    ours = (ns.BatchNorm2d if kind == "2d" else ns.BatchNorm1d)(C, momentum=momentum, affine=affine,
                                                                 track_running_stats=track, dtype=np.float64)
    if affine:
        ours.weight.data[...] = rng.standard_normal(C)
        ours.bias.data[...] = rng.standard_normal(C)
    theirs = torch_bn(ours, torch.nn.BatchNorm2d if kind == "2d" else torch.nn.BatchNorm1d)
    for mode in ("train", "train", "train", "eval", "train", "eval"):      # running statistics move, then serve
        ours.train(mode == "train")
        theirs.train(mode == "train")
        x = rng.standard_normal(shape) * 3 + 1
        g = rng.standard_normal(shape)
        ours.zero_grad()
        theirs.zero_grad()
        tx = t(x, True)
        ty = theirs(tx)
        ty.backward(t(g))
        np.testing.assert_allclose(ours(x), ty.detach().numpy(), **TOL)
        np.testing.assert_allclose(ours.backward(g), tx.grad.numpy(), **TOL)
        if affine:
            np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), **TOL)
            np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), **TOL)
        state = theirs.state_dict()
        assert list(ours.state_dict()) == list(state)
        for name, value in ours.state_dict().items():
            np.testing.assert_allclose(value, state[name].numpy(), **TOL)
            assert value.dtype == state[name].numpy().dtype, name


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape, layer", [((3, 2, 4, 5), lambda: ns.BatchNorm2d(2, dtype=np.float64)),
                                          ((5, 3), lambda: ns.BatchNorm1d(3, dtype=np.float64)),
                                          ((2, 3, 4), lambda: ns.BatchNorm1d(3, affine=False, dtype=np.float64))])
def test_batch_norm_passes_gradcheck(shape, layer, train):
    bn = layer().train(train)
    rng = np.random.default_rng(0)
    if bn.affine:
        bn.weight.data[...] = rng.standard_normal(bn.num_features)
        bn.bias.data[...] = rng.standard_normal(bn.num_features)
    if not train:
        bn.running_mean.data[...] = rng.standard_normal(bn.num_features)
        bn.running_var.data[...] = rng.random(bn.num_features) + 0.5
    assert ns.gradcheck(bn, rng.standard_normal(shape), mode="full").ok


def test_batch_norm_keeps_running_statistics_out_of_the_parameters_and_casts_only_floats():
    bn = ns.BatchNorm2d(4)
    assert [p.shape for p in bn.parameters()] == [(4,), (4,)]
    assert [name for name, _ in bn.named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]
    bn.to(dtype=np.float64)
    assert bn.running_mean.dtype == np.float64 and bn.num_batches_tracked.dtype == np.int64
    bn(np.zeros((2, 4, 3, 3)))
    assert int(bn.num_batches_tracked.data) == 1


def test_batch_norm_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"BatchNorm2d.*\(B, C, H, W\) = \(\*, 3, \*, \*\), got \(2, 4, 5, 5\)"):
        ns.BatchNorm2d(3)(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm1d.*2-D input \(B, C\) or \(B, C, L\)"):
        ns.BatchNorm1d(3)(np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"more than 1 value per channel in training.*model\.eval\(\)"):
        ns.BatchNorm1d(3)(np.zeros((1, 3), np.float32))
    ns.BatchNorm1d(3).eval()(np.zeros((1, 3), np.float32))          # the running statistics serve one sample
    with pytest.raises(ValueError, match="momentum must be in"):
        ns.BatchNorm2d(3, momentum=2)


# ---- dropout ------------------------------------------------------------------------------------

def test_dropout_zeroes_about_p_scales_the_rest_and_is_the_identity_in_eval():
    ns.manual_seed(0)
    drop = ns.Dropout(0.3)
    x = np.ones((200, 500), np.float32)
    y = drop(x)
    assert y.dtype == np.float32
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.7)}
    assert abs((y == 0).mean() - 0.3) < 0.01                        # 100,000 draws: sd 0.0015
    g = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(drop.backward(g), g * (y / x))     # the same mask
    drop.eval()
    assert drop(x) is x and drop.backward(g) is g
    assert (ns.Dropout(0.0)(x) == x).all() and (ns.Dropout(1.0)(x) == 0).all()


def test_dropout_is_repeatable_from_the_seed_and_matches_torchs_formula():
    x = np.random.default_rng(0).standard_normal((4, 6))
    ns.manual_seed(5)
    a = ns.Dropout(0.5)(x)
    ns.manual_seed(5)
    b = ns.Dropout(0.5)(x)
    np.testing.assert_array_equal(a, b)
    c, d = ns.Dropout(0.5, rng=3)(x), ns.Dropout(0.5, rng=3)(x)
    np.testing.assert_array_equal(c, d)
    keep = a != 0                                                   # PyTorch: x * mask / (1 - p)
    np.testing.assert_allclose(a, (t(x) * t(keep) / 0.5).numpy(), **TOL)


class FixedMask(ns.Module):
    """Dropout whose every forward pass draws the same mask, so that central differences apply."""

    def __init__(self, p):
        self.p = p

    def forward(self, x):
        self.drop = ns.Dropout(self.p, rng=0)
        return self.drop(x)

    def backward(self, grad, need_input_grad=True):
        return self.drop.backward(grad, need_input_grad)


def test_dropout_passes_gradcheck_for_a_fixed_mask():
    assert ns.gradcheck(FixedMask(0.4), np.random.default_rng(0).standard_normal((3, 7)), mode="full").ok


def test_dropout_refuses_a_probability_outside_0_1():
    for p in (-0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match="p must be a probability"):
            ns.Dropout(p)


# ---- average pooling ------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2),
       st.integers(0, 5), st.integers(0, 5), SEEDS)
def test_avgpool2d_matches_torch_on_odd_sizes(B, C, k, stride, pad, extra_h, extra_w, seed):
    pad = min(pad, k // 2)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, C, k + extra_h, k + extra_w))
    layer = ns.AvgPool2d(k, stride, padding=pad)
    tx = t(x, True)
    ty = F.avg_pool2d(tx, k, stride, padding=pad)
    g = rng.standard_normal(tuple(ty.shape))
    ty.backward(t(g))
    np.testing.assert_allclose(layer(x), ty.detach().numpy(), **TOL)
    np.testing.assert_allclose(layer.backward(g), tx.grad.numpy(), **TOL)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 4),
       st.integers(1, 4), SEEDS)
def test_adaptive_avgpool2d_matches_torch_for_any_sizes(B, C, H, W, OH, OW, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, C, H, W))
    layer = ns.AdaptiveAvgPool2d((OH, OW))
    tx = t(x, True)
    ty = F.adaptive_avg_pool2d(tx, (OH, OW))
    g = rng.standard_normal(tuple(ty.shape))
    ty.backward(t(g))
    np.testing.assert_allclose(layer(x), ty.detach().numpy(), **TOL)
    np.testing.assert_allclose(layer.backward(g), tx.grad.numpy(), **TOL)


@pytest.mark.parametrize("layer", [lambda: ns.AvgPool2d(3, 2, padding=1), lambda: ns.AdaptiveAvgPool2d(1),
                                   lambda: ns.AdaptiveAvgPool2d((2, 3))])
def test_average_pooling_passes_gradcheck(layer):
    assert ns.gradcheck(layer(), np.random.default_rng(0).standard_normal((2, 2, 5, 7)), mode="full").ok


def test_average_pooling_errors():
    with pytest.raises(ValueError, match="padding must be an int in"):
        ns.AvgPool2d(2, padding=2)
    with pytest.raises(ValueError, match=r"smaller than the 3x3 window"):
        ns.AvgPool2d(3)(np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d.*4-D input \(B, C, H, W\)"):
        ns.AdaptiveAvgPool2d(1)(np.zeros((2, 3), np.float32))


# ---- residual blocks ------------------------------------------------------------------------------

def basic_block(cin, cout, stride, rng):
    """A ResNet basic block as data, with its PyTorch twin made from the same weights."""
    body = ns.Sequential(ns.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False, dtype=np.float64, rng=rng),
                         ns.BatchNorm2d(cout, dtype=np.float64), ns.ReLU(),
                         ns.Conv2d(cout, cout, 3, padding=1, bias=False, dtype=np.float64, rng=rng),
                         ns.BatchNorm2d(cout, dtype=np.float64))
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = ns.Sequential(ns.Conv2d(cin, cout, 1, stride=stride, bias=False, dtype=np.float64, rng=rng),
                                 ns.BatchNorm2d(cout, dtype=np.float64))
    for m in (body, shortcut):
        for layer in (m.layers if m is not None else []):
            if isinstance(layer, ns.BatchNorm2d):
                layer.weight.data[...] = rng.standard_normal(cout)
                layer.bias.data[...] = rng.standard_normal(cout)
    return ns.Sequential(ns.Residual(body, shortcut), ns.ReLU())


class TorchBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                        torch.nn.BatchNorm2d(cout), torch.nn.ReLU(),
                                        torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                        torch.nn.BatchNorm2d(cout))
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.body(x) + (x if self.shortcut is None else self.shortcut(x)))


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 3), st.integers(1, 4), st.integers(1, 4), st.sampled_from([1, 2]), st.integers(3, 8),
       st.booleans(), SEEDS)
def test_a_residual_block_matches_torch_in_training_and_eval(B, cin, cout, stride, side, eval_mode, seed):
    rng = np.random.default_rng(seed)
    ours = basic_block(cin, cout, stride, rng)
    theirs = TorchBlock(cin, cout, stride).double()
    # our names are "0.body.0.weight", PyTorch's block "body.0.weight": the same after the first two characters
    theirs.load_state_dict({k[2:]: torch.tensor(v) for k, v in ours.state_dict().items()})
    ours.train(not eval_mode)
    theirs.train(not eval_mode)
    x = rng.standard_normal((B, cin, side, side + 1))
    tx = t(x, True)
    ty = theirs(tx)
    g = rng.standard_normal(tuple(ty.shape))
    ty.backward(t(g))
    np.testing.assert_allclose(ours(x), ty.detach().numpy(), **TOL)
    np.testing.assert_allclose(ours.backward(g), tx.grad.numpy(), **TOL)
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, grads[name[2:]].grad.numpy(), **TOL)
    state = theirs.state_dict()
    for name, value in ours.state_dict().items():
        np.testing.assert_allclose(value, state[name[2:]].numpy(), **TOL)


@pytest.mark.parametrize("stride", [1, 2])
def test_a_residual_block_passes_gradcheck(stride):
    block = basic_block(2, 3, stride, np.random.default_rng(0))
    assert ns.gradcheck(block, np.random.default_rng(1).standard_normal((2, 2, 5, 5))).ok


def test_an_identity_shortcut_sends_the_gradient_through_unchanged():
    block = ns.Residual(ns.Sequential(ns.Linear(3, 3, dtype=np.float64, rng=0)))
    x, g = np.ones((2, 3)), np.arange(6.0).reshape(2, 3)
    y = block(x)
    np.testing.assert_allclose(y, block.body(x) + x)
    dx = block.backward(g)
    np.testing.assert_allclose(dx, g @ block.body.layers[0].weight.data + g)


def test_residual_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"body's output has shape \(1, 4\) but the shortcut's \(1, 3\).*shortcut"):
        ns.Residual(ns.Linear(3, 4))(np.zeros((1, 3), np.float32))
    with pytest.raises(TypeError, match="body must be a Module"):
        ns.Residual(lambda x: x)


# ---- in a model --------------------------------------------------------------------------------

def small_resnet(dtype=np.float32):
    rng = np.random.default_rng(0)
    stem = [ns.Conv2d(3, 4, 3, padding=1, bias=False, dtype=dtype, rng=rng), ns.BatchNorm2d(4, dtype=dtype), ns.ReLU()]
    model = ns.Sequential(*stem, basic_block(4, 4, 1, rng), basic_block(4, 8, 2, rng), ns.AdaptiveAvgPool2d(1),
                          ns.Flatten(), ns.Dropout(0.2), ns.Linear(8, 5, dtype=dtype, rng=rng))
    return model.to(dtype=dtype)


def test_batch_norm_splits_only_where_the_parts_pool_their_statistics():
    with_dropout = small_resnet()
    assert parallel.parts_for(with_dropout, 64, None) == 1 and parallel.parts_for(with_dropout, 64, 2) == 1
    model = ns.Sequential(*[m for m in small_resnet().layers if not isinstance(m, ns.Dropout)])
    assert parallel.parts_for(model, 64, 2) == 2                 # every batch norm is a planned BatchNorm2d
    with ns.fast.switched(batchnorm_kernels=False):
        assert parallel.parts_for(model, 64, 2) == 1             # the textbook layer cannot pool
    ns.set_execution("reference")
    try:
        assert parallel.parts_for(model, 64, 2) == 1
    finally:
        ns.set_execution("plan")
    one_d = ns.Sequential(ns.Conv2d(3, 4, 3), ns.Flatten(), ns.BatchNorm1d(4 * 6 * 6), ns.Linear(144, 2))
    assert parallel.parts_for(one_d, 64, 2) == 1
    assert parallel.parts_for(one_d.eval(), 64, 2) == 2          # running statistics: each image alone


def tiny_resnet():
    ns.manual_seed(0)
    return ns.models.resnet(image_size=12, widths=(8, 16), blocks=(1, 1)).to(dtype=np.float64)


def test_a_split_batch_computes_what_the_whole_batch_does_in_float64():
    """TrainStep and the plain loop in 1, 2 and 3 parts: batch norm's statistics and gradient sums
    pooled across the parts, so the losses, weights and running statistics agree to rounding."""
    x = np.random.default_rng(0).standard_normal((64, 3, 12, 12))
    y = np.arange(64) % 8
    results = {}
    for workers in (1, 2, 3):
        model = tiny_resnet()
        step = ns.TrainStep(model, ns.CrossEntropyLoss(label_smoothing=0.1), ns.SGD(model.parameters(), lr=0.1),
                            workers=workers)
        assert step.parts_for(64) == workers
        losses = [step(x, y)[0] for _ in range(3)]
        loop = tiny_resnet()
        loop.workers = workers
        assert ("split in" in str(ns.plan(loop, x))) == (workers > 1)
        loss_fn, opt = ns.CrossEntropyLoss(), ns.SGD(loop.parameters(), lr=0.1)
        for _ in range(3):
            losses.append(loss_fn(loop(x), y))
            dx = loop.backward(loss_fn.backward())
            opt.step()
            opt.zero_grad()
        results[workers] = (losses, model.state_dict(), loop.state_dict(), dx)
    for workers in (2, 3):
        np.testing.assert_allclose(results[workers][0], results[1][0], rtol=1e-12)
        for k in (1, 2):
            for name, value in results[1][k].items():
                np.testing.assert_allclose(results[workers][k][name], value, rtol=1e-10, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(results[workers][3], results[1][3], rtol=1e-10, atol=1e-14)


def test_a_part_that_fails_does_not_leave_the_others_waiting():
    group = parallel.BatchGroup(2)

    def failing():
        raise ValueError("the real error")

    def waiting():
        return group.exchange(1, "value")

    with pytest.raises(ValueError, match="the real error"):
        parallel.run_parallel([parallel._in_group(group, 0, failing), parallel._in_group(group, 1, waiting)])


def test_a_small_resnet_trains_with_trainstep_and_the_plain_loop_alike():
    x = np.random.default_rng(0).standard_normal((16, 3, 12, 12)).astype(np.float32)
    y = np.arange(16) % 5
    losses = []
    for how in ("step", "loop"):
        ns.manual_seed(3)                                       # the same dropout masks in both
        model, loss_fn = small_resnet(), ns.CrossEntropyLoss()
        opt = ns.AdamW(model.parameters(), lr=1e-2) if hasattr(ns, "AdamW") else ns.Adam(model.parameters(), lr=1e-2)
        step = ns.TrainStep(model, loss_fn, opt)
        run = []
        for _ in range(5):
            if how == "step":
                run.append(step(x, y)[0])
            else:
                run.append(loss_fn(model(x), y))
                model.backward(loss_fn.backward())
                opt.step()
                opt.zero_grad()
        losses.append(run)
        state = model.state_dict()
        assert int(state["1.num_batches_tracked"]) == 5
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    assert losses[0][-1] < losses[0][0]


def test_a_checkpoint_keeps_the_running_statistics(tmp_path):
    from nnscratch import files
    model = small_resnet()
    model(np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    files.save_model(tmp_path / "m.npz", model, {"arch": "test"})
    state, _ = files.load_checkpoint(tmp_path / "m.npz")
    fresh = small_resnet().load_state_dict(state)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    x = np.ones((2, 3, 8, 8), np.float32)
    np.testing.assert_array_equal(copy.deepcopy(model).eval()(x), fresh.eval()(x))


# ---- the planner's batch-norm step --------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 9), st.integers(1, 6), st.integers(1, 6), st.booleans(), st.booleans(),
       SEEDS)
def test_batchnorm_kernels_equal_the_reference_in_both_layouts(B, C, H, W, relu, last, seed):
    from nnscratch.kernels import cpu, reference
    rng = np.random.default_rng(seed)
    if B * H * W < 2:
        B = 2
    x = rng.standard_normal((B, H, W, C) if last else (B, C, H, W)) * 2 + 1
    x = x.transpose(0, 3, 1, 2) if last else x
    w, b, g = rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal(x.shape)
    ours, ref = cpu.batchnorm_forward(x, w, b, 1e-5, relu), reference.batchnorm_forward(x, w, b, 1e-5, relu)
    for u, v in zip(ours, ref):
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12)
    inv_std = 1 / np.sqrt(ours[3] + 1e-5)
    back = cpu.batchnorm_backward(g, ours[1], w, inv_std, ours[0] if relu else None, b)    # mask from xhat
    for u, v in zip(back, reference.batchnorm_backward(g, ref[1], w, inv_std, ref[0] if relu else None)):
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 2500), st.integers(2, 40), st.booleans(), SEEDS)
def test_float32_batch_norm_sums_by_chunks_equal_float64_to_rounding_on_any_core_count(B, C, relu, seed):
    # the kernels sum a float32 map in float32 over chunks of BN_CHUNK_ROWS rows and add the chunks'
    # sums in float64: the float64 sums to float32 rounding (relative to the sums of the magnitudes,
    # which a sum that cancels does not shrink), for maps of two rows to several chunks (odd sizes, a
    # short last chunk), and the same bits from the threaded and the serial kernels (a chunk's sum
    # does not depend on which thread takes it)
    from nnscratch.kernels import cpu
    rng = np.random.default_rng(seed)
    N = 2 * B                                                            # B images of 1 x 2 pixels
    rows = (rng.standard_normal((N, C)) * 3 + rng.standard_normal(C) * 5).astype(np.float32)
    x = rows.reshape(B, 1, 2, C).transpose(0, 3, 1, 2)                   # (B, C, 1, 2), channels-last
    assert cpu._rows(x) is not None                                      # (the kernels' path, not NumPy's)
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    g = rng.standard_normal((N, C)).astype(np.float32)
    y, _, mean, var = cpu.batchnorm_forward(x, w, b, 1e-5, relu)
    u = rows.astype(np.float64) - rows[0]                                 # the kernel's shift: the first row
    def within(ours, exact, bound):                                       # per channel
        assert np.all(np.abs(ours - exact) <= bound), (ours, exact, bound)
    within(mean, rows.astype(np.float64).mean(axis=0), 1e-5 * np.abs(u).max(axis=0) + 1e-6)
    within(var, rows.astype(np.float64).var(axis=0), 1e-5 * (u * u).mean(axis=0))
    inv_std = (1 / np.sqrt(var + 1e-5)).astype(np.float32)
    _, dw, db = cpu.batchnorm_backward(g.reshape(B, 1, 2, C).transpose(0, 3, 1, 2), None, w, inv_std,
                                       y if relu else None, b if relu else None, x=x, mean=mean)
    xhat = ((rows - mean.astype(np.float32)) * inv_std).astype(np.float64)       # as the kernels recompute it
    g1 = np.where((w * xhat + b > 0) | (not relu), g, 0).astype(np.float64)
    within(db, g1.sum(axis=0), 1e-5 * np.abs(g1).sum(axis=0))
    within(dw, (g1 * xhat).sum(axis=0), 1e-5 * np.abs(g1 * xhat).sum(axis=0))
    shift = rows[0].copy()
    parts = [np.empty((cpu._chunks(N), 2, C)) for _ in range(2)]
    cpu._bn_sums.serial(rows, shift, cpu.BN_CHUNK_ROWS, parts[0])
    cpu._bn_sums.threaded(rows, shift, cpu.BN_CHUNK_ROWS, parts[1])
    np.testing.assert_array_equal(parts[0], parts[1])
    grad_args = (g, rows, mean.astype(np.float32), inv_std, True, w, b, relu, cpu.BN_CHUNK_ROWS, np.float32(0))
    cpu._bn_grad_sums.serial(*grad_args, parts[0])
    cpu._bn_grad_sums.threaded(*grad_args, parts[1])
    np.testing.assert_array_equal(parts[0], parts[1])


def _batchnorm_case(B, C, H, W, last, dtype, seed):
    """(x, weight, bias, gradient, the generator for more draws) of a batch norm on (B, C, H, W) (at least
    two values a channel), x channels-last in memory with ``last``."""
    rng = np.random.default_rng(seed)
    B = 2 if B * H * W < 2 else B
    x = (rng.standard_normal((B, H, W, C) if last else (B, C, H, W)) * 2 + 1).astype(dtype)
    x = x.transpose(0, 3, 1, 2) if last else x
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    return x, w, b, rng.standard_normal(x.shape).astype(dtype), rng


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 9), st.integers(1, 6), st.integers(1, 6), st.booleans(), st.booleans(),
       st.sampled_from([np.float32, np.float64]), SEEDS)
def test_batchnorm_backward_from_the_input_has_the_bits_of_the_kept_xhat(B, C, H, W, relu, last, dtype, seed):
    # BatchNormStep keeps x and the mean instead of writing xhat out: both kernels' backward passes,
    # recomputing xhat, must give exactly what they give from the forward pass's xhat
    from nnscratch.kernels import cpu, reference
    x, w, b, g, _ = _batchnorm_case(B, C, H, W, last, dtype, seed)
    for k in (cpu, reference):
        y, xhat, mean, var = k.batchnorm_forward(x, w, b, 1e-5, relu)
        y2, none, mean2, var2 = k.batchnorm_forward(x, w, b, 1e-5, relu, keep_xhat=False)
        assert none is None
        np.testing.assert_array_equal(y2, y)
        inv_std = (1 / np.sqrt(var + 1e-5)).astype(dtype)
        mask = (y if relu else None, b if relu else None)
        kept = k.batchnorm_backward(g, xhat, w, inv_std, *mask)
        again = k.batchnorm_backward(g, None, w, inv_std, *mask, x=x, mean=mean)
        for u, v in zip(again, kept):
            assert u.dtype == v.dtype
            np.testing.assert_array_equal(u, v)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 9), st.integers(1, 11), st.integers(1, 11), st.booleans(), st.booleans(),
       st.sampled_from([np.float32, np.float64]), SEEDS)
def test_batch_norms_deferred_input_gradient_has_the_bits_of_dx(B, C, H, W, relu, last, dtype, seed):
    # batchnorm_grad_into_winograd: batch norm hands its input gradient over as its terms, and
    # F(4x4)'s output-gradient transform computes it tile by tile; what it transforms must be dx
    # exactly, for the whole batch and for a block of its images written into the batch's dM
    from nnscratch.kernels import cpu
    x, w, b, g, rng = _batchnorm_case(B, C, H, W, last, dtype, seed)
    B = x.shape[0]
    y, _, mean, var = cpu.batchnorm_forward(x, w, b, 1e-5, relu, keep_xhat=False)
    inv_std = (1 / np.sqrt(var + 1e-5)).astype(dtype)
    mask = (y if relu else None, b if relu else None)
    dx, dw, db = cpu.batchnorm_backward(g, None, w, inv_std, *mask, x=x, mean=mean)
    terms, dw2, db2 = cpu.batchnorm_backward(g, None, w, inv_std, *mask, x=x, mean=mean, defer=True)
    if not (last and x.transpose(0, 2, 3, 1).flags.c_contiguous and not x.flags.c_contiguous):
        # not channels-last rows (or one channel, H = W = 1: both layouts at once): the reference
        # kernels compute dx itself, deferring nothing
        np.testing.assert_array_equal(terms, dx)
        return
    assert isinstance(terms, cpu.BatchNormInputGrad) and terms.shape == dx.shape and terms.dtype == dx.dtype
    for u, v in ((terms.compute(), dx), (dw2, dw), (db2, db)):
        np.testing.assert_array_equal(u, v)
    tiles = (-(-H // 4), -(-W // 4))
    np.testing.assert_array_equal(cpu.winograd_grad_output(terms, tiles, m=4), cpu.winograd_grad_output(dx, tiles, m=4))
    b0, b1 = rng.integers(0, B), B
    per = tiles[0] * tiles[1]
    dM = np.full((36, (B + 1) * per, C), np.nan, dtype)
    cpu.winograd_grad_output(terms[b0:b1], tiles, out=dM, first_tile=(b0 + 1) * per, m=4)
    np.testing.assert_array_equal(dM[:, (b0 + 1) * per:], cpu.winograd_grad_output(dx[b0:b1], tiles, m=4))
    # F(2x2)'s transform takes the terms too, through dx
    tiles2 = (-(-H // 2), -(-W // 2))
    np.testing.assert_array_equal(cpu.winograd_grad_output(terms, tiles2), cpu.winograd_grad_output(dx, tiles2))


def test_the_batchnorm_step_moves_the_running_statistics_as_the_layer_does():
    from nnscratch.fast.norm import BatchNormStep
    x = np.random.default_rng(0).standard_normal((4, 3, 6, 6))
    states = []
    for mode in ("plan", "reference"):
        model = small_resnet(np.float64)
        ns.set_execution(mode)
        try:
            for _ in range(3):
                model(x)
                model.backward(np.ones((4, 5)))
        finally:
            ns.set_execution("plan")
        states.append(model.state_dict())
    for name in states[0]:
        np.testing.assert_allclose(states[0][name], states[1][name], rtol=1e-10, atol=1e-12, err_msg=name)
    steps = [type(s) for s in ns.plan(small_resnet(np.float64), x).plan.steps]
    assert BatchNormStep in steps


@pytest.mark.parametrize("train", [True, False])
def test_a_planned_resnet_equals_its_textbook_layers_in_both_modes(train):
    model = small_resnet(np.float64)
    rng = np.random.default_rng(1)
    for m in model.modules():                      # running statistics away from their start
        if isinstance(m, ns.BatchNorm2d):
            m.running_mean.data[...] = rng.standard_normal(m.num_features)
            m.running_var.data[...] = rng.random(m.num_features) + 0.5
    model.train(train)
    model.layers = [m for m in model.layers if not isinstance(m, ns.Dropout)]   # no random draws to match
    x, g = rng.standard_normal((5, 3, 9, 9)), rng.standard_normal((5, 5))
    results = []
    for mode in ("plan", "reference"):
        ns.set_execution(mode)
        try:
            model.zero_grad()
            y = model(x)
            dx = model.backward(g)
            results.append([y, dx] + [p.grad.copy() for p in model.parameters()])
        finally:
            ns.set_execution("plan")
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    text = str(ns.plan(model, x))
    assert ("batch norm folded into the convolution" in text) == (not train)   # the stem's conv and BN


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 5), st.booleans(), st.booleans(), SEEDS)
def test_scale_shift_equals_the_reference_in_both_layouts(B, C, side, relu, last, seed):
    from nnscratch.kernels import cpu, reference
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, side, side, C) if last else (B, C, side, side))
    x = x.transpose(0, 3, 1, 2) if last else x
    scale, shift = rng.standard_normal(C), rng.standard_normal(C)
    np.testing.assert_array_equal(cpu.scale_shift(x, scale, shift, relu), reference.scale_shift(x, scale, shift, relu))


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_inference_splits_over_the_cores_with_the_same_bits(arch):
    ns.manual_seed(0)
    model = getattr(ns.models, arch)(image_size=12 if arch == "resnet" else 28).eval()
    x = np.random.default_rng(0).standard_normal((37, 3, *(2 * (12 if arch == "resnet" else 28,)))).astype(np.float32)
    whole = ns.Sequential(*model.layers).eval()          # the same layers, never split
    whole.workers = 1
    model.workers = 2
    assert "split in 2 parts" in str(ns.plan(model, x))
    np.testing.assert_array_equal(model(x), whole(x))
