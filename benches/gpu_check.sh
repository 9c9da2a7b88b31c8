#!/usr/bin/env bash
# One prepared run for a GPU machine; installs nothing. In order of importance, so that a run cut
# short still answers the main questions:
#   1. the GPU tests (CUDA-graph steps against op-by-op steps, layers against NumPy),
#   2. benches/speed.py on the GPU: nnscratch with and without CUDA graphs against PyTorch eager,
#   3. short trainings of the paper's CNN on BloodMNIST with and without graphs (if the data are
#      found: NNSCRATCH_DATA_DIR, default .gpudata/), seconds per epoch from metrics.json,
#   4. the ResNet's step on the GPU against PyTorch, and a GPU run stopped by Ctrl-C and resumed,
#   5. the kernel and PyTorch-oracle tests, which include the CuPy twins.
#   usage: bash benches/gpu_check.sh        (from the repository root; OUT=folder keeps run folders)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-$(mktemp -d)}"
python3 - <<'PY'
import numpy, nnscratch as ns
print("numpy", numpy.__version__, "| gpu available:", ns.gpu_available())
try:
    import cupy; print("cupy", cupy.__version__, "|", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
except Exception as e:
    print("cupy unavailable:", e)
PY
python3 -m pytest -q -p no:cacheprovider tests/test_step.py tests/test_gpu.py -x -W error::RuntimeWarning
status=$?
python3 benches/speed.py --devices gpu --no-layers --repeats "${REPEATS:-30}"
data="${NNSCRATCH_DATA_DIR:-.gpudata}"
if [ -f "$data/bloodmnist.npz" ]; then
    for flag in "" "--no-cuda-graphs"; do
        python3 -m nnscratch.train --preset cnn-test1 --device gpu --epochs "${EPOCHS:-3}" --quiet \
            --data-dir "$data" --out "$OUT/cnn-test1${flag}" $flag | grep -E "epoch|test accuracy"
        python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['timing']; print('cnn-test1 $flag', {k: round(v, 3) for k, v in t.items() if isinstance(v, float)})" "$OUT/cnn-test1${flag}/metrics.json"
    done
fi
python3 benches/speed.py --devices gpu --arch resnet --batch 128 --no-layers --repeats "${REPEATS:-30}"
if [ -f "$data/bloodmnist.npz" ]; then      # a GPU run stopped and resumed (not held to bits: that is the CPU's)
    python3 - "$data" "$OUT" <<'PY'
import subprocess, sys, signal, time
data, out = sys.argv[1], sys.argv[2] + "/resume-gpu"
cmd = [sys.executable, "-m", "nnscratch.train", "--preset", "resnet-bloodmnist", "--device", "gpu", "--epochs", "3",
       "--limit-train", "3000", "--data-dir", data, "--out", out, "--quiet"]
p = subprocess.Popen(cmd); time.sleep(40); p.send_signal(signal.SIGINT); print("first run:", p.wait())
r = subprocess.run([sys.executable, "-m", "nnscratch.train", "--resume", out, "--quiet"])
print("resume:", r.returncode, open(out + "/config.json").read().count('"completed"'))
PY
fi
python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_against_torch.py -x
status=$((status || $?))
exit $status
