"""Data parallelism over MPI (nnscratch.distributed): jobs of 2 ranks started with mpiexec.

The jobs are in tests/mpi_jobs.py. mpiexec and mpi4py come with the test extra (MPICH's wheel), so
CI runs these; without them the tests are skipped, saying why.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nnscratch import distributed, stream
from nnscratch.errors import UsageError

import mpi_jobs
from synthetic import write_medmnist

HERE = Path(__file__).resolve().parent
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False

needs_mpi = pytest.mark.skipif(MPIEXEC is None or not HAVE_MPI4PY,
                               reason="needs mpiexec and mpi4py: pip install -e '.[mpi]'")


def mpiexec(*args, ranks=2, timeout=120):
    """``mpiexec -n ranks python tests/mpi_jobs.py args...`` -> CompletedProcess (output captured)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, str(HERE / "mpi_jobs.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def relative_difference(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))


# ---- without a launcher ----------------------------------------------------------------------------

def test_a_plain_process_is_a_world_of_one():
    assert distributed.init() == 1
    assert (distributed.rank(), distributed.world_size(), distributed.active(), distributed.is_main()) == (0, 1, False,
                                                                                                        True)
    assert distributed.shard(10) == slice(0, 10)
    flat = np.arange(5, dtype=np.float32)
    assert distributed.allreduce_sum(flat) is flat and flat.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(distributed.sum_in_rank_order([1.5, 2]), [1.5, 2])


@pytest.mark.parametrize("variable", distributed._SIZE_VARS)
def test_each_launchers_environment_is_recognised(variable, monkeypatch):
    for name in distributed._SIZE_VARS:
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched_size() == 1
    monkeypatch.setenv(variable, "3")
    assert distributed.launched_size() == 3


@pytest.mark.parametrize("command", ["evaluate", "benchmark"])
def test_the_one_process_commands_refuse_a_launcher_with_one_line(command, monkeypatch, capsys, tmp_path):
    import importlib
    monkeypatch.setenv("PMI_SIZE", "2")
    main = importlib.import_module(f"nnscratch.{command}").main
    argv = [str(tmp_path)] if command == "evaluate" else ["--datasets", "bloodmnist", "--out", str(tmp_path / "b")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "without mpiexec" in err


def test_a_launcher_without_mpi4py_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)            # import mpi4py fails
    with pytest.raises(UsageError, match=r"pip install -e '\.\[mpi\]'"):
        distributed.init()


# ---- jobs of two ranks ------------------------------------------------------------------------------

@needs_mpi
def test_two_ranks_compute_what_one_process_computes(tmp_path):
    # four steps of the CNN, a ResNet (batch norm pooled across the ranks), the MLNN and a network
    # with dropout (the ranks' masks are rows of one mask) on global batches of 37 images (shares of
    # 18 and 19), against the same steps in this process
    done = mpiexec("steps", tmp_path)
    assert done.returncode == 0, done.stderr
    job = np.load(tmp_path / "params.npz")
    assert int(job["world"]) == 2
    assert bool(job["ranks_equal"]), "the ranks' parameters differ: their sums were not the same bits"
    for name in mpi_jobs.NETWORKS:
        alone = mpi_jobs.steps(name)
        for key, value in alone.items():
            assert relative_difference(value, job[f"{name}/{key}"]) < 1e-5, f"{name} {key}"
    # and they moved: a job that trained nothing would pass the comparison above only by accident
    assert relative_difference(mpi_jobs.network("cnn")[0].state_dict()["0.weight"], job["cnn/0.weight"]) > 1e-4


@needs_mpi
def test_a_split_streamed_from_disk_is_shared_out_each_rank_reading_its_rows(tmp_path, monkeypatch):
    # a test split of 31 images, over the memory budget: each rank reads and predicts its 15 or 16,
    # and the gathered predictions and the summed loss and accuracy are one process's
    path = write_medmnist(tmp_path / "bigmnist.npz", classes=4, size=12, channels=3, n=(20, 10, 31))
    monkeypatch.setenv(stream.CACHE_ENV, str(tmp_path / "cache"))
    done = mpiexec("evaluate", tmp_path, path)
    assert done.returncode == 0, done.stderr
    job = np.load(tmp_path / "evaluated.npz")
    # predict and evaluate_split each read the rank's rows once
    assert job["read"].tolist() == [2 * 15, 2 * 16]
    probs, loss, acc, read = mpi_jobs.evaluate_streamed(path)
    assert read == 2 * 31 and probs.shape == job["probs"].shape == (31, 4)
    assert relative_difference(probs, job["probs"]) < 1e-5
    assert float(job["loss"]) == pytest.approx(loss, rel=1e-5) and float(job["acc"]) == acc


@needs_mpi
def test_under_mpiexec_only_rank_0_writes_and_the_run_resumes_with_one_process(tmp_path):
    write_medmnist(tmp_path / "tinymnist.npz", classes=3, size=12, channels=3, n=(61, 25, 31))
    flags = ["--dataset", "tinymnist", "--arch", "resnet", "--widths", "4", "8", "--blocks", "1", "1",
             "--batch-size", "16", "--optimizer", "adamw", "--lr", "0.01", "--augment", "dihedral", "--quiet"]
    out = tmp_path / "run"
    done = mpiexec("train", out, tmp_path, *flags, "--epochs", "1")
    assert done.returncode == 0, done.stderr
    wrote = {rank: json.loads(paths) for rank, paths in re.findall(r"WROTE (\d) (\[[^\]]*\])", done.stdout)}
    assert set(wrote) == {"0", "1"}, done.stdout + done.stderr
    # (numba's cache of compiled kernels, written by whichever rank compiles first, is not the run's)
    wrote = {rank: [p for p in paths if Path(p).is_relative_to(tmp_path)] for rank, paths in wrote.items()}
    assert wrote["1"] == []
    assert {Path(p).name for p in wrote["0"]} >= {"run", "config.json", "model.npz", "checkpoint.npz", "metrics.json",
                                                  "confusion_matrix.png"}
    assert done.stdout.count("epoch   1/1") == 1                  # one rank prints
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and [r["rank"] for r in config["ranks"]] == [0, 1]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]       # no temporary left behind
    # the checkpoint of 2 ranks continues in 1 process: the run a 2-rank job trains in one go
    from nnscratch import train
    assert train.main(["--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    again = tmp_path / "again"
    assert mpiexec("train", again, tmp_path, *flags, "--epochs", "2").returncode == 0
    resumed, whole = (json.loads((d / "history.json").read_text()) for d in (out, again))
    for a, b in zip(resumed, whole):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    assert json.loads((out / "config.json").read_text())["resumed"][-1]["world_size"] == 1


@needs_mpi
def test_ctrl_c_stops_every_rank_at_the_same_batch_with_a_checkpoint(tmp_path):
    import signal
    write_medmnist(tmp_path / "tinymnist.npz", classes=3, size=12, channels=3, n=(61, 25, 31))
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    job = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "nnscratch.train", "--dataset", "tinymnist",
                            "--data-dir", str(tmp_path), "--out", str(out), "--arch", "cnn", "--batch-size", "8",
                            "--epochs", "500", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env)
    t0 = time.monotonic()
    while not (out / "history.json").exists() and time.monotonic() - t0 < 60 and job.poll() is None:
        time.sleep(0.1)
    job.send_signal(signal.SIGINT)                  # mpiexec passes it to both ranks
    stdout, stderr = job.communicate(timeout=60)
    assert job.returncode == 130, stderr
    config = json.loads((out / "config.json").read_text())
    assert config["status"] == "interrupted" and (out / "checkpoint.npz").is_file()
    assert stderr.count("stopping after this batch") == 1      # said once, by rank 0


@needs_mpi
def test_a_batch_the_ranks_cannot_share_is_one_line_naming_the_rank(tmp_path):
    write_medmnist(tmp_path / "tinymnist.npz", classes=3, size=12, channels=3, n=(61, 25, 31))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "nnscratch.train", "--dataset", "tinymnist",
                           "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"), "--arch", "cnn",
                           "--batch-size", "60", "--epochs", "1", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert re.search(r"error: rank [01] of 2: --batch-size 60 leaves a last batch of 1 image", done.stderr)
    assert not (tmp_path / "run").exists()


@needs_mpi
@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_a_rank_that_fails_ends_the_job_within_seconds(mode):
    t0 = time.monotonic()
    done = mpiexec("fault", mode, timeout=60)
    assert done.returncode != 0
    assert time.monotonic() - t0 < 30
    if mode == "raise":                 # the line names the rank and its error
        assert "rank 1 of 2: RuntimeError: a fault injected by the test" in done.stderr
    else:                               # mpiexec names the dead process (its pid and host)
        assert "BAD TERMINATION" in done.stdout + done.stderr
