"""01. A Linear layer's forward and backward, worked by hand, then confirmed by gradcheck.

    python examples/01_linear_by_hand.py

A Linear layer computes y = x W^T + b. For a loss L that depends on y, the chain
rule gives the three gradients backward() returns or stores:

    dL/dW = (dL/dy)^T x        (out, in)   each weight sees its input times the output's error
    dL/db = sum over batch of dL/dy   (out,)
    dL/dx = (dL/dy) W          (batch, in)  the error sent back to the layer below
"""
import numpy as np

import nnscratch as ns
from _common import parser


def main(argv=None):
    parser(__doc__).parse_args(argv)
    layer = ns.Linear(3, 2).to(dtype=np.float64)
    layer.weight.data[...] = [[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]   # W: (out=2, in=3)
    layer.bias.data[...] = [0.1, -0.2]
    x = np.array([[1.0, 2.0, 3.0], [-1.0, 0.0, 2.0]])               # x: (batch=2, in=3)

    # forward, one output at a time, the way you would on paper
    y_hand = np.zeros((2, 2))
    for n in range(2):
        for o in range(2):
            y_hand[n, o] = sum(x[n, i] * layer.weight.data[o, i] for i in range(3)) + layer.bias.data[o]
    y = layer(x)
    print("y by hand:\n", y_hand, "\ny = layer(x):\n", y)
    assert np.allclose(y, y_hand)

    # suppose the loss is L = sum(y * g) for a fixed g: then dL/dy = g
    g = np.array([[1.0, 0.0], [0.5, -1.0]])
    dx = layer.backward(g)
    dW_hand = np.array([[sum(g[n, o] * x[n, i] for n in range(2)) for i in range(3)] for o in range(2)])
    db_hand = g.sum(axis=0)
    dx_hand = np.array([[sum(g[n, o] * layer.weight.data[o, i] for o in range(2)) for i in range(3)]
                        for n in range(2)])
    for name, ours, hand in (("dL/dW", layer.weight.grad, dW_hand), ("dL/db", layer.bias.grad, db_hand),
                             ("dL/dx", dx, dx_hand)):
        print(f"{name} by hand:\n{hand}\n{name} from backward():\n{ours}")
        assert np.allclose(ours, hand)

    # and numerically: central differences of the forward pass, for every element of x, W and b
    result = ns.gradcheck(layer, x, mode="full")
    print(result)
    return result.ok


if __name__ == "__main__":
    main()
