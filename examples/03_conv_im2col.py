"""03. Convolution as im2col plus one matrix product, forward and backward, against naive loops.

    python examples/03_conv_im2col.py

A 3x3 convolution slides a small weight over the image and takes a dot product at
every position. im2col copies each position's 3x3xC patch into one row of a
matrix, so that all the dot products become one matrix product:

    x: (B, C, H, W) --im2col--> cols: (B*OH*OW, 3*3*C) ;  y = cols @ W^T: (B*OH*OW, OC)

The copy costs memory (each pixel appears in up to nine rows) but the product runs
at the speed of the BLAS library. The backward pass is that product's backward
plus col2im, im2col's adjoint, which adds each patch's gradient back onto the
pixels it was copied from:

    g = dL/dy as (B*OH*OW, OC) rows:  dW = g^T cols,  db = column sums of g,
                                      dcols = g W,  dx = col2im(dcols)

Both passes are checked against loops written from the definition, against the
Conv2d layer, and numerically by gradcheck. Writes examples/out/03_im2col.png.
"""
import matplotlib.pyplot as plt
import numpy as np

import nnscratch as ns
from _common import figure_path, parser
from nnscratch.kernels import reference


def naive_conv(x, w, b, padding):
    """The definition: four nested loops over outputs, a sum over each window."""
    B, C, H, W = x.shape
    OC, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    OH, OW = H + 2 * padding - kh + 1, W + 2 * padding - kw + 1
    y = np.zeros((B, OC, OH, OW))
    for n in range(B):
        for o in range(OC):
            for i in range(OH):
                for j in range(OW):
                    y[n, o, i, j] = (xp[n, :, i:i + kh, j:j + kw] * w[o]).sum() + b[o]
    return y


def naive_conv_backward(x, w, g, padding):
    """The chain rule on the definition: output (n, o, i, j) received w[o] times its window, so its
    gradient g[n, o, i, j] flows back to the window's pixels (times w[o]) and to w[o] (times the
    window). Returns dW, db, dx."""
    B, C, H, W = x.shape
    OC, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for n in range(B):
        for o in range(OC):
            for i in range(g.shape[2]):
                for j in range(g.shape[3]):
                    dw[o] += g[n, o, i, j] * xp[n, :, i:i + kh, j:j + kw]
                    dxp[n, :, i:i + kh, j:j + kw] += g[n, o, i, j] * w[o]
    dx = dxp[:, :, padding:padding + H, padding:padding + W]
    return dw, g.sum(axis=(0, 2, 3)), dx


def main(argv=None):
    parser(__doc__).parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 6))
    conv = ns.Conv2d(3, 4, 3, padding=1, rng=1).to(dtype=np.float64)
    conv.bias.data[...] = rng.standard_normal(4)

    cols = reference.im2col(x, 3, 3, 1, 1)
    print(f"x {x.shape} -> cols {cols.shape}: {cols.shape[0]} patches (2 images x 6 x 6 positions), "
          f"each 3*3*3 = {cols.shape[1]} numbers")
    w = conv.weight.data.transpose(0, 2, 3, 1).reshape(4, -1)       # the weight in the patch's (i, j, c) order
    y_im2col = (cols @ w.T + conv.bias.data).reshape(2, 6, 6, 4).transpose(0, 3, 1, 2)
    y_naive = naive_conv(x, conv.weight.data, conv.bias.data, 1)
    y_layer = conv(x)
    print("max |im2col - naive| =", np.abs(y_im2col - y_naive).max())
    print("max |Conv2d - naive| =", np.abs(y_layer - y_naive).max())
    assert np.allclose(y_im2col, y_naive) and np.allclose(y_layer, y_naive)

    # backward: suppose the loss is L = sum(y * g) for a fixed g, so that dL/dy = g
    g = rng.standard_normal(y_layer.shape)
    g_rows = g.transpose(0, 2, 3, 1).reshape(-1, 4)                  # (B*OH*OW, OC), the rows of cols
    dW_im2col = (g_rows.T @ cols).reshape(4, 3, 3, 3).transpose(0, 3, 1, 2)   # back to (OC, C, kh, kw)
    db_im2col = g_rows.sum(axis=0)
    dx_im2col = reference.col2im(g_rows @ w, x.shape, 3, 3, 1, 1)
    dW_naive, db_naive, dx_naive = naive_conv_backward(x, conv.weight.data, g, 1)
    dx_layer = conv.backward(g)
    backward_error = 0.0
    for name, by_im2col, by_layer, by_hand in (("dL/dW", dW_im2col, conv.weight.grad, dW_naive),
                                               ("dL/db", db_im2col, conv.bias.grad, db_naive),
                                               ("dL/dx", dx_im2col, dx_layer, dx_naive)):
        print(f"{name}: max |im2col - naive| = {np.abs(by_im2col - by_hand).max():.1e}, "
              f"max |Conv2d.backward - naive| = {np.abs(by_layer - by_hand).max():.1e}")
        assert np.allclose(by_im2col, by_hand) and np.allclose(by_layer, by_hand)
        backward_error = max(backward_error, np.abs(by_layer - by_hand).max())

    # and numerically: central differences of the forward pass, for every element of x, W and b
    result = ns.gradcheck(conv, x, mode="full")
    print(result)
    assert result.ok

    # draw one channel of an image, and its column matrix
    img = np.arange(1, 26, dtype=np.float64).reshape(1, 1, 5, 5)
    small = reference.im2col(img, 3, 3, 1, 1)                        # (25, 9)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), gridspec_kw={"width_ratios": [1, 1.1]})
    axes[0].imshow(img[0, 0], cmap="viridis")
    for (i, j), v in np.ndenumerate(img[0, 0]):
        axes[0].text(j, i, int(v), ha="center", va="center", color="w")
    axes[0].set_title("a 5x5 image (padding 1 adds a ring of zeros)")
    axes[1].imshow(small, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(small):
        axes[1].text(j, i, int(v), ha="center", va="center", color="w", fontsize=6)
    axes[1].set_xlabel("position in the 3x3 patch (row-major)")
    axes[1].set_ylabel("output pixel (one row per patch)")
    axes[1].set_title("im2col: 25 patches x 9 values")
    path = figure_path("03_im2col.png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"column matrix drawn in {path}")
    return float(max(np.abs(y_layer - y_naive).max(), backward_error))


if __name__ == "__main__":
    main()
