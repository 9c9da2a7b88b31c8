"""AdamW, learning-rate schedules, gradient clipping and label smoothing equal PyTorch's in float64."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import nnscratch as ns

torch = pytest.importorskip("torch", reason="PyTorch is the oracle of these tests: pip install -e '.[test]'")
SEEDS = st.integers(0, 2**32 - 1)
TOL = dict(rtol=1e-10, atol=1e-12)
sched = ns.lr_scheduler
tsched = torch.optim.lr_scheduler


def pair(seed=0, shapes=((4, 3), (3,), (2, 2, 3))):
    rng = np.random.default_rng(seed)
    ours = [ns.Parameter(rng.standard_normal(s)) for s in shapes]
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    return ours, theirs, rng


def feed(ours, theirs, rng):
    for p, tp in zip(ours, theirs):
        g = rng.standard_normal(p.shape)
        p.grad[...] = g
        tp.grad = torch.tensor(g)


@pytest.mark.parametrize("kwargs", [dict(), dict(lr=0.01, weight_decay=0.1), dict(lr=0.02, betas=(0.8, 0.99),
                                                                                    eps=1e-6, weight_decay=0.5)])
def test_adamw_matches_torch_after_several_steps(kwargs):
    ours, theirs, rng = pair()
    opt, topt = ns.AdamW(ours, **kwargs), torch.optim.AdamW(theirs, **kwargs)
    for _ in range(7):
        feed(ours, theirs, rng)
        opt.step()
        topt.step()
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_adamw_decays_apart_from_the_gradient_where_adam_does_not():
    p = ns.Parameter(np.array([10.0]))
    opt = ns.AdamW([p], lr=0.1, weight_decay=0.5)
    opt.step()                                          # zero gradient: only the decay acts
    assert p.data[0] == pytest.approx(10.0 * (1 - 0.1 * 0.5))


# ---- schedules ------------------------------------------------------------------------------------

SCHEDULES = {
    "step": (lambda o: sched.StepLR(o, step_size=3, gamma=0.5), lambda o: tsched.StepLR(o, step_size=3, gamma=0.5)),
    "cosine": (lambda o: sched.CosineAnnealingLR(o, T_max=10, eta_min=1e-4),
               lambda o: tsched.CosineAnnealingLR(o, T_max=10, eta_min=1e-4)),
    "linear": (lambda o: sched.LinearLR(o, start_factor=0.1, total_iters=4),
               lambda o: tsched.LinearLR(o, start_factor=0.1, total_iters=4)),
    "warmup+cosine": (
        lambda o: sched.SequentialLR(o, [sched.LinearLR(o, 0.2, total_iters=3), sched.CosineAnnealingLR(o, T_max=12)],
                                     milestones=[3]),
        lambda o: tsched.SequentialLR(o, [tsched.LinearLR(o, 0.2, total_iters=3),
                                          tsched.CosineAnnealingLR(o, T_max=12)], milestones=[3])),
    "onecycle": (lambda o: sched.OneCycleLR(o, max_lr=0.01, total_steps=15),
                 lambda o: tsched.OneCycleLR(o, max_lr=0.01, total_steps=15)),
    "onecycle-linear-3phase": (
        lambda o: sched.OneCycleLR(o, max_lr=0.05, epochs=3, steps_per_epoch=5, pct_start=0.25,
                                   anneal_strategy="linear", three_phase=True, div_factor=10, final_div_factor=100),
        lambda o: tsched.OneCycleLR(o, max_lr=0.05, epochs=3, steps_per_epoch=5, pct_start=0.25,
                                    anneal_strategy="linear", three_phase=True, div_factor=10, final_div_factor=100)),
}


@pytest.mark.filterwarnings("ignore::UserWarning")        # PyTorch's warnings about the call order
@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_schedules_match_torch_step_by_step(name, optimizer):
    ours, theirs, rng = pair()
    if optimizer == "adamw":
        opt, topt = ns.AdamW(ours, lr=0.01), torch.optim.AdamW(theirs, lr=0.01)
    else:
        opt, topt = ns.SGD(ours, lr=0.01, momentum=0.9), torch.optim.SGD(theirs, lr=0.01, momentum=0.9)
    make, tmake = SCHEDULES[name]
    s, ts = make(opt), tmake(topt)
    for _ in range(15):
        assert s.get_last_lr()[0] == pytest.approx(ts.get_last_lr()[0], rel=1e-10, abs=1e-15)
        group = topt.param_groups[0]
        if optimizer == "adamw":
            assert opt.betas[0] == pytest.approx(group["betas"][0], rel=1e-12)
        else:
            assert opt.momentum == pytest.approx(group["momentum"], rel=1e-12)
        feed(ours, theirs, rng)
        opt.step()
        topt.step()
        s.step()
        ts.step()
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), **TOL)


def test_onecycle_refuses_a_step_past_its_end_and_bad_arguments():
    opt = ns.AdamW([ns.Parameter(np.zeros(2))])
    s = sched.OneCycleLR(opt, max_lr=0.1, total_steps=3)
    for _ in range(3):
        s.step()
    with pytest.raises(ValueError, match="tried to step 4 times, but total_steps is 3"):
        s.step()
    with pytest.raises(ValueError, match="give total_steps, or epochs and steps_per_epoch"):
        sched.OneCycleLR(opt, max_lr=0.1)
    with pytest.raises(ValueError, match="no momentum to cycle"):
        sched.OneCycleLR(type("Plain", (), {"lr": 0.1})(), max_lr=0.1, total_steps=3)
    with pytest.raises(ValueError, match="increasing milestones"):
        sched.SequentialLR(opt, [sched.StepLR(opt, 2)], milestones=[3])


def test_a_schedule_resumes_from_its_state_dict():
    opt = ns.SGD([ns.Parameter(np.zeros(2))], lr=0.1)
    s = sched.CosineAnnealingLR(opt, T_max=10)
    for _ in range(4):
        s.step()
    state = s.state_dict()
    opt2 = ns.SGD([ns.Parameter(np.zeros(2))], lr=0.1)
    s2 = sched.CosineAnnealingLR(opt2, T_max=10).load_state_dict(state)
    s.step()
    s2.step()
    assert opt2.lr == opt.lr == pytest.approx(0.1 * (1 + math.cos(math.pi / 2)) / 2)


# ---- clipping -------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_norm", [0.5, 1e3])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_grad_norm_matches_torch(max_norm, norm_type):
    ours, theirs, rng = pair(seed=1)
    feed(ours, theirs, rng)
    total = ns.clip_grad_norm_(ours, max_norm, norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert total == pytest.approx(float(ttotal), rel=1e-12)
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), **TOL)


# ---- label smoothing --------------------------------------------------------------------------------

@given(st.integers(1, 6), st.integers(2, 7), st.sampled_from([0.0, 0.1, 0.5, 1.0]), st.booleans(), SEEDS)
def test_label_smoothing_matches_torch(B, K, smoothing, weighted, seed):
    rng = np.random.default_rng(seed)
    logits, y = rng.standard_normal((B, K)) * 3, rng.integers(0, K, B)
    weight = rng.random(K) + 0.1 if weighted else None
    loss_fn = ns.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)
    tl = torch.tensor(logits, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tl, torch.tensor(y), label_smoothing=smoothing,
                                              weight=None if weight is None else torch.tensor(weight))
    tloss.backward()
    assert loss_fn(logits, y) == pytest.approx(tloss.item(), rel=1e-10, abs=1e-14)
    np.testing.assert_allclose(loss_fn.backward(), tl.grad.numpy(), **TOL)


@pytest.mark.parametrize("weighted", [False, True])
def test_label_smoothing_passes_gradcheck(weighted):
    rng = np.random.default_rng(0)
    loss_fn = ns.CrossEntropyLoss(weight=rng.random(4) + 0.1 if weighted else None, label_smoothing=0.2)
    assert ns.gradcheck(loss_fn, rng.standard_normal((5, 4)), rng.integers(0, 4, 5)).ok


def test_label_smoothing_splits_like_the_whole_batch():
    """TrainStep's split weighs each part's loss by its share: the smoothed loss too."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, 32)
    results = []
    for workers in (1, 2):
        ns.manual_seed(0)
        model = ns.Sequential(ns.Conv2d(3, 4, 3), ns.ReLU(), ns.Flatten(), ns.Linear(144, 4))
        step = ns.TrainStep(model, ns.CrossEntropyLoss(label_smoothing=0.1), ns.AdamW(model.parameters()),
                            workers=workers)
        results.append([step(x, y)[0] for _ in range(3)])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5)


def test_label_smoothing_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\]"):
        ns.CrossEntropyLoss(label_smoothing=1.5)
