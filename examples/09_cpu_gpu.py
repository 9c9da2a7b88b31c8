"""09. CPU and GPU: the same model on NumPy and CuPy, and what numba changes.

    python examples/09_cpu_gpu.py [--batch 64]

One code path serves both devices: every layer asks ``get_array_module(x)`` and
computes with NumPy or CuPy accordingly; only the hot loops (im2col, col2im,
pooling, the optimizer updates) have device-specific twins in nnscratch/kernels/.
This times one CNN training step with the plain-NumPy reference kernels, with the
numba kernels (the batch whole, every call spread over the cores, and split into
one part per core, as ``ns.TrainStep`` runs it by default), and (where a GPU and
CuPy are present) with CuPy, op by op and as ``ns.TrainStep`` replays it, recorded
once as a CUDA graph; it checks that all give the same outputs. On a GPU, launching
a hundred small kernels from Python costs more than computing them at this batch
size: the graph removes that cost. On a few CPU cores, waking the other cores for
each of some forty calls costs more than giving each core its own slice of the batch.
"""
import time

import numpy as np

import nnscratch as ns
from _common import parser


def step_time(model, x, y, repeats, sync=lambda: None, graph=False, workers=None):
    """Median ms of one step: forward, loss, backward, Adam (``graph``: on a GPU, replayed as a CUDA graph;
    ``workers``: on the CPU, the parts the batch is split into, None for TrainStep's choice)."""
    step = ns.TrainStep(model, ns.CrossEntropyLoss(), ns.Adam(model.parameters()), graph=graph, workers=workers)
    warmup = 3                                     # compile kernels; on a GPU the third step is recorded
    times = []
    for _ in range(repeats + warmup):
        t0 = time.perf_counter()
        step(x, y)
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[warmup:])) * 1e3


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=64, help="images per step")
    args = p.parse_args(argv)
    repeats = 2 if args.quick else 10
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 28, 28)).astype(np.float32)
    y = rng.integers(0, 8, args.batch)
    ns.manual_seed(0)
    state = ns.models.cnn().state_dict()

    def fresh(device="cpu"):
        model = ns.models.cnn()
        model.load_state_dict(state)
        return model.to(device)

    rows, outputs = [], {}
    for kernels in ("reference", "numba"):
        ns.kernels.set_cpu_kernels(kernels)
        outputs[kernels] = fresh()(x)
        rows.append((f"CPU, {kernels} kernels", step_time(fresh(), x, y, repeats)))
    ns.kernels.set_cpu_kernels("numba")
    parts = ns.TrainStep(fresh(), ns.CrossEntropyLoss(), ns.Adam(fresh().parameters())).parts_for(args.batch)
    rows[-1] = (f"CPU, numba, {parts} part(s)", rows[-1][1])
    rows.append(("CPU, numba, batch whole", step_time(fresh(), x, y, repeats, workers=1)))
    if ns.gpu_available():
        import cupy as cp
        xg, yg = cp.asarray(x), cp.asarray(y)
        outputs["cupy"] = ns.to_numpy(fresh("gpu")(xg))
        sync = cp.cuda.Device().synchronize
        rows.append(("GPU, CuPy, op by op", step_time(fresh("gpu"), xg, yg, repeats, sync)))
        rows.append(("GPU, CuPy, CUDA graph", step_time(fresh("gpu"), xg, yg, repeats, sync, graph=True)))
    else:
        print("no GPU here (CuPy missing or no CUDA device): the GPU row is left out")
    print(f"\nCNN training step, batch {args.batch}, float32 (median of {repeats})")
    for name, ms in rows:
        print(f"  {name:28s} {ms:8.2f} ms")
    base = outputs["reference"]
    for name, out in outputs.items():
        if name == "reference":
            continue                                # the baseline the others are compared with
        print(f"  max |{name} - reference| logits: {np.abs(out - base).max():.2e}")
        assert np.allclose(out, base, rtol=1e-4, atol=1e-5)
    return rows


if __name__ == "__main__":
    main()
