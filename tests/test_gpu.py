"""The same layers on CuPy arrays give NumPy's results; mixing devices is refused clearly."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import nnscratch as ns

from conftest import requires_gpu


@requires_gpu
@pytest.mark.parametrize("fused", [True, False])
def test_cnn_forward_backward_and_step_on_gpu_match_cpu(fused):
    """Also with every rule of the GPU model's plan off (ns.fast.all_off())."""
    import cupy as cp
    ns.manual_seed(0)
    cpu_model = ns.models.cnn().to(dtype=np.float64)
    gpu_model = ns.models.cnn().to(dtype=np.float64)
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.to("gpu")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 28, 28)), rng.integers(0, 8, 4)
    for model, xx, yy in ((cpu_model, x, y), (gpu_model, cp.asarray(x), cp.asarray(y))):
        opt, loss_fn = ns.Adam(model.parameters()), ns.CrossEntropyLoss()
        with ns.fast.switched(**({} if fused or model is cpu_model else ns.fast.all_off())):
            loss_fn(model(xx), yy)
            model.backward(loss_fn.backward())
        opt.step()
    assert isinstance(gpu_model.parameters()[0].data, cp.ndarray)
    # atol: the CPU runs conv2 and conv3 as Winograd convolutions, the GPU through im2col; Adam turns
    # their rounding on gradients near 0 into differences of ~1e-11 in the parameters
    for k, v in cpu_model.state_dict().items():
        np.testing.assert_allclose(gpu_model.state_dict()[k], v, rtol=1e-9, atol=1e-10)


@requires_gpu
def test_mse_and_one_hot_run_on_gpu():
    import cupy as cp
    y = cp.asarray([0, 2, 1])
    t = ns.one_hot(y, 3)
    assert isinstance(t, cp.ndarray)
    loss_fn = ns.MSELoss()
    assert loss_fn(t * 2, t) == pytest.approx(1 / 3)
    assert isinstance(loss_fn.backward(), cp.ndarray)


@requires_gpu
def test_softmax_mse_runs_on_gpu_and_equals_the_cpu():
    import cupy as cp
    logits, y = np.random.default_rng(0).standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
    cpu_loss, gpu_loss = ns.SoftmaxMSELoss(), ns.SoftmaxMSELoss()
    assert gpu_loss(cp.asarray(logits), cp.asarray(y)) == pytest.approx(cpu_loss(logits, y), rel=1e-12)
    np.testing.assert_allclose(cp.asnumpy(gpu_loss.backward()), cpu_loss.backward(), rtol=1e-10)


@requires_gpu
def test_numpy_input_to_a_gpu_model_says_what_to_do():
    model = ns.Linear(4, 2).to("gpu")
    with pytest.raises(TypeError, match=r"input is on the CPU .* parameters are on the GPU.*to_device\(x, 'gpu'\)"):
        model(np.ones((1, 4), np.float32))


@requires_gpu
def test_cupy_input_to_a_cpu_model_says_what_to_do():
    import cupy as cp
    with pytest.raises(TypeError, match=r"input is on the GPU .* parameters are on the CPU.*model.to\('gpu'\)"):
        ns.Linear(4, 2)(cp.ones((1, 4), cp.float32))


@requires_gpu
def test_optimizer_state_follows_with_to_and_refuses_a_mismatch():
    import cupy as cp
    model = ns.Linear(3, 2)
    opt = ns.Adam(model.parameters())
    x = np.ones((2, 3), np.float32)
    model.backward(np.ones_like(model(x)))
    opt.step()
    model.to("gpu")
    with pytest.raises(RuntimeError, match=r"optimizer.to\('gpu'\)"):
        opt.step()
    opt.to("gpu")
    model(cp.asarray(x))
    model.backward(cp.ones((2, 2), cp.float32))
    opt.step()
    assert isinstance(opt.state[0]["exp_avg"], cp.ndarray)


@requires_gpu
def test_to_device_round_trip():
    x = np.arange(6.0).reshape(2, 3)
    g = ns.to_device(x, "gpu")
    assert ns.get_array_module(g).__name__ == "cupy"
    np.testing.assert_array_equal(ns.to_numpy(g), x)


@requires_gpu
@settings(max_examples=60)
@given(m=st.integers(1, 70), k=st.integers(1, 70), n=st.integers(1, 70), layout_a=st.sampled_from("rcsv"),
       layout_b=st.sampled_from("rcs"), into=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]))
def test_cublas_matmul_equals_numpy_for_every_layout(m, k, n, layout_a, layout_b, into, dtype):
    """r: row-major, c: column-major (a transposed view), s: every other column (a strided view, copied
    first), v: a vector (K,) for a."""
    import cupy as cp
    from nnscratch.kernels import cublas
    rng = np.random.default_rng(m * 10007 + k * 101 + n)

    def make(rows, cols, layout):
        if layout == "c":
            return cp.asarray(rng.standard_normal((cols, rows)).astype(dtype)).T
        if layout == "s":
            return cp.asarray(rng.standard_normal((rows, 2 * cols)).astype(dtype))[:, ::2]
        return cp.asarray(rng.standard_normal((rows, cols)).astype(dtype))
    a = cp.asarray(rng.standard_normal(k).astype(dtype)) if layout_a == "v" else make(m, k, layout_a)
    b = make(k, n, layout_b)
    expected = cp.asnumpy(a).astype(np.float64) @ cp.asnumpy(b).astype(np.float64)
    out = cp.full(expected.shape, cp.nan, dtype=dtype) if into else None
    got = cublas.matmul(a, b, out)
    assert cublas.available() and got.shape == expected.shape and got.dtype == dtype
    if into:
        assert got is out
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(cp.asnumpy(got), expected, rtol=tol, atol=tol * np.sqrt(k))


@requires_gpu
@pytest.mark.parametrize("train", [True, False])
def test_a_resnet_with_dropout_trains_on_gpu_as_on_cpu(train):
    """Batch norm (its running statistics too), residual blocks, average pooling and dropout on CuPy
    arrays: the same numbers as on the CPU (dropout's masks are drawn on the host from the seed)."""
    import cupy as cp
    ns.manual_seed(0)
    cpu_model = ns.models.resnet(image_size=12, widths=(4, 8), blocks=(1, 1), dropout=0.3).to(dtype=np.float64)
    gpu_model = ns.models.resnet(image_size=12, widths=(4, 8), blocks=(1, 1), dropout=0.3).to(dtype=np.float64)
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.to("gpu")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 3, 12, 12)), rng.integers(0, 8, 6)
    for model, xx, yy in ((cpu_model, x, y), (gpu_model, cp.asarray(x), cp.asarray(y))):
        model.train(train)
        ns.manual_seed(5)                                  # the same dropout masks on both devices
        opt, loss_fn = ns.AdamW(model.parameters()), ns.CrossEntropyLoss(label_smoothing=0.1)
        opt.to("gpu" if model is gpu_model else "cpu")
        for _ in range(2):
            loss_fn(model(xx), yy)
            model.backward(loss_fn.backward())
            opt.step()
            opt.zero_grad()
    for k, v in cpu_model.state_dict().items():
        np.testing.assert_allclose(gpu_model.state_dict()[k], v, rtol=1e-9, atol=1e-10, err_msg=k)


@requires_gpu
def test_augmentation_and_tta_run_on_gpu_as_on_cpu():
    import cupy as cp
    from nnscratch import training
    x = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    a = ns.Augment(translate=2)(x, np.random.default_rng(1))
    b = ns.Augment(translate=2)(cp.asarray(x), np.random.default_rng(1))
    np.testing.assert_array_equal(cp.asnumpy(b), a)
    ns.manual_seed(0)
    model = ns.models.resnet(image_size=8, widths=(4, 8), blocks=(1, 1))
    probs = training.predict(model, x, tta=True)
    np.testing.assert_allclose(training.predict(model.to("gpu"), cp.asarray(x), tta=True), probs, rtol=1e-4, atol=1e-6)
