"""The planner's rules, each a switch: on by default, off to see what it is worth.

    with ns.fast.switched(winograd=False):       # within this block only
        ...
    ns.fast.set_rules(relu_into_pool=False)    # from now on

Every rule computes what the textbook layers compute: the same bits, or (where the sums run in
another order: ``crop_before_pool``, ``winograd``, ``winograd_4x4``, ``split_batch``,
``batchnorm_kernels``, ``winograd_weight_grad_in_blocks``; and the block rules, ``winograd_in_blocks``
and ``im2col_in_blocks``, for shapes whose blocks BLAS multiplies with other kernels than the whole
batch) the same values up to rounding.
Each is tested equal to the layers it replaces (``tests/test_fast.py``).
"""
from __future__ import annotations

import contextlib

import numpy as np

RULES = {
    # ReLU then MaxPool2d as one pooling kernel that rectifies what it outputs: ReLU is monotonic, so it
    # does not change which element wins a window, and a window whose maximum is <= 0 passes no gradient
    # either way. ReLU costs no pass of its own and touches a quarter of the values. Same bits.
    "relu_into_pool": True,
    # Linear then ReLU: the bias and the ReLU in one pass over the output. Same bits.
    "relu_into_linear": True,
    # A Conv2d read by a MaxPool2d whose windows leave its last rows or columns out (floor pooling of an
    # odd map) computes only the pixels the windows read.
    "crop_before_pool": True,
    # A 3x3, stride-1 Conv2d of at least WINOGRAD_MIN_CHANNELS input channels on the CPU (numba kernels)
    # runs as Winograd F(2x2, 3x3): 2.25x fewer multiplications than im2col's product.
    "winograd": True,
    # ... as F(4x4, 3x3) when no pooling runs inside its output transform: 4x fewer multiplications than
    # im2col's and 1.78x fewer transformed values than F(2x2, 3x3)'s, rounded otherwise (G's sixths).
    "winograd_4x4": True,
    # ... and a 2x2, stride-2 MaxPool2d (with the ReLU before it) that reads such a convolution runs
    # inside its output transform: each 2x2 tile of outputs is one window. Same bits as Winograd alone.
    "pool_into_winograd": True,
    # A ReLU overwrites its input when the layer before created it and nobody else holds it. Same bits.
    "relu_in_place": True,
    # A Residual then a ReLU (a ResNet block's end): the sum and the ReLU in one pass over the body's
    # output (when its plan holds it alone), and the input gradient's sum over the masked gradient,
    # which both branches are done with: no new map either way. Same bits.
    "residual_relu": True,
    # When the first layer with parameters is a Linear with a bias (after Flatten only), its bias pass
    # reports non-finite values, and the input is read for NaN and inf only then. Same bits.
    "input_check_in_bias": True,
    # Large work arrays (im2col's columns, Winograd's transforms) are kept from one step to the next
    # instead of being allocated anew. Same bits.
    "kept_buffers": True,
    # BatchNorm2d on the CPU (numba kernels) through batch-norm kernels that read a channels-last map
    # row by row: in training the statistics summed in the map's dtype over fixed chunks of rows and the
    # chunks' sums added in float64, two passes each way where NumPy's reductions over the (B, H, W)
    # axes make many; in eval mode one scale-and-shift pass.
    "batchnorm_kernels": True,
    # A Winograd convolution run on one core (a part of a split batch) takes its images a block at a
    # time: each block's transform, products and inverse transform in turn, while the block's
    # transformed tiles (16x the block's pixels) are still in the core's cache. The weight gradient's
    # products sum over the whole batch (but see the next rule). Float32 only; the same bits for the ResNet's layers,
    # for other shapes the same up to the products' rounding (see BLOCKED_DTYPES below).
    "winograd_in_blocks": True,
    # ... and in backward such a convolution sums its weight gradient over the blocks: each block's
    # output gradient (its transform dM, the layer's largest array) multiplied into the weight gradient
    # while it is in the cache, never written whole and read back. The same values up to float32
    # rounding (the sum over the tiles in another order).
    "winograd_weight_grad_in_blocks": True,
    # ... and such a convolution's block loop (F(4x4, 3x3), no pooling inside; in backward with its weight
    # gradient summed over the blocks) runs as one compiled call instead of four or five kernel calls a
    # block from Python: the same kernels and the products through NumPy's own BLAS (kernels/cblas.py),
    # so the same bits; fewer hand-overs of the interpreter lock between the parts' threads. Where NumPy
    # links another BLAS the loop stays in Python.
    "winograd_blocks_compiled": True,
    # Likewise an im2col convolution on one core whose columns pass IM2COL_BLOCKS_ABOVE: im2col and the
    # product a block of images at a time (the columns still kept whole for the weight gradient), and
    # in backward each block's input-gradient columns handed to col2im while in the cache. As
    # winograd_in_blocks: float32 only, the ResNet's bits, other shapes to the products' rounding.
    "im2col_in_blocks": True,
    # In eval mode, a Conv2d and the BatchNorm2d after it as one convolution whose weights and bias
    # have the batch norm folded in (its statistics are fixed then): no batch-norm pass.
    "batchnorm_into_conv": True,
    # ... and the ReLU after such a BatchNorm2d in its last forward pass (and its mask in the backward
    # pass's). Same bits as the kernels then ReLU.
    "relu_into_batchnorm": True,
    # A batch norm right after an F(4x4) Winograd convolution (no bias, no pooling inside) hands its input
    # gradient to the convolution as its terms: the output gradient's transform computes it tile by tile
    # as batch norm's second backward pass would, so that map is never written and read back. Same bits.
    "batchnorm_grad_into_winograd": True,
    # On the CPU, glibc's malloc is told (once per process, when the first plan is built) to keep freed
    # blocks up to 32 MB for reuse instead of handing them back to the kernel: the next step's maps
    # then cost no page faults (nnscratch/memory.py; NNSCRATCH_KEEP_MEMORY=0 says no). Same bits.
    "keep_freed_memory": True,
    # A CPU batch of a convolutional network is split into one part per core, each run by its own replica
    # of the model on one thread (see nnscratch/parallel.py): in training (batch-norm steps pool their
    # statistics across the parts; the gradients are summed) and in inference (each image is computed
    # alone: the CNN's and the ResNet's outputs have the same bits whole and split in the tests).
    "split_batch": True,
}
WINOGRAD_MIN_CHANNELS = 16    # fewer input channels (an RGB image): the transforms cost more than they save
# winograd_in_blocks: a block's transformed input and output tiles, K * tiles * (C + OC) values, take
# at most this many bytes (at least one image a block), and blocks are used only when the whole
# batch's take more than WINOGRAD_BLOCKS_ABOVE: below, the calls a block makes cost more than the
# cache saves. Both chosen by measurement (benches/NOTES.md, "The ResNet", items 9, 12 and 16: 4 MB
# blocks until the weight gradient was summed in blocks, 2 MB since)
WINOGRAD_BLOCK_BYTES = 2 << 20
WINOGRAD_BLOCKS_ABOVE = 12 << 20     # the ResNet's stage 2 (18.9 MB a part) in blocks, stage 3 (9.4) whole

# im2col_in_blocks: a block's columns take about this many bytes; blocks only when the batch's columns
# pass IM2COL_BLOCKS_ABOVE
IM2COL_BLOCK_BYTES = 2 << 20
IM2COL_BLOCKS_ABOVE = 4 << 20
# Both block rules give the whole batch's bits where a block's products run through the same BLAS
# kernels as the batch's. OpenBLAS picks kernels by a product's size (on this CPU, one thread: its
# "direct" kernel below about 7 million multiply-adds, for some shapes its small-matrix kernels, else
# the packed ones), so for some shapes a block's rows round otherwise than the same rows of the batch:
# hypothesis found Winograd layers of 24-128 channels whose blocks differ in the last bit. The
# ResNet's layers keep their bits (``tests/test_fast.py`` checks its shapes exactly, random shapes to
# rounding). Its double-precision kernels round a product's last rows otherwise too (im2col blocks of
# 507 rows against the batch's 1,014), so only float32, training's dtype, runs in blocks: float64
# results never depend on the block sizes
BLOCKED_DTYPES = (np.dtype(np.float32),)

_version = [0]                # bumped on every change, so that cached plans made under other rules are not used


def on(name: str) -> bool:
    return RULES[name]


def version() -> int:
    return _version[0]


def set_rules(**switches):
    """Switch rules on (True) or off (False) by name; see ``RULES``."""
    unknown = sorted(set(switches) - set(RULES))
    if unknown:
        raise ValueError(f"set_rules: unknown rule(s) {unknown}; the rules are {sorted(RULES)}")
    RULES.update({name: bool(value) for name, value in switches.items()})
    _version[0] += 1


@contextlib.contextmanager
def switched(**switches):
    """Within this block the named rules are switched as given; afterwards as they were."""
    before = dict(RULES)
    set_rules(**switches)
    try:
        yield
    finally:
        RULES.clear()
        RULES.update(before)
        _version[0] += 1


def all_off() -> dict:
    """Every rule off, as keyword arguments for ``switched``/``set_rules``."""
    return {name: False for name in RULES}
