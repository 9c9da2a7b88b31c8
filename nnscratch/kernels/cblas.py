"""NumPy's own BLAS, called from numba kernels: a stack of matrix products inside a compiled loop.

A part of a split batch runs a Winograd convolution a block of images at a time (``winograd_in_blocks``):
per block a transform, 36 products, an inverse transform, each a call from Python that gives the
interpreter lock back and takes it again, while the other part's thread wants it too. ``batched``
here makes the products callable from a numba kernel, so that the whole block loop is one call
(``kernels/winograd_blocks.py``).

The products must be NumPy's to the bit: ``np.matmul`` on float32 stacks calls ``cblas_sgemm`` of the
OpenBLAS that NumPy's wheels bundle (``numpy.libs/libscipy_openblas64_*.so``, symbols with the
``scipy_`` prefix and the 64-bit-integer suffix ``64_``), once per matrix of the stack, with a matrix's
transposition and leading dimension read from its strides; ``gemm`` below makes the same call. The
symbol is registered with LLVM by name (``llvmlite.binding.add_symbol``), so the kernels that call it
cache to disk like the others. ``AVAILABLE`` is False when NumPy uses another BLAS (a conda build
with MKL, Accelerate, a 32-bit-integer OpenBLAS): the callers then run their Python loops.
"""
from __future__ import annotations

import ctypes
import glob
import os

import numpy as np
from numba import njit, types

SYMBOL = "scipy_cblas_sgemm64_"
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112          # CBLAS's enums


def _library():
    """The path of the OpenBLAS NumPy's wheel bundles, or None."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:               # an older or unusual NumPy: no way to tell what it links
        return None
    if blas.get("name") != "scipy-openblas" or "USE64BITINT" not in blas.get("openblas configuration", ""):
        return None
    found = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "libscipy_openblas64_*.so"))
    return found[0] if len(found) == 1 else None


def _register() -> bool:
    path = _library()
    if path is None:
        return False
    try:
        address = ctypes.cast(getattr(ctypes.CDLL(path), SYMBOL), ctypes.c_void_p).value
    except (OSError, AttributeError):
        return False
    import llvmlite.binding
    llvmlite.binding.add_symbol(SYMBOL, address)
    return True


AVAILABLE = _register()

# cblas_sgemm(order, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc), 64-bit integers;
# the pointers pass as integers (the same registers in the x86-64 and AArch64 calling conventions)
_sgemm = types.ExternalFunction(SYMBOL, types.void(
    types.int32, types.int32, types.int32, types.int64, types.int64, types.int64, types.float32,
    types.intp, types.int64, types.intp, types.int64, types.float32, types.intp, types.int64))


@njit(nogil=True, cache=True, inline="always")
def _operand(a):
    """(transposition, leading dimension) of a 2-D float32 matrix as NumPy's matmul passes it: as it
    is when its rows are contiguous, else transposed (its columns contiguous)."""
    s0, s1 = a.strides
    if s1 == 4:
        return NO_TRANS, s0 // 4
    return TRANS, s1 // 4


@njit(nogil=True, cache=True)
def gemm(a, b, c):
    """c = a @ b for float32 matrices a (M, K), b (K, N), c (M, N) with unit stride in one axis each
    (c in its rows), M, K and N at least 2: the call np.matmul makes (for a single row or column, or
    K = 1, it may call other routines, which round otherwise)."""
    ta, lda = _operand(a)
    tb, ldb = _operand(b)
    _sgemm(ROW_MAJOR, ta, tb, a.shape[0], b.shape[1], a.shape[1], np.float32(1.0), a.ctypes.data, lda,
           b.ctypes.data, ldb, np.float32(0.0), c.ctypes.data, c.strides[0] // 4)


@njit(nogil=True, cache=True)
def batched(a, b, c):
    """c[k] = a[k] @ b[k] for every k: np.matmul(a, b, out=c) on (K, M, N) stacks, as ``gemm``."""
    for k in range(a.shape[0]):
        gemm(a[k], b[k], c[k])
