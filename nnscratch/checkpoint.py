"""A training run's checkpoint: everything that continues the run with the same bits.

``RUN/checkpoint.npz`` is written atomically (``files.atomic_path``: a temporary file renamed over the
old one), so a crash at any instant, in the middle of a write too, leaves the previous checkpoint
whole. It holds

    model/<name>       the parameters and buffers (batch norm's running statistics) as they are now
    best/<name>        the best validation epoch's parameters and buffers (left out when they are
                       the ones above: the best epoch is the one just finished)
    optim/<i>/<key>    the optimizer's arrays for parameter i (Adam's moments, SGD's momentum)
    __meta__           JSON: the format; where the run stands (``Position``); the history; the best
                       epoch and its validation accuracy; the optimizer's hyperparameters and step
                       counts; the scheduler's state; and the state of every random generator that
                       training draws from (shuffling, augmentation, dropout)

A checkpoint written part-way through an epoch (training stopped by Ctrl-C) records how many of the
epoch's batches were trained and the shuffling generator as it was when the epoch began, so the
resumed run draws the same order of images and skips the batches already done.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .backend import to_numpy
from .errors import CheckpointError
from .files import META_KEY, atomic_path, discarded

FILE = "checkpoint.npz"
FORMAT = 1


@dataclass
class Position:
    """Where a run stands: ``epoch`` epochs finished (trained, validated, in the history), and of the
    next one ``batch`` batches trained with running sums ``loss_total``, ``hits`` and ``seen``
    (images) and ``seconds`` spent (0 and empty at an epoch's end)."""
    epoch: int = 0
    batch: int = 0
    loss_total: float = 0.0
    hits: int = 0
    seen: int = 0
    seconds: float = 0.0


@dataclass
class Checkpoint:
    """What ``load`` reads back. ``best`` is {"val_acc", "epoch", "state"} (state: name -> array, or
    None before the first epoch); ``generators`` maps a name to a NumPy bit generator's state."""
    position: Position
    model_state: dict
    optimizer_state: dict
    scheduler_state: dict | None
    generators: dict
    history: list
    best: dict
    train_seconds: list = field(default_factory=list)


def generator_state(rng: np.random.Generator) -> dict:
    """A generator's state, as JSON can hold it (its integers are exact in JSON)."""
    return rng.bit_generator.state


def set_generator_state(rng: np.random.Generator, state: dict):
    rng.bit_generator.state = state


def save(path, model, optimizer, scheduler, generators: dict, position: Position, history: list, best: dict,
         train_seconds: list):
    """Write the checkpoint (see the module notes) atomically to ``path``."""
    if discarded():
        return
    arrays = {f"model/{name}": to_numpy(v.data) for name, v in model.named_state()}
    best_in_file = best["state"] is not None and not (best["epoch"] == position.epoch and position.batch == 0)
    if best_in_file:
        arrays.update({f"best/{name}": value for name, value in best["state"].items()})
    opt = optimizer.state_dict(copy=False)          # written before the next step changes them
    scalars = []
    for i, s in enumerate(opt["state"]):
        arrays.update({f"optim/{i}/{k}": v for k, v in s.items() if hasattr(v, "shape")})
        scalars.append({k: v for k, v in s.items() if not hasattr(v, "shape")})
    meta = {"format": FORMAT, "position": asdict(position), "history": history,
            "best": {"val_acc": best["val_acc"], "epoch": best["epoch"],
                     "state": "in file" if best_in_file else ("model" if best["state"] is not None else None)},
            "optimizer": {"type": type(optimizer).__name__, "hyper": opt["hyper"], "scalars": scalars},
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "generators": generators, "train_seconds": train_seconds}
    arrays[META_KEY] = np.array(json.dumps(meta))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load(path) -> Checkpoint:
    """The checkpoint in ``path``; a missing, damaged or foreign file raises ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z[META_KEY]))
            arrays = {k: z[k] for k in z.files if k != META_KEY}
        position = Position(**meta["position"])
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path} has checkpoint format {meta.get('format')!r}; this nnscratch reads "
                                  f"format {FORMAT}")
        model_state = _prefixed(arrays, "model/")
        best = dict(meta["best"])
        if best["state"] == "in file":
            best["state"] = _prefixed(arrays, "best/")
        elif best["state"] == "model":
            best["state"] = dict(model_state)
        opt_meta = meta["optimizer"]
        states = [dict(s) for s in opt_meta["scalars"]]
        for key, value in arrays.items():
            if key.startswith("optim/"):
                _, i, name = key.split("/", 2)
                states[int(i)][name] = value
        hyper = {k: tuple(v) if isinstance(v, list) else v for k, v in opt_meta["hyper"].items()}
        return Checkpoint(position, model_state, {"type": opt_meta["type"], "hyper": hyper, "state": states},
                          meta["scheduler"], meta["generators"], meta["history"], best, meta["train_seconds"])
    except CheckpointError:
        raise
    except Exception as e:        # a damaged zip, JSON or entry: whichever it is, the file cannot be used
        raise CheckpointError(f"{path} is damaged or not an nnscratch checkpoint ({type(e).__name__}: {e})") from None


def _prefixed(arrays: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


class Writer:
    """Writes the checkpoint at epoch ends, as often as 1 % of the training time allows (the last
    epoch's write on top keeps the whole within 2 %: a write's time varies by half from one to the
    next on this disk), always at the last epoch and when training is stopped. The CNN's and the
    ResNet's get one every epoch; the MLNN's (45 MB: its first layer's weights, their two Adam moments
    and the best epoch's copy) takes longer to write than 1 % of its short epochs, so it gets one
    every ten seconds or so of training (``benches/checkpoint_cost.py`` measures both). Until the
    first write has been timed, the time is estimated from the checkpoint's size."""

    SHARE = 0.01
    BYTES_PER_SECOND = 300e6        # np.savez of the MLNN's 45 MB checkpoint here: 60-180 ms; the slow end
    ALWAYS_BELOW = 0.005            # seconds

    def __init__(self, path, model, opt, scheduler, generators: dict):
        self.path, self.model, self.opt, self.scheduler, self.generators = path, model, opt, scheduler, generators
        self.last = time.perf_counter()
        size = 16 * sum(p.size for p in model.parameters())   # float32 parameters, two moments, the best copy
        self.cost = size / self.BYTES_PER_SECOND

    def states(self) -> dict:
        """Every generator's state now, by name."""
        return {name: generator_state(rng) for name, rng in self.generators.items()}

    def due(self) -> bool:
        # a write of a few milliseconds (a small model's) is always due: nothing a person would notice
        return self.cost < self.ALWAYS_BELOW or time.perf_counter() - self.last >= self.cost / self.SHARE

    def write(self, position, history, best, train_seconds, generators=None):
        """``save``, timed (it runs inside training's ``Interrupts`` block: Ctrl-C cannot cut it short);
        ``generators``: states to write instead of now's."""
        t0 = time.perf_counter()
        save(self.path, self.model, self.opt, self.scheduler, generators or self.states(), position, history, best,
             train_seconds)
        self.last = time.perf_counter()
        self.cost = self.last - t0
