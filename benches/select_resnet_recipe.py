"""Choose the ResNet's training recipe on the validation split (never the test split).

    python benches/select_resnet_recipe.py --recipes base shift [--seeds 0] [--epochs 20] [--out runs/recipes]

Each recipe is a set of training flags on top of the common ones (ns.models.resnet, AdamW, the
one-cycle schedule, label smoothing 0.1, batch 128); a recipe that names its own `epochs` overrides
`--epochs`. Every (recipe, seed) trains into its own run
folder; the table printed compares the best validation accuracy (and the epoch it came at) and the
validation loss there. The test split's figures that each run folder also holds are not read here:
the recipe is picked on validation alone, then evaluated once on test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from nnscratch import checkpoint
from nnscratch.training import TrainConfig, resume, run

COMMON = dict(arch="resnet", optimizer="adamw", scheduler="onecycle", label_smoothing=0.1, batch_size=128)
RECIPES = {
    "base": dict(lr=3e-3, weight_decay=0.05, augment="dihedral"),
    "shift": dict(lr=3e-3, weight_decay=0.05, augment="dihedral", translate=2),
    "noaug": dict(lr=3e-3, weight_decay=0.05, augment="none"),
    "lr1e-2": dict(lr=1e-2, weight_decay=0.05, augment="dihedral"),
    "wide": dict(lr=3e-3, weight_decay=0.05, augment="dihedral", widths=(48, 96, 192)),
    "deep": dict(lr=3e-3, weight_decay=0.05, augment="dihedral", blocks=(2, 2, 2)),
    # lr1e-2 trained longer (the one-cycle schedule stretched over 30 epochs) and with two blocks a stage
    "long": dict(lr=1e-2, weight_decay=0.05, augment="dihedral", epochs=30),
    # ... and longer still, once a 30-epoch run took 8.6 of the 15 minutes allowed (Winograd F(4x4, 3x3))
    "long45": dict(lr=1e-2, weight_decay=0.05, augment="dihedral", epochs=45),
    "deep-lr1e-2": dict(lr=1e-2, weight_decay=0.05, augment="dihedral", blocks=(2, 2, 2)),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=["base", "shift"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", default="runs/recipes", help="run folders go to OUT/<recipe>-seed<k>")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    rows = []
    for name in args.recipes:
        for seed in args.seeds:
            folder = Path(args.out) / f"{name}-seed{seed}"
            history_file = folder / "history.json"
            done = (history_file.is_file()
                    and json.loads((folder / "config.json").read_text()).get("status") == "completed")
            if not done and (folder / checkpoint.FILE).is_file():          # stopped part-way: continue it
                resume(folder, data_dir=args.data_dir, progress=False, log=lambda *a: None)
            elif not done:
                flags = {"epochs": args.epochs, **RECIPES[name]}
                run(TrainConfig(**COMMON, **flags, seed=seed, data_dir=args.data_dir, out=str(folder)),
                    progress=False, log=lambda *a: None, overwrite=True)
            history = json.loads(history_file.read_text())
            best = max(history, key=lambda h: h["val_acc"])
            seconds = statistics.median(h["seconds"] for h in history)
            rows.append((name, seed, best["val_acc"], best["epoch"], best["val_loss"], seconds))
            print(f"{name} seed {seed}: best validation accuracy {best['val_acc']:.4f} at epoch {best['epoch']}",
                  file=sys.stderr)
    print("| recipe | flags | seed | best val acc | at epoch | val loss there | s / epoch |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, seed, acc, epoch, loss, seconds in rows:
        flags = ", ".join(f"{k}={v}" for k, v in RECIPES[name].items())
        print(f"| {name} | {flags} | {seed} | {acc:.4f} | {epoch} | {loss:.4f} | {seconds:.1f} |")
    for name in args.recipes:
        accs = [acc for n, _, acc, *_ in rows if n == name]
        print(f"{name}: mean best validation accuracy {statistics.mean(accs):.4f} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
