"""Optimizer steps equal values worked out by hand."""
import math

import numpy as np
import pytest

import nnscratch as ns


def param(values, grad):
    p = ns.Parameter(np.array(values, dtype=np.float64))
    p.grad[...] = grad
    return p


def test_sgd_step_is_p_minus_lr_times_grad():
    p = param([1.0, -2.0], [0.5, -1.0])
    ns.SGD([p], lr=0.1).step()
    np.testing.assert_allclose(p.data, [0.95, -1.9])


def test_sgd_momentum_buffer_starts_at_the_gradient_then_accumulates():
    p = param([1.0], [1.0])
    opt = ns.SGD([p], lr=0.1, momentum=0.9)
    opt.step()                      # b = 1;            p = 1 - 0.1 * 1 = 0.9
    assert p.data[0] == pytest.approx(0.9)
    p.grad[...] = 2.0
    opt.step()                      # b = 0.9 * 1 + 2 = 2.9; p = 0.9 - 0.29 = 0.61
    assert p.data[0] == pytest.approx(0.61)
    assert opt.state[0]["momentum_buffer"][0] == pytest.approx(2.9)


def test_sgd_weight_decay_adds_l2_gradient():
    p = param([2.0], [0.0])
    ns.SGD([p], lr=0.5, weight_decay=0.1).step()     # g = 0 + 0.1 * 2 = 0.2; p = 2 - 0.1
    assert p.data[0] == pytest.approx(1.9)


def test_adam_first_two_steps_by_hand():
    p = param([1.0], [0.5])
    opt = ns.Adam([p], lr=0.1)
    opt.step()
    # m = 0.05, v = 0.00025; m_hat = 0.5, v_hat = 0.25 -> p = 1 - 0.1 * 0.5 / (0.5 + 1e-8)
    assert p.data[0] == pytest.approx(1 - 0.1 * 0.5 / (0.5 + 1e-8), rel=1e-12)
    p.grad[...] = -1.0
    before = p.data[0]
    opt.step()
    m = 0.9 * 0.05 + 0.1 * -1.0
    v = 0.999 * 0.00025 + 0.001 * 1.0
    expected = before - 0.1 / (1 - 0.9**2) * m / (math.sqrt(v) / math.sqrt(1 - 0.999**2) + 1e-8)
    assert p.data[0] == pytest.approx(expected, rel=1e-12)
    assert opt.state[0]["step"] == 2


def test_optimizers_update_in_place_and_zero_grad_clears():
    p = param([1.0, 2.0], [1.0, 1.0])
    data = p.data
    opt = ns.Adam([p])
    opt.step()
    assert p.data is data
    opt.zero_grad()
    assert (p.grad == 0).all()


def test_float32_parameters_stay_float32():
    p = ns.Parameter(np.ones(3, dtype=np.float32))
    p.grad[...] = 0.3
    for opt in (ns.SGD([p], lr=0.1, momentum=0.9), ns.Adam([p])):
        opt.step()
        assert p.data.dtype == np.float32


@pytest.mark.parametrize("make", [
    lambda ps: ns.SGD(ps, lr=0.0), lambda ps: ns.SGD(ps, lr=-1), lambda ps: ns.SGD(ps, lr=0.1, momentum=-0.1),
    lambda ps: ns.Adam(ps, lr=float("nan")), lambda ps: ns.Adam(ps, betas=(1.0, 0.9)),
    lambda ps: ns.Adam(ps, eps=-1.0), lambda ps: ns.SGD(ps, lr=0.1, nesterov=True),
])
def test_bad_hyperparameters_are_refused(make):
    with pytest.raises(ValueError):
        make([param([1.0], [0.0])])


def test_empty_parameter_list_is_refused():
    with pytest.raises(ValueError, match="empty"):
        ns.SGD([], lr=0.1)


def test_optimizer_state_dict_round_trip_continues_identically():
    a, b = param([1.0, 2.0], [0.3, -0.2]), param([1.0, 2.0], [0.3, -0.2])
    opt_a = ns.Adam([a], lr=0.01)
    opt_a.step()
    opt_b = ns.Adam([b], lr=0.5).load_state_dict(opt_a.state_dict())
    b.data[...] = a.data
    opt_a.step()
    opt_b.step()
    np.testing.assert_array_equal(a.data, b.data)


def _fortran_and_c_params(seed, shape=(5, 7)):
    """The same values and gradient as a Fortran-ordered parameter (Linear's weight layout) and a C one."""
    rng = np.random.default_rng(seed)
    data, grad = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    f = ns.Parameter(np.asfortranarray(data))
    c = ns.Parameter(data.copy())
    f.grad[...], c.grad[...] = grad, grad
    return f, c


@pytest.mark.parametrize("make", [lambda ps: ns.Adam(ps, lr=0.01, weight_decay=0.1),
                                  lambda ps: ns.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
                                  lambda ps: ns.SGD(ps, lr=0.1)])
def test_fortran_ordered_parameters_update_in_place_like_c_ordered_ones(make):
    """The fused kernels see a Fortran-ordered parameter through a view of its memory: the update
    lands in the parameter (a reshape(-1) copy would lose it) with the same bits as for a C array."""
    f, c = _fortran_and_c_params(0)
    before = f.data.copy()
    opt_f, opt_c = make([f]), make([c])
    for _ in range(3):
        opt_f.step()
        opt_c.step()
    assert f.data.flags.f_contiguous and not np.array_equal(f.data, before)
    np.testing.assert_array_equal(f.data, c.data)


def test_mixed_layouts_fall_back_to_the_reference_update():
    """A gradient in another layout than its parameter (set by hand) still updates the parameter,
    through the layout-blind reference, to the reference's values."""
    f, _ = _fortran_and_c_params(1)
    f.grad = np.ascontiguousarray(f.grad)                    # C-ordered gradient, Fortran parameter
    ref = ns.Parameter(f.data.copy())
    ref.grad[...] = f.grad
    ns.kernels.set_cpu_kernels("reference")
    try:
        ns.Adam([ref], lr=0.01).step()
    finally:
        ns.kernels.set_cpu_kernels("numba")
    ns.Adam([f], lr=0.01).step()
    np.testing.assert_array_equal(f.data, ref.data)


def test_loaded_moments_take_the_parameter_layout():
    """Optimizer state saved as C arrays comes back in a Fortran parameter's layout, so a resumed run
    keeps the fused kernel (and continues exactly)."""
    a, _ = _fortran_and_c_params(2)
    b, _ = _fortran_and_c_params(2)
    opt_a = ns.Adam([a], lr=0.01)
    opt_a.step()
    opt_b = ns.Adam([b], lr=0.01).load_state_dict(opt_a.state_dict())
    b.data[...] = a.data
    assert all(m.strides == b.data.strides for m in (opt_b.state[0]["exp_avg"], opt_b.state[0]["exp_avg_sq"]))
    opt_a.step()
    opt_b.step()
    np.testing.assert_array_equal(a.data, b.data)
