"""Evaluate a run's saved model on a split of its dataset; print the metrics and redraw the figures.

    python -m nnscratch.evaluate RUN_DIR [--split test|val] [--tta]

Writes metrics_<split>.json, per_class_precision_recall_<split>.png and
confusion_matrix_<split>.png into RUN_DIR (training's own metrics.json is left as it was);
with --tta the names end in _<split>_tta.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from . import distributed, models
from .cli import ArgumentParser, UsageError, run_cli
from .data import SPLITS, load, on_device
from .errors import CheckpointError
from .files import load_checkpoint, read_json_object, write_json
from .metrics import format_report
from .training import eval_batch, predict, report_for, resolve_device, write_figures


def load_model(run_dir: Path):
    """(model, meta) rebuilt from RUN_DIR/model.npz."""
    path = run_dir / "model.npz"
    state, meta = load_checkpoint(path)                  # CheckpointError: one line naming the file
    try:
        model = models.build(meta["arch"], meta["in_channels"], meta["image_size"], meta["num_classes"],
                             meta.get("hidden_size"), meta.get("hidden_layers", 1), widths=meta.get("widths"),
                             blocks=meta.get("blocks"), dropout=meta.get("dropout", 0.0))
    except KeyError as e:
        raise CheckpointError(f"{path} does not rebuild a model: its metadata has no {e}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} does not rebuild a model: {e}") from None
    try:
        model.load_state_dict(state)
    except CheckpointError as e:
        raise CheckpointError(f"{path} does not fit the model it describes: {e}") from None
    return model, meta


def evaluate(run_dir, split: str = "test", data_dir=None, dataset_name=None, device: str = "auto",
             progress: bool = True, tta: bool = False, memory_budget: float | None = None) -> dict:
    """Metrics of the saved model on ``split``; writes the split's metrics and figures. With ``tta`` the
    probabilities are averaged over each image's 8 flips and quarter turns."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"no run folder at {run_dir}")
    model, meta = load_model(run_dir)
    config = {}
    if (run_dir / "config.json").is_file():
        config = read_json_object(run_dir / "config.json")
    name = dataset_name or meta.get("dataset") or config.get("dataset", "bloodmnist")
    budget = None if memory_budget is None else int(memory_budget * 1e9)
    dataset = load(name, data_dir or config.get("data_dir"), progress=progress, memory_budget=budget,
                   # a file of one's own: the classes and task type it was trained with
                   num_classes=None if dataset_name else config.get("num_classes"),
                   task=None if dataset_name else config.get("task"))
    got = (dataset.channels, dataset.image_size, dataset.num_classes)
    want = (meta["in_channels"], meta["image_size"], meta["num_classes"])
    if got != want:
        raise UsageError(f"the model in {run_dir} takes {want[0]} x {want[1]} x {want[1]} images and "
                         f"{want[2]} classes, but {dataset.name} has {got[0]} x {got[1]} x {got[1]} and {got[2]}")
    device = resolve_device(device)
    model.to(device)
    part = dataset.split(split)
    x, _ = on_device(part.images, None, device)
    t0 = time.perf_counter()
    probs = predict(model, x, tta=tta, multi_label=dataset.multi_label)
    seconds = time.perf_counter() - t0
    report = report_for(dataset, part.labels, probs)
    report.update(split=split, dataset=dataset.name, best_epoch=meta.get("best_epoch"), tta=tta,
                  timing={"inference_seconds": seconds, "inference_images_per_second": len(part) / seconds,
                          "inference_batch_size": eval_batch(x), "device": device})
    suffix = f"_{split}" + ("_tta" if tta else "")
    write_json(run_dir / f"metrics{suffix}.json", report)
    title = (config.get("preset") or meta["arch"]) + (", test-time augmentation" if tta else "")
    write_figures(run_dir, [], report, title, suffix=suffix)
    return report


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m nnscratch.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by python -m nnscratch.train")
    p.add_argument("--split", choices=list(SPLITS[1:]), default="test", help="which split to evaluate")
    p.add_argument("--data-dir", default=None, help="folder searched first for the dataset "
                   "(default: the run's, then $NNSCRATCH_DATA_DIR, then ~/.medmnist)")
    p.add_argument("--dataset", default=None, help="dataset name (default: the one the model was trained on)")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto", help="where to compute")
    p.add_argument("--tta", action="store_true", help="average the probabilities over each image's 8 flips and "
                   "quarter turns (test-time augmentation); writes metrics_<split>_tta.json")
    p.add_argument("--memory-budget", type=float, metavar="GB",
                   help="gigabytes the images may take in memory as float32; a larger set is read from disk a batch "
                        "at a time (default: $NNSCRATCH_MEMORY_BUDGET, else a quarter of this machine's memory)")
    args = p.parse_args(argv)

    def body():
        distributed.refuse_launcher("python -m nnscratch.evaluate")
        if args.memory_budget is not None and not args.memory_budget > 0:
            raise UsageError(f"--memory-budget must be a positive number of GB, got {args.memory_budget}")
        report = evaluate(args.run_dir, args.split, args.data_dir, args.dataset, args.device, tta=args.tta,
                          memory_budget=args.memory_budget)
        print(format_report(report, f"{args.run_dir}: {report['dataset']} {args.split} split, "
                                    f"{report['num_samples']} images"))
        print(f"inference: {report['timing']['inference_images_per_second']:.0f} images/s on "
              f"{report['timing']['device']}; wrote metrics_{args.split}{'_tta' if args.tta else ''}.json and "
              f"figures to {args.run_dir}")
        return 0
    return run_cli(body)


if __name__ == "__main__":
    from nnscratch.evaluate import main as _main
    sys.exit(_main())
