"""Train one recipe on each MedMNIST 2-D set and set MedMNIST's scores beside its published ResNet-18.

    python -m nnscratch.benchmark [--datasets bloodmnist pathmnist ...] [--out runs/benchmark]
                                  [any flag of python -m nnscratch.train: --arch cnn --size 28 --epochs 15 ...]

For each set listed (default: MedMNIST's twelve 2-D sets) that is present or can be fetched, trains
the recipe the training flags describe into OUT/runs/<set>[_<size>]/ (a run folder of
``python -m nnscratch.train``), then writes OUT.md and OUT.json: per set MedMNIST's ACC and AUC
(``metrics.medmnist_scores``, the best-validation weights on the test split), the training time,
and MedMNIST v2's published ResNet-18 (28) and ResNet-18 (224) figures for that set. A set that
cannot be had (no file, no network), or that fails to train, is a row saying why; the others are
still trained and the table still written. Run the same command again after Ctrl-C: completed
runs with the same settings are kept, a stopped one continues from its checkpoint.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from . import checkpoint, distributed, runfolder, train
from .cli import ArgumentParser, UsageError, run_cli
from .data import DataError
from .files import read_json_object, write_json, write_text
from .medmnist_info import PUBLISHED_RESNET18, sized_name
from .training import RunResult, TrainingDiverged, load_data, machine, resume, run, versions

ALL = tuple(PUBLISHED_RESNET18)          # MedMNIST's twelve 2-D sets, in its tables' order
OWN_FLAGS = ("--dataset", "--out", "--resume", "--overwrite")   # set per run by the benchmark itself
# settings that do not change what a run computes (a kept run may differ in these): the preset's name
# (its values are compared), and num_classes, which config.json records as the data set's count
NOT_RECIPE = ("out", "data_dir", "memory_budget", "dataset", "num_classes", "preset")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m nnscratch.benchmark", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                       epilog="Every other flag is passed to python -m nnscratch.train (see its --help): the recipe "
                              "(--preset or --arch and its settings), --size, --data-dir, --device, --seed, ...; "
                              "the same recipe for every set.")
    p.add_argument("--datasets", nargs="+", default=list(ALL), metavar="NAME",
                   help=f"MedMNIST 2-D sets (or files of one's own) to train on (default: all twelve: "
                        f"{' '.join(ALL)})")
    p.add_argument("--out", default="runs/benchmark",
                   help="the table goes to OUT.md and OUT.json, the run folders to OUT/runs/ (default: %(default)s)")
    p.add_argument("--no-fetch", dest="fetch", action="store_false",
                   help="use only files already present; a missing set becomes a row saying so (default: fetch "
                        "missing files from Zenodo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (default: bars on a terminal)")
    p.add_argument("--overwrite", action="store_true",
                   help="train every set anew, replacing its run folder (default: keep a completed run with the "
                        "same settings, continue a stopped one)")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, recipe_flags = build_parser().parse_known_args(argv)

    def body():
        distributed.refuse_launcher("python -m nnscratch.benchmark")
        own = [f for f in recipe_flags if f.split("=")[0] in OWN_FLAGS]
        if own:
            raise UsageError(f"{own[0].split('=')[0]} is set by the benchmark for each set (--datasets names the "
                             f"sets, --out the folder); leave it out")
        recipe = _recipe(recipe_flags)
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file, not a folder: name a folder for the benchmark")
        runfolder.check_out(out / "runs", overwrite=True)     # writable, not under a file
        start = time.perf_counter()
        rows, status = [], 0
        for name in args.datasets:
            row, stopped = _one(name, recipe, out, args)
            rows.append(row)
            if stopped:
                status = 130
                rows += [{"dataset": n, "skipped": "interrupted before its turn"}
                         for n in args.datasets[len(rows):]]
                break
        context = {"command": " ".join(["python -m nnscratch.benchmark"] + argv),
                   "date": _dt.date.today().isoformat(), "wall_minutes": (time.perf_counter() - start) / 60,
                   "machine": machine(), "versions": versions(), "size": recipe.size,
                   "recipe": {k: v for k, v in asdict(recipe).items() if k not in NOT_RECIPE},
                   "preset": recipe.preset, "rows": rows}
        write_json(out.parent / f"{out.name}.json", context)
        write_text(out.parent / f"{out.name}.md", markdown(context))
        done = sum("medmnist_acc" in r for r in rows)
        print(f"wrote {out.parent / (out.name + '.md')} and .json: {done} of {len(rows)} sets trained "
              f"({context['wall_minutes']:.1f} minutes)")
        if status:
            print("interrupted: run the same command again to continue where it stopped", file=sys.stderr)
        return status
    return run_cli(body)


def _recipe(flags: list):
    """The training recipe the flags describe (python -m nnscratch.train's parser and checks; a flag
    neither command knows is refused by argparse, exit status 2)."""
    parser = train.build_parser()
    parser.prog = "python -m nnscratch.benchmark"
    return train.config_from_args(parser.parse_args(flags))


def _one(name: str, recipe, out: Path, args) -> tuple[dict, bool]:
    """(the table's row for one set, whether Ctrl-C stopped its run)."""
    sized = sized_name(name, recipe.size)
    row = {"dataset": name, "file": f"{sized}.npz", "published": _published(name)}
    quiet = args.quiet
    config = replace(recipe, dataset=name, out=str(out / "runs" / sized))
    try:
        dataset = load_data(config, progress=not quiet, download=args.fetch)
    except DataError as e:
        reason = str(e).splitlines()[0]
        print(f"{name}: skipped: {reason}", file=sys.stderr)
        return dict(row, skipped=reason), False
    trained_on = min(len(dataset.train), recipe.limit_train or len(dataset.train))
    row.update(task=dataset.task, images=[trained_on, len(dataset.val), len(dataset.test)])
    print(f"{name}: {dataset.task}, {len(dataset.train):,} training images of {dataset.channels} x "
          f"{dataset.image_size} x {dataset.image_size}", file=sys.stderr)
    try:
        result = _run_or_continue(config, dataset, args, quiet)
    except TrainingDiverged as e:
        return dict(row, skipped=f"training diverged: {e}"), False
    except UsageError as e:
        return dict(row, skipped=str(e).splitlines()[0]), False
    if result.status == "interrupted":
        return dict(row, skipped="interrupted"), True
    folder = Path(config.out)
    metrics = read_json_object(folder / "metrics.json")
    history = json.loads((folder / "history.json").read_text())
    row.update(run=str(folder), medmnist_acc=metrics["medmnist_acc"], medmnist_auc=metrics["medmnist_auc"],
               best_epoch=metrics["best_epoch"], epochs=len(history),
               train_minutes=metrics["timing"]["train_seconds_total"] / 60)
    return row, False


def _published(name: str) -> dict | None:
    figures = PUBLISHED_RESNET18.get(name)
    if figures is None:
        return None
    return {f"resnet18_{size}": {"acc": acc, "auc": auc} for size, (acc, auc) in figures.items()}


def _run_or_continue(config, dataset, args, quiet: bool) -> RunResult:
    """A completed run with these settings is kept, a stopped one continued; --overwrite trains anew."""
    folder = Path(config.out)
    if args.overwrite or not runfolder.holds_run(folder):
        return run(config, dataset, progress=not quiet, overwrite=True)
    saved = read_json_object(folder / "config.json") if (folder / "config.json").is_file() else {}
    differs = [k for k, v in asdict(config).items() if k not in NOT_RECIPE and k in saved
               and saved[k] != (list(v) if isinstance(v, tuple) else v)]
    if differs:
        raise UsageError(f"{folder} holds a run with other settings ({', '.join(differs)}); give another --out, "
                         f"or add --overwrite to train it anew")
    if saved.get("status") == "completed":
        print(f"{config.dataset}: done before, in {folder}", file=sys.stderr)
        return RunResult(folder, status="completed")
    if (folder / checkpoint.FILE).is_file():
        return resume(folder, dataset=dataset, progress=not quiet)
    return run(config, dataset, progress=not quiet, overwrite=True)


def _score(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def markdown(context: dict) -> str:
    """The table of OUT.md: one row per set, nnscratch beside MedMNIST v2's ResNet-18."""
    size = context["size"]
    recipe = context["preset"] or context["recipe"]["arch"].upper()
    lines = [f"# MedMNIST benchmark: {recipe} at {size} pixels", "",
             f"Command: `{context['command']}`  ",
             f"Date {context['date']}, {context['machine'].get('cpu', '')}.", "",
             "ACC and AUC on each set's test split, as MedMNIST's evaluator defines them for the set's task "
             "(`metrics.medmnist_scores`), of the weights with the best validation accuracy. ResNet-18: "
             "MedMNIST v2 (Yang et al., Scientific Data 10:41, 2023), Table 3.", "",
             f"| set | task | train / val / test | {recipe} ACC | AUC | ResNet-18 (28) ACC | AUC | "
             f"ResNet-18 (224) ACC | AUC | training |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in context["rows"]:
        pub = r.get("published") or {}
        p28, p224 = pub.get("resnet18_28", {}), pub.get("resnet18_224", {})
        published = [_score(p28.get("acc")), _score(p28.get("auc")), _score(p224.get("acc")), _score(p224.get("auc"))]
        images = " / ".join(f"{n:,}" for n in r["images"]) if "images" in r else ""
        if "medmnist_acc" in r:
            # four decimals: MedMNIST's three would round 0.9749 up to 0.975
            ours = [f"**{r['medmnist_acc']:.4f}**", "n/a" if r["medmnist_auc"] is None else f"**{r['medmnist_auc']:.4f}**"]
            trained = f"{r['train_minutes']:.1f} min, {r['epochs']} epochs"
        else:
            ours, trained = ["", ""], f"skipped: {r['skipped']}"
        lines.append("| " + " | ".join([r["dataset"], r.get("task", ""), images, *ours, *published, trained]) + " |")
    settings = context["recipe"]
    unused = {"cuda_graphs", "device"} | ({"momentum"} if settings["optimizer"] != "sgd" else set()) \
        | ({"hidden_layers", "hidden_size"} if settings["arch"] != "mlnn" else set())
    shown = {k: v for k, v in settings.items()
             if (k == "seed" or v not in (None, False, "none", 0, 0.0)) and k not in unused}
    lines += ["", "Recipe: " + ", ".join(f"{k} {v}" for k, v in shown.items()) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    from nnscratch.benchmark import main as _main   # the imported module's classes, as run_cli expects
    sys.exit(_main())
