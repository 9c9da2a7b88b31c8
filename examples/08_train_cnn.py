"""08. Train the paper's CNN on BloodMNIST, then look at the cells it misclassifies.

    python examples/08_train_cnn.py            # a short run: 3,000 training images, 2 epochs
    python examples/08_train_cnn.py --full     # the paper's CNN-Test1: all images, 15 epochs

Three Conv2d(3x3) + ReLU + MaxPool2d(2) blocks learn small local detectors (edges,
granules, nucleus shapes) that fire wherever the pattern sits, so the CNN needs no
separate weights per position and beats the MLNN with a seventh of its parameters.
Writes the run folder to examples/out/08_cnn/ and a grid of misclassified test
cells, with their true and predicted names, to examples/out/08_misclassified.png.
"""
import importlib.util
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from _common import figure_path
from nnscratch.data import load
from nnscratch.medmnist_info import short_label
from nnscratch.training import predict

# example 07 holds the training; this one adds the look at the mistakes
_spec = importlib.util.spec_from_file_location("example07", Path(__file__).with_name("07_train_mlnn.py"))
example07 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example07)


def misclassified_grid(model, dataset, path, n=24):
    """The first ``n`` wrong test predictions, as images titled true -> predicted."""
    probs = predict(model, dataset.test.images)
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != dataset.test.labels)[:n]
    cols = 6
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.4, rows * 2.3))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, i in zip(np.atleast_1d(axes).ravel(), wrong):
        img = (dataset.test.images[i].transpose(1, 2, 0) + 1) / 2            # back from [-1, 1] to [0, 1]
        ax.imshow(img.squeeze(), cmap="gray" if img.shape[2] == 1 else None)
        true, guess = dataset.label_names[dataset.test.labels[i]], dataset.label_names[pred[i]]
        ax.set_title(f"{short_label(true)}\n-> {short_label(guess)} ({probs[i, pred[i]]:.2f})", fontsize=6.5)
    fig.suptitle(f"{len(wrong)} of {int((pred != dataset.test.labels).sum())} misclassified test cells "
                 "(true -> predicted, confidence)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return len(wrong)


def main(argv=None):
    result = example07.main(argv, arch="cnn", name="08_cnn", doc=__doc__)
    from nnscratch.evaluate import load_model
    model, meta = load_model(result.run_dir)
    config = json.loads((result.run_dir / "config.json").read_text())
    dataset = load(meta["dataset"], config.get("data_dir"), progress=False)
    path = figure_path("08_misclassified.png")
    shown = misclassified_grid(model, dataset, path)
    print(f"{shown} misclassified cells drawn in {path}")
    return result


if __name__ == "__main__":
    main()
