"""What the engine computes, as fingerprints to hold a refactor to bit for bit.

    python tests/bits.py --record      # writes tests/data/bits.json from the code as it is now

Each entry is the SHA-256 of the exact bytes of an array (parameters after a few training steps,
logits at inference) or of a 2-epoch training history with the timings left out. Float results
depend on the CPU (OpenBLAS picks other kernels on other processors) and on the core count (the
CNN's batch is split in one part per core), so the file records the machine it was made on, and
``tests/test_bits.py`` compares only on that same machine. On another one, record the values with
the code from before the refactor (the commit named in the file) and run the test again.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import nnscratch as ns
from nnscratch import training

HERE = Path(__file__).resolve().parent
FILE = HERE / "data" / "bits.json"
SEEDS = (0, 1, 2)
STEPS = 3
BATCHES = (64, 37)           # an even batch and an odd one (uneven parts when split)


def machine() -> dict:
    """What decides the rounding: the CPU model, its core count, the library versions."""
    import numba
    run = training.machine()                  # what a run folder records
    return {"cpu": run["cpu"], "cores": run["cores"], "numpy": np.__version__, "numba": numba.__version__,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "")}


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(ns.to_numpy(a))
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _data(arch: str, seed: int):
    rng = np.random.default_rng(100 + seed)
    x = rng.uniform(0, 1, (max(BATCHES), 3, 28, 28)).astype(np.float32)
    if arch == "mlnn":
        x = x.reshape(len(x), -1)
    return x, rng.integers(0, 8, len(x))


def _model(arch: str, seed: int):
    ns.manual_seed(seed)
    return ns.models.cnn() if arch == "cnn" else ns.models.mlnn(hidden_size=1180, hidden_layers=1)


def steps(arch: str, seed: int, workers: int, loop: str) -> dict:
    """Parameters after STEPS Adam steps per batch size, through the plain loop or TrainStep, and
    the logits of the trained model in eval mode."""
    model = _model(arch, seed)
    loss_fn, opt = ns.CrossEntropyLoss(), ns.Adam(model.parameters(), lr=1e-3)
    x, y = _data(arch, seed)
    model.workers = workers
    step = ns.TrainStep(model, loss_fn, opt, workers=workers)
    losses = []
    for B in BATCHES:
        for _ in range(STEPS):
            if loop == "trainstep":
                losses.append(step(x[:B], y[:B])[0])
            else:
                losses.append(loss_fn(model(x[:B]), y[:B]))
                model.backward(loss_fn.backward(), need_input_grad=False)
                opt.step()
                opt.zero_grad()
    model.eval()
    return {"params": digest(*(p.data for p in model.parameters())), "losses": repr(losses),
            "eval_logits": digest(model(x))}


def history(preset: str, data_dir: str) -> list:
    """The 2-epoch history of ``python -m nnscratch.train --preset PRESET --epochs 2``, no timings."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "nnscratch.train", "--preset", preset, "--epochs", "2",
                        "--data-dir", data_dir, "--out", tmp + "/run", "--quiet"], check=True)
        rows = json.loads(Path(tmp, "run", "history.json").read_text())
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def cases():
    for arch in ("cnn", "mlnn"):
        for seed in SEEDS:
            for workers in (1, 2):
                for loop in ("loop", "trainstep"):
                    yield f"{arch}-seed{seed}-workers{workers}-{loop}", (arch, seed, workers, loop)


def record(data_dir: str | None):
    out = {"machine": machine(), "commit": _commit(), "steps": {}, "histories": {}}
    for name, args in cases():
        out["steps"][name] = steps(*args)
        print(name, out["steps"][name]["params"][:16], flush=True)
    if data_dir:
        for preset in ("cnn-test1", "mlnn-test1"):
            out["histories"][preset] = history(preset, data_dir)
            print(preset, out["histories"][preset][-1], flush=True)
    FILE.parent.mkdir(exist_ok=True)
    FILE.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {FILE}")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--record", action="store_true", help="write tests/data/bits.json (default: print only)")
    p.add_argument("--data-dir", default=os.environ.get("NNSCRATCH_DATA_DIR"),
                   help="folder with bloodmnist.npz, for the 2-epoch histories (default: $NNSCRATCH_DATA_DIR)")
    args = p.parse_args()
    if args.record:
        record(args.data_dir)
    else:
        for name, a in cases():
            print(name, steps(*a))
