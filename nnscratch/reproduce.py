"""Re-run the paper's six configurations and write the report beside the paper's.

    python -m nnscratch.reproduce [--epochs 15] [--seeds 0 ...] [--device auto] [--out docs/results]
    python -m nnscratch.reproduce --report-only [--out docs/results]

Trains MLNN-Test1..3 and CNN-Test1..3 exactly as Tables 1 and 2 set them, each seed
into its own run folder under OUT/runs/ (under ``mpiexec -n N``, the runs are shared out
over the N ranks, each run in one process, and rank 0 writes the report), then writes OUT.md (docs/results.md by
default) with the table, the targets, the comparison with the paper and the
figures in OUT/. What the report says of the reproduction (command, date, machine)
is kept in OUT/reproduction.json, so that --report-only can redraw the report and
its figures from the run folders, with the current report code, without training.
"""
from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from . import checkpoint, distributed, runfolder
from .cli import ArgumentParser, UsageError, run_cli
from .data import load
from .files import read_json_object, write_json
from .progress import bars
from .report import CONFIGS, write_report
from .training import (BATCH_SIZES, PRESETS, RunResult, TrainConfig, TrainingDiverged, machine, resolve_device, resume,
                       run, versions)


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m nnscratch.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=15, help="epochs per configuration (the paper's 15)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed; several give mean ± std")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto", help="where to train")
    p.add_argument("--out", default="docs/results", help="figures and run folders go here, the report to OUT.md")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), metavar="NAME",
                   help=f"a subset of {', '.join(CONFIGS)}")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per step (default: each architecture's, 128 for the MLNN and 64 for the CNN, "
                        "chosen on the validation split)")
    p.add_argument("--workers", type=int, default=None,
                   help="on the CPU, the parts each batch is split into, one core each, as for "
                        "python -m nnscratch.train; give it to repeat the numbers bit for bit on a machine "
                        "with another core count (default: the CNN one part per core, the MLNN 1)")
    p.add_argument("--dataset", default="bloodmnist", help="MedMNIST 2-D set")
    p.add_argument("--data-dir", default=None, help="folder searched first for the dataset "
                   "(then $NNSCRATCH_DATA_DIR, ~/.medmnist)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="train every run anew, replacing the run folders in OUT/runs/ (default: a run found "
                        "there completed with the same settings is kept, a stopped one continued from its "
                        "checkpoint)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rewrite OUT.md and its figures from the run folders in OUT/runs/ "
                        "(after a change to the report's code); the other flags are then ignored")
    args = p.parse_args(argv)

    def body():
        distributed.init()
        if args.report_only:
            return redraw(Path(args.out)) if distributed.is_main() else 0
        if args.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {args.epochs}")
        if any(s < 0 for s in args.seeds):
            raise UsageError("--seeds must be >= 0")
        if args.workers is not None and args.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {args.workers}")
        device = resolve_device(args.device)
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file, not a folder: name a folder for the reproduction")
        runfolder.check_out(out / "runs", overwrite=True)     # writable, not under a file
        runs_dir = out / "runs"
        dataset = load(args.dataset, args.data_dir, progress=not args.quiet)
        jobs = [(c, s) for c in args.configs for s in args.seeds]
        start = time.perf_counter()
        interrupted = _train_runs(jobs[distributed.rank()::distributed.world_size()], dataset, device, runs_dir,
                                  args, show=distributed.is_main())
        # every rank's runs done (or stopped): the ranks agree, and rank 0 writes the report
        if distributed.sum_in_rank_order([interrupted])[0] > 0:
            if distributed.is_main():
                print("interrupted: run the same command again to continue where it stopped", file=sys.stderr)
            return 130
        if not distributed.is_main():
            return 0
        context = {
            "command": " ".join(["python -m nnscratch.reproduce"] + (sys.argv[1:] if argv is None else list(argv))),
            "date": _dt.date.today().isoformat(), "wall_minutes": (time.perf_counter() - start) / 60,
            "machine": machine(), "versions": versions(), "device": device, "seeds": args.seeds,
            "ranks": distributed.world_size(),
            "epochs": args.epochs, "dataset": dataset.name, "md5": dataset.md5,
            "num_classes": dataset.num_classes,
            "batch_size": batch_text(args.batch_size),
            "sizes": f"{len(dataset.train)} train / {len(dataset.val)} validation / {len(dataset.test)} test images",
        }
        md = out.parent / f"{out.name}.md"
        write_json(out / CONTEXT_FILE, context)
        write_report(md, out, runs_dir, context)
        print(f"wrote {md} and its figures in {out}/ ({context['wall_minutes']:.1f} minutes)")
        return 0
    return run_cli(body)


CONTEXT_FILE = "reproduction.json"


def _train_runs(jobs: list, dataset, device: str, runs_dir: Path, args, show: bool) -> bool:
    """Train (or keep, or continue) the runs of ``jobs`` [(configuration, seed)], each in this process
    alone (an MPI job's rank trains its share of them); True when Ctrl-C stopped one."""
    bar = tqdm(jobs, desc="reproduction", unit="run", disable=not (show and bars(not args.quiet)), position=0)
    log = tqdm.write if show else (lambda *a, **k: None)
    with distributed.alone():
        for c, s in bar:
            bar.set_description(f"reproduction: {c} seed {s}")
            config = TrainConfig(**PRESETS[c], preset=c, epochs=args.epochs, seed=s, device=device,
                                 batch_size=args.batch_size, dataset=args.dataset, data_dir=args.data_dir,
                                 workers=args.workers, out=str(runs_dir / f"{c}-seed{s}"))
            try:
                result = _run_or_continue(config, dataset, args, log=log)
            except TrainingDiverged as e:
                log(f"{c} seed {s}: {e}")
                continue
            if result.status == "interrupted":
                bar.close()
                return True
    return False


def _run_or_continue(config: TrainConfig, dataset, args, log):
    """The run of one (configuration, seed): skipped when its folder holds it completed with these
    settings, continued from its checkpoint when it was stopped, trained anew otherwise; --overwrite
    trains every run anew."""
    folder = Path(config.out)
    if args.overwrite or not runfolder.holds_run(folder):
        return run(config, dataset, progress=not args.quiet, log=log, figures=False, overwrite=True)
    saved = read_json_object(folder / "config.json") if (folder / "config.json").is_file() else {}
    same = all(saved.get(k) == getattr(config, k) for k in ("preset", "seed", "epochs", "batch_size", "workers"))
    if not same:
        raise UsageError(f"{folder} holds a run with other settings (epochs {saved.get('epochs')}, batch "
                         f"{saved.get('batch_size')}); give another --out, or add --overwrite to train it anew")
    if saved.get("status") == "completed":
        log(f"{config.preset} seed {config.seed}: done before, in {folder}")
        return RunResult(folder, status="completed")
    if (folder / checkpoint.FILE).is_file():
        return resume(folder, dataset=dataset, progress=not args.quiet, log=log, figures=False)
    return run(config, dataset, progress=not args.quiet, log=log, figures=False, overwrite=True)


def batch_text(batch_size) -> str:
    """The report's words for the batch size: one given for every run, or each architecture's default."""
    if batch_size:
        return f"batch {batch_size}"
    return ("batch " + " and ".join(f"{BATCH_SIZES[a]} for the {a.upper()}" for a in ("mlnn", "cnn"))
            + " (the paper states none; each chosen on the validation split, see BATCH_SIZES in "
            "nnscratch/training.py)")


def context_from_runs(runs_dir: Path) -> dict:
    """What the report says of a reproduction, read back from its run folders' config.json, for one
    made before reproduction.json existed: the command each run recorded, the span from the first
    run's start to the last one's end (the report's writing not counted), the machine and versions."""
    configs = [json.loads(f.read_text()) for f in sorted(runs_dir.glob("*-seed*/config.json"))]
    configs = [c for c in configs if c.get("status") == "completed"]
    if not configs:
        raise UsageError(f"no completed runs in {runs_dir}: run python -m nnscratch.reproduce first")
    first = configs[0]
    start = min(_dt.datetime.fromisoformat(c["started"]) for c in configs)
    end = max(_dt.datetime.fromisoformat(c["finished"]) for c in configs)
    command = first["command"].split(" ", 1)
    arch_batches = {c["arch"]: c["batch_size"] for c in configs}
    return {
        "command": " ".join(["python -m nnscratch.reproduce"] + command[1:]),
        "date": start.date().isoformat(), "wall_minutes": (end - start).total_seconds() / 60,
        "machine": first["machine"], "versions": first["versions"], "device": first["device_used"],
        "seeds": sorted({c["seed"] for c in configs}), "epochs": first["epochs"],
        "dataset": first["dataset"], "md5": first["dataset_md5"], "num_classes": first["num_classes"],
        "batch_size": batch_text(None if arch_batches == {a: BATCH_SIZES[a] for a in arch_batches}
                                 else first["batch_size"]),
        "sizes": f"{first['train_size']} train / {first['val_size']} validation / {first['test_size']} test images",
    }


def redraw(out: Path) -> int:
    """--report-only: OUT.md and its figures again from OUT/runs/, with the reproduction's own context."""
    runs_dir = out / "runs"
    if not runs_dir.is_dir():
        raise UsageError(f"{runs_dir} does not exist: --report-only redraws a reproduction's report, "
                         f"run python -m nnscratch.reproduce --out {out} first")
    saved = out / CONTEXT_FILE
    context = json.loads(saved.read_text()) if saved.is_file() else context_from_runs(runs_dir)
    context["redrawn"] = _dt.date.today().isoformat()
    md = out.parent / f"{out.name}.md"
    write_report(md, out, runs_dir, context)
    print(f"rewrote {md} and its figures in {out}/ from {runs_dir}/")
    return 0


if __name__ == "__main__":
    from nnscratch.reproduce import main as _main
    sys.exit(_main())
