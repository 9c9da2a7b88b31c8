"""Every MedMNIST task and size (issue 18): BCEWithLogitsLoss equals PyTorch's in float64 and passes
gradcheck; MedMNIST's evaluator metrics equal scikit-learn's on hand-made cases of every task type;
MedMNIST+'s 64-pixel files train each network."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import nnscratch as ns
from nnscratch.metrics import medmnist_scores

torch = pytest.importorskip("torch", reason="PyTorch is the oracle of these tests: pip install -e '.[test]'")
skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the metrics' oracle: pip install -e '.[test]'")


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 7), st.integers(1, 9), st.sampled_from([0.1, 3.0, 60.0, 800.0]), st.booleans(), st.booleans(),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_bce_with_logits_equals_pytorch(B, L, scale, weighted, pos_weighted, soft, seed):
    """Values and gradients to 1e-10 relative, logits up to hundreds (no overflow), soft targets too."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, L)) * scale
    y = rng.random((B, L)) if soft else (rng.random((B, L)) < 0.4).astype(np.float64)
    w = rng.random(L) * 2 if weighted else None
    p = rng.random(L) * 4 if pos_weighted else None
    ours = ns.BCEWithLogitsLoss(weight=w, pos_weight=p)
    value, grad = ours(x, y), ours.backward()
    tx = torch.tensor(x, requires_grad=True)
    theirs = torch.nn.BCEWithLogitsLoss(weight=None if w is None else torch.tensor(w),
                                        pos_weight=None if p is None else torch.tensor(p))
    tv = theirs(tx, torch.tensor(y))
    tv.backward()
    assert np.isfinite(value)
    np.testing.assert_allclose(value, tv.item(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("pos_weight", [None, [0.5, 2.0, 3.0]])
def test_bce_with_logits_passes_gradcheck(pos_weight):
    rng = np.random.default_rng(0)
    loss = ns.BCEWithLogitsLoss(weight=[1.0, 0.3, 2.0], pos_weight=pos_weight)
    assert ns.gradcheck(loss, rng.standard_normal((5, 3)), (rng.random((5, 3)) < 0.5).astype(np.float64)).ok


def test_bce_with_logits_refuses_what_does_not_fit():
    loss = ns.BCEWithLogitsLoss()
    with pytest.raises(ValueError, match=r"targets of the logits' shape \(2, 3\)"):
        loss(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="pos_weight has 2 entries for 3 labels"):
        ns.BCEWithLogitsLoss(pos_weight=[1.0, 2.0])(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        ns.BCEWithLogitsLoss(weight=[-1.0])


def test_a_model_trains_on_multi_label_targets_split_as_whole():
    """The loss may split a batch across the cores (each sample weighs the same): the split step equals
    the whole batch's to float32 rounding."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 3, 12, 12)).astype(np.float32)
    y = (rng.random((64, 14)) < 0.2).astype(np.float32)
    params = []
    for workers in (1, 2):
        ns.manual_seed(0)
        model = ns.models.cnn(3, 12, 14)
        step = ns.TrainStep(model, ns.BCEWithLogitsLoss(pos_weight=np.full(14, 2.0)), ns.SGD(model.parameters(), 0.1),
                            workers=workers)
        assert step.parts_for(64) == workers
        losses = [step(x, y)[0] for _ in range(3)]
        params.append([p.data.copy() for p in model.parameters()])
        assert losses[-1] < losses[0]
    for a, b in zip(*params):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ---- MedMNIST's evaluator ------------------------------------------------------------------------------

def test_multi_class_and_ordinal_take_argmax_accuracy_and_mean_one_vs_rest_auc():
    rng = np.random.default_rng(0)
    y = np.array([0, 1, 2, 2, 1, 0, 3, 3, 2, 1])
    scores = rng.random((10, 4))
    scores[3] = [0.2, 0.2, 0.2, 0.2]                    # a tie: the first maximum, as np.argmax
    for task in ("multi-class", "ordinal-regression"):
        got = medmnist_scores(task, y, scores)
        assert got["medmnist_acc"] == skm.accuracy_score(y, scores.argmax(axis=1))
        want = np.mean([skm.roc_auc_score(y == k, scores[:, k]) for k in range(4)])
        assert got["medmnist_auc"] == pytest.approx(want, abs=1e-12)


def test_binary_takes_the_last_columns_score_above_the_threshold():
    y = np.array([0, 1, 1, 0, 1, 0])
    scores = np.array([[0.7, 0.3], [0.5, 0.5], [0.2, 0.8], [0.4, 0.6], [0.9, 0.1], [0.55, 0.45]])
    got = medmnist_scores("binary-class", y.reshape(-1, 1), scores)
    # 0.5 is not above the threshold: sample 1 counts as negative (MedMNIST's strict >)
    assert got["medmnist_acc"] == skm.accuracy_score(y, scores[:, -1] > 0.5) == 3 / 6
    assert got["medmnist_auc"] == pytest.approx(skm.roc_auc_score(y, scores[:, -1]), abs=1e-12)


def test_multi_label_averages_each_labels_accuracy_and_auc():
    rng = np.random.default_rng(2)
    y = (rng.random((20, 14)) < 0.3).astype(int)
    y[0], y[1] = 1, 0                                   # every label has both kinds of truth
    scores = rng.random((20, 14))
    scores[5, 3] = 0.5                                  # at the threshold: positive (MedMNIST's >=)
    got = medmnist_scores("multi-label, binary-class", y, scores)
    want_acc = np.mean([skm.accuracy_score(y[:, j], scores[:, j] >= 0.5) for j in range(14)])
    want_auc = np.mean([skm.roc_auc_score(y[:, j], scores[:, j]) for j in range(14)])
    assert got["medmnist_acc"] == pytest.approx(want_acc, abs=1e-12)
    assert got["medmnist_auc"] == pytest.approx(want_auc, abs=1e-12)


def test_an_undefined_auc_is_none_and_bad_input_is_refused():
    y = np.array([0, 0, 0])
    assert medmnist_scores("multi-class", y, np.eye(3))["medmnist_auc"] is None
    with pytest.raises(ValueError, match="unknown task"):
        medmnist_scores("regression", y, np.eye(3))
    with pytest.raises(ValueError, match="labels of the scores' shape"):
        medmnist_scores("multi-label, binary-class", y, np.eye(3))


def test_metrics_json_carries_medmnists_two_figures(data_dir, tmp_path):
    import json

    from nnscratch import evaluate, train
    d = data_dir
    out = tmp_path / "run"
    assert train.main(["--dataset", "tinymnist", "--data-dir", str(d), "--out", str(out), "--quiet", "--arch", "mlnn",
                       "--hidden-size", "8", "--epochs", "2"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    # a file of its own is a multi-class task: MedMNIST's accuracy is the arg-max accuracy, its AUC the
    # mean of the one-vs-rest AUCs, which is the report's macro AUC
    assert m["task"] == "multi-class" and m["medmnist_acc"] == m["accuracy"]
    assert m["medmnist_auc"] == pytest.approx(m["auc"], abs=1e-12)
    assert evaluate.main([str(out), "--data-dir", str(d)]) == 0
    e = json.loads((out / "metrics_test.json").read_text())
    assert (e["medmnist_acc"], e["medmnist_auc"]) == (m["medmnist_acc"], m["medmnist_auc"])


# ---- MedMNIST+ sizes ------------------------------------------------------------------------------------

def test_sizes_name_medmnists_files_and_carry_their_md5():
    from nnscratch.medmnist_info import DATASETS, sized_name
    assert sized_name("bloodmnist", 28) == "bloodmnist" and sized_name("bloodmnist", 224) == "bloodmnist_224"
    info = DATASETS["bloodmnist_64"]
    assert info.md5 == "2b94928a2ae4916078ca51e05b6b800b" and info.url.endswith("/bloodmnist_64.npz?download=1")
    assert (info.labels, info.task, info.channels) == (DATASETS["bloodmnist"].labels, "multi-class", 3)
    assert all(f"{n}_{s}" in DATASETS for n in ("chestmnist", "pathmnist", "organsmnist") for s in (64, 128, 224))
    with pytest.raises(ValueError, match="MedMNIST's images are 28, 64, 128, 224 pixels"):
        sized_name("bloodmnist", 32)


@pytest.mark.parametrize("arch,flags", [("cnn", []), ("resnet", ["--widths", "8", "16"] + ["--blocks", "1", "1"]),
                                        ("mlnn", ["--hidden-size", "16"])])
def test_each_network_trains_on_64_pixel_images(arch, flags, data_dir, tmp_path):
    import json

    from nnscratch import train
    from synthetic import write_medmnist
    d = data_dir
    write_medmnist(d / "tinymnist_64.npz", classes=3, size=64, channels=3, n=(24, 8, 8))
    out = tmp_path / "run"
    assert train.main(["--dataset", "tinymnist", "--size", "64", "--data-dir", str(d), "--out", str(out), "--quiet",
                       "--arch", arch, "--epochs", "1", "--batch-size", "8", *flags]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["image_size"] == 64 and config["size"] == 64 and config["dataset_file"].endswith("tinymnist_64.npz")
    with pytest.raises(SystemExit) as e:                # argparse: --size is one of MedMNIST's sizes
        train.main(["--dataset", "tinymnist", "--size", "32", "--quiet"])
    assert e.value.code == 2


# ---- multi-label tasks end to end ------------------------------------------------------------------------

@pytest.mark.parametrize("arch,flags", [("mlnn", ["--hidden-size", "32"]), ("cnn", [])])
def test_a_multi_label_set_trains_and_evaluates_end_to_end(arch, flags, data_dir, tmp_path):
    import json

    from nnscratch import evaluate, train
    from synthetic import write_multilabel
    d = data_dir
    write_multilabel(d / "chesty.npz", labels=14, size=28)
    out = tmp_path / "run"
    assert train.main(["--dataset", "chesty", "--data-dir", str(d), "--out", str(out), "--quiet", "--arch", arch,
                       "--epochs", "4", "--batch-size", "16", "--lr", "0.003", "--class-weights", "balanced",
                       *flags]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "multi-label, binary-class" and len(m["per_class"]) == 14
    assert m["medmnist_acc"] == pytest.approx(m["accuracy"], abs=1e-12)      # the mean per-label accuracy
    assert m["medmnist_auc"] == pytest.approx(m["auc"], abs=1e-12) and m["auc"] > 0.6
    assert {"exact_match", "macro", "weighted"} <= set(m) and "confusion_matrix" not in m
    assert (out / "per_class_precision_recall.png").is_file() and not (out / "confusion_matrix.png").exists()
    history = json.loads((out / "history.json").read_text())
    assert 0 <= history[-1]["train_acc"] <= 1 and 0 <= history[-1]["val_acc"] <= 1
    assert evaluate.main([str(out), "--data-dir", str(d)]) == 0
    e = json.loads((out / "metrics_test.json").read_text())
    assert (e["medmnist_acc"], e["medmnist_auc"]) == (m["medmnist_acc"], m["medmnist_auc"])


def test_multi_label_refuses_losses_that_do_not_apply(data_dir, tmp_path, capsys):
    from nnscratch import train
    from synthetic import write_multilabel
    d = data_dir
    write_multilabel(d / "chesty.npz")
    assert train.main(["--dataset", "chesty", "--data-dir", str(d), "--out", str(tmp_path / "r"), "--quiet",
                       "--loss", "mse"]) == 2
    assert "binary cross-entropy per label" in capsys.readouterr().err


def test_multilabel_report_against_scikit_learn():
    from nnscratch.metrics import multilabel_report
    rng = np.random.default_rng(3)
    y = (rng.random((30, 5)) < 0.4).astype(int)
    y[0], y[1] = 1, 0
    p = rng.random((30, 5))
    r = multilabel_report(y, p, [f"l{j}" for j in range(5)])
    pred = (p >= 0.5).astype(int)
    assert r["accuracy"] == pytest.approx(np.mean([skm.accuracy_score(y[:, j], pred[:, j]) for j in range(5)]))
    assert r["exact_match"] == pytest.approx(skm.accuracy_score(y, pred))          # subset accuracy
    assert r["macro"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert r["macro"]["precision"] == pytest.approx(skm.precision_score(y, pred, average="macro", zero_division=0))
    assert r["auc"] == pytest.approx(skm.roc_auc_score(y, p, average="macro"))
    for j, c in enumerate(r["per_class"]):
        assert c["recall"] == pytest.approx(skm.recall_score(y[:, j], pred[:, j], zero_division=0))


# ---- binary and ordinal tasks: a file of one's own with --task ---------------------------------------------

@pytest.mark.parametrize("task,classes", [("binary-class", 2), ("ordinal-regression", 5), ("multi-class", 4)])
def test_binary_ordinal_and_multi_class_files_train_and_score_as_medmnist_does(task, classes, data_dir, tmp_path):
    import json

    from nnscratch import evaluate, train
    from synthetic import write_medmnist
    d = data_dir
    write_medmnist(d / "ownmnist.npz", classes=classes, size=16, channels=1, n=(80, 30, 40))
    out = tmp_path / "run"
    assert train.main(["--dataset", "ownmnist", "--data-dir", str(d), "--out", str(out), "--quiet", "--arch", "cnn",
                       "--epochs", "3", "--batch-size", "16", "--task", task]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == task and len(m["per_class"]) == classes and "confusion_matrix" in m
    if task == "binary-class":
        # MedMNIST scores the positive class's probability alone, > 0.5: with two classes the arg-max's
        # accuracy but for exact ties, and the positive class's one ROC AUC
        assert m["medmnist_acc"] == pytest.approx(m["accuracy"], abs=1 / 40 + 1e-12)
        assert m["medmnist_auc"] == pytest.approx(m["per_class"][1]["auc"], abs=1e-12)
    else:
        assert m["medmnist_acc"] == m["accuracy"] and m["medmnist_auc"] == pytest.approx(m["auc"], abs=1e-12)
    assert m["medmnist_auc"] > 0.7
    assert evaluate.main([str(out), "--data-dir", str(d)]) == 0        # the task comes from the run
    e = json.loads((out / "metrics_test.json").read_text())
    assert e["task"] == task and (e["medmnist_acc"], e["medmnist_auc"]) == (m["medmnist_acc"], m["medmnist_auc"])


def test_task_flag_refusals_name_what_is_wrong(data_dir, tmp_path, capsys):
    from nnscratch import data, train
    from nnscratch.medmnist_info import DATASETS
    from synthetic import write_medmnist
    write_medmnist(data_dir / "threemnist.npz", classes=3)
    assert train.main(["--dataset", "threemnist", "--data-dir", str(data_dir), "--quiet", "--task", "binary-class",
                       "--out", str(tmp_path / "r")]) == 2
    assert "a binary-class task has 2 classes, not 3" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    with pytest.raises(data.DataError, match="--task multi-label: bloodmnist is a multi-class task"):
        data.load_file(data_dir / "threemnist.npz", DATASETS["bloodmnist"], task="multi-label")
