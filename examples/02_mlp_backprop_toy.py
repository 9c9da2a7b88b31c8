"""02. Backpropagation through a small MLP on a 2-D toy problem, with its decision boundary drawn.

    python examples/02_mlp_backprop_toy.py [--epochs 300]

Three interleaved spirals cannot be split by straight lines; two hidden ReLU layers
bend the plane until they can. Every step is the whole algorithm: forward through
the layers, the loss, backward through them in reverse (each layer turns the
gradient of its output into the gradient of its input and of its weights), and an
optimizer step. Writes examples/out/02_decision_boundary.png.
"""
import matplotlib.pyplot as plt
import numpy as np

import nnscratch as ns
from _common import figure_path, parser


def spirals(n_per_class=150, classes=3, seed=0):
    """(n, 2) points and (n,) labels: ``classes`` noisy spiral arms."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in range(classes):
        r = np.linspace(0.05, 1, n_per_class)
        theta = np.linspace(k * 4, (k + 1) * 4, n_per_class) + rng.normal(0, 0.2, n_per_class)
        xs.append(np.c_[r * np.sin(theta), r * np.cos(theta)])
        ys.append(np.full(n_per_class, k))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--epochs", type=int, default=300, help="full-batch training steps")
    args = p.parse_args(argv)
    epochs = 60 if args.quick else args.epochs
    x, y = spirals()
    model = ns.Sequential(ns.Linear(2, 64, rng=0), ns.ReLU(), ns.Linear(64, 64, rng=1), ns.ReLU(),
                          ns.Linear(64, 3, rng=2))
    loss_fn, opt = ns.CrossEntropyLoss(), ns.Adam(model.parameters(), lr=0.01)
    for epoch in range(1, epochs + 1):
        loss = loss_fn(model(x), y)                 # forward
        model.backward(loss_fn.backward())          # backward: the chain rule, layer by layer
        opt.step()                                  # update
        opt.zero_grad()
        if epoch % max(1, epochs // 6) == 0:
            acc = (model(x).argmax(axis=1) == y).mean()
            print(f"step {epoch:4d}: loss {loss:.4f}, training accuracy {acc:.3f}")

    grid = np.linspace(-1.1, 1.1, 300, dtype=np.float32)
    gx, gy = np.meshgrid(grid, grid)
    pred = model(np.c_[gx.ravel(), gy.ravel()]).argmax(axis=1).reshape(gx.shape)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.contourf(gx, gy, pred, levels=[-0.5, 0.5, 1.5, 2.5], colors=["#c6dbef", "#fdd0a2", "#c7e9c0"])
    ax.scatter(x[:, 0], x[:, 1], c=y, cmap="brg", s=8)
    acc = float((model(x).argmax(axis=1) == y).mean())
    ax.set_title(f"2-64-64-3 MLP after {epochs} Adam steps: accuracy {acc:.3f}")
    path = figure_path("02_decision_boundary.png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"decision boundary drawn in {path}")
    return acc


if __name__ == "__main__":
    main()
