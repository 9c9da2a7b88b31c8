"""The README's first command runs and learns."""
from nnscratch import demo


def test_demo_learns_line_orientations_in_two_epochs(capsys):
    accuracy = demo.main(["--epochs", "2", "--seed", "1"])
    assert accuracy > 0.8            # chance is 1/3
    assert "test accuracy" in capsys.readouterr().out
