"""Bad input gets one clear line and exit status 2 (the commands) or a specific exception (the API).

One test per case of issue 17's list: damaged run files, unusable --out paths, unusable data, models
that cannot be built, stray labels, Ctrl-C during start-up, the API's misuses, and logs without
progress-bar redraws.
"""
import json
import os
import zipfile

import numpy as np
import pytest

import nnscratch as ns
from nnscratch import data, demo, evaluate, reproduce, train, training

from synthetic import write_medmnist


def train_cli(data_dir, *flags, dataset="tinymnist"):
    return train.main(["--dataset", dataset, "--data-dir", str(data_dir), "--quiet", "--arch", "mlnn",
                       "--hidden-size", "4", "--epochs", "1", *flags])


def one_line_error(capsys, *expected):
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    for text in expected:
        assert text in err, err
    return err


@pytest.fixture
def finished_run(data_dir, tmp_path):
    out = tmp_path / "run"
    assert train_cli(data_dir, "--out", str(out)) == 0
    return out


# ---- damaged run files -------------------------------------------------------------------------------

def test_evaluate_on_a_truncated_model_file(finished_run, capsys):
    model = finished_run / "model.npz"
    model.write_bytes(model.read_bytes()[:200])
    capsys.readouterr()
    assert evaluate.main([str(finished_run)]) == 2
    one_line_error(capsys, str(model), "is damaged")
    with pytest.raises(ns.CheckpointError, match="is damaged"):
        ns.load_checkpoint(model)


@pytest.mark.parametrize("text,expected", [("{not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list")])
def test_evaluate_with_a_config_that_is_not_a_json_object(finished_run, capsys, text, expected):
    (finished_run / "config.json").write_text(text)
    capsys.readouterr()
    assert evaluate.main([str(finished_run)]) == 2
    one_line_error(capsys, "config.json", expected)


@pytest.mark.parametrize("meta,expected", [(np.array(5), "is a int, not an object"),
                                           (np.array("{oops"), "is not JSON"),
                                           (np.array(json.dumps({"arch": "mlnn"})), "its metadata has no")])
def test_evaluate_with_model_metadata_of_the_wrong_kind(finished_run, capsys, meta, expected):
    path = finished_run / "model.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["__meta__"] = meta
    np.savez(path, **arrays)
    capsys.readouterr()
    assert evaluate.main([str(finished_run)]) == 2
    one_line_error(capsys, str(path), expected)


def test_a_model_file_of_another_kind(tmp_path):
    path = tmp_path / "model.npz"
    np.savez(path, w=np.zeros(3))
    with pytest.raises(ns.CheckpointError, match="has no __meta__ entry"):
        ns.load_checkpoint(path)
    with pytest.raises(ns.CheckpointError, match="no model file at"):
        ns.load_checkpoint(tmp_path / "absent.npz")
    with pytest.raises(ns.CheckpointError, match="is damaged"):
        (tmp_path / "zip.npz").write_bytes(b"PK\x03\x04 not really")
        ns.load_checkpoint(tmp_path / "zip.npz")


def test_load_state_dict_names_what_does_not_fit():
    model = ns.Sequential(ns.Linear(3, 2))
    with pytest.raises(ns.CheckpointError, match=r"0.weight has shape \(2, 2\) in the state but \(2, 3\)"):
        model.load_state_dict({"0.weight": np.zeros((2, 2)), "0.bias": np.zeros(2)})
    with pytest.raises(ns.CheckpointError, match="expected a mapping"):
        model.load_state_dict([1, 2])
    with pytest.raises(ns.CheckpointError, match="holds <U1 values, not numbers"):
        model.load_state_dict({"0.weight": np.full((2, 3), "a"), "0.bias": np.zeros(2)})
    assert issubclass(ns.CheckpointError, ValueError)


# ---- --out that cannot be used ---------------------------------------------------------------------

def test_out_naming_a_file(data_dir, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert train_cli(data_dir, "--out", str(tmp_path / "afile")) == 2
    one_line_error(capsys, "is a file, not a folder")


def test_out_under_a_file(data_dir, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert train_cli(data_dir, "--out", str(tmp_path / "afile" / "run")) == 2
    one_line_error(capsys, "afile is a file, so no folder can be made under it")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_out_in_a_folder_without_write_permission(data_dir, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert train_cli(data_dir, "--out", str(locked / "run")) == 2
    one_line_error(capsys, "is not writable (permission denied)")


def test_out_where_nothing_can_be_created(data_dir, capsys):
    assert train_cli(data_dir, "--out", "/proc/nnscratch-run") == 2          # not even root can
    one_line_error(capsys, "/proc/nnscratch-run", "cannot")


def test_out_with_a_name_too_long(data_dir, tmp_path, capsys):
    assert train_cli(data_dir, "--out", str(tmp_path / ("x" * 300))) == 2
    one_line_error(capsys, "is 300 bytes long, more than a file system allows (255)")


def test_out_with_a_path_too_long(data_dir, tmp_path, capsys):
    assert train_cli(data_dir, "--out", str(tmp_path.joinpath(*["y" * 200] * 25))) == 2
    one_line_error(capsys, "more than the system allows")


def test_nothing_is_created_when_the_data_cannot_train(data_dir, tmp_path, capsys):
    write_medmnist(data_dir / "noval.npz", classes=3, size=12, channels=3, n=(60, 0, 30))
    out = tmp_path / "run"
    assert train_cli(data_dir, "--out", str(out), dataset="noval") == 2
    one_line_error(capsys, "has no val images")
    assert not out.exists()


def test_reproduce_out_naming_a_file(data_dir, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code = reproduce.main(["--out", str(tmp_path / "afile"), "--dataset", "tinymnist", "--data-dir", str(data_dir),
                           "--epochs", "1", "--seeds", "0", "--quiet"])
    assert code == 2
    one_line_error(capsys, "is a file, not a folder")


# ---- data and models that cannot train -------------------------------------------------------------

def test_an_empty_training_split(data_dir, tmp_path, capsys):
    write_medmnist(data_dir / "notrain.npz", classes=3, size=12, channels=3, n=(0, 24, 30))
    assert train_cli(data_dir, "--out", str(tmp_path / "r"), dataset="notrain") == 2
    one_line_error(capsys, "has no train images")


def test_a_model_too_large_for_memory(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert train_cli(data_dir, "--out", str(out), "--hidden-size", str(10 ** 10)) == 2
    one_line_error(capsys, "the MLNN does not fit in memory", "Unable to allocate")
    assert not out.exists()


def test_the_cnn_on_one_pixel_images(data_dir, tmp_path, capsys):
    write_medmnist(data_dir / "dots.npz", classes=3, size=1, channels=3)
    out = tmp_path / "r"
    code = train.main(["--dataset", "dots", "--data-dir", str(data_dir), "--quiet", "--arch", "cnn", "--out", str(out)])
    assert code == 2
    one_line_error(capsys, "image_size 1 is too small", "dots: 3 x 1 x 1 images")
    assert not out.exists()


def test_a_stray_label_warns_and_num_classes_catches_it(data_dir, tmp_path, capsys):
    labels = np.random.default_rng(0).integers(0, 8, (60, 1)).astype(np.uint8)
    labels[5] = 99
    write_medmnist(data_dir / "stray.npz", classes=8, size=12, channels=3, train_labels=labels)
    assert train_cli(data_dir, "--out", str(tmp_path / "a"), dataset="stray") == 0
    out = capsys.readouterr().out
    assert "labels skip 91 of classes 0-99 (none of 8-98); the model gets 100 outputs" in out and "--num-classes" in out
    assert train_cli(data_dir, "--out", str(tmp_path / "b"), "--num-classes", "8", dataset="stray") == 2
    one_line_error(capsys, "train_labels range from 0 to 99, outside [0, 8) for 8 classes")
    write_medmnist(data_dir / "eight.npz", classes=8, size=12, channels=3)
    assert train_cli(data_dir, "--out", str(tmp_path / "c"), "--num-classes", "10", dataset="eight") == 0
    assert json.loads((tmp_path / "c" / "config.json").read_text())["num_classes"] == 10


def test_data_fetch_into_a_file_says_so_before_downloading(tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(data, "_download", lambda *a: pytest.fail("downloaded"))
    assert data.main(["fetch", "--dataset", "bloodmnist", "--data-dir", str(tmp_path / "afile")]) == 2
    one_line_error(capsys, "is a file, not a folder")


def test_demo_with_a_negative_seed(capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--seed", "-1"])
    assert e.value.code == 2 and "--seed must be >= 0" in capsys.readouterr().err


def test_ctrl_c_during_start_up(data_dir, tmp_path, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(training, "load", interrupted)
    assert train_cli(data_dir, "--out", str(tmp_path / "r")) == 130
    err = capsys.readouterr().err
    assert err == "interrupted\n"
    assert not (tmp_path / "r").exists()


# ---- the API ----------------------------------------------------------------------------------------

def test_one_hot_refuses_labels_outside_the_classes():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 8\); got \[-1\]"):
        ns.one_hot(np.array([0, -1]), 8)
    with pytest.raises(ValueError, match=r"got \[9\]"):
        ns.one_hot([0, 9], 8)
    with pytest.raises(ValueError, match="1-D array of integer class labels"):
        ns.one_hot(np.array([0.5]), 8)
    np.testing.assert_array_equal(ns.one_hot([2, 0], 3), [[0, 0, 1], [1, 0, 0]])


def test_adam_refuses_eps_zero():
    params = ns.Linear(2, 2).parameters()
    with pytest.raises(ValueError, match=r"eps must lie in \(0.0, inf\]"):
        ns.Adam(params, eps=0)
    with pytest.raises(ValueError, match="eps"):
        ns.AdamW(params, eps=0.0)


def test_to_refuses_an_integer_dtype():
    with pytest.raises(TypeError, match="dtype must be a floating type"):
        ns.Linear(2, 2).to(dtype=np.int32)


def test_an_optimizer_given_the_model_says_to_pass_its_parameters():
    model = ns.Linear(2, 2)
    with pytest.raises(TypeError, match=r"got a Linear; pass model.parameters\(\)"):
        ns.SGD(model, lr=0.1)
    with pytest.raises(TypeError, match="expected an iterable of Parameters"):
        ns.Adam(5)
    with pytest.raises(TypeError, match=r"expected Parameters \(model.parameters\(\)\)"):
        ns.Adam([np.zeros(3)])


# ---- logs -------------------------------------------------------------------------------------------

def test_a_log_gets_one_line_per_epoch_and_no_bar_redraws(data_dir, tmp_path, capfd):
    """stderr not a terminal (a log file, a scheduler): no progress bar, one line per epoch."""
    code = train.main(["--dataset", "tinymnist", "--data-dir", str(data_dir), "--arch", "mlnn", "--hidden-size", "4",
                       "--epochs", "3", "--batch-size", "8", "--out", str(tmp_path / "r")])       # no --quiet
    assert code == 0
    out, err = capfd.readouterr()
    assert "\r" not in err and "it/s" not in err and "batch/s" not in err
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch ")] == ["1/3", "2/3", "3/3"]


def test_checkpoint_files_are_nnscratch_zip_files(finished_run):
    with zipfile.ZipFile(finished_run / "checkpoint.npz") as z:
        assert "__meta__.npy" in z.namelist()
