"""11. Batch normalization's backward pass, derived by hand through its computation graph.

    python examples/11_batch_norm.py

For one channel with n values x_i (a batch of n samples; in a BatchNorm2d, every pixel of
every image), batch norm computes

    mean = (1/n) sum x_i          var = (1/n) sum (x_i - mean)^2          s = 1 / sqrt(var + eps)
    xhat_i = (x_i - mean) s       y_i = w xhat_i + b

Unlike every layer before it, each output depends on *every* input of the channel, through
mean and var, so its backward pass is not elementwise. The chain rule, node by node from the
end of the graph (d = dL/dxhat_i = w g_i, with g = dL/dy):

    dL/dvar  = sum_i d_i (x_i - mean) * (-1/2) (var + eps)^(-3/2)
    dL/dmean = sum_i d_i (-s) + dL/dvar * (1/n) sum_i -2 (x_i - mean)      (the last sum is 0)
    dL/dx_i  = d_i s + dL/dvar * 2 (x_i - mean) / n + dL/dmean / n

which simplifies to the one line ns.BatchNorm2d uses:

    dL/dx_i  = (s / n) (n d_i - sum_j d_j - xhat_i sum_j d_j xhat_j)

The script computes the graph version with loops, checks it against that line, against
ns.BatchNorm1d and against gradcheck, and draws what the normalisation does to a channel.
Writes examples/out/11_batch_norm.png.
"""
import matplotlib.pyplot as plt
import numpy as np

import nnscratch as ns
from _common import figure_path, parser


def by_the_graph(x, w, b, g, eps):
    """Forward and backward of one channel, x: (n,), node by node."""
    n = len(x)
    mean = sum(x) / n
    var = sum((xi - mean) ** 2 for xi in x) / n
    s = 1 / np.sqrt(var + eps)
    xhat = [(xi - mean) * s for xi in x]
    y = [w * h + b for h in xhat]
    d = [w * gi for gi in g]                                              # dL/dxhat
    dvar = sum(di * (xi - mean) for di, xi in zip(d, x)) * -0.5 * (var + eps) ** -1.5
    dmean = sum(-di * s for di in d) + dvar * sum(-2 * (xi - mean) for xi in x) / n
    dx = [di * s + dvar * 2 * (xi - mean) / n + dmean / n for di, xi in zip(d, x)]
    dw = sum(gi * h for gi, h in zip(g, xhat))
    db = sum(g)
    return np.array(y), np.array(dx), dw, db


def main(argv=None):
    parser(__doc__).parse_args(argv)
    rng = np.random.default_rng(0)
    B, C, eps = 6, 3, 1e-5
    x = rng.standard_normal((B, C)) * [1.0, 5.0, 0.1] + [0.0, 3.0, -2.0]   # channels on different scales
    g = rng.standard_normal((B, C))
    bn = ns.BatchNorm1d(C, dtype=np.float64)
    bn.weight.data[...] = [1.5, 0.5, -1.0]
    bn.bias.data[...] = [0.0, 1.0, 0.2]
    y, dx = bn(x), bn.backward(g)

    worst = 0.0
    for c in range(C):
        y_c, dx_c, dw_c, db_c = by_the_graph(x[:, c], bn.weight.data[c], bn.bias.data[c], g[:, c], eps)
        # the one-line form, from the same quantities
        xhat = (x[:, c] - x[:, c].mean()) / np.sqrt(x[:, c].var() + eps)
        d = bn.weight.data[c] * g[:, c]
        compact = (d * B - d.sum() - xhat * (d * xhat).sum()) / (B * np.sqrt(x[:, c].var() + eps))
        errors = [np.abs(y_c - y[:, c]).max(), np.abs(dx_c - dx[:, c]).max(), np.abs(compact - dx_c).max(),
                  abs(dw_c - bn.weight.grad[c]), abs(db_c - bn.bias.grad[c])]
        print(f"channel {c}: mean {x[:, c].mean():+.3f}, std {x[:, c].std():.3f}; |graph - layer|: y "
              f"{errors[0]:.1e}, dx {errors[1]:.1e}, dw {errors[3]:.1e}, db {errors[4]:.1e}; "
              f"|graph - one line| {errors[2]:.1e}")
        worst = max(worst, *errors)
    assert worst < 1e-10
    print("the gradient sums to zero over each channel (shifting every x_i alike changes nothing):",
          np.abs(dx.sum(axis=0)).max() < 1e-12)

    result = ns.gradcheck(ns.BatchNorm1d(C, dtype=np.float64), x, mode="full")
    print(result)
    assert result.ok

    # evaluation mode: the running statistics stand in for the batch's, so each sample stands alone
    bn.eval()
    one = bn(x[:1])
    expected = (x[:1] - bn.running_mean.data) / np.sqrt(bn.running_var.data + eps) * bn.weight.data + bn.bias.data
    print("eval mode, one sample, from the running statistics: max error", np.abs(one - expected).max())

    # what the normalisation does to a channel: any scale and offset in, mean 0 and variance 1 out
    wide = rng.standard_normal((4096, 1)) * 4 + 7
    out = ns.BatchNorm1d(1, dtype=np.float64)(wide)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(wide[:, 0], bins=60, alpha=0.6, label=f"x: mean {wide.mean():.2f}, std {wide.std():.2f}")
    ax.hist(out[:, 0], bins=60, alpha=0.6, label=f"xhat: mean {out.mean():.2f}, std {out.std():.2f}")
    ax.set_xlabel("value")
    ax.set_ylabel("count")
    ax.set_title("One channel before and after batch normalisation (weight 1, bias 0)")
    ax.legend()
    path = figure_path("11_batch_norm.png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"drawn in {path}")
    return worst


if __name__ == "__main__":
    main()
