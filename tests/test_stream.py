"""Sets larger than the memory budget: unpacked once, memory-mapped, read a batch at a time
(nnscratch/stream.py). The same numbers as in memory, a bounded resident set, no half-written cache used."""
import json
import os
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest
from hypothesis import given, strategies as st

from nnscratch import data, stream, train
from nnscratch.errors import UsageError

from synthetic import write_medmnist

TINY = 1000       # bytes: a memory budget every test file exceeds


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(stream.CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def big(tmp_path):
    """A compressed MedMNIST-format file of 3 x 16 x 16 images (train 50, val 20, test 30)."""
    return write_medmnist(tmp_path / "bigmnist.npz", classes=4, size=16, channels=3, n=(50, 20, 30), compressed=True)


def test_a_set_over_the_budget_is_streamed_with_the_numbers_of_the_one_in_memory(big, cache):
    whole = data.load_file(big, memory_budget=1 << 30)
    lines = []
    streamed = data.load_file(big, memory_budget=TINY, log=lines.append)
    assert whole.streamed_from is None and streamed.streamed_from is not None
    assert "more than the memory budget" in lines[0]
    for s in data.SPLITS:
        a, b = whole.split(s), streamed.split(s)
        assert isinstance(b.images, stream.StreamedImages) and b.images.shape == a.images.shape
        assert np.array_equal(b.images[0:len(b)], a.images) and np.array_equal(b.labels, a.labels)
    assert (streamed.channels, streamed.image_size, streamed.num_classes) == (3, 16, 4)
    with pytest.raises(TypeError, match="read a batch at a time"):
        np.asarray(streamed.train.images)
    # a second load finds the unpacked copy: nothing is written again
    stamp = {p: p.stat().st_mtime_ns for p in cache.rglob("*.npy")}
    again = data.load_file(big, memory_budget=TINY, log=lines.append)
    assert len(lines) == 2 and {p: p.stat().st_mtime_ns for p in cache.rglob("*.npy")} == stamp
    assert again.streamed_from == streamed.streamed_from


@given(idx=st.lists(st.integers(-50, 49), max_size=70), start=st.integers(-60, 60), stop=st.integers(-60, 60),
       step=st.sampled_from([1, 2, 4, -1, -3]), a=st.integers(0, 55), b=st.integers(0, 55))
def test_any_rows_read_from_the_map_equal_the_loaded_arrays_rows(idx, start, stop, step, a, b, big, cache):
    whole = data.load_file(big, memory_budget=1 << 30).train.images
    streamed = data.load_file(big, memory_budget=TINY, log=lambda _: None).train.images
    idx = np.array(idx, dtype=np.int64)
    got = streamed[idx]
    assert got.dtype == np.float32 and np.array_equal(got, whole[idx])
    assert np.array_equal(streamed[start:stop:step], whole[start:stop:step])
    assert np.array_equal(streamed.limit(7)[0:100], whole[:7])
    with pytest.raises(IndexError):
        streamed[np.array([50])]
    # a view (an MPI rank's shard) reads its own rows, by slice or index, as the array's slice does
    part, rows = streamed.view(a, b), whole[a:b]
    assert len(part) == len(rows) and part.shape == rows.shape
    assert np.array_equal(part[start:stop:step], rows[start:stop:step])
    inside = idx[(idx >= -len(rows)) & (idx < len(rows))]
    assert np.array_equal(part[inside], rows[inside])
    assert np.array_equal(part.limit(3)[0:10], rows[:3]) and np.array_equal(part.view(1, 4)[0:9], rows[1:4])


def test_batches_read_ahead_give_the_same_batches_in_the_same_order(big, cache):
    whole = data.load_file(big, memory_budget=1 << 30).train
    streamed = data.load_file(big, memory_budget=TINY, log=lambda _: None).train
    for start in (0, 2):
        a = list(data.batches(whole.images, whole.labels, 8, shuffle=True, rng=np.random.default_rng(3), start=start))
        b = list(data.batches(streamed.images, streamed.labels, 8, shuffle=True, rng=np.random.default_rng(3),
                              start=start, device="cpu"))
        assert len(a) == len(b) == 7 - start
        assert all(np.array_equal(x, u) and np.array_equal(y, v) for (x, y), (u, v) in zip(a, b))


def test_prefetch_hands_over_errors_and_stops_its_thread_when_closed():
    def failing():
        yield 1
        raise OSError("disk gone")
    got = stream.prefetch(failing())
    assert next(got) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(got)
    endless = stream.prefetch(iter(range(10 ** 9)), depth=2)
    assert [next(endless) for _ in range(3)] == [0, 1, 2]
    endless.close()                      # returns only once the reading thread has stopped
    assert not any(t.name == "nnscratch-prefetch" and t.is_alive() for t in __import__("threading").enumerate())


@pytest.mark.parametrize("arch,flags", [("cnn", ["--augment", "dihedral"]), ("mlnn", ["--hidden-size", "16"])])
def test_training_from_disk_ends_with_the_bits_of_training_in_memory(arch, flags, big, cache, tmp_path):
    runs = {}
    for name, budget in (("memory", "100"), ("disk", "0.000001")):
        out = tmp_path / name
        assert train.main(["--dataset", "bigmnist", "--data-dir", str(big.parent), "--out", str(out), "--quiet",
                           "--arch", arch, "--epochs", "2", "--batch-size", "16", "--memory-budget", budget,
                           *flags]) == 0
        runs[name] = out
    config = json.loads((runs["disk"] / "config.json").read_text())
    assert config["images_streamed_from"].startswith(str(cache))
    assert json.loads((runs["memory"] / "config.json").read_text())["images_streamed_from"] is None
    a, b = np.load(runs["memory"] / "model.npz"), np.load(runs["disk"] / "model.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a.files if k != "__meta__")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]   # noqa: E731
    assert strip(json.loads((runs["memory"] / "history.json").read_text())) == \
        strip(json.loads((runs["disk"] / "history.json").read_text()))


# ---- a half-written cache is redone, never used ------------------------------------------------------

def _folder(cache):
    (folder,) = [p for p in (cache / "unpacked").iterdir() if p.is_dir() and ".partial-" not in p.name]
    return folder


def test_a_kill_while_unpacking_leaves_no_cache_that_a_later_load_would_use(big, cache, monkeypatch):
    real_open = zipfile.ZipFile.open
    calls = []

    def dies_on_the_second_member(self, name, *a, **k):
        if isinstance(name, zipfile.ZipInfo):        # unpacking (np.load opens members by name)
            calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt          # Ctrl-C half-way through
        return real_open(self, name, *a, **k)
    monkeypatch.setattr(zipfile.ZipFile, "open", dies_on_the_second_member)
    with pytest.raises(KeyboardInterrupt):
        data.load_file(big, memory_budget=TINY, log=lambda _: None)
    monkeypatch.undo()
    monkeypatch.setenv(stream.CACHE_ENV, str(cache))
    assert list((cache / "unpacked").iterdir()) == []      # the partial folder removed on the way out
    ds = data.load_file(big, memory_budget=TINY, log=lambda _: None)
    assert np.array_equal(ds.test.images[0:30], data.load_file(big, memory_budget=1 << 30).test.images)


def test_a_partial_folder_of_a_killed_process_is_removed_and_a_damaged_copy_unpacked_again(big, cache):
    data.load_file(big, memory_budget=TINY, log=lambda _: None)
    folder = _folder(cache)
    # SIGKILL while unpacking: a partial folder whose process is gone (pid 2**22 + 1 is above Linux's pid_max)
    dead = folder.with_name(f"{folder.name}.partial-{2 ** 22 + 1}")
    dead.mkdir()
    (dead / "train_images.npy").write_bytes(b"\x93NUMPY half")
    # a truncated file in the complete copy (a disk that filled up, a hand edit)
    npy = folder / "train_images.npy"
    with open(npy, "r+b") as f:
        f.truncate(npy.stat().st_size - 100)
    lines = []
    ds = data.load_file(big, memory_budget=TINY, log=lines.append)
    assert any("not usable (train_images.npy has" in line and "unpacking bigmnist.npz again" in line for line in lines)
    assert not dead.exists() and npy.stat().st_size == 128 + 50 * 16 * 16 * 3
    assert np.array_equal(ds.train.images[0:50], data.load_file(big, memory_budget=1 << 30).train.images)
    # a record naming another file (same name, other contents): unpacked again too
    record = json.loads((folder / stream.RECORD).read_text())
    (folder / stream.RECORD).write_text(json.dumps(dict(record, md5="0" * 32)))
    lines.clear()
    data.load_file(big, memory_budget=TINY, log=lines.append)
    assert any("unpacked from a file with MD5 000" in line for line in lines)


def test_a_process_killed_while_unpacking_leaves_a_partial_folder_the_next_load_removes(tmp_path, cache):
    """A real SIGKILL half-way through unpacking (the copy slowed down so that the kill lands in it)."""
    path = write_medmnist(tmp_path / "slowmnist.npz", classes=3, size=32, channels=3, n=(600, 50, 50),
                          compressed=True)
    script = textwrap.dedent(f"""
        import time, zipfile
        from nnscratch import data, stream
        stream.CHUNK = 4096
        real = zipfile.ZipExtFile.read
        def slow(self, n=-1):
            time.sleep(0.002)
            return real(self, n)
        zipfile.ZipExtFile.read = slow
        data.load_file({str(path)!r}, memory_budget=1000, progress=False, log=lambda _: None)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    partial = None
    for _ in range(3000):                        # up to 30 s for the copy to start
        partial = next(iter((cache / "unpacked").glob("*.partial-*/train_images.npy")), None) \
            if (cache / "unpacked").is_dir() else None
        if partial is not None and partial.stat().st_size > 100_000:
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert partial is not None and partial.exists(), "the kill did not land while unpacking"
    ds = data.load_file(path, memory_budget=TINY, log=lambda _: None)
    assert not partial.parent.exists() and not list((cache / "unpacked").glob("*.partial-*"))
    assert np.array_equal(ds.train.images[0:600], data.load_file(path, memory_budget=1 << 30).train.images)


def test_bad_budgets_and_cache_folders_get_one_line(big, cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(stream.BUDGET_ENV, "lots")
    with pytest.raises(UsageError, match="NNSCRATCH_MEMORY_BUDGET='lots' is not a positive number"):
        data.load_file(big)
    monkeypatch.delenv(stream.BUDGET_ENV)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(stream.CACHE_ENV, str(blocker))
    with pytest.raises(UsageError, match="cannot create the cache folder .* set NNSCRATCH_CACHE_DIR"):
        data.load_file(big, memory_budget=TINY, log=lambda _: None)
    assert train.main(["--dataset", "bigmnist", "--data-dir", str(big.parent), "--memory-budget", "0",
                       "--quiet"]) == 2
    assert "--memory-budget must be a positive number of GB, got 0.0" in capsys.readouterr().err


# ---- resident memory stays bounded -------------------------------------------------------------------

def test_reading_a_whole_split_from_disk_keeps_the_resident_set_small(tmp_path, cache):
    """An epoch's reads over 150 MB of images, in shuffled order: the process's peak resident set grows
    by well under the file's size (without letting the pages go it grows by all of it)."""
    path = tmp_path / "wide.npz"
    n, size = 3000, 128                           # 3000 x 128 x 128 x 3 = 147 MB of uint8
    rng = np.random.default_rng(0)
    images = np.zeros((n, size, size, 3), np.uint8)
    images[:, ::16] = rng.integers(0, 255, (n, 1, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, (n, 1)).astype(np.uint8)
    small = np.zeros((2, size, size, 3), np.uint8)
    np.savez_compressed(path, train_images=images, train_labels=labels, val_images=small,
                        val_labels=labels[:2], test_images=small, test_labels=labels[:2])
    del images
    script = textwrap.dedent(f"""
        import numpy as np
        from nnscratch import data, stream
        stream.RELEASE_ROWS = {os.environ.get('RELEASE_ROWS', 16)}
        ds = data.load_file({str(path)!r}, memory_budget=1000, progress=False, log=lambda _: None)
        def rss(field):
            return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field)) * 1024
        before = rss("VmRSS:")
        total = 0.0
        for xb, yb in data.batches(ds.train.images, ds.train.labels, 32, shuffle=True,
                                   rng=np.random.default_rng(0)):
            total += float(xb[:, :, 0].sum())
        print(before, rss("VmHWM:"), total)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert done.returncode == 0, done.stderr
    before, peak, total = done.stdout.split()
    grown = int(peak) - int(before)
    # batches of 32: 1.6 MB of uint8 and 6.3 MB of float32 each, two read ahead, and what 16 rows map
    assert grown < 70e6, f"the resident set grew by {grown / 1e6:.0f} MB reading a 147 MB split"
    assert float(total) != 0.0
