"""05. Cross-entropy against MSE for classification: their gradients at a confident wrong answer.

    python examples/05_ce_vs_mse.py

The network says class 0 with growing confidence (logit a for class 0, 0 for the
others) while the truth is class 1. Cross-entropy's gradient on the logits is
softmax(z) - onehot(y): it stays near -1 for the true class however wrong the
network is, so learning never stalls. MSE on the logits pushes the true class's
logit with a constant 2/K (it only wants that logit at 1, and every other one at
0: a regression target with no probabilistic meaning). MSE on the softmax probabilities,
a common mistake, has a gradient that *vanishes* as the wrong answer gets more
confident: the more wrong, the slower it learns. The paper's MSE runs (Test3)
scored lower than its cross-entropy runs; these curves are why. The softmax-MSE
gradient is derived by hand (the chain rule through the softmax's Jacobian) and
checked against ns.SoftmaxMSELoss. Writes
examples/out/05_ce_vs_mse.png.
"""
import matplotlib.pyplot as plt
import numpy as np

import nnscratch as ns
from _common import figure_path, parser


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def main(argv=None):
    parser(__doc__).parse_args(argv)
    K, true = 3, 1
    confidence = np.linspace(0, 10, 41)
    ce, mse_logits, mse_softmax = [], [], []
    worst = 0.0         # largest difference between the softmax-MSE gradient by hand and the loss class
    for a in confidence:
        z = np.array([[a, 0.0, 0.0]])
        target = ns.one_hot(np.array([true]), K, dtype=np.float64)
        loss = ns.CrossEntropyLoss()
        loss(z, np.array([true]))
        ce.append(loss.backward()[0, true])
        loss = ns.MSELoss()
        loss(z, target)
        mse_logits.append(loss.backward()[0, true])
        # MSE after a softmax, by hand: L = mean_k (p_k - t_k)^2 with p = softmax(z), so
        # dL/dp = 2 (p - t) / K, and the chain rule goes through the softmax's Jacobian
        # dp_k/dz_j = p_k (delta_kj - p_j), i.e. the matrix diag(p) - p p^T
        p = softmax(z)
        dp = 2 * (p - target) / K
        by_hand = dp @ (np.diag(p[0]) - np.outer(p[0], p[0]))
        # the same through ns.SoftmaxMSELoss, which uses the Jacobian's row form p * (g - sum_k g_k p_k)
        loss = ns.SoftmaxMSELoss()
        loss(z, np.array([true]))
        worst = max(worst, np.abs(loss.backward() - by_hand).max())
        mse_softmax.append(by_hand[0, true])
    for a in (0, 5, 10):
        i = int(np.argmin(abs(confidence - a)))
        print(f"logit of the wrong class = {a:4.1f}: dL/dz[true] = CE {ce[i]:+.4f}, MSE on logits "
              f"{mse_logits[i]:+.4f}, MSE on softmax {mse_softmax[i]:+.6f}")
    print(f"softmax-MSE gradient by hand against ns.SoftmaxMSELoss: max difference {worst:.1e}")
    assert worst < 1e-12
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(confidence, np.abs(ce), label="cross-entropy (softmax inside)")
    ax.plot(confidence, np.abs(mse_logits), label="MSE on logits vs one-hot")
    ax.plot(confidence, np.abs(mse_softmax), label="MSE on softmax probabilities")
    ax.set_xlabel("logit of the wrong class (confidence of the mistake)")
    ax.set_ylabel("|dL / d logit of the true class|")
    ax.set_title("How hard each loss pushes toward the right answer")
    ax.legend()
    ax.grid(alpha=0.3)
    path = figure_path("05_ce_vs_mse.png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"gradients drawn in {path}")
    return ce[-1], mse_softmax[-1]


if __name__ == "__main__":
    main()
