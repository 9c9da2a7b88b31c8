"""Training and evaluation of the paper's networks on a MedMNIST dataset, and the run folder.

``run(config)`` trains, keeps the weights of the best validation epoch, evaluates
them on the test split and writes the run folder:

    config.json            every setting, seed, device, versions, data file
    history.json/.csv      per epoch: train_loss, train_acc, val_loss, val_acc, seconds
    model.npz              weights plus what rebuilds the model (files.save_model)
    metrics.json           metrics.classification_report on the test split, plus timing
    loss_curves.png  accuracy_curves.png  per_class_precision_recall.png  confusion_matrix.png
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import platform
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import __version__, checkpoint, distributed, files, losses, lr_scheduler, models, optim, plots, runfolder, stream
from .augment import SYMMETRIES, Augment, dihedral
from .backend import device_of, gpu_available, to_device, to_numpy
from .checkpoint import generator_state, set_generator_state
from .data import Dataset, batches, head, load, num_batches, on_device
from .errors import CheckpointError, UsageError
from .files import read_json_object, save_model, write_json, write_text
from .interrupts import Interrupts
from .medmnist_info import SIZES, sized_name
from .metrics import classification_report, medmnist_scores, multilabel_report
from .progress import bars
from .random import default_rng, manual_seed
from .step import NonFiniteLoss, TrainStep, hits

EVAL_BATCH = 256                # images a batch in evaluation, at 28 pixels; fewer of larger images (eval_batch)

# --loss: "mse" is the squared error of the softmax probabilities, the setting in which the paper's
# explanation of its weaker MSE runs (vanishing gradients) holds; "mse-logits" takes it on the raw logits.
LOSSES = ("ce", "mse", "mse-logits")

# The paper states no batch size. Each architecture's was chosen on the validation split, by the
# highest mean best-validation accuracy over seeds 0-2 of its Test1 configuration (15 epochs):
#   python benches/select_batch_size.py --sizes 32 64 128 256 --configs mlnn-test1 --seeds 0 1 2
#     MLNN: 32 -> 0.8709, 64 -> 0.8713, 128 -> 0.8738, 256 -> 0.8651
#   python benches/select_batch_size.py --sizes 64 128 --configs cnn-test1 --seeds 0 1 2
#     CNN: 64 -> 0.9398, 128 -> 0.9393
BATCH_SIZES = {"mlnn": 128, "cnn": 64, "resnet": 128}
OPTIMIZERS = ("adam", "sgd", "adamw")
SCHEDULERS = ("none", "step", "cosine", "onecycle")
AUGMENTS = ("none", "flips", "dihedral")

# The paper's Tables 1 and 2. Every preset: 15 epochs, He initialisation, ReLU, one hidden
# layer of (n_input + n_classes) / 2 = 1180 units for the MLNN.
PRESETS = {
    f"{arch}-test{i}": dict(arch=arch, **setting)
    for arch in ("mlnn", "cnn")
    for i, setting in enumerate([dict(optimizer="adam", lr=1e-3, loss="ce"),
                                 dict(optimizer="sgd", lr=1e-2, momentum=0.9, loss="ce"),
                                 dict(optimizer="adam", lr=1e-3, loss="mse")], start=1)
}
# Beyond the paper: the ResNet's recipe, chosen on the validation split over seeds 0-2 among the recipes
# of benches/select_resnet_recipe.py ("long45", lr 0.01 for 45 epochs: mean best validation accuracy
# 0.9831 at commit 3f32068, against 0.9809 for "long", the same for 30 epochs; before,
# "long" 0.9813 against 0.9792 for "lr1e-2" (20 epochs), 0.9751 for "base" at lr 0.003 and 0.9725 for
# "shift"; the tables and the commands in docs/beyond.md). Batch 128 (BATCH_SIZES).
PRESETS["resnet-bloodmnist"] = dict(arch="resnet", optimizer="adamw", lr=1e-2, weight_decay=0.05, scheduler="onecycle",
                                    label_smoothing=0.1, augment="dihedral", loss="ce", epochs=45)


@dataclass
class TrainConfig:
    arch: str = "mlnn"
    preset: str | None = None
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    loss: str = "ce"
    epochs: int = 15
    batch_size: int | None = None       # None: the architecture's, BATCH_SIZES
    hidden_size: int | None = None
    hidden_layers: int = 1
    class_weights: str = "none"
    device: str = "auto"
    seed: int = 0
    dataset: str = "bloodmnist"
    data_dir: str | None = None
    out: str | None = None
    limit_train: int | None = None      # first N training images only (tests, quick looks)
    cuda_graphs: bool = True            # on a GPU, replay each step as a recorded CUDA graph (step.py)
    workers: int | None = None          # CPU: parts each batch is split into, one core each (step.py); None: auto
    weight_decay: float = 0.0           # adam, sgd: L2 added to the gradient; adamw: decoupled decay
    scheduler: str = "none"             # none, step (x0.1 at 1/3 and 2/3 of the epochs), cosine, onecycle
    warmup_epochs: int = 0              # linear warmup from lr / 10 before the schedule (cosine, none)
    label_smoothing: float = 0.0        # --loss ce only
    grad_clip: float | None = None      # clip the gradients' global norm to this
    augment: str = "none"               # none, flips, dihedral (flips and quarter turns)
    translate: int = 0                  # random shifts by up to this many pixels
    tta: bool = False                   # test metrics also averaged over the 8 flips and turns
    widths: tuple | None = None         # resnet: channels per stage (default models.RESNET_WIDTHS)
    blocks: tuple | None = None         # resnet: basic blocks per stage (default models.RESNET_BLOCKS)
    dropout: float = 0.0                # resnet: dropout before the last layer
    num_classes: int | None = None      # a custom dataset's classes (default: its largest label + 1)
    size: int = 28                      # MedMNIST+'s image size: reads <dataset>_<size>.npz above 28
    task: str | None = None             # a custom file's task type (medmnist_info.TASK_FLAGS); None: inferred
    memory_budget: float | None = None  # GB the images may take in memory, else streamed (stream.py); None: default

    def validate(self):
        """Raise UsageError for any setting out of range; fill in the architecture's batch size if none is set."""
        if self.batch_size is None and self.arch in BATCH_SIZES:
            self.batch_size = BATCH_SIZES[self.arch]
        checks = [
            (self.arch in models.ARCHS, f"unknown --arch {self.arch!r}: expected one of {', '.join(models.ARCHS)}"),
            (self.preset is None or self.preset in PRESETS,
             f"unknown --preset {self.preset!r}: expected one of {', '.join(PRESETS)}"),
            (self.optimizer in OPTIMIZERS, f"unknown --optimizer {self.optimizer!r}: expected one of "
                                           f"{', '.join(OPTIMIZERS)}"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.scheduler in SCHEDULERS, f"unknown --scheduler {self.scheduler!r}: expected one of "
                                           f"{', '.join(SCHEDULERS)}"),
            (self.warmup_epochs == 0 or 0 < self.warmup_epochs < self.epochs,
             f"--warmup-epochs must lie in [0, --epochs), got {self.warmup_epochs}"),
            (self.warmup_epochs == 0 or self.scheduler in ("none", "cosine"),
             "--warmup-epochs goes with --scheduler none or cosine (onecycle warms up by itself)"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must lie in [0, 1), got {self.label_smoothing}"),
            (self.label_smoothing == 0 or self.loss == "ce", "--label-smoothing needs --loss ce"),
            (self.grad_clip is None or self.grad_clip > 0, f"--grad-clip must be positive, got {self.grad_clip}"),
            (self.memory_budget is None or (math.isfinite(self.memory_budget) and self.memory_budget > 0),
             f"--memory-budget must be a positive number of GB, got {self.memory_budget}"),
            (self.augment in AUGMENTS, f"unknown --augment {self.augment!r}: expected one of {', '.join(AUGMENTS)}"),
            (self.translate >= 0, f"--translate must be >= 0 pixels, got {self.translate}"),
            (self.arch == "resnet" or (self.widths is None and self.blocks is None and self.dropout == 0),
             "--widths, --blocks and --dropout apply to --arch resnet only"),
            (0 <= self.dropout < 1, f"--dropout must lie in [0, 1), got {self.dropout}"),
            (self.widths is None or self.blocks is None or len(self.widths) == len(self.blocks),
             "--widths and --blocks need one number per stage each"),
            (all(v >= 1 for v in (self.widths or ()) + (self.blocks or ())), "--widths and --blocks must be >= 1"),
            (self.loss in LOSSES, f"unknown --loss {self.loss!r}: expected one of {', '.join(LOSSES)}"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}"),
            (math.isfinite(self.momentum) and self.momentum >= 0, f"--momentum must be >= 0, got {self.momentum}"),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.hidden_size is None or self.hidden_size >= 1, f"--hidden-size must be at least 1, got {self.hidden_size}"),
            (self.hidden_layers >= 1, f"--hidden-layers must be at least 1, got {self.hidden_layers}"),
            (self.arch == "mlnn" or (self.hidden_size is None and self.hidden_layers == 1),
             "--hidden-size and --hidden-layers apply to --arch mlnn only"),
            (self.class_weights in ("none", "balanced"),
             f"unknown --class-weights {self.class_weights!r}: expected none or balanced"),
            (self.class_weights == "none" or self.loss == "ce", "--class-weights balanced needs --loss ce"),
            (self.device in ("auto", "cpu", "gpu"), f"unknown --device {self.device!r}: expected auto, cpu or gpu"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (self.limit_train is None or self.limit_train >= 1, "--limit-train must be at least 1"),
            (self.workers is None or self.workers >= 1, f"--workers must be at least 1, got {self.workers}"),
            (self.num_classes is None or self.num_classes >= 2, f"--num-classes must be at least 2, got {self.num_classes}"),
            (self.size in SIZES, f"--size must be one of {', '.join(map(str, SIZES))} (MedMNIST+'s sizes), got {self.size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        return self


def resolve_device(device: str) -> str:
    if device == "auto":
        return "gpu" if gpu_available() else "cpu"
    if device == "gpu" and not gpu_available():
        raise UsageError("--device gpu: no GPU is available (CuPy is missing or sees no CUDA device); "
                         "use --device cpu or auto")
    return device


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and batch."""


# ---- pieces -----------------------------------------------------------------------------------

def make_loss(config: TrainConfig, train_labels: np.ndarray, num_classes: int, device: str):
    """(loss function, target(y) -> what the loss compares the logits with). Multi-label labels
    (N, L): binary cross-entropy per label (``--class-weights balanced``: each label's positives
    weighted by its negatives / positives)."""
    if train_labels.ndim == 2:
        if config.loss != "ce" or config.label_smoothing:
            raise UsageError(f"a multi-label task trains with binary cross-entropy per label: --loss ce, no "
                             f"--label-smoothing (got --loss {config.loss})")
        pos_weight = None
        if config.class_weights == "balanced":
            positives = train_labels.sum(axis=0).astype(np.float64)
            pos_weight = np.divide(len(train_labels) - positives, positives, out=np.ones(num_classes),
                                   where=positives > 0)
        return losses.BCEWithLogitsLoss(pos_weight=pos_weight), lambda y: y.astype(np.float32)
    if config.loss == "mse":
        return losses.SoftmaxMSELoss(), lambda y: y
    if config.loss == "mse-logits":
        return losses.MSELoss(), lambda y: losses.one_hot(y, num_classes)
    weight = None
    if config.class_weights == "balanced":
        # scikit-learn's "balanced": n_samples / (n_classes * count); absent classes weigh 0
        counts = np.bincount(train_labels, minlength=num_classes).astype(np.float64)
        weight = np.divide(len(train_labels), num_classes * counts, out=np.zeros(num_classes), where=counts > 0)
        weight = to_device(weight.astype(np.float32), device)
    return losses.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing), lambda y: y


def make_optimizer(config: TrainConfig, model):
    if config.optimizer == "sgd":
        return optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, opt, steps_per_epoch: int):
    """(scheduler or None, whether it steps after every batch rather than every epoch)."""
    total, warmup = config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch
    if config.scheduler == "step":
        return lr_scheduler.StepLR(opt, step_size=max(1, config.epochs // 3), gamma=0.1), False
    if config.scheduler == "onecycle":
        return lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total), True
    main = lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup) if config.scheduler == "cosine" else None
    if not warmup:
        return main, main is not None
    ramp = lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warmup)
    if main is None:
        return ramp, True
    return lr_scheduler.SequentialLR(opt, [ramp, main], milestones=[warmup]), True


def make_augment(config: TrainConfig):
    """The training batches' augmentation, or None."""
    augment = Augment(flips=config.augment != "none", rotations=config.augment == "dihedral",
                      translate=config.translate)
    return augment if augment.active else None


def eval_batch(images) -> int:
    """Images a batch in evaluation: EVAL_BATCH of 28 x 28 pixels, and as many pixels a batch of larger
    images (at least 8), whose activations would otherwise take gigabytes (256 at 224 pixels: 1.6 GB
    for one 32-channel map)."""
    pixels = images.shape[2] * images.shape[3]
    return max(8, EVAL_BATCH * 28 * 28 // pixels) if pixels > 28 * 28 else EVAL_BATCH


def predict(model, images, batch_size: int | None = None, tta: bool = False, multi_label: bool = False):
    """Class probabilities (N, K) as a NumPy float32 array, in evaluation mode (``multi_label``: each
    label's own probability, the sigmoid of its logit). With ``tta`` each image's probabilities are the
    mean over its 8 flips and quarter turns (``augment.dihedral``)."""
    model.eval()
    out = []
    prob = losses.sigmoid if multi_label else losses.softmax
    images, _, whole = _my_rows(images, None)
    for xb, _ in batches(images, None, batch_size or eval_batch(images), device=_device(model)):
        if tta:
            probs = sum(prob(model(dihedral(xb, k))) for k in range(SYMMETRIES)) / SYMMETRIES
        else:
            probs = prob(model(xb))
        out.append(to_numpy(probs))
    model.train()
    mine = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    return mine if whole else distributed.gather_rows(mine)


def _my_rows(images, labels):
    """(images, labels, whole): in an MPI job, this rank's shard of the split (each rank evaluates its
    rows; the callers gather or sum the results; a split streamed from disk as a view of its rows,
    read by this rank alone), else the whole split (whole=True)."""
    if not distributed.active() or len(images) < distributed.world_size():
        return images, labels, True
    rows = distributed.shard(len(images))
    mine = images.view(rows.start, rows.stop) if stream.is_streamed(images) else images[rows]
    return mine, None if labels is None else labels[rows], False


def _device(model) -> str:
    """Where the model's parameters are ("cpu" or "gpu")."""
    params = model.parameters()
    return device_of(params[0].data) if params else "cpu"


def evaluate_split(model, images, labels, loss_fn, target, batch_size: int | None = None):
    """(mean loss, accuracy) over a whole split (multi-label: the mean per-label accuracy)."""
    model.eval()
    n = len(labels)
    total, correct = 0.0, 0
    images, labels, whole = _my_rows(images, labels)
    for xb, yb in batches(images, labels, batch_size or eval_batch(images), device=_device(model)):
        logits = model(xb)
        total += loss_fn(logits, target(yb)) * len(yb)
        correct += hits(logits, yb)
    model.train()
    if not whole:                       # the ranks' shards' sums, added in rank order on every rank
        total, correct = distributed.sum_in_rank_order([total, correct])
    return total / n, correct / n


# ---- the run ------------------------------------------------------------------------------------

@dataclass
class RunResult:
    run_dir: Path
    history: list = field(default_factory=list)
    metrics: dict | None = None
    status: str = "completed"


def default_run_dir(config: TrainConfig) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{config.preset or config.arch}-{stamp}"
    path, n = base, 2
    while path.exists():
        path, n = Path(f"{base}-{n}"), n + 1
    return path


def versions() -> dict:
    import numba
    v = {"nnscratch": __version__, "python": platform.python_version(), "numpy": np.__version__,
         "numba": numba.__version__}
    if gpu_available():
        import cupy
        v["cupy"] = cupy.__version__
    return v


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}
    if gpu_available():
        import cupy
        info["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return info


def print_now(*args):
    """print, flushed at once: a log file (stdout not a terminal) gets each epoch's line as it ends."""
    print(*args, flush=True)


def run(config: TrainConfig, dataset: Dataset | None = None, progress: bool = True,
        log=None, figures: bool = True, overwrite: bool = False) -> RunResult:
    """Train, evaluate and write the run folder; see the module docstring.

    A folder that already holds a run is refused (``UsageError``) unless ``overwrite``, which
    removes the old run's files first. ``log`` prints each line (default: ``print_now``). ``figures=False`` leaves out the four PNG files (the
    reproduction draws its own). ``progress`` shows progress bars when stderr is a terminal.
    """
    config.validate()
    log = log or print_now
    run_dir = Path(config.out) if config.out else default_run_dir(config)
    distributed.init()                  # under mpiexec / srun: this process is one rank of the job
    runfolder.check_out(run_dir, overwrite)
    distributed.barrier()               # every rank has looked before rank 0 creates the folder
    return _train(config, run_dir, dataset, progress, log, figures,
                  create=lambda: runfolder.create(run_dir, overwrite))


def resume(run_dir, epochs: int | None = None, dataset: Dataset | None = None, data_dir: str | None = None,
           progress: bool = True, log=None, figures: bool = True, memory_budget: float | None = None) -> RunResult:
    """Continue the run in ``run_dir`` from its checkpoint with its own settings; on the CPU it ends with
    the bits the run would have had uninterrupted. ``epochs`` extends a run whose schedule does not
    depend on its length; ``data_dir`` only says where its dataset file now is (the MD5 must match),
    ``memory_budget`` (GB) whether its images are streamed from disk (the same numbers either way).
    A completed run is left as it is."""
    run_dir = Path(run_dir)
    log = log or print_now
    distributed.init()
    if not run_dir.is_dir():
        raise UsageError(f"--resume {run_dir}: no such run folder")
    if not (run_dir / "config.json").is_file():
        raise UsageError(f"--resume {run_dir}: no config.json there, so it is not a run folder")
    runfolder.check_not_running(run_dir, "--resume")
    saved = read_json_object(run_dir / "config.json")
    names = {f.name for f in fields(TrainConfig)}
    try:
        config = TrainConfig(**{k: (tuple(v) if k in ("widths", "blocks") and v is not None else v)
                                for k, v in saved.items() if k in names}).validate()
    except (TypeError, UsageError) as e:
        raise UsageError(f"--resume {run_dir}: its config.json does not describe a run ({e})") from None
    if not (run_dir / checkpoint.FILE).is_file():
        if saved.get("status") == "completed":
            raise UsageError(f"{run_dir} is completed and has no checkpoint to continue from (it was trained "
                             f"before checkpoints existed); nothing to do")
        raise UsageError(f"--resume {run_dir}: no checkpoint there (the run stopped before its first epoch "
                         f"ended); start it again with --out {run_dir} --overwrite")
    ck = checkpoint.load(run_dir / checkpoint.FILE)
    done = ck.position.epoch
    if epochs is not None and epochs != config.epochs:
        if epochs < max(done, 1) or (epochs == done and ck.position.batch):
            raise UsageError(f"--epochs {epochs}: the run in {run_dir} has already trained {done} epoch(s)")
        if config.scheduler != "none" or config.warmup_epochs:
            raise UsageError(f"--epochs cannot change the run in {run_dir}: its learning-rate schedule "
                             f"(--scheduler {config.scheduler}, --warmup-epochs {config.warmup_epochs}) spans its "
                             f"{config.epochs} epochs, so a longer run would have had other rates all along")
        config.epochs = epochs
    elif saved.get("status") == "completed":
        log(f"{run_dir} is already completed ({done} epochs); nothing to do. To train it longer give --epochs "
            f"with --resume, or start a new run with --out")
        return RunResult(run_dir, ck.history, status="completed")
    if data_dir is not None:
        config.data_dir = data_dir
    if memory_budget is not None:
        config.memory_budget = memory_budget
        config.validate()
    if distributed.is_main():
        runfolder.remove_stale_temporaries(run_dir)
    distributed.barrier()               # every rank has read the folder before rank 0 writes to it
    return _train(config, run_dir, dataset, progress, log, figures, resumed=(ck, saved))


class _Stopped(Exception):
    """Ctrl-C was pressed: the loop has stopped at a consistent point."""


def _data_checks(config: TrainConfig, dataset: Dataset, saved: dict | None, log):
    """Refuse data that cannot train (empty splits, another file than the run's) and warn of labels
    that skip classes."""
    if saved is not None and saved.get("dataset_md5") not in (None, dataset.md5):
        raise UsageError(f"{dataset.path} has MD5 {dataset.md5}, but the run was trained on a file with MD5 "
                         f"{saved['dataset_md5']} ({saved.get('dataset_file')}): give --data-dir the folder of "
                         f"that file")
    for split in ("train", "val", "test"):
        if len(dataset.split(split)) == 0:
            raise UsageError(f"{dataset.path} has no {split} images: training needs images in the train, val "
                             f"and test splits")
    absent = dataset.absent_classes()
    if absent and config.num_classes is None:
        log(f"warning: {dataset.path.name}'s labels skip {len(absent)} of classes 0-{dataset.num_classes - 1} "
            f"(none of {_ranges(absent)}); the model gets {dataset.num_classes} outputs. If the file has a stray "
            f"label, fix it; to say how many classes there are, pass --num-classes")


def _ranges(values) -> str:
    """[1, 2, 3, 7] -> "1-3, 7"."""
    out, values = [], sorted(values)
    start = prev = values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}-{prev}" if prev > start else str(start))
        if v is not None:
            start = prev = v
    return ", ".join(out)


def _build_model(config: TrainConfig, dataset: Dataset):
    try:
        return models.build(config.arch, dataset.channels, dataset.image_size, dataset.num_classes,
                            config.hidden_size, config.hidden_layers, rng=np.random.default_rng(config.seed),
                            widths=config.widths, blocks=config.blocks, dropout=config.dropout)
    except MemoryError as e:
        raise UsageError(f"the {config.arch.upper()} does not fit in memory ({e}); choose smaller sizes") from None
    except ValueError as e:
        raise UsageError(f"{e} ({dataset.name}: {dataset.channels} x {dataset.image_size} x {dataset.image_size} "
                         f"images)") from None


def _generators(model, shuffle_rng, augment_rng) -> dict:
    """Every random generator training draws from, by name: the shuffling, the augmentation, the
    package's default generator (dropout without its own), and any layer's own."""
    gens = {"shuffle": shuffle_rng, "augment": augment_rng, "default": default_rng()}
    for name, module in model.named_modules():
        if isinstance(getattr(module, "_rng", None), np.random.Generator):
            gens[f"layer {name}"] = module._rng
    return gens


def load_data(config: TrainConfig, progress: bool = True, log=print, download: bool = True) -> Dataset:
    """The data set a run's settings name: ``config.dataset`` at ``config.size`` from ``config.data_dir``,
    with its class count, task type and memory budget (GB)."""
    budget = None if config.memory_budget is None else int(config.memory_budget * 1e9)
    return load(sized_name(config.dataset, config.size), config.data_dir, download=download, progress=progress,
                num_classes=config.num_classes, memory_budget=budget, log=log, task=config.task)


def _train(config: TrainConfig, run_dir: Path, dataset, progress: bool, log, figures: bool, create=None,
           resumed=None) -> RunResult:
    """The run itself: fresh (``create`` makes the folder once the data and the model are known to
    work) or ``resumed`` = (checkpoint, saved config.json). As one rank of an MPI job other than rank 0
    (``distributed``), the same computation with nothing printed and no file written."""
    if not distributed.is_main():
        with files.discarding():
            return _train_here(config, run_dir, dataset, False, _silent, False,
                               create=None if create is None else (lambda: None), resumed=resumed)
    return _train_here(config, run_dir, dataset, progress, log, figures, create, resumed)


def _silent(*args, **kwargs):
    pass


def _stop_agreed(stop) -> bool:
    """Whether to stop here: Ctrl-C on this process, or, in an MPI job, on any rank (every rank asks at
    the same points, so that all stop at the same batch)."""
    if not distributed.active():
        return bool(stop.requested)
    return bool(distributed.sum_in_rank_order([1.0 if stop.requested else 0.0])[0] > 0)


def _train_here(config: TrainConfig, run_dir: Path, dataset, progress: bool, log, figures: bool, create=None,
                resumed=None) -> RunResult:
    ck, saved = resumed if resumed else (None, None)
    device = resolve_device(config.device)
    show = bars(progress)           # in a log file one line per epoch (``log``), no redraws
    if dataset is None:
        dataset = load_data(config, progress=show, log=log)
    _data_checks(config, dataset, saved, log)

    train, val, test = dataset.train, dataset.val, dataset.test
    x_train, y_train = train.images, train.labels
    if config.limit_train:
        x_train, y_train = head(x_train, config.limit_train), y_train[:config.limit_train]
    K = dataset.num_classes
    manual_seed(config.seed)
    model = _build_model(config, dataset)
    shuffle_rng = np.random.default_rng([config.seed, 1])
    augment, augment_rng = make_augment(config), np.random.default_rng([config.seed, 2])
    model.to(device)
    xs = {"train": (x_train, y_train), "val": (val.images, val.labels), "test": (test.images, test.labels)}
    xs = {k: on_device(x, y, device) for k, (x, y) in xs.items()}
    loss_fn, target = make_loss(config, y_train, K, device)
    opt = make_optimizer(config, model)
    n_batches = num_batches(len(y_train), config.batch_size)
    last, ranks = len(y_train) % config.batch_size, distributed.world_size()
    if distributed.active() and (config.batch_size < ranks or 0 < last < ranks):
        what = "batches" if config.batch_size < ranks else f"a last batch of {last} image(s)"
        raise UsageError(f"--batch-size {config.batch_size} leaves {what} with fewer images than the {ranks} ranks, "
                         f"which share every batch: choose another --batch-size (or fewer ranks)")
    scheduler, per_batch = make_scheduler(config, opt, n_batches)
    # a recorded CUDA graph holds the step's hyperparameters: a rate that changes every batch would
    # record a graph per batch, so such runs step op by op on a GPU
    graph = config.cuda_graphs and not per_batch
    step = TrainStep(model, loss_fn, opt, target=target, graph=graph, workers=config.workers,
                     max_grad_norm=config.grad_clip)
    generators = _generators(model, shuffle_rng, augment_rng)

    result = RunResult(run_dir)
    history, best, train_seconds = result.history, {"val_acc": -1.0, "epoch": 0, "state": None}, []
    position = checkpoint.Position()
    if ck is not None:
        _restore(ck, run_dir, model, opt, scheduler, generators)
        history.extend(ck.history)
        best, train_seconds, position = ck.best, list(ck.train_seconds), ck.position
    else:
        create()

    # (an MPI job's ranks each run their share of a batch whole: one rank per core)
    parts = step.parts_for(config.batch_size) if device == "cpu" and not distributed.active() else 1
    settings = _settings(config, saved, dataset, model, device, parts, len(y_train), position)
    write_json(run_dir / "config.json", settings)
    log(_describe(config, model, augment, device, parts, dataset, len(y_train)))
    if distributed.active():
        log(f"{distributed.world_size()} ranks (MPI), each with its share of every batch: "
            + ", ".join(f"rank {p['rank']} pid {p['pid']} on {p['host']}"
                        for p in (settings["resumed"][-1] if saved else settings).get("ranks", [])))
    log(f"run folder: {run_dir}" + (f" (resumed after epoch {position.epoch}"
                                     + (f", batch {position.batch}" if position.batch else "") + ")" if ck else ""))

    writer = checkpoint.Writer(run_dir / checkpoint.FILE, model, opt, scheduler, generators)
    try:
        with Interrupts() as stop:
            try:
                for epoch in range(position.epoch + 1, config.epochs + 1):
                    epoch_start = generator_state(shuffle_rng)
                    skip, total, correct, seen = position.batch, position.loss_total, position.hits, position.seen
                    t0 = time.perf_counter() - position.seconds
                    # a resumed epoch draws the same order (same seed) and skips the batches trained before
                    bar = tqdm(batches(*xs["train"], config.batch_size, shuffle=True, rng=shuffle_rng, start=skip,
                                       device=device),
                               total=n_batches, initial=skip, desc=f"epoch {epoch}/{config.epochs}", leave=False,
                               disable=not show, unit="batch")
                    for b, (xb, yb) in enumerate(bar, start=skip + 1):
                        if augment is not None:
                            xb = augment(xb, augment_rng)
                        try:
                            loss, hits = step(xb, yb)
                        except NonFiniteLoss as e:
                            raise TrainingDiverged(f"the loss became {e.loss} at epoch {epoch}, batch {b} of "
                                                   f"{n_batches}; try a lower --lr (now {config.lr:g})") from None
                        total += loss * len(yb)
                        correct += hits
                        seen += len(yb)
                        bar.set_postfix(loss=f"{total / seen:.4f}", acc=f"{correct / seen:.3f}")
                        if per_batch:
                            scheduler.step()
                        if _stop_agreed(stop) and b < n_batches:
                            bar.close()
                            position = checkpoint.Position(epoch - 1, b, total, correct, seen, time.perf_counter() - t0)
                            generators_now = dict(writer.states(), shuffle=epoch_start)
                            writer.write(position, history, best, train_seconds, generators_now)
                            raise _Stopped(f"epoch {epoch}, batch {b} of {n_batches}")
                    bar.close()
                    if scheduler is not None and not per_batch:
                        scheduler.step()
                    train_seconds.append(time.perf_counter() - t0)
                    val_loss, val_acc = evaluate_split(model, *xs["val"], loss_fn, target)
                    row = {"epoch": epoch, "train_loss": total / seen, "train_acc": correct / seen,
                           "val_loss": val_loss, "val_acc": val_acc, "seconds": time.perf_counter() - t0}
                    history.append(row)
                    if val_acc > best["val_acc"]:
                        best = {"val_acc": val_acc, "epoch": epoch, "state": model.state_dict()}   # a copy
                    position = checkpoint.Position(epoch)
                    log(f"epoch {epoch:>3}/{config.epochs}  train loss {row['train_loss']:.4f} acc "
                        f"{row['train_acc']:.4f}  val loss {val_loss:.4f} acc {val_acc:.4f}  {row['seconds']:.1f}s")
                    _write_history(run_dir, history)
                    stopping = _stop_agreed(stop)
                    if writer.due() or epoch == config.epochs or stopping:
                        writer.write(position, history, best, train_seconds)
                    settings["epochs_done"] = epoch
                    write_json(run_dir / "config.json", settings)
                    if stopping and epoch < config.epochs:
                        raise _Stopped(f"the end of epoch {epoch}")
                if not history:
                    raise UsageError("no epoch to train")   # cannot happen: --epochs >= 1
                _finish(config, run_dir, model, best, history, train_seconds, xs, loss_fn, target, test, dataset,
                        settings, figures, stop, result, log, device, position)
            except _Stopped as where:
                _stopped(run_dir, settings, model, best, history, config, dataset, result, log, str(where))
    except TrainingDiverged:
        result.status = "diverged"
        settings.update(status="diverged", epochs_done=len(history))
        write_json(run_dir / "config.json", settings)
        _write_history(run_dir, history)
        raise
    except UsageError:
        raise
    except KeyboardInterrupt:           # raised, not signalled (the handler only sets a flag): a thread's run
        result.status = "interrupted"
        settings.update(status="interrupted", stopped_at="a point the last checkpoint does not cover",
                        epochs_done=len(history))
        with contextlib.suppress(Exception):
            write_json(run_dir / "config.json", settings)
        raise
    except BaseException as e:          # a bug, a full disk
        settings.update(status="failed", error=f"{type(e).__name__}: {e}", epochs_done=len(history))
        with contextlib.suppress(Exception):
            write_json(run_dir / "config.json", settings)
        raise
    return result


def _restore(ck, run_dir, model, opt, scheduler, generators: dict):
    """Everything the checkpoint ``ck`` holds put back: parameters and buffers, the optimizer's and the
    scheduler's state, every generator's."""
    if ck.optimizer_state["type"] != type(opt).__name__:
        raise CheckpointError(f"{run_dir / checkpoint.FILE} holds {ck.optimizer_state['type']} state, but the "
                              f"run's settings make {type(opt).__name__}")
    model.load_state_dict(ck.model_state)
    opt.load_state_dict(ck.optimizer_state)
    if scheduler is not None and ck.scheduler_state is not None:
        scheduler.load_state_dict(ck.scheduler_state)
    for name, rng in generators.items():
        if name in ck.generators:
            set_generator_state(rng, ck.generators[name])


def _settings(config, saved, dataset, model, device, parts, train_size, position) -> dict:
    """What config.json records: every setting and where the run comes from (a new run), or the saved
    record with this resumption added; status "running". An MPI job's ranks are listed (rank, host,
    pid), and each resumption records its world size."""
    now = _dt.datetime.now().isoformat(timespec="seconds")
    processes = distributed.processes()         # (a collective: every rank calls it)
    command = " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
    if saved is None:
        settings = {**asdict(config), "device_used": device, "parts_per_batch": parts,
                    "world_size": distributed.world_size(),
                    **({"ranks": processes} if distributed.active() else {}),
                    "num_parameters": model.num_parameters(),
                    "dataset_file": str(dataset.path), "dataset_md5": dataset.md5,
                    "label_names": dataset.label_names, "channels": dataset.channels,
                    "image_size": dataset.image_size, "num_classes": dataset.num_classes,
                    "train_size": train_size, "val_size": len(dataset.val), "test_size": len(dataset.test),
                    "images_streamed_from": dataset.streamed_from,
                    "normalization": "x / 255 scaled to [0, 1], then (x - 0.5) / 0.5",
                    "versions": versions(), "machine": machine(), "started": now, "command": command}
    else:
        settings = dict(saved, epochs=config.epochs, data_dir=config.data_dir)
        settings["resumed"] = saved.get("resumed", []) + [{"at": now, "from_epoch": position.epoch,
                                                            "from_batch": position.batch, "command": command,
                                                            "machine": machine()}]
        for key in ("stopped_at", "error", "finished"):
            settings.pop(key, None)
        settings["resumed"][-1]["world_size"] = distributed.world_size()
        if distributed.active():
            settings["resumed"][-1]["ranks"] = processes
    settings.update(status="running", epochs_done=position.epoch, pid=os.getpid(), host=socket.gethostname())
    return settings


def _describe(config, model, augment, device, parts, dataset, train_size) -> str:
    """The run's first line: network, recipe, batches, device, data."""
    extras = [f"weight decay {config.weight_decay:g}" if config.weight_decay else "",
              f"{config.scheduler} schedule" if config.scheduler != "none" else "",
              f"{config.warmup_epochs} warmup epoch(s)" if config.warmup_epochs else "",
              f"label smoothing {config.label_smoothing:g}" if config.label_smoothing else "",
              f"gradients clipped to norm {config.grad_clip:g}" if config.grad_clip else "",
              f"augmented by {augment}" if augment else ""]
    extras = "".join(f", {e}" for e in extras if e)
    return (f"{config.preset or config.arch}: {config.arch.upper()} ({model.num_parameters():,} parameters), "
            f"{config.optimizer} lr={config.lr:g}{extras}, loss "
            f"{'binary cross-entropy per label' if dataset.multi_label else config.loss}, {config.epochs} epochs of batch "
            f"{config.batch_size} on {device}{f' (split in {parts} parts, one thread each)' if parts > 1 else ''}; "
            f"{dataset.name}: {train_size} train / {len(dataset.val)} val / {len(dataset.test)} test")


def _stopped(run_dir, settings, model, best, history, config, dataset, result, log, where: str):
    """Ctrl-C: the checkpoint is written; the best weights so far go to model.npz, the status says where."""
    result.status = "interrupted"
    if best["state"] is not None:
        model.load_state_dict(best["state"])
        save_model(run_dir / "model.npz", model, _model_meta(config, dataset, best, settings))
    settings.update(status="interrupted", stopped_at=where, epochs_done=len(history),
                    finished=_dt.datetime.now().isoformat(timespec="seconds"))
    write_json(run_dir / "config.json", settings)
    saved = f"; the best weights so far (epoch {best['epoch']}) are in model.npz" if best["state"] is not None else ""
    log(f"interrupted at {where}: checkpoint saved{saved}. Continue with: python -m nnscratch.train "
        f"--resume {run_dir}")


def _model_meta(config, dataset, best, settings) -> dict:
    return {"arch": config.arch, "in_channels": dataset.channels, "image_size": dataset.image_size,
            "num_classes": dataset.num_classes, "hidden_size": config.hidden_size,
            "hidden_layers": config.hidden_layers, "widths": config.widths, "blocks": config.blocks,
            "dropout": config.dropout, "label_names": dataset.label_names, "dataset": dataset.name,
            "best_epoch": best["epoch"], "normalization": settings["normalization"], "nnscratch": __version__}


def _finish(config, run_dir, model, best, history, train_seconds, xs, loss_fn, target, test, dataset, settings,
            figures, stop, result, log, device, position):
    """After the last epoch: the last weights' test accuracy, the best weights into model.npz, their test
    metrics and figures; the status "completed" last. Ctrl-C here stops before the next file (the
    checkpoint of the last epoch is written: --resume does this again)."""
    def check():
        if _stop_agreed(stop):
            raise _Stopped("the final evaluation")
    last_test_acc = evaluate_split(model, *xs["test"], loss_fn, target)[1]
    check()
    model.load_state_dict(best["state"])
    save_model(run_dir / "model.npz", model, _model_meta(config, dataset, best, settings))
    check()
    t0 = time.perf_counter()
    probs = predict(model, xs["test"][0], multi_label=dataset.multi_label)
    infer_s = time.perf_counter() - t0
    report = report_for(dataset, test.labels, probs)
    if config.tta:
        # the figures above are without test-time augmentation; with it, the same metrics again
        tta_report = report_for(dataset, test.labels, predict(model, xs["test"][0], tta=True,
                                                              multi_label=dataset.multi_label))
        report["tta"] = {k: tta_report[k] for k in ("accuracy", "balanced_accuracy", "auc", "macro")}
    check()
    report.update(
        split="test", dataset=dataset.name, best_epoch=best["epoch"], best_val_acc=best["val_acc"],
        last_epoch=len(history), last_epoch_test_accuracy=last_test_acc,
        timing={"train_seconds_total": sum(train_seconds), "train_seconds_per_epoch": float(np.mean(train_seconds)),
                "epoch_seconds_total": sum(h["seconds"] for h in history),
                "inference_seconds": infer_s, "inference_images_per_second": len(test) / infer_s,
                "inference_batch_size": eval_batch(xs["test"][0]), "device": device})
    write_json(run_dir / "metrics.json", report)
    if figures:
        write_figures(run_dir, history, report, title=config.preset or config.arch)
    check()
    settings.update(status="completed", epochs_done=len(history),
                    finished=_dt.datetime.now().isoformat(timespec="seconds"))
    write_json(run_dir / "config.json", settings)
    result.metrics = report
    auc = "undefined" if report["auc"] is None else f"{report['auc']:.4f}"
    log(f"test accuracy {report['accuracy']:.4f} with the best-validation weights (epoch {best['epoch']}), "
        f"{last_test_acc:.4f} with the last epoch's; macro F1 {report['macro']['f1']:.4f}, AUC {auc}")
    if config.tta:
        tta_auc = "undefined" if report["tta"]["auc"] is None else f"{report['tta']['auc']:.4f}"
        log(f"with test-time augmentation (the mean over 8 flips and turns): accuracy "
            f"{report['tta']['accuracy']:.4f}, AUC {tta_auc}")
    log(f"wrote {run_dir}/: config.json history.json history.csv model.npz checkpoint.npz metrics.json"
        + (" and 4 figures" if figures else ""))


def _write_history(run_dir: Path, history: list):
    write_json(run_dir / "history.json", history)
    cols = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]
    lines = [",".join(cols)] + [",".join(f"{h[c]:.6g}" if c != "epoch" else str(h[c]) for c in cols)
                                for h in history]
    write_text(run_dir / "history.csv", "\n".join(lines) + "\n")


def report_for(dataset: Dataset, labels, probs) -> dict:
    """metrics.json's report for the dataset's task, with MedMNIST's two figures and the task."""
    if dataset.multi_label:
        report = multilabel_report(labels, probs, dataset.label_names)
    else:
        report = classification_report(labels, probs, dataset.label_names)
    report.update(task=dataset.task, **medmnist_scores(dataset.task, labels, probs))
    return report


def write_figures(run_dir: Path, history: list, report: dict, title: str, suffix: str = ""):
    """The four figures of a run (a multi-label task's three: no confusion matrix, the labels not
    being exclusive); ``suffix`` (e.g. "_val") marks figures of another split."""
    split = report.get("split", "test")
    if history:
        plots.curves(history, "loss", run_dir / "loss_curves.png", f"{title}: loss per epoch")
        plots.curves(history, "acc", run_dir / "accuracy_curves.png", f"{title}: accuracy per epoch")
    per = "label" if "exact_match" in report else "class"
    plots.per_class_precision_recall(report, run_dir / f"per_class_precision_recall{suffix}.png",
                                     f"{title}: precision and recall per {per} ({split})")
    if "confusion_matrix" in report:
        plots.confusion(report, run_dir / f"confusion_matrix{suffix}.png",
                        f"{title}: confusion matrix ({split}, accuracy {report['accuracy']:.3f})")
