"""04. Max-pooling forward and backward: why the gradient goes only to the argmax.

    python examples/04_maxpool.py

Forward, each 2x2 window keeps its largest value. Nudging any other value in the
window does not change the output at all, so its derivative is zero; nudging the
winner changes the output one for one. So backward() sends each window's gradient
to the position that won it, and zero everywhere else. Writes examples/out/04_maxpool.png.
"""
import matplotlib.pyplot as plt
import numpy as np

import nnscratch as ns
from _common import figure_path, parser


def main(argv=None):
    parser(__doc__).parse_args(argv)
    x = np.array([[[[1.0, 3.0, 2.0, 0.0],
                    [4.0, 2.0, 1.0, 5.0],
                    [0.0, 1.0, 7.0, 2.0],
                    [6.0, 2.0, 3.0, 1.0]]]])
    pool = ns.MaxPool2d(2)
    y = pool(x)
    g = np.array([[[[10.0, 20.0], [30.0, 40.0]]]])
    dx = pool.backward(g)
    print("input:\n", x[0, 0], "\noutput (max of each 2x2 window):\n", y[0, 0])
    print("gradient arriving at the output:\n", g[0, 0], "\ngradient sent back to the input:\n", dx[0, 0])
    assert dx.sum() == g.sum() and np.count_nonzero(dx) == 4

    # numerically: nudge each input by +-eps and watch sum(y * g) change
    print(ns.gradcheck(pool, x + np.random.default_rng(0).uniform(0, 0.01, x.shape), mode="full"))

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, data, title in ((axes[0], x[0, 0], "input (winners boxed)"), (axes[1], y[0, 0], "output"),
                            (axes[2], dx[0, 0], "input gradient")):
        ax.imshow(data, cmap="Blues")
        for (i, j), v in np.ndenumerate(data):
            ax.text(j, i, f"{v:g}", ha="center", va="center")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    for (i, j) in zip(*np.nonzero(dx[0, 0])):
        axes[0].add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
    path = figure_path("04_maxpool.png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"routing drawn in {path}")
    return dx


if __name__ == "__main__":
    main()
