"""Every example runs in its quick mode and shows what it claims."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from synthetic import write_medmnist

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))          # for examples/_common.py


def example(name):
    path = next(EXAMPLES.glob(f"{name}_*.py"))
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_numbered_example_has_a_test():
    numbers = sorted(p.name[:2] for p in EXAMPLES.glob("[0-9][0-9]_*.py"))
    assert numbers == [f"{i:02d}" for i in range(1, 12)]


def test_01_linear_by_hand_agrees_with_gradcheck():
    assert example("01").main(["--quick"]) is True


def test_02_mlp_learns_the_spirals():
    assert example("02").main(["--quick"]) > 0.9
    assert (EXAMPLES / "out" / "02_decision_boundary.png").is_file()


def test_03_im2col_equals_the_naive_loop():
    assert example("03").main(["--quick"]) < 1e-12


def test_04_maxpool_routes_gradients_to_the_winners():
    dx = example("04").main(["--quick"])
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 0, 0], [10, 0, 0, 20], [0, 0, 40, 0], [30, 0, 0, 0]])


def test_05_mse_on_softmax_vanishes_where_cross_entropy_does_not():
    ce, mse_softmax = example("05").main(["--quick"])
    assert abs(ce) > 0.99 and abs(mse_softmax) < 1e-3


def test_06_momentum_and_adam_beat_plain_sgd_in_the_valley():
    finals = example("06").main(["--quick"])
    sgd = finals["SGD lr 0.4"]
    assert all(v < sgd for k, v in finals.items() if k != "SGD lr 0.4")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("exdata")
    write_medmnist(d / "tinymnist.npz", classes=8, size=28, n=(200, 60, 60))
    return d


@pytest.mark.parametrize("name,arch", [("07", "mlnn"), ("08", "cnn")])
def test_07_08_training_examples_write_their_run_and_figures(name, arch, data_dir):
    result = example(name).main(["--quick", "--dataset", "tinymnist", "--data-dir", str(data_dir)])
    assert result.metrics["accuracy"] > 0.2 and (result.run_dir / "confusion_matrix.png").is_file()
    if name == "08":
        assert (EXAMPLES / "out" / "08_misclassified.png").is_file()


def test_09_cpu_kernels_agree_and_are_timed():
    rows = example("09").main(["--quick", "--batch", "8"])
    assert [r[0] for r in rows[:3]] == ["CPU, reference kernels", "CPU, numba, 1 part(s)", "CPU, numba, batch whole"]
    assert all(ms > 0 for _, ms in rows)


def test_10_plans_print_the_plan_and_every_stage_agrees_with_the_textbook(capsys):
    assert example("10").main(["--quick"]) is True
    out = capsys.readouterr().out
    assert "Plan for" in out and "textbook layers" in out and "(split_batch)" in out


def test_11_batch_norm_backward_by_the_graph_equals_the_layer_and_the_one_line_form():
    assert example("11").main(["--quick"]) < 1e-10
