"""Train the paper's MLNN or CNN on a MedMNIST dataset (BloodMNIST by default).

    python -m nnscratch.train --arch mlnn
    python -m nnscratch.train --preset cnn-test1 --device gpu

A preset sets the paper's values (Tables 1 and 2); flags given explicitly override it.
"""
from __future__ import annotations

import argparse
import sys

from .cli import ArgumentParser, UsageError, run_cli
from .training import LOSSES, PRESETS, TrainConfig, TrainingDiverged, run

D = TrainConfig()   # the defaults, shown in --help


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m nnscratch.train", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    presets = ", ".join(f"{k} ({v['optimizer']}, lr {v['lr']:g}, {v['loss']})" for k, v in PRESETS.items())
    p.add_argument("--arch", choices=["mlnn", "cnn"], help=f"network: the multi-layer network or the CNN "
                   f"(default: {D.arch}, or the preset's)")
    p.add_argument("--preset", choices=list(PRESETS), metavar="NAME",
                   help=f"one of the paper's six configurations: {presets} (default: none)")
    p.add_argument("--optimizer", choices=["adam", "sgd"], help=f"adam, or sgd with momentum (default: {D.optimizer})")
    p.add_argument("--lr", type=float, help=f"learning rate (default: {D.lr:g}; the SGD presets use 0.01)")
    p.add_argument("--momentum", type=float, help=f"SGD momentum (default: {D.momentum:g}; ignored by adam)")
    p.add_argument("--loss", choices=list(LOSSES),
                   help=f"ce = cross-entropy on the logits; mse = mean squared error between the softmax "
                        f"probabilities and one-hot targets (the paper's Test3: its gradient vanishes when the "
                        f"network is confidently wrong, the paper's explanation of its weaker MSE runs); "
                        f"mse-logits = mean squared error between the raw logits and one-hot targets "
                        f"(default: {D.loss})")
    p.add_argument("--epochs", type=int, help=f"passes over the training set (default: {D.epochs}, the paper's)")
    p.add_argument("--batch-size", type=int,
                   help="images per step (default: 128 for the MLNN, 64 for the CNN; the paper states none, so "
                        "each was chosen on the validation split, see BATCH_SIZES in nnscratch/training.py)")
    p.add_argument("--hidden-size", type=int, help="MLNN hidden units (default: (n_input + n_classes) / 2 = 1180 "
                   "for BloodMNIST, the paper's rule)")
    p.add_argument("--hidden-layers", type=int, help=f"MLNN hidden layers (default: {D.hidden_layers})")
    p.add_argument("--class-weights", choices=["none", "balanced"],
                   help=f"cross-entropy class weights; balanced = n / (classes * count) (default: {D.class_weights})")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"],
                   help=f"where to compute; auto takes the GPU when CuPy sees one (default: {D.device})")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false", default=None,
                   help="on a GPU, run every training step op by op instead of replaying it as a recorded "
                        "CUDA graph (default: graphs on; slower, for debugging)")
    p.add_argument("--workers", type=int,
                   help="on the CPU, split each batch into this many parts, one core each (1: whole batches). "
                        "The results differ from other settings in the last bits only; give the same value to "
                        "repeat a run bit for bit on a machine with another core count (default: the CNN one "
                        "part per core OpenBLAS uses, at most one per 16 images; the MLNN 1)")
    p.add_argument("--seed", type=int, help=f"seed for the weights and the shuffling (default: {D.seed})")
    p.add_argument("--dataset", help=f"MedMNIST 2-D set, e.g. bloodmnist, dermamnist, pneumoniamnist "
                   f"(default: {D.dataset})")
    p.add_argument("--data-dir", help="folder searched first for <dataset>.npz and downloaded to "
                   "(default: $NNSCRATCH_DATA_DIR, then ~/.medmnist)")
    p.add_argument("--out", help="run folder to write (default: runs/<preset or arch>-<date>-<time>)")
    p.add_argument("--limit-train", type=int, help="train on the first N training images only, for a quick look "
                   "(default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def config_from_args(args) -> TrainConfig:
    """Defaults, then the preset's values, then every flag given explicitly."""
    values = {}
    if args.preset:
        values.update(PRESETS[args.preset], preset=args.preset)
    explicit = {k: v for k, v in vars(args).items() if v is not None and k not in ("preset", "quiet")}
    if args.preset and "arch" in explicit and explicit["arch"] != PRESETS[args.preset]["arch"]:
        raise UsageError(f"--arch {explicit['arch']} contradicts --preset {args.preset}")
    values.update(explicit)
    return TrainConfig(**values).validate()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        config = config_from_args(args)
        try:
            result = run(config, progress=not args.quiet)
        except TrainingDiverged as e:
            print(f"error: training stopped: {e}", file=sys.stderr)
            return 1
        return 130 if result.status == "interrupted" else 0
    return run_cli(body)


if __name__ == "__main__":
    from nnscratch.train import main as _main   # the imported module's classes, as run_cli expects
    sys.exit(_main())
