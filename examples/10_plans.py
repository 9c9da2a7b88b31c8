"""10. Layers say what, plans say how: the same CNN step as textbook layers and as a plan.

    python examples/10_plans.py [--batch 64] [--repeats 10]

Every layer in nnscratch/layers is the textbook: Conv2d is im2col and one matrix product, its
backward that product's backward and col2im. Running them one after the other is correct, and slow.
The planner (nnscratch/fast) lowers the model, for one input's shape and mode, to a list of steps
that compute the same numbers faster. This example prints the plan of the paper's CNN, then times
one training step (forward, loss, backward, Adam) as the textbook layers and with the planner's
rules switched on one at a time, and checks at every stage that the loss and gradients agree with
the textbook's (to rounding: some rules sum in another order).
"""
import time

import numpy as np

import nnscratch as ns
from _common import parser

# In the order they are switched on; each row keeps the ones before it.
STAGES = [
    ("relu_into_pool", "ReLU inside the max-pooling kernel"),
    ("relu_into_linear", "ReLU inside the Linear's bias pass"),
    ("kept_buffers", "work arrays kept across steps"),
    ("crop_before_pool", "conv3 computes only the 6x6 pixels pool3 reads"),
    ("winograd", "Winograd F(2x2, 3x3) for conv2 and conv3"),
    ("pool_into_winograd", "pooling inside Winograd's output transform"),
    ("relu_in_place", "ReLU overwrites arrays nobody else holds"),
    ("input_check_in_bias", "the input's NaN check rides a bias pass"),
    ("split_batch", "the batch split over the cores, one replica each"),
]


def one_step(model, x, y):
    """(loss, every parameter's gradient) of one forward and backward pass; the gradients are cleared after."""
    loss_fn = ns.CrossEntropyLoss()
    loss = loss_fn(model(x), y)
    model.backward(loss_fn.backward(), need_input_grad=False)
    grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    return loss, grads


def step_ms(model, x, y, repeats: int) -> float:
    """Median milliseconds of a whole training step (forward, loss, backward, Adam, zero_grad); the
    model's weights are put back afterwards, so that every stage starts from the same ones."""
    start = model.state_dict()
    opt, loss_fn = ns.Adam(model.parameters()), ns.CrossEntropyLoss()
    times = []
    for _ in range(repeats + 2):                           # two untimed: kernels compiled, buffers made
        t0 = time.perf_counter()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    model.load_state_dict(start)
    return float(np.median(times[2:])) * 1e3


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=64, help="images per step")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per stage (the median is shown)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = 32, 2
    ns.manual_seed(0)
    model = ns.models.cnn()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch, 3, 28, 28)).astype(np.float32)
    y = rng.integers(0, 8, args.batch)

    print(ns.plan(model, x), "\n")

    ns.set_execution("reference")
    try:
        ref_loss, ref_grads = one_step(model, x, y)
        rows = [("textbook layers (ns.set_execution('reference'))", step_ms(model, x, y, args.repeats), 0.0)]
    finally:
        ns.set_execution("plan")
    worst = 0.0
    switches = ns.fast.all_off()
    for name, what in STAGES:
        switches[name] = True
        with ns.fast.switched(**switches):
            loss, grads = one_step(model, x, y)
            ms = step_ms(model, x, y, args.repeats)
        # float32, and some rules sum in another order: agreement to rounding, relative to each gradient's size
        diff = max(float(np.abs(g - r).max() / (np.abs(r).max() + 1e-30)) for g, r in zip(grads, ref_grads))
        diff = max(diff, abs(loss - ref_loss) / abs(ref_loss))
        worst = max(worst, diff)
        rows.append((f"+ {what} ({name})", ms, diff))

    base = rows[0][1]
    print(f"One CNN training step, batch {args.batch}, float32, on the CPU (medians of {args.repeats}):\n")
    print(f"| {'what runs':<78} | ms / step | vs textbook | largest relative difference |")
    print(f"| {'-' * 78} | ---: | ---: | ---: |")
    for what, ms, diff in rows:
        print(f"| {what:<78} | {ms:8.2f} | {base / ms:5.2f}x | {diff:.1e} |")
    ok = worst < 1e-4
    print(f"\nevery stage agrees with the textbook layers to {worst:.1e} (float32 rounding): "
          f"{'ok' if ok else 'NOT OK'}")
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
