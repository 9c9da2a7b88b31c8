"""python -m nnscratch.reproduce end to end on a small synthetic data set."""
import json

import numpy as np
import pytest

from nnscratch import report, reproduce
from nnscratch.report import CONFIGS, METRICS, NAMES, get

from synthetic import write_medmnist


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    write_medmnist(root / "tinymnist.npz", classes=8, size=12, n=(96, 32, 40))
    out = root / "docs" / "results"
    code = reproduce.main(["--epochs", "1", "--seeds", "0", "1", "--dataset", "tinymnist", "--data-dir", str(root),
                           "--out", str(out), "--quiet"])
    return code, out


def table_rows(md: str) -> dict:
    """configuration name -> its cells, from the results table."""
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in NAMES.values() and len(cells) == 3 + len(METRICS) + 2:
            rows[cells[0]] = cells
    return rows


def test_report_and_every_figure_are_written(reproduced):
    code, out = reproduced
    assert code == 0
    md = (out.parent / "results.md").read_text()
    figures = sorted(p.name for p in out.glob("*.png"))
    assert len(figures) == 10                      # the paper's 8, the MLNN/CNN comparison, an overview
    for name in figures:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(results/{name})" in md
    for section in ("## Results", "## Targets", "## Beside the paper", "## Figures", "Command: `python -m "
                    "nnscratch.reproduce --epochs 1 --seeds 0 1", "Machine:", "Versions:"):
        assert section in md
    for c in CONFIGS:
        for seed in (0, 1):
            assert (out / "runs" / f"{c}-seed{seed}" / "metrics.json").is_file()


def test_table_numbers_equal_the_runs_metrics(reproduced):
    _, out = reproduced
    rows = table_rows((out.parent / "results.md").read_text())
    assert set(rows) == set(NAMES.values())
    for c in CONFIGS:
        metrics = [json.loads((out / "runs" / f"{c}-seed{s}" / "metrics.json").read_text()) for s in (0, 1)]
        cells = rows[NAMES[c]]
        for i, (_, key) in enumerate(METRICS):
            values = [get(m, key) for m in metrics]
            expected = f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"
            assert cells[2 + i] == expected, (c, key)


def test_report_only_redraws_the_same_report_from_the_run_folders(reproduced, tmp_path):
    _, out = reproduced
    md = out.parent / "results.md"
    before = md.read_text()
    copy = tmp_path / "results"                  # redrawn in a copy, so the other tests see the original
    import shutil
    shutil.copytree(out, copy)
    for png in copy.glob("*.png"):
        png.unlink()
    assert reproduce.main(["--report-only", "--out", str(copy)]) == 0
    after = (tmp_path / "results.md").read_text()
    assert sorted(p.name for p in copy.glob("*.png")) == sorted(p.name for p in out.glob("*.png"))
    # the same report, with one note that says it was redrawn; the context came from reproduction.json
    note = "; report and figures redrawn from the run folders on "
    assert note in after and note not in before
    assert after.splitlines()[5].split(note)[0] == before.splitlines()[5]
    assert [line for i, line in enumerate(after.splitlines()) if i != 5] == \
        [line for i, line in enumerate(before.splitlines()) if i != 5]


def test_report_only_rebuilds_the_context_from_run_folders_without_reproduction_json(reproduced, tmp_path):
    # reproductions made before reproduction.json existed (the committed one) read their runs' config.json
    _, out = reproduced
    saved = json.loads((out / reproduce.CONTEXT_FILE).read_text())
    rebuilt = reproduce.context_from_runs(out / "runs")
    # (the command is the process's as each run recorded it: here pytest's, from the command line reproduce's)
    assert rebuilt["command"].startswith("python -m nnscratch.reproduce")
    for key in ("date", "machine", "versions", "device", "seeds", "epochs", "dataset", "md5",
                "num_classes", "batch_size", "sizes"):
        assert rebuilt[key] == saved[key], key
    # the runs' span, without the report's writing (their times are whole seconds, hence the second's slack)
    assert 0 <= rebuilt["wall_minutes"] <= saved["wall_minutes"] + 1 / 60


def test_report_only_without_runs_is_a_one_line_error(tmp_path, capsys):
    assert reproduce.main(["--report-only", "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert reproduce.main(["--epochs", "0", "--out", str(tmp_path / "r")]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err


def fake_run(seed, losses, accuracy):
    return {"config": {"seed": seed}, "metrics": {"accuracy": accuracy},
            "history": [{"train_loss": v} for v in losses]}


def test_a_run_whose_loss_froze_is_named_in_the_mse_reason():
    frozen = fake_run(0, [0.3, 0.2076, 0.20765, 0.20764, 0.20765, 0.20765], 0.17)
    fine = fake_run(1, [0.3, 0.06, 0.05, 0.05, 0.045, 0.043], 0.90)
    assert report.stuck(frozen) and not report.stuck(fine)
    text = report.reason("mlnn-test3", "worse", [frozen, fine])
    assert "In 1 of 2 runs (seed 0)" in text and "0.900 (seed 1)" in text
    assert "froze" not in report.reason("cnn-test3", "better", [fine])
