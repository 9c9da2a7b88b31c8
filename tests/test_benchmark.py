"""python -m nnscratch.benchmark: one recipe on several sets, a table beside MedMNIST v2's ResNet-18."""
import json

import pytest

from nnscratch import benchmark
from nnscratch.medmnist_info import PUBLISHED_RESNET18

from synthetic import write_multilabel

FAST = ["--arch", "mlnn", "--hidden-size", "16", "--epochs", "2", "--batch-size", "16", "--quiet"]


def test_the_table_has_a_row_per_set_trained_or_skipped_with_the_reason(data_dir, tmp_path, capsys):
    write_multilabel(data_dir / "chesty.npz", labels=14, size=12)
    out = tmp_path / "bench"
    argv = ["--datasets", "tinymnist", "chesty", "dermamnist", "--no-fetch", "--out", str(out),
            "--data-dir", str(data_dir), *FAST]
    assert benchmark.main(argv) == 0
    table = json.loads((tmp_path / "bench.json").read_text())
    tiny, chesty, derma = table["rows"]
    assert tiny["task"] == "multi-class" and chesty["task"] == "multi-label, binary-class"
    for row in (tiny, chesty):
        metrics = json.loads((out / "runs" / row["dataset"] / "metrics.json").read_text())
        assert (row["medmnist_acc"], row["medmnist_auc"]) == (metrics["medmnist_acc"], metrics["medmnist_auc"])
        assert row["epochs"] == 2 and row["train_minutes"] > 0 and row["published"] is None
    assert tiny["images"] == [60, 24, 30]
    # a MedMNIST set that is not here: a row saying why, with its published figures still shown
    assert "no dermamnist.npz in" in derma["skipped"] and "medmnist_acc" not in derma
    assert derma["published"]["resnet18_28"] == {"acc": 0.735, "auc": 0.917}
    md = (tmp_path / "bench.md").read_text()
    assert f"| tinymnist | multi-class | 60 / 24 / 30 | **{tiny['medmnist_acc']:.4f}** |" in md
    assert "| dermamnist |  |  |  |  | 0.735 | 0.917 | 0.754 | 0.920 | skipped: no dermamnist.npz" in md
    assert table["recipe"]["arch"] == "mlnn" and table["size"] == 28

    # the same command again keeps the completed runs: nothing is trained anew
    stamp = (out / "runs" / "tinymnist" / "model.npz").stat().st_mtime_ns
    capsys.readouterr()
    assert benchmark.main(argv) == 0
    assert "tinymnist: done before" in capsys.readouterr().err
    assert (out / "runs" / "tinymnist" / "model.npz").stat().st_mtime_ns == stamp
    # ... unless the recipe changed: then it says so, in the set's row, and trains nothing there
    assert benchmark.main([a if a != "2" else "3" for a in argv]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert "holds a run with other settings (epochs)" in rows[0]["skipped"]


def test_flags_the_benchmark_sets_itself_or_neither_command_knows_are_refused(data_dir, tmp_path, capsys):
    assert benchmark.main(["--datasets", "tinymnist", "--dataset", "x", "--out", str(tmp_path / "b"), *FAST]) == 2
    assert "--dataset is set by the benchmark for each set" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        benchmark.main(["--datasets", "tinymnist", "--colour", "red", *FAST])
    assert e.value.code == 2 and "unrecognized arguments: --colour red" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_the_published_figures_cover_medmnists_twelve_2d_sets_at_both_sizes():
    assert len(PUBLISHED_RESNET18) == 12 and set(benchmark.ALL) == set(PUBLISHED_RESNET18)
    assert PUBLISHED_RESNET18["bloodmnist"] == {28: (0.958, 0.998), 224: (0.963, 0.998)}
    assert all(set(v) == {28, 224} and all(0 < x < 1 for pair in v.values() for x in pair)
               for v in PUBLISHED_RESNET18.values())
