"""The engine computes what it computed before its layers and plans were split apart, bit for bit.

``tests/data/bits.json`` holds fingerprints made by the code before that refactor (``tests/bits.py``
says how); they are compared on the machine that made them only, since other CPUs round otherwise.
"""
import json
import os

import pytest

import bits

RECORDED = json.loads(bits.FILE.read_text())
SAME_MACHINE = RECORDED["machine"] == bits.machine()
pytestmark = pytest.mark.skipif(
    not SAME_MACHINE, reason=f"tests/data/bits.json was made on {RECORDED['machine']}, not this machine: "
                             f"record it here from commit {RECORDED['commit'][:10]} (python tests/bits.py --record)")


@pytest.mark.parametrize("name,args", list(bits.cases()), ids=[name for name, _ in bits.cases()])
def test_training_steps_and_inference_are_unchanged(name, args):
    assert bits.steps(*args) == RECORDED["steps"][name]


DATA_DIR = os.environ.get("NNSCRATCH_DATA_DIR", "")


@pytest.mark.skipif(not os.path.isfile(os.path.join(DATA_DIR, "bloodmnist.npz")),
                    reason="needs the real BloodMNIST file: set NNSCRATCH_DATA_DIR to its folder")
@pytest.mark.parametrize("preset", ["cnn-test1", "mlnn-test1"])
def test_two_epoch_histories_are_unchanged(preset):
    assert bits.history(preset, DATA_DIR) == RECORDED["histories"][preset]
