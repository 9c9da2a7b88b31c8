"""07. Train the paper's MLNN on BloodMNIST and look at what it gets wrong.

    python examples/07_train_mlnn.py            # a short run: 3,000 training images, 2 epochs
    python examples/07_train_mlnn.py --full     # the paper's MLNN-Test1: all images, 15 epochs

The MLNN flattens each 3x28x28 image into 2,352 numbers, so a cell shifted by one
pixel is a different input to it: it has to learn every position separately. It
still reaches about 0.85 test accuracy (docs/results.md); the confusion matrix
shows which cell types it mixes up. Uses the same training code as
``python -m nnscratch.train`` (nnscratch/training.py) and writes its run folder to
examples/out/07_mlnn/.
"""
from _common import OUT, parser
from nnscratch.training import TrainConfig, run


def main(argv=None, arch="mlnn", name="07_mlnn", doc=__doc__):
    p = parser(doc)
    p.add_argument("--full", action="store_true", help="the paper's 15 epochs on all training images")
    p.add_argument("--dataset", default="bloodmnist", help="MedMNIST 2-D set")
    p.add_argument("--data-dir", default=None, help="folder with <dataset>.npz (default: the usual search)")
    args = p.parse_args(argv)
    epochs, limit = (15, None) if args.full else (1 if args.quick else 2, 1000 if args.quick else 3000)
    config = TrainConfig(preset=f"{arch}-test1", arch=arch, epochs=epochs, limit_train=limit,
                         dataset=args.dataset, data_dir=args.data_dir, out=str(OUT / name))
    result = run(config, progress=not args.quick, overwrite=True)      # each run of the example replaces the last
    m = result.metrics
    worst = min(m["per_class"], key=lambda c: c["f1"])
    print(f"hardest class: {worst['name']} (F1 {worst['f1']:.3f}, recall {worst['recall']:.3f}); "
          f"see {OUT / name / 'confusion_matrix.png'}")
    return result


if __name__ == "__main__":
    main()
