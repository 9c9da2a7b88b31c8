"""Nothing lost when training stops: checkpoints, --resume with the same bits, Ctrl-C, kills, run folders.

A run stopped at some point and resumed must end with exactly the bits of the same run left alone:
model.npz, the history (timings aside) and metrics.json (timings aside). The stops are made in
process where that is exact enough (a real SIGINT; an exception that nothing catches standing in for
kill -9, raised in the middle of an epoch, of the final evaluation or of a checkpoint's write) and
with a real SIGKILL of a training process.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnscratch as ns
from nnscratch import checkpoint, data, train, training

from synthetic import write_medmnist

ROOT = Path(__file__).resolve().parents[1]

# the CPU: the issue holds resumed runs to the same bits there (a GPU machine would otherwise be chosen)
ARCHS = {
    "mlnn": ["--device", "cpu", "--arch", "mlnn", "--hidden-size", "8", "--batch-size", "16", "--epochs", "3"],
    "cnn": ["--device", "cpu", "--arch", "cnn", "--batch-size", "32", "--epochs", "3", "--workers", "2"],
    # batch norm, dropout, augmentation with shifts, AdamW and a schedule stepped every batch
    "resnet": ["--device", "cpu", "--arch", "resnet", "--widths", "4", "8", "--blocks", "1", "1", "--dropout", "0.3", "--batch-size", "32",
               "--epochs", "3", "--augment", "dihedral", "--translate", "1", "--optimizer", "adamw",
               "--weight-decay", "0.05", "--scheduler", "onecycle", "--lr", "0.01", "--label-smoothing", "0.1",
               "--workers", "2"],
}


class Killed(BaseException):
    """Stands in for kill -9: nothing catches it (a BaseException, not a KeyboardInterrupt)."""


@pytest.fixture(autouse=True)
def checkpoint_every_epoch(monkeypatch):
    """These tiny runs' epochs take milliseconds, and the writer would skip some epochs' checkpoints
    to stay within its share of the time: here every epoch gets one, so that the kill points below
    find the checkpoints they expect (``test_the_writer_keeps_to_its_share_of_the_time`` tests the
    policy)."""
    monkeypatch.setattr(checkpoint.Writer, "ALWAYS_BELOW", float("inf"))


def train_cli(data_dir, out, *flags):
    return train.main(["--dataset", "tinymnist", "--data-dir", str(data_dir), "--out", str(out), "--quiet", *flags])


def resume_cli(out, *flags):
    return train.main(["--resume", str(out), "--quiet", *flags])


def outcome(folder: Path):
    """What a finished run computed: model.npz's arrays and metadata, the history and the test metrics,
    timings left out."""
    with np.load(folder / "model.npz") as z:
        arrays = {k: z[k] for k in z.files}
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in json.loads((folder / "history.json").read_text())]
    metrics = {k: v for k, v in json.loads((folder / "metrics.json").read_text()).items() if k != "timing"}
    return arrays, history, metrics


def assert_same_bits(a: Path, b: Path):
    (arrays_a, hist_a, met_a), (arrays_b, hist_b, met_b) = outcome(a), outcome(b)
    assert arrays_a.keys() == arrays_b.keys()
    for k in arrays_a:
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k], err_msg=k)
    assert hist_a == hist_b
    assert met_a == met_b
    assert json.loads((b / "config.json").read_text())["status"] == "completed"


def stop_at(monkeypatch, arch: str, epoch: int, batch: int, action):
    """Run ``action`` right after training step ``batch`` of ``epoch`` of a run of ``arch``."""
    real = ns.TrainStep.__call__
    calls = {"n": 0}
    target = (epoch - 1) * per_epoch(arch) + batch

    def wrapped(self, x, y):
        out = real(self, x, y)
        calls["n"] += 1
        if calls["n"] == target:
            action()
        return out
    monkeypatch.setattr(ns.TrainStep, "__call__", wrapped)


def sigint():
    os.kill(os.getpid(), signal.SIGINT)


def kill():
    raise Killed


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """Each architecture's run left alone (its own data folder, made the same way)."""
    root = tmp_path_factory.mktemp("reference")
    d = root / "data"
    d.mkdir()
    write_medmnist(d / "tinymnist.npz", classes=3, size=12, channels=3)
    env = os.environ.pop(data.ENV_VAR, None)
    try:
        for arch, flags in ARCHS.items():
            assert train_cli(d, root / arch, *flags) == 0
    finally:
        if env is not None:
            os.environ[data.ENV_VAR] = env
    return root


def per_epoch(arch):
    flags = ARCHS[arch]
    batch = int(flags[flags.index("--batch-size") + 1])
    return -(-60 // batch)                      # 60 training images in the synthetic file


@pytest.mark.parametrize("arch", list(ARCHS))
def test_ctrl_c_mid_epoch_then_resume_gives_the_same_bits(arch, data_dir, tmp_path, monkeypatch, reference_runs,
                                                          capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        stop_at(m, arch, epoch=2, batch=1, action=sigint)          # Ctrl-C during epoch 2's first batch
        assert train_cli(data_dir, out, *ARCHS[arch]) == 130
    config = json.loads((out / "config.json").read_text())
    assert config["status"] == "interrupted" and config["stopped_at"].startswith("epoch 2, batch 1 of")
    assert checkpoint.load(out / checkpoint.FILE).position.batch == 1
    assert (out / "model.npz").is_file() and not (out / "metrics.json").exists()
    assert "--resume" in capsys.readouterr().out
    assert resume_cli(out) == 0
    assert_same_bits(reference_runs / arch, out)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("where", ["epoch", "final evaluation", "checkpoint write"])
def test_a_kill_at_any_point_then_resume_gives_the_same_bits(arch, where, data_dir, tmp_path, monkeypatch,
                                                             reference_runs):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        if where == "epoch":
            stop_at(m, arch, epoch=3, batch=1, action=kill)
        elif where == "final evaluation":
            m.setattr(training, "predict", lambda *a, **k: kill())
        else:                                   # the second checkpoint's write, half-way through the file
            real_savez, calls = np.savez, {"n": 0}

            def torn_savez(f, **arrays):
                calls["n"] += 1
                if calls["n"] == 2:
                    f.write(b"PK\x03\x04 half a checkpoint")
                    kill()
                return real_savez(f, **arrays)
            m.setattr(checkpoint.np, "savez", torn_savez)
        with pytest.raises(Killed):
            train_cli(data_dir, out, *ARCHS[arch])
    checkpoint.load(out / checkpoint.FILE)      # the last whole checkpoint is readable
    assert resume_cli(out) == 0
    assert_same_bits(reference_runs / arch, out)


def test_two_ctrl_c_in_a_row_leave_a_consistent_folder_that_resumes(data_dir, tmp_path, monkeypatch,
                                                                   reference_runs, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        stop_at(m, "mlnn", epoch=2, batch=2, action=lambda: (sigint(), sigint()))
        assert train_cli(data_dir, out, *ARCHS["mlnn"]) == 130
    assert "already stopping" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["status"] == "interrupted"
    assert resume_cli(out) == 0
    assert_same_bits(reference_runs / "mlnn", out)


def test_ctrl_c_during_validation_stops_at_the_epochs_end(data_dir, tmp_path, monkeypatch, reference_runs):
    real, calls = training.evaluate_split, {"n": 0}

    def press_during_second_validation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            sigint()
        return real(*args, **kwargs)
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(training, "evaluate_split", press_during_second_validation)
        assert train_cli(data_dir, out, *ARCHS["mlnn"]) == 130
    config = json.loads((out / "config.json").read_text())
    assert config["stopped_at"] == "the end of epoch 2" and config["epochs_done"] == 2
    assert len(json.loads((out / "history.json").read_text())) == 2
    assert resume_cli(out) == 0
    assert_same_bits(reference_runs / "mlnn", out)


def test_a_real_sigkill_then_resume_gives_the_same_bits(data_dir, tmp_path, reference_runs):
    """A training process killed with SIGKILL in the middle of a checkpoint's write (its temporary file
    left behind, as a real kill leaves it), then resumed by another process."""
    out = tmp_path / "run"
    driver = (
        "import os, signal, sys, numpy as np\n"
        "from nnscratch import checkpoint, train\n"
        "real, calls = np.savez, [0]\n"
        "def torn(f, **arrays):\n"
        "    calls[0] += 1\n"
        "    if calls[0] == 2:\n"
        "        f.write(b'PK half'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(f, **arrays)\n"
        "checkpoint.np.savez = torn\n"
        "sys.exit(train.main(sys.argv[1:]))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HOME=str(tmp_path))
    env.pop(data.ENV_VAR, None)
    args = ["--dataset", "tinymnist", "--data-dir", str(data_dir), "--out", str(out), "--quiet", *ARCHS["mlnn"]]
    proc = subprocess.run([sys.executable, "-c", driver, *args], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in out.glob(".checkpoint.npz.*.tmp")]          # the torn write's leftover
    assert json.loads((out / "config.json").read_text())["status"] == "running"
    proc = subprocess.run([sys.executable, "-m", "nnscratch.train", "--resume", str(out), "--quiet"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not list(out.glob(".*.tmp"))
    assert_same_bits(reference_runs / "mlnn", out)


def test_resume_of_a_completed_run_changes_nothing(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli(data_dir, out, *ARCHS["mlnn"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert resume_cli(out) == 0
    assert "already completed (3 epochs); nothing to do" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_with_more_epochs_equals_the_longer_run(data_dir, tmp_path):
    flags = ["--arch", "mlnn", "--hidden-size", "8", "--batch-size", "16"]
    assert train_cli(data_dir, tmp_path / "long", *flags, "--epochs", "4") == 0
    assert train_cli(data_dir, tmp_path / "short", *flags, "--epochs", "2") == 0
    assert resume_cli(tmp_path / "short", "--epochs", "4") == 0
    assert_same_bits(tmp_path / "long", tmp_path / "short")


def test_resume_refuses_flags_that_change_the_run(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli(data_dir, out, *ARCHS["resnet"][:-10], "--epochs", "1", "--scheduler", "onecycle") == 0
    capsys.readouterr()
    assert resume_cli(out, "--lr", "0.5") == 2
    err = capsys.readouterr().err
    assert "--lr would change what it computes" in err and "Traceback" not in err
    assert resume_cli(out, "--epochs", "3") == 2
    assert "its learning-rate schedule (--scheduler onecycle" in capsys.readouterr().err
    assert resume_cli(tmp_path / "nothing") == 2
    assert "no such run folder" in capsys.readouterr().err


def test_resume_without_a_checkpoint_says_how_to_start_again(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        stop_at(m, "mlnn", epoch=1, batch=2, action=kill)
        with pytest.raises(Killed):
            train_cli(data_dir, out, *ARCHS["mlnn"])
    assert resume_cli(out) == 2
    assert f"start it again with --out {out} --overwrite" in capsys.readouterr().err


def test_resume_refuses_another_dataset_file(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli(data_dir, out, *ARCHS["mlnn"][:-2], "--epochs", "1") == 0
    other = tmp_path / "other"
    other.mkdir()
    write_medmnist(other / "tinymnist.npz", classes=3, size=12, channels=3, seed=5)
    cfg = json.loads((out / "config.json").read_text())
    cfg["status"] = "interrupted"
    (out / "config.json").write_text(json.dumps(cfg))
    assert resume_cli(out, "--data-dir", str(other)) == 2
    assert "but the run was trained on a file with MD5" in capsys.readouterr().err


def test_a_folder_holding_a_run_is_refused_and_overwritten_only_on_request(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli(data_dir, out, *ARCHS["mlnn"][:-2], "--epochs", "1") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert train_cli(data_dir, out, *ARCHS["mlnn"][:-2], "--epochs", "2") == 2
    err = capsys.readouterr().err
    assert f"already holds a run (status: completed); continue it with --resume {out}, or add --overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before            # nothing touched
    (out / "notes.txt").write_text("mine")
    assert train_cli(data_dir, out, *ARCHS["mlnn"][:-2], "--epochs", "2", "--overwrite") == 0
    assert len(json.loads((out / "history.json").read_text())) == 2
    assert (out / "notes.txt").read_text() == "mine"                            # not a run's file: kept


def test_checkpoints_hold_every_generator_and_the_optimizer_state(data_dir, tmp_path):
    out = tmp_path / "run"
    assert train_cli(data_dir, out, *ARCHS["resnet"]) == 0
    ck = checkpoint.load(out / checkpoint.FILE)
    assert {"shuffle", "augment", "default"} <= set(ck.generators)
    assert ck.position == checkpoint.Position(3) and len(ck.history) == 3
    assert ck.optimizer_state["type"] == "AdamW" and ck.scheduler_state["last_epoch"] == 6
    assert any(k.endswith("running_var") for k in ck.model_state)
    assert ck.best["epoch"] in (1, 2, 3) and ck.best["state"].keys() == ck.model_state.keys()


def test_the_writer_keeps_to_its_share_of_the_time(monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoint.Writer, "ALWAYS_BELOW", 0.005)
    clock = [100.0]
    monkeypatch.setattr(training.time, "perf_counter", lambda: clock[0])
    big = ns.models.mlnn(1180, 1, 3, 28, 8)             # 2.8 M parameters: about 45 MB to write
    writer = checkpoint.Writer(tmp_path / "c.npz", big, ns.Adam(big.parameters()), None, {})
    assert writer.cost == pytest.approx(16 * big.num_parameters() / writer.BYTES_PER_SECOND)
    assert not writer.due()                             # an epoch of 0.8 s later: not yet
    clock[0] += 1.001 * writer.cost / writer.SHARE
    assert writer.due()                                 # 1 % of the time since the last write
    small = ns.models.mlnn(8, 1, 3, 12, 3)
    assert checkpoint.Writer(tmp_path / "d.npz", small, ns.Adam(small.parameters()), None, {}).due()


def test_a_run_still_being_trained_is_neither_resumed_nor_overwritten(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli(data_dir, out, *ARCHS["mlnn"]) == 0
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cfg = json.loads((out / "config.json").read_text())
        cfg.update(status="running", pid=other.pid)                 # as a live training process leaves it
        (out / "config.json").write_text(json.dumps(cfg))
        capsys.readouterr()
        assert resume_cli(out) == 2
        assert f"still being trained by process {other.pid} on this machine; stop it first" in capsys.readouterr().err
        assert train_cli(data_dir, out, *ARCHS["mlnn"], "--overwrite") == 2
    finally:
        other.kill()
        other.wait()
    assert resume_cli(out) == 0                 # the process is gone: "running" was left by a kill
