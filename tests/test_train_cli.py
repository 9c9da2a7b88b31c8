"""python -m nnscratch.train and nnscratch.evaluate end to end on small synthetic data."""
import csv
import json

import numpy as np
import pytest

import nnscratch as ns
from nnscratch import data, evaluate, train, training

from synthetic import write_medmnist

RUN_FILES = {"config.json", "history.json", "history.csv", "model.npz", "metrics.json", "loss_curves.png",
             "accuracy_curves.png", "per_class_precision_recall.png", "confusion_matrix.png"}


@pytest.fixture
def data_dir(data_dir):
    """conftest's folder, with a 4-class file beside tinymnist."""
    write_medmnist(data_dir / "fourmnist.npz", classes=4, size=12, channels=3, seed=1)
    return data_dir


def run_cli(data_dir, out, *flags):
    return train.main(["--dataset", "tinymnist", "--data-dir", str(data_dir), "--out", str(out), "--quiet", *flags])


@pytest.mark.parametrize("arch", ["mlnn", "cnn"])
def test_one_epoch_writes_the_whole_run_folder(arch, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(data_dir, out, "--arch", arch, "--epochs", "1", "--batch-size", "16") == 0
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    printed = capsys.readouterr().out
    assert "epoch   1/1  train loss" in printed and "val loss" in printed and "test accuracy" in printed

    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == arch and config["seed"] == 0 and config["device_used"] == "cpu"
    assert config["status"] == "completed" and config["batch_size"] == 16 and "numpy" in config["versions"]
    assert config["parts_per_batch"] == 1             # 16 images: too few to split (TrainStep.MIN_PART)
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and set(history[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                                                     "seconds"}
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert len(rows) == 1 and float(rows[0]["val_acc"]) == pytest.approx(history[0]["val_acc"], rel=1e-5)

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro", "weighted", "auc", "per_class", "confusion_matrix",
                "timing", "last_epoch_test_accuracy", "best_epoch"):
        assert key in metrics
    assert set(metrics["macro"]) == {"precision", "recall", "f1", "specificity"}
    assert set(metrics["per_class"][0]) >= {"label", "name", "support", "precision", "recall", "f1",
                                            "specificity", "auc"}
    assert set(metrics["timing"]) >= {"train_seconds_total", "train_seconds_per_epoch", "inference_seconds",
                                      "inference_images_per_second"}
    assert np.sum(metrics["confusion_matrix"]) == 30


def test_reported_metrics_agree_with_the_saved_models_predictions(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(data_dir, out, "--arch", "mlnn", "--hidden-size", "32", "--epochs", "4", "--lr", "0.003") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    best = max(range(len(history)), key=lambda i: (history[i]["val_acc"], -i))
    assert metrics["best_epoch"] == history[best]["epoch"]
    # rebuild from model.npz alone and predict the test split
    model, meta = evaluate.load_model(out)
    ds = data.load("tinymnist", data_dir)
    pred = training.predict(model, ds.test.images).argmax(axis=1)
    assert metrics["accuracy"] == pytest.approx(float((pred == ds.test.labels).mean()))
    assert metrics["accuracy"] > 0.6                      # learnable synthetic data, chance 1/3
    # and the evaluate command agrees
    assert evaluate.main([str(out), "--data-dir", str(data_dir)]) == 0
    again = json.loads((out / "metrics_test.json").read_text())
    assert again["confusion_matrix"] == metrics["confusion_matrix"]
    assert "macro average" in capsys.readouterr().out
    assert evaluate.main([str(out), "--split", "val", "--data-dir", str(data_dir)]) == 0
    assert {"metrics_val.json", "confusion_matrix_val.png", "per_class_precision_recall_val.png"} <= \
        {p.name for p in out.iterdir()}


def test_same_seed_gives_the_same_run(data_dir, tmp_path):
    for name in ("a", "b"):
        assert run_cli(data_dir, tmp_path / name, "--arch", "cnn", "--epochs", "2", "--seed", "3") == 0
    ha = json.loads((tmp_path / "a" / "history.json").read_text())
    hb = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [(h["train_loss"], h["val_acc"]) for h in ha] == [(h["train_loss"], h["val_acc"]) for h in hb]


def test_preset_sets_the_papers_values_and_flags_override():
    parser = train.build_parser()
    c = train.config_from_args(parser.parse_args(["--preset", "cnn-test2"]))
    assert (c.arch, c.optimizer, c.lr, c.momentum, c.loss, c.epochs) == ("cnn", "sgd", 0.01, 0.9, "ce", 15)
    c = train.config_from_args(parser.parse_args(["--preset", "mlnn-test3", "--lr", "0.0005", "--epochs", "3"]))
    assert (c.arch, c.optimizer, c.lr, c.loss, c.epochs) == ("mlnn", "adam", 0.0005, "mse", 3)
    assert train.config_from_args(parser.parse_args([])).arch == "mlnn"
    c = train.config_from_args(parser.parse_args(["--preset", "resnet-bloodmnist"]))
    assert (c.arch, c.optimizer, c.lr, c.weight_decay, c.scheduler, c.label_smoothing, c.augment, c.epochs,
            c.batch_size) == ("resnet", "adamw", 1e-2, 0.05, "onecycle", 0.1, "dihedral", 45, 128)
    # the preset is the recipe the study chose (benches/select_resnet_recipe.py), nothing more or less
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
    from select_resnet_recipe import COMMON, RECIPES
    chosen = {**COMMON, **RECIPES["long45"], "loss": "ce"}
    assert {k: getattr(c, k) for k in chosen} == chosen


def test_mse_loss_and_balanced_class_weights_train(data_dir, tmp_path):
    assert run_cli(data_dir, tmp_path / "mse", "--preset", "mlnn-test3", "--hidden-size", "16", "--epochs", "1") == 0
    assert run_cli(data_dir, tmp_path / "bal", "--arch", "mlnn", "--hidden-size", "16", "--epochs", "1",
                   "--class-weights", "balanced") == 0
    assert run_cli(data_dir, tmp_path / "msel", "--arch", "mlnn", "--hidden-size", "16", "--epochs", "1",
                   "--loss", "mse-logits") == 0
    config = json.loads((tmp_path / "mse" / "config.json").read_text())
    assert (config["loss"], config["preset"]) == ("mse", "mlnn-test3")
    assert json.loads((tmp_path / "msel" / "config.json").read_text())["loss"] == "mse-logits"


@pytest.mark.parametrize("name,cls,one_hot", [("ce", ns.CrossEntropyLoss, False), ("mse", ns.SoftmaxMSELoss, False),
                                              ("mse-logits", ns.MSELoss, True)])
def test_each_loss_choice_builds_its_loss(name, cls, one_hot):
    loss, target = training.make_loss(training.TrainConfig(loss=name), np.array([0, 1, 2]), 3, "cpu")
    assert type(loss) is cls
    assert target(np.array([2, 0])).shape == ((2, 3) if one_hot else (2,))


@pytest.mark.parametrize("flags,message", [
    (["--arch", "vgg"], "invalid choice: 'vgg'"),
    (["--loss", "mse", "--label-smoothing", "0.1"], "--label-smoothing needs --loss ce"),
    (["--label-smoothing", "1"], "--label-smoothing must lie in [0, 1)"),
    (["--arch", "cnn", "--widths", "8"], "apply to --arch resnet only"),
    (["--arch", "resnet", "--widths", "8", "16", "--blocks", "1"], "one number per stage"),
    (["--scheduler", "onecycle", "--warmup-epochs", "1", "--epochs", "3"], "onecycle warms up by itself"),
    (["--warmup-epochs", "3", "--epochs", "3"], "--warmup-epochs must lie in [0, --epochs)"),
    (["--grad-clip", "0"], "--grad-clip must be positive"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--translate", "-2"], "--translate must be >= 0"),
    (["--preset", "cnn-test9"], "invalid choice: 'cnn-test9'"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--lr", "-0.1"], "--lr must be a positive number"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--dataset", "nosuchmnist"], "unknown dataset 'nosuchmnist'"),
    (["--preset", "cnn-test1", "--arch", "mlnn"], "contradicts --preset"),
    (["--arch", "cnn", "--hidden-size", "10"], "apply to --arch mlnn only"),
    (["--workers", "0"], "--workers must be at least 1"),
])
def test_bad_input_is_one_clear_line_and_exit_status_2(flags, message, data_dir, tmp_path, capsys):
    args = ["--data-dir", str(data_dir), "--out", str(tmp_path / "x"), "--quiet"]
    if "--dataset" not in flags:
        args += ["--dataset", "tinymnist"]
    code = exit_code(train.main, args + flags)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_resnet_with_every_new_piece_trains_evaluates_and_repeats(data_dir, tmp_path, capsys):
    flags = ["--arch", "resnet", "--widths", "4", "8", "--blocks", "1", "1", "--dropout", "0.1", "--epochs", "2",
             "--batch-size", "16", "--optimizer", "adamw", "--weight-decay", "0.05", "--scheduler", "onecycle",
             "--lr", "0.01", "--label-smoothing", "0.1", "--grad-clip", "5", "--augment", "dihedral",
             "--translate", "1", "--tta"]
    for name in ("a", "b"):
        assert run_cli(data_dir, tmp_path / name, *flags) == 0
    ha, hb = (json.loads((tmp_path / n / "history.json").read_text()) for n in ("a", "b"))
    assert [(h["train_loss"], h["val_acc"]) for h in ha] == [(h["train_loss"], h["val_acc"]) for h in hb]
    out = tmp_path / "a"
    printed = capsys.readouterr().out
    assert "onecycle schedule" in printed and "with test-time augmentation" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["tta"]) == {"accuracy", "balanced_accuracy", "auc", "macro"}
    config = json.loads((out / "config.json").read_text())
    assert config["widths"] == [4, 8] and config["augment"] == "dihedral"
    # the saved model (with its running statistics) rebuilds, and evaluate --tta gives training's TTA figures
    model, meta = evaluate.load_model(out)
    assert meta["widths"] == [4, 8] and "1.running_mean" in model.state_dict()
    assert evaluate.main([str(out), "--data-dir", str(data_dir), "--tta"]) == 0
    again = json.loads((out / "metrics_test_tta.json").read_text())
    assert again["accuracy"] == pytest.approx(metrics["tta"]["accuracy"])
    assert (out / "confusion_matrix_test_tta.png").is_file()


@pytest.mark.parametrize("scheduler, per_batch", [("none", False), ("step", False), ("cosine", True),
                                                  ("onecycle", True)])
def test_each_schedule_choice_builds_its_schedule(scheduler, per_batch):
    config = training.TrainConfig(scheduler=scheduler, epochs=6, lr=0.1)
    opt = training.make_optimizer(config, ns.models.mlnn(hidden_size=4))
    made, batchwise = training.make_scheduler(config, opt, steps_per_epoch=10)
    assert (made is None) == (scheduler == "none") and batchwise == per_batch
    warm = training.TrainConfig(scheduler="cosine", warmup_epochs=2, epochs=6, lr=0.1)
    opt = training.make_optimizer(warm, ns.models.mlnn(hidden_size=4))
    made, _ = training.make_scheduler(warm, opt, steps_per_epoch=10)
    assert opt.lr == pytest.approx(0.01)                  # the warmup starts at lr / 10
    for _ in range(20):
        made.step()
    assert opt.lr == pytest.approx(0.1)                   # and the cosine starts at lr


def test_workers_splits_the_batches_and_is_recorded(data_dir, tmp_path, capsys):
    out = tmp_path / "w"
    assert run_cli(data_dir, out, "--arch", "cnn", "--epochs", "1", "--batch-size", "16", "--workers", "2") == 0
    assert json.loads((out / "config.json").read_text())["parts_per_batch"] == 2
    assert "split in 2 parts" in capsys.readouterr().out


def exit_code(main, argv):
    """What the command's process would exit with: argparse exits itself, our code returns."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_gpu_request_without_gpu_is_refused(data_dir, tmp_path, capsys):
    if ns.gpu_available():
        pytest.skip("a GPU is present")
    assert run_cli(data_dir, tmp_path / "g", "--device", "gpu") == 2
    assert "no GPU is available" in capsys.readouterr().err


def test_evaluating_on_data_that_does_not_fit_the_model_is_refused(data_dir, tmp_path, capsys):
    assert run_cli(data_dir, tmp_path / "r", "--arch", "mlnn", "--hidden-size", "8", "--epochs", "1") == 0
    assert evaluate.main([str(tmp_path / "r"), "--dataset", "fourmnist", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "3 classes, but fourmnist has 3 x 12 x 12 and 4" in err and "Traceback" not in err
    assert evaluate.main([str(tmp_path / "nothing-here")]) == 2


def test_non_finite_loss_stops_training_naming_epoch_and_batch(data_dir, tmp_path, monkeypatch, capsys):
    real = ns.CrossEntropyLoss.forward
    calls = {"n": 0}

    def sometimes_nan(self, logits, y):
        calls["n"] += 1
        value = real(self, logits, y)
        return float("nan") if calls["n"] == 2 else value
    monkeypatch.setattr(ns.CrossEntropyLoss, "forward", sometimes_nan)
    out = tmp_path / "nan"
    assert run_cli(data_dir, out, "--arch", "mlnn", "--hidden-size", "8", "--batch-size", "16") == 1
    err = capsys.readouterr().err
    assert "the loss became nan at epoch 1, batch 2 of 4" in err
    assert json.loads((out / "config.json").read_text())["status"] == "diverged"


def test_real_divergence_is_reported_with_epoch_and_batch(data_dir, tmp_path, capsys):
    code = run_cli(data_dir, tmp_path / "div", "--arch", "mlnn", "--hidden-size", "8", "--optimizer", "sgd",
                   "--lr", "1e30", "--batch-size", "16")
    err = capsys.readouterr().err
    assert code == 1 and "training stopped: the loss became" in err and "at epoch 1, batch" in err
    assert "Traceback" not in err


def test_help_explains_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--arch", "--preset", "--optimizer", "--lr", "--momentum", "--loss", "--epochs", "--batch-size",
                 "--hidden-size", "--hidden-layers", "--class-weights", "--device", "--seed", "--dataset",
                 "--data-dir", "--out", "--weight-decay", "--scheduler", "--warmup-epochs", "--label-smoothing",
                 "--grad-clip", "--augment", "--translate", "--tta", "--widths", "--blocks", "--dropout"):
        assert flag in text
    assert text.count("default") >= 26


def test_the_mlnn_learns_bloodmnist_in_one_epoch_on_a_subset(tmp_path, monkeypatch):
    if data.locate("bloodmnist") is None:
        pytest.skip("the real bloodmnist.npz is not present (set NNSCRATCH_DATA_DIR)")
    result = training.run(training.TrainConfig(arch="mlnn", epochs=1, limit_train=3000, out=str(tmp_path / "b")),
                          progress=False, log=lambda *a: None)
    assert result.history[0]["val_acc"] > 0.5            # chance is 1/8; about 0.7 is typical
