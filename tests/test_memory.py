"""nnscratch/memory.py: glibc keeps the freed maps of one step for the next (no page faults)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = """
import json, resource, sys
import numpy as np
import nnscratch as ns
from nnscratch import memory
ns.manual_seed(0)
model = ns.models.resnet(widths=(16, 32), blocks=(1, 1))
step = ns.TrainStep(model, ns.CrossEntropyLoss(), ns.AdamW(model.parameters()))
x = np.random.default_rng(0).standard_normal((64, 3, 28, 28)).astype(np.float32)
y = np.arange(64) % 8
for _ in range(3):
    step(x, y)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    loss, _ = step(x, y)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
print(json.dumps({"faults": faults, "kept": memory._done[0], "loss": loss}))
"""


def steps(keep: str) -> dict:
    env = dict(os.environ, NNSCRATCH_KEEP_MEMORY=keep, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", STEPS], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_the_steps_maps_reuse_freed_memory_and_compute_the_same():
    kept, plain = steps("1"), steps("0")
    assert kept["kept"] is True and plain["kept"] is False
    assert kept["loss"] == plain["loss"]                    # where memory comes from changes no number
    assert kept["faults"] < plain["faults"] / 4, (kept, plain)
