"""Matrix products on the GPU through cuBLAS, called directly (ctypes) on CuPy's handle and stream.

Why not ``cupy.matmul``: CuPy refuses any cuBLAS call while a stream is being captured into a
CUDA graph ("calling cuBLAS API during stream capture is currently unsupported"), and the training
step's graph (``step.py``) is mostly matrix products. cuBLAS itself allows capture when the handle
has a workspace of its own, so nothing is allocated while recording; this module gives it one.
The same call runs in ordinary steps, so graph replays and op-by-op steps compute alike.

Row-major C (M, N) = A (M, K) @ B (K, N) is, to column-major cuBLAS, C^T = B^T A^T: a row-major
matrix read column-major is its transpose, so both operands go in swapped and without copies, as
long as each is row- or column-contiguous (any leading dimension); other layouts are copied first.
If the library cannot be found, ``available()`` is False and callers use ``cupy.matmul``.
"""
from __future__ import annotations

import ctypes
import functools

from ..backend import _cupy

_OP_N, _OP_T = 0, 1
_POINTER_MODE_HOST = 0
WORKSPACE_BYTES = 32 << 20          # NVIDIA's suggestion for Hopper; 4 MiB would do for older chips


def _library_path() -> str | None:
    """The libcublas this process loaded (CuPy loads it with its first handle)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "libcublas.so" in path and "libcublasLt" not in path:
                    return path
    except OSError:
        pass
    import ctypes.util
    return ctypes.util.find_library("cublas")


class _Cublas:
    def __init__(self):
        cp = _cupy()
        device = cp.cuda.device
        # creating the handle loads the library
        self.handle = device.get_cublas_handle() if hasattr(device, "get_cublas_handle") else \
            cp.cuda.Device().cublas_handle
        path = _library_path()
        if path is None:
            raise OSError("libcublas not found")
        lib = ctypes.CDLL(path)
        vp, i = ctypes.c_void_p, ctypes.c_int
        self.set_stream = lib.cublasSetStream_v2
        self.set_stream.argtypes = [vp, vp]
        self.set_workspace = lib.cublasSetWorkspace_v2
        self.set_workspace.argtypes = [vp, vp, ctypes.c_size_t]
        self.set_pointer_mode = lib.cublasSetPointerMode_v2
        self.set_pointer_mode.argtypes = [vp, i]
        self.gemm = {}
        for dtype, name, scalar in (("float32", "cublasSgemm_v2", ctypes.c_float),
                                    ("float64", "cublasDgemm_v2", ctypes.c_double)):
            fn = getattr(lib, name)
            fn.argtypes = [vp, i, i, i, i, i, vp, vp, i, vp, i, vp, vp, i]
            self.gemm[dtype] = (fn, scalar(1.0), scalar(0.0))
        self.workspace = cp.empty(WORKSPACE_BYTES, dtype=cp.uint8)

    def prepare(self, stream_ptr: int):
        # cublasSetStream resets the workspace, and CuPy's own calls set the stream and pointer
        # mode too: set all three before every product
        _check(self.set_stream(self.handle, stream_ptr), "cublasSetStream")
        _check(self.set_workspace(self.handle, self.workspace.data.ptr, WORKSPACE_BYTES), "cublasSetWorkspace")
        _check(self.set_pointer_mode(self.handle, _POINTER_MODE_HOST), "cublasSetPointerMode")


def _check(status: int, what: str):
    if status != 0:
        raise RuntimeError(f"{what} failed with cuBLAS status {status}")


@functools.lru_cache(maxsize=None)
def _for_device(device_id: int):
    try:
        return _Cublas()
    except (OSError, AttributeError):
        return None


def _library():
    return _for_device(_cupy().cuda.Device().id)


def available() -> bool:
    return _library() is not None


def _operand(x):
    """(array, op, leading dimension) of a 2-D operand for the swapped product: op N for a row-major
    x, op T for a column-major one; anything else is copied to row-major first."""
    rows, cols = x.shape
    s0, s1 = (s // x.itemsize for s in x.strides)
    if (cols == 1 or s1 == 1) and (rows == 1 or s0 >= cols):
        return x, _OP_N, s0 if rows > 1 else cols
    if (rows == 1 or s0 == 1) and (cols == 1 or s1 >= rows):
        return x, _OP_T, s1 if cols > 1 else rows
    return _cupy().ascontiguousarray(x), _OP_N, cols


def matmul(a, b, out=None):
    """a (M, K) or (K,), b (K, N) -> a @ b, (M, N) or (N,), float32 or float64; into ``out`` if given."""
    cp = _cupy()
    lib = _library()
    if (lib is None or a.dtype != b.dtype or a.dtype.name not in lib.gemm or a.ndim not in (1, 2) or b.ndim != 2
            or a.shape[-1] != b.shape[0] or 0 in a.shape or 0 in b.shape):
        return cp.matmul(a, b, out=out)
    A = a.reshape(1, -1) if a.ndim == 1 else a
    (M, K), N = A.shape, b.shape[1]
    shape = (N,) if a.ndim == 1 else (M, N)
    direct = (out is not None and out.shape == shape and out.dtype == a.dtype and out.flags.c_contiguous)
    C = out.reshape(M, N) if direct else cp.empty((M, N), dtype=a.dtype)
    A, op_a, lda = _operand(A)
    B, op_b, ldb = _operand(b)
    fn, one, zero = lib.gemm[a.dtype.name]
    lib.prepare(cp.cuda.get_current_stream().ptr)
    _check(fn(lib.handle, op_b, op_a, N, M, K, ctypes.byref(one), B.data.ptr, ldb, A.data.ptr, lda,
              ctypes.byref(zero), C.data.ptr, N), "cublas gemm")
    if direct:
        return out
    result = C.reshape(shape)
    if out is not None:
        out[...] = result
        return out
    return result
