#!/usr/bin/env bash
# One prepared run for a GPU machine: installs nothing, runs the GPU tests (and the kernel
# tests, which include the CuPy twins), then runs benches/speed.py: training steps and layers on NumPy, numba and CuPy (and
# PyTorch where installed) and prints a table.
#   usage: bash benches/gpu_check.sh        (from the repository root)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY'
import numpy, nnscratch as ns
print("numpy", numpy.__version__, "| gpu available:", ns.gpu_available())
try:
    import cupy; print("cupy", cupy.__version__, "|", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
except Exception as e:
    print("cupy unavailable:", e)
PY
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_kernels.py tests/test_against_torch.py -x
status=$?
python3 benches/speed.py --repeats "${REPEATS:-20}"
exit $status
