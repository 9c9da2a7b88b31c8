"""The README's API section trains on the real images as printed."""
import re
from pathlib import Path

import pytest

from nnscratch import data

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_trains_the_cnn_on_bloodmnist_in_ten_lines(capsys):
    if data.locate("bloodmnist") is None:
        pytest.skip("the real bloodmnist.npz is not present (set NNSCRATCH_DATA_DIR)")
    text = README.read_text()
    code = re.search(r"in ten lines after the imports:\n\n```python\n(.*?)```", text, re.S).group(1)
    lines = [line for line in code.splitlines() if line.strip() and not line.startswith(("import", "from"))]
    assert len(lines) <= 10, "the README promises ten lines"
    # one epoch instead of the printed two keeps the test short; the printed figure is the two epochs'
    assert "range(2)" in code
    exec(compile(code.replace("range(2)", "range(1)"), str(README), "exec"), {})
    accuracy = float(re.search(r"validation accuracy (\d\.\d+)", capsys.readouterr().out).group(1))
    assert accuracy > 0.7                # chance is 1/8; one epoch gives about 0.84
