"""The numba and CuPy kernels equal the plain-NumPy reference on many shapes."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nnscratch.kernels import cpu, reference
from nnscratch.kernels.reference import out_size

from conftest import requires_gpu


@st.composite
def conv_case(draw):
    """(x shape, kh, kw, stride, padding) where the kernel fits the padded input."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride, pad = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, kh - 2 * pad), 11))
    W = draw(st.integers(max(1, kw - 2 * pad), 11))
    return (draw(st.integers(1, 3)), draw(st.integers(1, 4)), H, W), kh, kw, stride, pad


@st.composite
def pool_case(draw):
    """(x shape, k, stride), including odd sizes and overlapping windows (stride < k)."""
    k, stride = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    H, W = draw(st.integers(k, 11)), draw(st.integers(k, 11))
    return (draw(st.integers(1, 3)), draw(st.integers(1, 4)), H, W), k, stride


_MODE = ["serial"]          # thread_mode's, while a test runs in it
# float64 is drawn for the serial copies only: a threaded copy is the same source compiled with its
# loops spread over threads, and each (dtype, layout) is a compile of its own, the largest part of a
# clean checkout's test time (the F(4x4) Winograd kernels took 51 s threaded in both dtypes)
DTYPES = st.sampled_from([np.float32, np.float64]).map(lambda d: np.float32 if _MODE[0] == "threaded" else d)
LAYOUTS = st.sampled_from(["nchw", "channels_last"])


@pytest.fixture(params=["serial", "threaded"])
def thread_mode(request):
    """Runs a numba test twice: every kernel call on its serial copy, then on its threaded one
    (the engine picks by size, see cpu._twins; small test arrays would otherwise all run serially)."""
    saved = cpu.SERIAL_BELOW
    cpu.SERIAL_BELOW = 2**62 if request.param == "serial" else 0
    _MODE[0] = request.param
    yield request.param
    cpu.SERIAL_BELOW = saved
    _MODE[0] = "serial"


def in_layout(x, layout):
    """The same (B, C, H, W) values, stored NCHW or channels-last (as a convolution's output is)."""
    if layout == "nchw":
        return x
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def naive_conv(x, w, stride, pad):
    """Direct definition of cross-correlation: the oracle for im2col itself."""
    B, C, H, W = x.shape
    OC, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    OH, OW = out_size(H, kh, stride, pad), out_size(W, kw, stride, pad)
    y = np.zeros((B, OC, OH, OW))
    for b in range(B):
        for o in range(OC):
            for i in range(OH):
                for j in range(OW):
                    y[b, o, i, j] = (xp[b, :, i * stride:i * stride + kh, j * stride:j * stride + kw] * w[o]).sum()
    return y


@given(conv_case(), st.integers(0, 2**32 - 1))
def test_reference_im2col_times_weight_is_the_convolution(case, seed):
    shape, kh, kw, s, p = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((3, shape[1], kh, kw))
    cols = reference.im2col(x, kh, kw, s, p)
    B, OH, OW = shape[0], out_size(shape[2], kh, s, p), out_size(shape[3], kw, s, p)
    # columns are ordered (i, j, c): the weight in that order is w.transpose(0, 2, 3, 1)
    y = (cols @ w.transpose(0, 2, 3, 1).reshape(3, -1).T).reshape(B, OH, OW, 3).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(y, naive_conv(x, w, s, p), rtol=1e-12, atol=1e-12)


@given(conv_case(), st.integers(0, 2**32 - 1))
def test_reference_col2im_is_the_adjoint_of_im2col(case, seed):
    # <im2col(x), c> == <x, col2im(c)> for all x, c: col2im is im2col's transpose
    shape, kh, kw, s, p = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    cols = reference.im2col(x, kh, kw, s, p)
    c = rng.standard_normal(cols.shape)
    lhs = (cols * c).sum()
    rhs = (x * reference.col2im(c, shape, kh, kw, s, p)).sum()
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


@pytest.mark.usefixtures("thread_mode")
@given(conv_case(), DTYPES, LAYOUTS, st.booleans(), st.integers(0, 2**32 - 1))
def test_numba_im2col_equals_reference(case, dtype, layout, ones, seed):
    shape, kh, kw, s, p = case
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    # three twins: _im2col_cl (channels-last), _im2col_nchw (C-contiguous, C <= 8: all of these
    # cases), _im2col (any other layout: here every other column of a wider array)
    got = cpu.im2col(in_layout(x, layout), kh, kw, s, p, ones=ones)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, reference.im2col(x, kh, kw, s, p, ones=ones))
    wide = np.zeros(x.shape[:3] + (2 * x.shape[3],), dtype)
    wide[..., ::2] = x
    np.testing.assert_array_equal(cpu.im2col(wide[..., ::2], kh, kw, s, p, ones=ones), got)
    if layout == "channels_last":                   # the NCHW twin too, on a copy in NCHW order
        np.testing.assert_array_equal(cpu.im2col(np.ascontiguousarray(x), kh, kw, s, p, ones=ones), got)


@given(conv_case(), st.integers(0, 2**32 - 1))
def test_reference_im2col_ones_column_adds_the_bias(case, seed):
    """cols with the column of ones, times the weight matrix with the bias as its last column, is the
    convolution plus the bias; the rest of the matrix is im2col's."""
    shape, kh, kw, s, p = case
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal(shape), rng.standard_normal((3, shape[1], kh, kw)), rng.standard_normal(3)
    cols = reference.im2col(x, kh, kw, s, p, ones=True)
    np.testing.assert_array_equal(cols[:, :-1], reference.im2col(x, kh, kw, s, p))
    np.testing.assert_array_equal(cols[:, -1], 1)
    wb = np.concatenate([w.transpose(0, 2, 3, 1).reshape(3, -1), b[:, None]], axis=1)
    B, OH, OW = shape[0], out_size(shape[2], kh, s, p), out_size(shape[3], kw, s, p)
    y = (cols @ wb.T).reshape(B, OH, OW, 3).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(y, naive_conv(x, w, s, p) + b[:, None, None], rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("thread_mode")
@given(conv_case(), DTYPES, st.integers(0, 2**32 - 1))
def test_numba_col2im_equals_reference(case, dtype, seed):
    shape, kh, kw, s, p = case
    OH, OW = out_size(shape[2], kh, s, p), out_size(shape[3], kw, s, p)
    cols = np.random.default_rng(seed).standard_normal((shape[0] * OH * OW, shape[1] * kh * kw)).astype(dtype)
    got = cpu.col2im(cols, shape, kh, kw, s, p)
    assert got.dtype == dtype and got.shape == shape
    tol = 1e-5 if dtype == np.float32 else 1e-12   # sums of overlaps in another order
    np.testing.assert_allclose(got, reference.col2im(cols, shape, kh, kw, s, p), rtol=tol, atol=tol)
    # a non-contiguous column matrix is copied first: the same sums, bit for bit
    wide = np.zeros((cols.shape[0], 2 * cols.shape[1]), dtype)
    wide[:, ::2] = cols
    np.testing.assert_array_equal(cpu.col2im(wide[:, ::2], shape, kh, kw, s, p), got)


@st.composite
def cropped_conv_case(draw):
    """A conv_case and an out_hw within its output map."""
    shape, kh, kw, s, p = draw(conv_case())
    OH, OW = out_size(shape[2], kh, s, p), out_size(shape[3], kw, s, p)
    return (shape, kh, kw, s, p), (draw(st.integers(1, OH)), draw(st.integers(1, OW)))


@given(cropped_conv_case(), st.booleans(), st.integers(0, 2**32 - 1))
def test_reference_out_hw_is_the_first_rows_and_columns_of_the_map(crop, ones, seed):
    """im2col(out_hw=(oh, ow)) holds the rows of the whole matrix for the map's first oh rows and ow
    columns; col2im(out_hw) is col2im of the whole matrix with the other rows zero (its adjoint)."""
    (shape, kh, kw, s, p), (oh, ow) = crop
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    whole = reference.im2col(x, kh, kw, s, p, ones=ones)
    OH, OW = out_size(shape[2], kh, s, p), out_size(shape[3], kw, s, p)
    expected = whole.reshape(shape[0], OH, OW, -1)[:, :oh, :ow].reshape(-1, whole.shape[1])
    np.testing.assert_array_equal(reference.im2col(x, kh, kw, s, p, ones=ones, out_hw=(oh, ow)), expected)
    cols = rng.standard_normal((shape[0] * oh * ow, whole.shape[1] - ones))
    padded = np.zeros((shape[0], OH, OW, cols.shape[1]))
    padded[:, :oh, :ow] = cols.reshape(shape[0], oh, ow, -1)
    np.testing.assert_allclose(reference.col2im(cols, shape, kh, kw, s, p, out_hw=(oh, ow)),
                               reference.col2im(padded.reshape(-1, cols.shape[1]), shape, kh, kw, s, p),
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="out_hw"):
        reference.im2col(x, kh, kw, s, p, out_hw=(OH + 1, OW))


def _out_hw_case(crop, dtype, ones, seed):
    """x, the reference's cropped im2col of it, a column matrix for col2im, and the float tolerance."""
    (shape, kh, kw, s, p), out_hw = crop
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    expected = reference.im2col(x, kh, kw, s, p, ones=ones, out_hw=out_hw)
    cols = rng.standard_normal((expected.shape[0], expected.shape[1] - ones)).astype(dtype)
    return x, expected, cols, 1e-5 if dtype == np.float32 else 1e-12


@pytest.mark.usefixtures("thread_mode")
@given(cropped_conv_case(), DTYPES, LAYOUTS, st.booleans(), st.integers(0, 2**32 - 1))
def test_numba_im2col_and_col2im_with_out_hw_equal_reference(crop, dtype, layout, ones, seed):
    (shape, kh, kw, s, p), out_hw = crop
    x, expected, cols, tol = _out_hw_case(crop, dtype, ones, seed)
    np.testing.assert_array_equal(cpu.im2col(in_layout(x, layout), kh, kw, s, p, ones=ones, out_hw=out_hw), expected)
    wide = np.zeros(x.shape[:3] + (2 * x.shape[3],), dtype)              # the general twin
    wide[..., ::2] = x
    np.testing.assert_array_equal(cpu.im2col(wide[..., ::2], kh, kw, s, p, ones=ones, out_hw=out_hw), expected)
    np.testing.assert_allclose(cpu.col2im(cols, shape, kh, kw, s, p, out_hw=out_hw),
                               reference.col2im(cols, shape, kh, kw, s, p, out_hw=out_hw), rtol=tol, atol=tol)


@pytest.mark.usefixtures("thread_mode")
@given(pool_case(), DTYPES, LAYOUTS, st.integers(0, 2**32 - 1))
def test_numba_maxpool_forward_equals_reference_ties_included(case, dtype, layout, seed):
    shape, k, s = case
    # small integers make ties common: both must pick the first maximum of a window
    x = np.random.default_rng(seed).integers(-3, 4, size=shape).astype(dtype)
    out, arg = cpu.maxpool_forward(in_layout(x, layout), k, s)
    ref_out, ref_arg = reference.maxpool_forward(x, k, s)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(arg, ref_arg)
    # with the ReLU fused in: the same winners, the output rectified (-0.0 kept, as ReLU keeps it)
    x[0, 0, 0, 0] = -0.0
    out, arg = cpu.maxpool_forward(in_layout(x, layout), k, s, relu=True)
    ref_out, ref_arg = reference.maxpool_forward(x, k, s, relu=True)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(np.signbit(out), np.signbit(cpu.relu_forward(reference.maxpool_forward(x, k, s)[0])))
    np.testing.assert_array_equal(arg, ref_arg)


@pytest.mark.usefixtures("thread_mode")
@given(pool_case(), DTYPES, LAYOUTS, st.integers(0, 2**32 - 1))
def test_numba_maxpool_backward_equals_reference(case, dtype, layout, seed):
    shape, k, s = case
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=shape).astype(dtype)
    _, arg = reference.maxpool_forward(x, k, s)
    g = rng.standard_normal(arg.shape).astype(dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(cpu.maxpool_backward(in_layout(g, layout), in_layout(arg, layout), shape, k, s),
                               reference.maxpool_backward(g, arg, shape, k, s), rtol=tol, atol=tol)
    # with the ReLU's mask (the rectified output of a fused forward pass), in either layout
    out, _ = reference.maxpool_forward(x, k, s, relu=True)
    want = reference.maxpool_backward(g, arg, shape, k, s, out=out)
    np.testing.assert_array_equal(want, reference.maxpool_backward(reference.relu_backward(g, out), arg, shape, k, s))
    np.testing.assert_allclose(cpu.maxpool_backward(in_layout(g, layout), in_layout(arg, layout), shape, k, s,
                                                    out=in_layout(out, layout)), want, rtol=tol, atol=tol)


@pytest.mark.usefixtures("thread_mode")
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), DTYPES, st.integers(0, 2**32 - 1))
def test_numba_maxpool_backward_of_tiling_windows_writes_every_element_once(k, oh, ow, dtype, seed):
    """Windows that tile the map (stride = k, sides multiples of k) take the single-pass path, which
    writes into uninitialised memory: every element must still get the reference's value, signed
    zeros included (the reference adds the gradient to a zero)."""
    rng = np.random.default_rng(seed)
    shape = (2, 3, oh * k, ow * k)
    x = rng.integers(-3, 4, size=shape).astype(dtype)
    _, arg = reference.maxpool_forward(x, k, k)
    g = rng.standard_normal(arg.shape).astype(dtype)
    g[rng.random(g.shape) < 0.3] = -0.0
    want = reference.maxpool_backward(g, arg, shape, k, k)
    got = cpu.maxpool_backward(in_layout(g, "channels_last"), in_layout(arg, "channels_last"), shape, k, k)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
    out, _ = reference.maxpool_forward(x, k, k, relu=True)                  # and with the ReLU's mask
    want = reference.maxpool_backward(g, arg, shape, k, k, out=out)
    got = cpu.maxpool_backward(in_layout(g, "channels_last"), in_layout(arg, "channels_last"), shape, k, k,
                               out=in_layout(out, "channels_last"))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def test_maxpool_floors_odd_sizes_like_pytorch():
    out, _ = reference.maxpool_forward(np.zeros((1, 1, 7, 7)), 2, 2)
    assert out.shape == (1, 1, 3, 3)


def test_maxpool_backward_routes_gradient_to_the_argmax_only():
    x = np.array([[[[1.0, 5.0], [3.0, 2.0]]]])
    out, arg = reference.maxpool_forward(x, 2, 2)
    assert out.item() == 5.0 and arg.item() == 1
    dx = reference.maxpool_backward(np.array([[[[7.0]]]]), arg, x.shape, 2, 2)
    np.testing.assert_array_equal(dx, [[[[0.0, 7.0], [0.0, 0.0]]]])


@pytest.mark.usefixtures("thread_mode")
def test_numba_im2col_writes_into_a_given_buffer():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    buf = np.empty((2 * 25, 27), np.float32)
    assert cpu.im2col(x, 3, 3, 1, 1, out=buf) is buf
    np.testing.assert_array_equal(buf, reference.im2col(x, 3, 3, 1, 1))


@pytest.mark.usefixtures("thread_mode")
@given(st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple), DTYPES, LAYOUTS, LAYOUTS,
       st.integers(0, 2**32 - 1))
def test_numba_relu_equals_reference(shape, dtype, layout, grad_layout, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=shape).astype(dtype)         # exact zeros: the kink itself
    g = rng.standard_normal(shape).astype(dtype)
    if len(shape) == 4:                                        # the gradient may come in another layout
        x, g = in_layout(x, layout), in_layout(g, grad_layout)
    y = cpu.relu_forward(x)
    np.testing.assert_array_equal(y, reference.relu_forward(x))
    assert y.flags.c_contiguous == x.flags.c_contiguous       # the layout is kept
    if len(shape) == 4:
        assert y.transpose(0, 2, 3, 1).flags.c_contiguous == x.transpose(0, 2, 3, 1).flags.c_contiguous
    np.testing.assert_array_equal(cpu.relu_backward(g, y), reference.relu_backward(g, y))
    x_copy = x.copy()
    z = cpu.relu_forward(x_copy, inplace=True)                 # overwriting its input: same values
    assert z is x_copy
    np.testing.assert_array_equal(z, reference.relu_forward(x))


@pytest.mark.usefixtures("thread_mode")
def test_numba_relu_keeps_nan_and_handles_mixed_layouts():
    x = np.array([[np.nan, -1.0, 2.0]], np.float32)
    assert np.isnan(cpu.relu_forward(x)[0, 0])
    y = cpu.relu_forward(in_layout(np.arange(-8, 8, dtype=np.float32).reshape(1, 4, 2, 2), "channels_last"))
    g = np.arange(16, dtype=np.float32).reshape(1, 4, 2, 2) + 1    # NCHW grad, channels-last output
    np.testing.assert_array_equal(cpu.relu_backward(g, y), reference.relu_backward(g, y))
    y_nchw = np.ascontiguousarray(y)                                  # and the other way round
    np.testing.assert_array_equal(cpu.relu_backward(in_layout(g, "channels_last"), y_nchw),
                                  reference.relu_backward(g, y_nchw))
    strided = np.arange(-20, 20, dtype=np.float32).reshape(2, 4, 5)[:, ::2]   # neither layout
    np.testing.assert_array_equal(cpu.relu_forward(strided), reference.relu_forward(strided))
    expected = reference.relu_forward(strided)
    assert cpu.relu_forward(strided, inplace=True) is strided
    np.testing.assert_array_equal(strided, expected)


def test_small_calls_run_the_serial_copy_and_large_ones_the_threaded(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu._adam, "serial", lambda *a: calls.append("serial"))
    monkeypatch.setattr(cpu._adam, "threaded", lambda *a: calls.append("threaded"))
    for n in (8, cpu.SERIAL_BELOW - 1, cpu.SERIAL_BELOW, 4 * cpu.SERIAL_BELOW):
        p = np.zeros(n, np.float32)
        cpu.adam_update(p, p, p, p, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    assert calls == ["serial", "serial", "threaded", "threaded"]
    with cpu.serial_only():                  # several threads calling kernels at once (threads.py)
        cpu.adam_update(p, p, p, p, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    assert calls[-1] == "serial" and cpu._serial_only[0] is False


# ---- optimizer updates -------------------------------------------------------------------

SHAPES = st.lists(st.integers(1, 7), min_size=1, max_size=3).map(tuple)


@pytest.mark.usefixtures("thread_mode")
@given(SHAPES, DTYPES, st.sampled_from([0.0, 0.5, 0.9]), st.sampled_from([0.0, 0.3]), st.booleans(), st.booleans(),
       st.integers(0, 2**32 - 1))
def test_numba_sgd_update_equals_reference(shape, dtype, momentum, dampening, nesterov, first, seed):
    nesterov = nesterov and momentum > 0 and dampening == 0
    rng = np.random.default_rng(seed)
    p, g, buf = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    ref_p, ref_buf = p.copy(), buf.copy()
    reference.sgd_update(ref_p, g, ref_buf, 0.1, momentum, dampening, 0.01, nesterov, first)
    cpu.sgd_update(p, g, buf, 0.1, momentum, dampening, 0.01, nesterov, first)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(p, ref_p, rtol=tol, atol=tol)
    if momentum:
        np.testing.assert_allclose(buf, ref_buf, rtol=tol, atol=tol)


# ---- CuPy twins ------------------------------------------------------------------------

def on_gpu(x, layout):
    """A CuPy copy of x in the given memory layout."""
    import cupy as cp
    return cp.asarray(x) if layout == "nchw" else cp.ascontiguousarray(cp.asarray(x).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@requires_gpu
@given(conv_case(), DTYPES, LAYOUTS, st.booleans(), st.integers(0, 2**32 - 1))
def test_cupy_im2col_and_col2im_equal_reference(case, dtype, layout, ones, seed):
    import cupy as cp
    from nnscratch.kernels import gpu
    shape, kh, kw, s, p = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    np.testing.assert_array_equal(cp.asnumpy(gpu.im2col(on_gpu(x, layout), kh, kw, s, p, ones=ones)),
                                  reference.im2col(x, kh, kw, s, p, ones=ones))
    cols = rng.standard_normal(reference.im2col(x, kh, kw, s, p).shape).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(cp.asnumpy(gpu.col2im(cp.asarray(cols), shape, kh, kw, s, p)),
                               reference.col2im(cols, shape, kh, kw, s, p), rtol=tol, atol=tol)


@requires_gpu
@given(cropped_conv_case(), DTYPES, LAYOUTS, st.booleans(), st.integers(0, 2**32 - 1))
def test_cupy_im2col_and_col2im_with_out_hw_equal_reference(crop, dtype, layout, ones, seed):
    import cupy as cp
    from nnscratch.kernels import gpu
    (shape, kh, kw, s, p), out_hw = crop
    x, expected, cols, tol = _out_hw_case(crop, dtype, ones, seed)
    np.testing.assert_array_equal(cp.asnumpy(gpu.im2col(on_gpu(x, layout), kh, kw, s, p, ones=ones, out_hw=out_hw)),
                                  expected)
    np.testing.assert_allclose(cp.asnumpy(gpu.col2im(cp.asarray(cols), shape, kh, kw, s, p, out_hw=out_hw)),
                               reference.col2im(cols, shape, kh, kw, s, p, out_hw=out_hw), rtol=tol, atol=tol)


@requires_gpu
@given(pool_case(), DTYPES, LAYOUTS, st.integers(0, 2**32 - 1))
def test_cupy_maxpool_equals_reference_ties_included(case, dtype, layout, seed):
    import cupy as cp
    from nnscratch.kernels import gpu
    shape, k, s = case
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=shape).astype(dtype)
    out, arg = gpu.maxpool_forward(on_gpu(x, layout), k, s)
    ref_out, ref_arg = reference.maxpool_forward(x, k, s)
    np.testing.assert_array_equal(cp.asnumpy(out), ref_out)
    np.testing.assert_array_equal(cp.asnumpy(arg), ref_arg)
    g = rng.standard_normal(ref_arg.shape).astype(dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(cp.asnumpy(gpu.maxpool_backward(on_gpu(g, layout), arg, shape, k, s)),
                               reference.maxpool_backward(g, ref_arg, shape, k, s), rtol=tol, atol=tol)
    out, arg = gpu.maxpool_forward(on_gpu(x, layout), k, s, relu=True)     # the ReLU fused in
    ref_out, _ = reference.maxpool_forward(x, k, s, relu=True)
    np.testing.assert_array_equal(cp.asnumpy(out), ref_out)
    np.testing.assert_allclose(cp.asnumpy(gpu.maxpool_backward(on_gpu(g, layout), arg, shape, k, s, out=out)),
                               reference.maxpool_backward(g, ref_arg, shape, k, s, out=ref_out), rtol=tol, atol=tol)


@requires_gpu
@given(st.lists(st.integers(1, 6), min_size=4, max_size=4).map(tuple), DTYPES, LAYOUTS, st.integers(0, 2**32 - 1))
def test_cupy_relu_equals_reference(shape, dtype, layout, seed):
    import cupy as cp
    from nnscratch.kernels import gpu
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    y = gpu.relu_forward(on_gpu(x, layout))
    np.testing.assert_array_equal(cp.asnumpy(y), reference.relu_forward(x))
    np.testing.assert_array_equal(cp.asnumpy(gpu.relu_backward(on_gpu(g, layout), y)),
                                  reference.relu_backward(g, reference.relu_forward(x)))
    xg = on_gpu(x, layout)
    assert gpu.relu_forward(xg, inplace=True).data.ptr == xg.data.ptr
    np.testing.assert_array_equal(cp.asnumpy(xg), reference.relu_forward(x))


@requires_gpu
@given(SHAPES, DTYPES, st.integers(1, 5), st.booleans(), st.integers(0, 2**32 - 1))
def test_cupy_optimizer_updates_equal_reference(shape, dtype, step, first, seed):
    import cupy as cp
    from nnscratch.kernels import gpu
    rng = np.random.default_rng(seed)
    p, g, m = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    v = rng.uniform(0, 1, shape).astype(dtype)
    ref = [a.copy() for a in (p, m, v)]
    reference.adam_update(ref[0], g, ref[1], ref[2], 1e-2, 0.9, 0.999, 1e-8, 0.01, step)
    dev = [cp.asarray(a) for a in (p, m, v)]
    gpu.adam_update(dev[0], cp.asarray(g), dev[1], dev[2], 1e-2, 0.9, 0.999, 1e-8, 0.01, step)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for got, want in zip(dev, ref):
        np.testing.assert_allclose(cp.asnumpy(got), want, rtol=tol, atol=tol)
    ref_p, ref_buf, buf = p.copy(), m.copy(), cp.asarray(m)
    dp = cp.asarray(p)
    reference.sgd_update(ref_p, g, ref_buf, 0.1, 0.9, 0.0, 0.01, True, first)
    gpu.sgd_update(dp, cp.asarray(g), buf, 0.1, 0.9, 0.0, 0.01, True, first)
    np.testing.assert_allclose(cp.asnumpy(dp), ref_p, rtol=tol, atol=tol)
    np.testing.assert_allclose(cp.asnumpy(buf), ref_buf, rtol=tol, atol=tol)


@pytest.fixture(params=["numba", "numpy_below_threshold"])
def numba_bias(request):
    """Runs a bias test on the numba kernel (small arrays normally take NumPy's add, see
    cpu.BIAS_NUMPY_BELOW) and then as the engine runs small arrays."""
    saved = cpu.BIAS_NUMPY_BELOW
    cpu.BIAS_NUMPY_BELOW = 0 if request.param == "numba" else saved
    yield request.param
    cpu.BIAS_NUMPY_BELOW = saved


def _bias_case(n, f, dtype, seed):
    """y (n, f) and b (f,) with NaN, inf and values whose sum is exactly 0 or -0 among them."""
    rng = np.random.default_rng(seed)
    y, b = rng.standard_normal((n, f)).astype(dtype), rng.standard_normal(f).astype(dtype)
    y[rng.random((n, f)) < 0.1] = np.nan
    y[rng.random((n, f)) < 0.05] = -np.inf
    zero = rng.random((n, f)) < 0.1
    y[zero] = -np.broadcast_to(b, (n, f))[zero]                 # y + b == 0 exactly
    return y, b


@pytest.mark.usefixtures("thread_mode")
@given(st.integers(1, 70), st.integers(1, 70), DTYPES, st.booleans(), st.integers(0, 2**32 - 1))
def test_numba_add_bias_equals_reference(numba_bias, n, f, dtype, relu, seed):
    y, b = _bias_case(n, f, dtype, seed)
    expected = reference.add_bias(y.copy(), b, relu=relu)
    got = y.copy()
    assert cpu.add_bias(got, b, relu=relu) is got
    np.testing.assert_array_equal(got, expected)                # NaN where NaN, signed zeros alike
    assert np.array_equal(np.signbit(got), np.signbit(expected))
    strided = np.zeros((n, 2 * f), dtype)
    strided[:, ::2] = y
    np.testing.assert_array_equal(cpu.add_bias(strided[:, ::2], b, relu=relu), expected)   # other layouts: NumPy's


@pytest.mark.usefixtures("thread_mode")
@given(st.integers(1, 70), st.integers(1, 70), DTYPES, st.booleans(), st.sampled_from([None, np.nan, np.inf, -np.inf]),
       st.integers(0, 2**32 - 1))
def test_add_bias_checked_reports_any_non_finite_value_before_the_relu(numba_bias, n, f, dtype, relu, bad, seed):
    rng = np.random.default_rng(seed)
    y, b = rng.standard_normal((n, f)).astype(dtype), rng.standard_normal(f).astype(dtype)
    if bad is not None:                               # one value anywhere; -inf is rectified to 0 by the ReLU
        y[rng.integers(n), rng.integers(f)] = bad
    expected = reference.add_bias(y.copy(), b, relu=relu)
    for twin in (reference, cpu):
        got = y.copy()
        assert twin.add_bias_checked(got, b, relu=relu) is (bad is None)
        np.testing.assert_array_equal(got, expected)


@given(st.integers(1, 20), st.integers(1, 20), DTYPES, st.integers(0, 2**32 - 1))
def test_reference_add_bias_with_relu_is_the_bias_then_relu(n, f, dtype, seed):
    y, b = _bias_case(n, f, dtype, seed)
    np.testing.assert_array_equal(reference.add_bias(y.copy(), b, relu=True),
                                  reference.relu_forward(y + b))


@requires_gpu
def test_cupy_add_bias_equals_reference():
    import cupy as cp
    from nnscratch.kernels import gpu
    for relu in (False, True):
        y, b = _bias_case(37, 5, np.float32, 0)
        np.testing.assert_array_equal(cp.asnumpy(gpu.add_bias(cp.asarray(y), cp.asarray(b), relu=relu)),
                                      reference.add_bias(y.copy(), b, relu=relu))


def _adam_in_dtype(p, g, m, v, lr, beta1, beta2, eps, wd, step):
    """Adam written with every operand in the arrays' dtype, in the numba kernel's order of operations:
    what the kernel must give bit for bit (a float64 intermediate would round differently)."""
    f, tiny = p.dtype.type, np.finfo(p.dtype).tiny
    gi = g + f(wd) * p
    mi = f(beta1) * m + f(1 - beta1) * gi
    vi = f(beta2) * v + f(1 - beta2) * (gi * gi)
    mi[np.abs(mi) < tiny] = 0
    vi[vi < tiny] = 0
    step_size, bias2_sqrt = f(lr / (1 - beta1 ** step)), f(np.sqrt(1 - beta2 ** step))
    return p - step_size * (mi / (np.sqrt(vi) / bias2_sqrt + f(eps))), mi, vi


@pytest.mark.usefixtures("thread_mode")
@given(SHAPES, DTYPES, st.floats(0, 0.1), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_numba_adam_update_equals_reference_and_computes_in_the_arrays_dtype(shape, dtype, wd, step, seed):
    """The fused update equals the reference's (to rounding), and float32 parameters are updated in
    float32 arithmetic, as PyTorch does, not through float64: bit for bit the dtype-faithful oracle."""
    rng = np.random.default_rng(seed)
    p, g, m = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    v = rng.uniform(0, 1, shape).astype(dtype)
    ref = [a.copy() for a in (p, m, v)]
    reference.adam_update(ref[0], g, ref[1], ref[2], 1e-2, 0.9, 0.999, 1e-8, wd, step)
    want = _adam_in_dtype(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, wd, step)
    cpu.adam_update(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, wd, step)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for got, close, exact in zip((p, m, v), ref, want):
        np.testing.assert_allclose(got, close, rtol=tol, atol=tol)
        np.testing.assert_array_equal(got, exact)


@pytest.mark.usefixtures("thread_mode")
@given(SHAPES, st.booleans(), st.booleans(), st.integers(0, 2**32 - 1))
def test_numba_sgd_computes_in_float32(shape, nesterov, first, seed):
    rng = np.random.default_rng(seed)
    p, g, buf = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    f = np.float32
    gi = g + f(0.01) * p
    b = gi if first else f(0.9) * buf + f(1.0) * gi
    want = p - f(0.1) * (gi + f(0.9) * b if nesterov else b)
    cpu.sgd_update(p, g, buf, 0.1, 0.9, 0.0, 0.01, nesterov, first)
    np.testing.assert_array_equal(buf, b)
    np.testing.assert_array_equal(p, want)


# ---- Winograd F(2x2, 3x3) and F(4x4, 3x3) --------------------------------------------------------------

SIZES = st.sampled_from([2, 4])          # the output tile's side m: F(m x m, 3x3)

@st.composite
def winograd_case(draw):
    """(x shape, OC, padding, out_hw): a 3x3, stride-1 convolution, its output map cropped or not."""
    pad = draw(st.integers(0, 2))
    H, W = draw(st.integers(max(1, 3 - 2 * pad), 11)), draw(st.integers(max(1, 3 - 2 * pad), 11))
    OH, OW = H + 2 * pad - 2, W + 2 * pad - 2
    out_hw = (draw(st.integers(1, OH)), draw(st.integers(1, OW))) if draw(st.booleans()) else (OH, OW)
    return (draw(st.integers(1, 3)), draw(st.integers(1, 5)), H, W), draw(st.integers(1, 5)), pad, out_hw


@given(winograd_case(), SIZES, st.integers(0, 2**32 - 1))
def test_reference_winograd_is_the_convolution_and_its_steps_are_adjoint(case, m, seed):
    shape, OC, p, out_hw = case
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal(shape), rng.standard_normal((OC, shape[1], 3, 3)), rng.standard_normal(OC)
    tiles = reference.winograd_tiles(*out_hw, m)
    V, U = reference.winograd_input(x, p, tiles, m=m), reference.winograd_weight(w, m)
    y = reference.winograd_output(V @ U, out_hw, tiles, b)
    expected = naive_conv(x, w, 1, p)[:, :, :out_hw[0], :out_hw[1]] + b[:, None, None]
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    # each backward step is the adjoint of its forward step: <f(a), c> == <a, f*(c)>
    V2, M, G, U2 = (rng.standard_normal(a.shape) for a in (V, V @ U, y, U))
    for lhs, rhs in (((V * V2).sum(), (x * reference.winograd_grad_input(V2, shape, p, tiles)).sum()),
                     ((reference.winograd_output(M, out_hw, tiles) * G).sum(),
                      (M * reference.winograd_grad_output(G, tiles, m=m)).sum()),
                     ((U * U2).sum(), (w * reference.winograd_weight_grad(U2)).sum())):
        assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


@pytest.mark.usefixtures("thread_mode")
@given(winograd_case(), SIZES, DTYPES, LAYOUTS, st.integers(0, 2**32 - 1))
def test_numba_winograd_transforms_equal_reference(case, m, dtype, layout, seed):
    shape, OC, p, out_hw = case
    rng = np.random.default_rng(seed)
    # F(4x4, 3x3)'s transforms multiply by up to 8 and add up to 6 terms a side: more rounding in float32
    tol = (1e-5 if m == 2 else 1e-4) if dtype == np.float32 else 1e-12
    tiles = reference.winograd_tiles(*out_hw, m)
    T, K = shape[0] * tiles[0] * tiles[1], (m + 2) ** 2
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((OC, shape[1], 3, 3)).astype(dtype)
    M, dU = rng.standard_normal((K, T, OC)).astype(dtype), rng.standard_normal((K, shape[1], OC)).astype(dtype)
    dV = rng.standard_normal((K, T, shape[1])).astype(dtype)
    g = rng.standard_normal((shape[0], OC) + tuple(out_hw)).astype(dtype)
    bias = rng.standard_normal(OC).astype(dtype)
    pairs = [(cpu.winograd_input(in_layout(x, layout), p, tiles, m=m), reference.winograd_input(x, p, tiles, m=m)),
             (cpu.winograd_weight(w, m), reference.winograd_weight(w, m)),
             (cpu.winograd_weight_grad(dU), reference.winograd_weight_grad(dU)),
             (cpu.winograd_output(M, out_hw, tiles, bias), reference.winograd_output(M, out_hw, tiles, bias)),
             (cpu.winograd_grad_output(in_layout(g, layout), tiles, m=m),
              reference.winograd_grad_output(g, tiles, m=m)),
             (cpu.winograd_grad_input(dV, shape, p, tiles), reference.winograd_grad_input(dV, shape, p, tiles))]
    for got, expected in pairs:
        assert got.dtype == dtype and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)
    out = np.full((K, T, shape[1]), np.nan, dtype)                   # into a given array, every element
    assert cpu.winograd_input(x, p, tiles, out=out) is out
    np.testing.assert_allclose(out, pairs[0][1], rtol=tol, atol=tol)
    assert cpu.channels_last(pairs[3][0]) or OC == 1                 # outputs are channels-last


@pytest.mark.usefixtures("thread_mode")
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), DTYPES, st.booleans(),
       st.integers(0, 2**32 - 1))
def test_numba_winograd_with_fused_pooling_equals_reference_ties_included(B, TH, TW, OC, dtype, relu, seed):
    rng = np.random.default_rng(seed)
    tiles, T = (TH, TW), B * TH * TW
    # small integers: the outputs are integers too, so windows often tie (the first maximum must win)
    M = rng.integers(-2, 3, size=(16, T, OC)).astype(dtype)
    bias = rng.integers(-1, 2, size=OC).astype(dtype)
    out, arg = cpu.winograd_output_pool(M, tiles, bias, relu=relu)
    ref_out, ref_arg = reference.winograd_output_pool(M, tiles, bias, relu=relu)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(arg, ref_arg)
    assert cpu.channels_last(out) or OC == 1
    # ... and the same bits as the two kernels in turn
    y = cpu.winograd_output(M, (2 * TH, 2 * TW), tiles, bias)
    np.testing.assert_array_equal(out, cpu.maxpool_forward(y, 2, 2, relu=relu)[0])
    g = rng.standard_normal(out.shape).astype(dtype)
    rect = out if relu else None
    got = cpu.winograd_grad_output_pool(g, arg, tiles, rect)
    np.testing.assert_array_equal(got, reference.winograd_grad_output_pool(g, arg, tiles, rect))
    dense = cpu.maxpool_backward(g, arg, y.shape, 2, 2, out=rect)
    np.testing.assert_array_equal(got, cpu.winograd_grad_output(dense, tiles))


@pytest.mark.usefixtures("thread_mode")
@given(winograd_case(), SIZES, DTYPES, st.booleans(), st.integers(0, 2**32 - 1))
def test_winograd_kernels_write_a_block_of_images_into_the_whole_batchs_arrays(case, m, dtype, pool, seed):
    """winograd_input/grad_output(_pool) with ``first_tile``, and the output transforms and
    grad_input with ``out``, on images b0:b1 of a batch: the whole batch's result there, both twins
    (the pooling inside the output transform with F(2x2, 3x3) only)."""
    shape, OC, p, out_hw = case
    m = 2 if pool else m
    rng = np.random.default_rng(seed)
    B, C = shape[:2]
    b0 = int(rng.integers(0, B))
    b1 = int(rng.integers(b0 + 1, B + 1))
    tiles = reference.winograd_tiles(*out_hw, m)
    n, K = tiles[0] * tiles[1], (m + 2) ** 2
    t0, t1 = b0 * n, b1 * n
    x = rng.standard_normal(shape).astype(dtype)
    M = rng.standard_normal((K, B * n, OC)).astype(dtype)
    dV = rng.standard_normal((K, B * n, C)).astype(dtype)
    bias = rng.standard_normal(OC).astype(dtype)
    for k in (cpu, reference):
        V = np.full((K, B * n, C), np.nan, dtype)
        k.winograd_input(x[b0:b1], p, tiles, out=V, first_tile=t0)
        np.testing.assert_array_equal(V[:, t0:t1], k.winograd_input(x, p, tiles, m=m)[:, t0:t1])
        assert np.isnan(V[:, :t0]).all() and np.isnan(V[:, t1:]).all()           # nothing else written
        dx = cpu.empty_nchw(shape, dtype, last=True)
        k.winograd_grad_input(dV[:, t0:t1].copy(), (b1 - b0,) + shape[1:], p, tiles, out=dx[b0:b1])
        np.testing.assert_array_equal(dx[b0:b1], k.winograd_grad_input(dV, shape, p, tiles)[b0:b1])
        if pool:
            TH, TW = tiles
            pooled, arg = k.winograd_output_pool(M, tiles, bias, relu=True)
            out = (cpu.empty_nchw(pooled.shape, dtype, True), cpu.empty_nchw(pooled.shape, np.int32, True))
            k.winograd_output_pool(M[:, t0:t1].copy(), tiles, bias, relu=True, out=(out[0][b0:b1], out[1][b0:b1]))
            np.testing.assert_array_equal(out[0][b0:b1], pooled[b0:b1])
            np.testing.assert_array_equal(out[1][b0:b1], arg[b0:b1])
            g = rng.standard_normal(pooled.shape).astype(dtype)
            whole = k.winograd_grad_output_pool(g, arg, tiles, pooled)
            dM = np.full(whole.shape, np.nan, dtype)
            k.winograd_grad_output_pool(g[b0:b1], arg[b0:b1], tiles, pooled[b0:b1], out=dM, first_tile=t0)
        else:
            y = k.winograd_output(M, out_hw, tiles, bias)
            out = cpu.empty_nchw(y.shape, dtype, True)
            k.winograd_output(M[:, t0:t1].copy(), out_hw, tiles, bias, out=out[b0:b1])
            np.testing.assert_array_equal(out[b0:b1], y[b0:b1])
            g = rng.standard_normal(y.shape).astype(dtype)
            whole = k.winograd_grad_output(g, tiles, m=m)
            dM = np.full(whole.shape, np.nan, dtype)
            k.winograd_grad_output(g[b0:b1], tiles, out=dM, first_tile=t0)
        np.testing.assert_array_equal(dM[:, t0:t1], whole[:, t0:t1])
        assert np.isnan(dM[:, :t0]).all() and np.isnan(dM[:, t1:]).all()
    with pytest.raises(ValueError, match="room for tiles"):
        cpu.winograd_input(x, p, tiles, out=np.empty((K, B * n, C), dtype), first_tile=1)
