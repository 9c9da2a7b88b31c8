"""06. SGD, SGD with momentum and Adam on a 2-D loss surface, their paths drawn.

    python examples/06_optimizers.py [--steps 150]

The surface f(a, b) = a^2 / 20 + b^2 is a long narrow valley: steep across, flat
along. Plain SGD must keep its step small for the steep direction and so crawls
along the flat one; momentum accumulates the consistent downhill push; Adam divides
each coordinate's step by its recent gradient size, so both directions move at a
similar pace from the very first step (the bias correction 1 / (1 - beta^t) makes the
first steps full-sized). The same ns.SGD and ns.Adam that train the networks do it
here, on one 2-vector Parameter. Writes examples/out/06_optimizer_paths.png.
"""
import matplotlib.pyplot as plt
import numpy as np

import nnscratch as ns
from _common import figure_path, parser


def f_and_grad(w):
    a, b = w
    return a * a / 20 + b * b, np.array([a / 10, 2 * b])


def path(make_optimizer, steps, start=(-9.0, 2.0)):
    p = ns.Parameter(np.array(start))
    opt = make_optimizer([p])
    points = [p.data.copy()]
    for _ in range(steps):
        p.grad[...] = f_and_grad(p.data)[1]
        opt.step()
        points.append(p.data.copy())
    return np.array(points)


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--steps", type=int, default=150, help="optimizer steps per method")
    args = ap.parse_args(argv)
    steps = 40 if args.quick else args.steps
    runs = {"SGD lr 0.4": path(lambda ps: ns.SGD(ps, lr=0.4), steps),
            "SGD + momentum 0.9, lr 0.05": path(lambda ps: ns.SGD(ps, lr=0.05, momentum=0.9), steps),
            "Adam lr 0.5": path(lambda ps: ns.Adam(ps, lr=0.5), steps)}
    a, b = np.meshgrid(np.linspace(-10, 2, 200), np.linspace(-3, 3, 200))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.contour(a, b, a * a / 20 + b * b, levels=np.geomspace(0.01, 10, 12), cmap="Greys", linewidths=0.7)
    for name, pts in runs.items():
        final = f_and_grad(pts[-1])[0]
        ax.plot(pts[:, 0], pts[:, 1], ".-", ms=3, lw=1, label=f"{name}: f = {final:.2e} after {steps}")
        print(f"{name:30s} ends at ({pts[-1, 0]:+.4f}, {pts[-1, 1]:+.4f}), f = {final:.3e}")
    ax.plot(0, 0, "k*", ms=12)
    ax.set_xlabel("a (flat direction)")
    ax.set_ylabel("b (steep direction)")
    ax.set_title("Optimizer paths on f(a, b) = a^2/20 + b^2")
    ax.legend(fontsize=8, loc="lower right")
    out = figure_path("06_optimizer_paths.png")
    fig.savefig(out, dpi=120, bbox_inches="tight")
    print(f"paths drawn in {out}")
    return {k: f_and_grad(v[-1])[0] for k, v in runs.items()}


if __name__ == "__main__":
    main()
