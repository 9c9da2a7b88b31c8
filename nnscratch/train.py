"""Train the paper's MLNN or CNN, or a small ResNet, on a MedMNIST dataset (BloodMNIST by default).

    python -m nnscratch.train --arch mlnn
    python -m nnscratch.train --preset cnn-test1 --device gpu
    python -m nnscratch.train --resume runs/cnn-test1-20261130-101500     # continue a stopped run
    python -m nnscratch.train --arch resnet --optimizer adamw --weight-decay 0.05 --scheduler onecycle \
        --lr 3e-3 --label-smoothing 0.1 --augment dihedral --tta

A preset sets the paper's values (Tables 1 and 2); flags given explicitly override it.
"""
from __future__ import annotations

import argparse
import sys

from .cli import ArgumentParser, UsageError, run_cli
from .medmnist_info import TASK_FLAGS
from .training import AUGMENTS, LOSSES, OPTIMIZERS, PRESETS, SCHEDULERS, TrainConfig, TrainingDiverged, resume, run

D = TrainConfig()   # the defaults, shown in --help


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m nnscratch.train", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    presets = ", ".join(f"{k} ({v['optimizer']}, lr {v['lr']:g}, {v['loss']})" for k, v in PRESETS.items())
    p.add_argument("--arch", choices=["mlnn", "cnn", "resnet"], help=f"network: the paper's multi-layer network "
                   f"or CNN, or a small ResNet (ns.models.resnet: batch norm, residual blocks) "
                   f"(default: {D.arch}, or the preset's)")
    p.add_argument("--preset", choices=list(PRESETS), metavar="NAME",
                   help=f"the paper's six configurations, or resnet-bloodmnist, the ResNet's recipe (AdamW with "
                        f"weight decay 0.05, one-cycle schedule up to lr 0.01, label smoothing 0.1, flips and quarter "
                        f"turns, 45 epochs of batch 128; chosen on the validation split, docs/beyond.md): "
                        f"{presets} (default: none)")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS),
                   help=f"adam, sgd with momentum, or adamw (Adam with decoupled weight decay) (default: {D.optimizer})")
    p.add_argument("--lr", type=float, help=f"learning rate (default: {D.lr:g}; the SGD presets use 0.01)")
    p.add_argument("--momentum", type=float, help=f"SGD momentum (default: {D.momentum:g}; ignored by adam)")
    p.add_argument("--loss", choices=list(LOSSES),
                   help=f"ce = cross-entropy on the logits; mse = mean squared error between the softmax "
                        f"probabilities and one-hot targets (the paper's Test3: its gradient vanishes when the "
                        f"network is confidently wrong, the paper's explanation of its weaker MSE runs); "
                        f"mse-logits = mean squared error between the raw logits and one-hot targets "
                        f"(default: {D.loss})")
    p.add_argument("--weight-decay", type=float,
                   help=f"weight decay: adam and sgd add weight_decay * w to the gradient (L2), adamw shrinks the "
                        f"weights by lr * weight_decay each step (default: {D.weight_decay:g})")
    p.add_argument("--scheduler", choices=list(SCHEDULERS),
                   help=f"learning-rate schedule: step = x0.1 after 1/3 and 2/3 of the epochs; cosine = half a "
                        f"cosine from --lr to 0 over the run, per batch; onecycle = up from lr/25 to --lr in the "
                        f"first 30%% of the batches, then down to lr/25e4 (default: {D.scheduler})")
    p.add_argument("--warmup-epochs", type=int,
                   help=f"raise the rate linearly from lr/10 over this many epochs first (with --scheduler none "
                        f"or cosine) (default: {D.warmup_epochs})")
    p.add_argument("--label-smoothing", type=float,
                   help=f"cross-entropy against (1 - e) onehot + e / classes (default: {D.label_smoothing:g})")
    p.add_argument("--grad-clip", type=float,
                   help="clip the gradients' global norm to this before each step (default: no clipping)")
    p.add_argument("--augment", choices=list(AUGMENTS),
                   help=f"training images, each batch anew: flips = random left-right and up-down flips; "
                        f"dihedral = flips and quarter turns (default: {D.augment})")
    p.add_argument("--translate", type=int,
                   help=f"also shift each training image by up to this many pixels (default: {D.translate})")
    p.add_argument("--tta", action="store_true", default=None,
                   help="also report test metrics averaged over each image's 8 flips and quarter turns "
                        "(metrics.json keeps the figures without it) (default: off)")
    p.add_argument("--widths", type=int, nargs="+",
                   help="ResNet channels per stage (default: 32 64 128)")
    p.add_argument("--blocks", type=int, nargs="+",
                   help="ResNet basic blocks per stage, one number per width (default: 1 1 1)")
    p.add_argument("--dropout", type=float,
                   help=f"ResNet dropout before the last layer (default: {D.dropout:g})")
    p.add_argument("--epochs", type=int, help=f"passes over the training set (default: {D.epochs}, the paper's)")
    p.add_argument("--batch-size", type=int,
                   help="images per step (default: 128 for the MLNN, 64 for the CNN, 128 for the ResNet; the paper "
                        "states none, so the first two were chosen on the validation split, see BATCH_SIZES in "
                        "nnscratch/training.py)")
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
    p.add_argument("--size", type=int, choices=[28, 64, 128, 224],
                   help=f"image size: MedMNIST+'s larger files <dataset>_<size>.npz (64, 128, 224 pixels), "
                        f"fetched like the 28-pixel ones; the networks size themselves to the images "
                        f"(default: {D.size})")
    p.add_argument("--memory-budget", type=float, metavar="GB",
                   help="gigabytes the images may take in memory (as float32, 4 bytes a pixel); a larger set is "
                        "unpacked once into $NNSCRATCH_CACHE_DIR (default ~/.cache/nnscratch) and read from disk a "
                        "batch at a time, in a background thread; the same results either way (default: "
                        "$NNSCRATCH_MEMORY_BUDGET, else a quarter of this machine's memory)")
    p.add_argument("--data-dir", help="folder searched first for <dataset>.npz and downloaded to "
                   "(default: $NNSCRATCH_DATA_DIR, then ~/.medmnist)")
    p.add_argument("--out", help="run folder to write; one that holds a run is refused unless --overwrite "
                   "(default: runs/<preset or arch>-<date>-<time>)")
    p.add_argument("--overwrite", action="store_true",
                   help="let --out name a folder that holds a run: its files are removed first (default: refuse)")
    p.add_argument("--resume", metavar="RUN",
                   help="continue the run in the folder RUN from its checkpoint (written every epoch and on "
                        "Ctrl-C), with its own settings: on the CPU it ends with the same bits as if it had not "
                        "stopped. Only --epochs (to train longer, when no schedule spans the epochs), --data-dir, "
                        "--memory-budget and --quiet may be given with it (default: start a new run)")
    p.add_argument("--num-classes", type=int,
                   help="classes of a custom dataset file (default: its largest label + 1; MedMNIST's sets: "
                        "their own)")
    p.add_argument("--task", choices=list(TASK_FLAGS),
                   help="a custom dataset file's task type, which sets its loss and MedMNIST's two metrics: "
                        "binary-class scores the second class's probability, ordinal-regression is trained and "
                        "scored as multi-class, multi-label trains one sigmoid per label column (default: "
                        "multi-label when the labels have several columns, else multi-class; MedMNIST's sets: "
                        "their own)")
    p.add_argument("--limit-train", type=int, help="train on the first N training images only, for a quick look "
                   "(default: all)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars (they show only when stderr is a terminal; in a log file each epoch "
                        "is one line) (default: bars on a terminal)")
    return p


def config_from_args(args) -> TrainConfig:
    """Defaults, then the preset's values, then every flag given explicitly."""
    values = {}
    if args.preset:
        values.update(PRESETS[args.preset], preset=args.preset)
    explicit = {k: v for k, v in vars(args).items()
                if v is not None and k not in ("preset", "quiet", "resume", "overwrite")}
    if args.preset and "arch" in explicit and explicit["arch"] != PRESETS[args.preset]["arch"]:
        raise UsageError(f"--arch {explicit['arch']} contradicts --preset {args.preset}")
    values.update(explicit)
    for name in ("widths", "blocks"):
        if name in values:
            values[name] = tuple(values[name])
    return TrainConfig(**values).validate()


# with --resume, the flags that do not change what the run computes
RESUME_FLAGS = ("epochs", "data_dir", "memory_budget")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        try:
            if args.resume is not None:
                given = sorted(k for k, v in vars(args).items() if v not in (None, False)
                               and k not in RESUME_FLAGS + ("resume", "quiet"))
                if given:
                    flags = ", ".join("--" + k.replace("_", "-") for k in given)
                    raise UsageError(f"--resume continues {args.resume} with its own settings; {flags} would change "
                                     f"what it computes (only --epochs, --data-dir, --memory-budget and --quiet go with --resume). "
                                     f"To change settings, start a new run with --out")
                result = resume(args.resume, epochs=args.epochs, data_dir=args.data_dir, progress=not args.quiet,
                                memory_budget=args.memory_budget)
            else:
                result = run(config_from_args(args), progress=not args.quiet, overwrite=args.overwrite)
        except TrainingDiverged as e:
            print(f"error: training stopped: {e}", file=sys.stderr)
            return 1
        return 130 if result.status == "interrupted" else 0
    return run_cli(body)


if __name__ == "__main__":
    from nnscratch.train import main as _main   # the imported module's classes, as run_cli expects
    sys.exit(_main())
