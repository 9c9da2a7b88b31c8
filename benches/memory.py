"""Peak and per-step memory of a full CNN training run on BloodMNIST.

    python benches/memory.py [--epochs 1] [--arch cnn]

Trains through nnscratch.training.run (the same code as python -m nnscratch.train) and reports
the process's peak resident memory (getrusage ru_maxrss), and the resident memory sampled every
``--every`` optimizer steps, so that growth from step to step would show. Prints a table;
asserts nothing.
"""
from __future__ import annotations

import argparse
import resource
import tempfile


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--arch", default="cnn", choices=["cnn", "mlnn"])
    p.add_argument("--every", type=int, default=50, help="sample the resident size every N steps")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    from nnscratch import training
    from nnscratch.data import load
    before = rss_mb()
    dataset = load("bloodmnist", args.data_dir, progress=False)
    loaded = rss_mb()
    samples = []                                  # (epoch, step, MB)
    with tempfile.TemporaryDirectory() as tmp:
        config = training.TrainConfig(preset=f"{args.arch}-test1", arch=args.arch, epochs=args.epochs,
                                      out=tmp).validate()             # validate() fills in the batch size
        steps_per_epoch = -(-len(dataset.train) // config.batch_size)
        real = training.make_optimizer

        def spying_optimizer(cfg, model):        # sample the resident size after every N-th step
            opt = real(cfg, model)
            step, count = opt.step, [0]

            def counted():
                step()
                count[0] += 1
                if count[0] % args.every == 0 or count[0] % steps_per_epoch == 0:
                    samples.append((1 + (count[0] - 1) // steps_per_epoch, count[0], rss_mb()))
            opt.step = counted
            return opt
        training.make_optimizer = spying_optimizer
        try:
            training.run(config, dataset, progress=False, log=lambda *a: None, figures=False)
        finally:
            training.make_optimizer = real
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{args.arch} training, {args.epochs} epochs, batch {config.batch_size}\n")
    print("| measure | MB |")
    print("| --- | ---: |")
    print(f"| resident before loading data | {before:.0f} |")
    print(f"| resident after loading BloodMNIST (float32) | {loaded:.0f} |")
    for epoch, step, mb in samples:
        print(f"| resident after step {step} (epoch {epoch}) | {mb:.0f} |")
    print(f"| peak resident (ru_maxrss) | {peak:.0f} |")


if __name__ == "__main__":
    main()
