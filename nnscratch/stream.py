"""Image sets larger than memory: unpacked once into ``.npy`` files, memory-mapped, read a batch at a time.

A MedMNIST file is a zip of compressed ``.npy`` arrays: it cannot be mapped as it is, and loading it
holds every image as float32, 4 bytes a pixel (PathMNIST at 224 pixels: about 65 GB). When a set's
images would take more than the memory budget that way, :func:`unpack` streams each split's images
out of the zip, a few megabytes at a time, into an uncompressed ``<split>_images.npy`` in the cache
(once: later runs find it there), and :class:`StreamedImages` maps that file and hands out the
batches asked for as normalised float32 arrays, the same numbers ``data.normalize`` gives.

Resident memory stays small whatever the file's size: the pages a read maps are let go
(``madvise(MADV_DONTNEED)``) after every ``RELEASE_ROWS`` images read. The kernel keeps them in its page
cache while memory allows, so a second epoch of a set that fits the machine's memory reads from there.
:func:`prefetch` reads the next batches in a background thread while the current one trains.

A half-written cache is never used: a split's file is written under a temporary folder that is
renamed to its final name only when every file in it is complete; a folder found with files of the
wrong size (or a record naming another source file) is removed and unpacked again.
"""
from __future__ import annotations

import contextlib
import json
import mmap
import os
import queue
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .errors import UsageError
from .progress import bars
from .runfolder import live_python_process

CACHE_ENV = "NNSCRATCH_CACHE_DIR"
BUDGET_ENV = "NNSCRATCH_MEMORY_BUDGET"
RELEASE_ROWS = 16                # images read between two madvise calls (_Map.rows)
RECORD = "source.json"           # in a complete cache folder: what was unpacked, from which file
CHUNK = 4 << 20                  # bytes copied at a time while unpacking


def default_budget() -> int:
    """Bytes a data set's float32 images may take in memory: ``$NNSCRATCH_MEMORY_BUDGET`` (in GB), else
    a quarter of this machine's memory."""
    value = os.environ.get(BUDGET_ENV)
    if value:
        try:
            gb = float(value)
        except ValueError:
            gb = -1.0
        if not gb > 0:
            raise UsageError(f"{BUDGET_ENV}={value!r} is not a positive number of gigabytes (e.g. 4 or 0.5)")
        return int(gb * 1e9)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def cache_root() -> Path:
    """Where unpacked sets go: ``$NNSCRATCH_CACHE_DIR``, else ``~/.cache/nnscratch``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "nnscratch").expanduser()


def float_bytes(path, members) -> int:
    """The bytes the zip's ``members`` (uint8 image arrays) take as float32: 4 x their uncompressed size."""
    with zipfile.ZipFile(path) as z:
        return 4 * sum(z.getinfo(m).file_size for m in members)


# ---- unpacking ------------------------------------------------------------------------------------

def unpack(path, md5: str, members, cache_dir=None, progress: bool = True, log=print) -> Path:
    """The folder holding each ``member`` of the zip ``path`` (e.g. "train_images.npy") uncompressed,
    unpacked now unless a complete copy of this file (same MD5) is already there."""
    path = Path(path)
    root = Path(cache_dir) if cache_dir else cache_root()
    folder = root / "unpacked" / f"{path.stem}-{md5[:16]}"
    problem = _incomplete(folder, md5, members)
    if problem is None:
        return folder
    if folder.exists():
        log(f"the unpacked copy in {folder} is not usable ({problem}); unpacking {path.name} again")
        shutil.rmtree(folder)
    try:
        root.joinpath("unpacked").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the cache folder {root / 'unpacked'} ({e.strerror}): set {CACHE_ENV} to a "
                         f"writable folder with room for the unpacked images") from None
    _remove_abandoned(folder)
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        with zipfile.ZipFile(path) as z:
            infos = [z.getinfo(m) for m in members]
            total = sum(i.file_size for i in infos)
            free = shutil.disk_usage(partial).free
            if free < total:
                raise UsageError(f"unpacking {path.name} needs {total / 1e9:.1f} GB in {root}, which has "
                                 f"{free / 1e9:.1f} GB free: free some space or set {CACHE_ENV} to another disk")
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"unpacking {path.name}",
                      disable=not bars(progress)) as bar:
                for info in infos:
                    with z.open(info) as src, open(partial / info.filename, "wb") as dst:
                        for chunk in iter(lambda: src.read(CHUNK), b""):
                            dst.write(chunk)
                            bar.update(len(chunk))
                        dst.flush()
                        os.fsync(dst.fileno())
        record = {"source": str(path), "md5": md5,
                  "arrays": {m: list(header(partial / m)[0]) for m in members}}
        (partial / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        try:
            os.rename(partial, folder)   # atomic: the folder appears complete or not at all
        except OSError:                  # another process unpacked the same file first: use its copy
            if _incomplete(folder, md5, members) is not None:
                raise
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return folder


def _incomplete(folder: Path, md5: str, members) -> str | None:
    """Why ``folder`` is not a complete unpacked copy of the file with this MD5, or None when it is."""
    if not folder.is_dir():
        return "absent"
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return f"no readable {RECORD}"
    if record.get("md5") != md5:
        return f"it was unpacked from a file with MD5 {record.get('md5')}"
    for m in members:
        try:
            shape, offset = header(folder / m)
        except (OSError, ValueError) as e:
            return f"{m}: {e}"
        size = (folder / m).stat().st_size
        if size != offset + int(np.prod(shape)):
            return f"{m} has {size} bytes, {offset + int(np.prod(shape))} expected"
    return None


def _remove_abandoned(folder: Path):
    """Partial folders of this set left by processes that no longer run (killed while unpacking)."""
    for partial in folder.parent.glob(f"{folder.name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and live_python_process(int(pid)):
            continue
        shutil.rmtree(partial, ignore_errors=True)


def header(path) -> tuple[tuple, int]:
    """(shape, offset of the data) of a uint8, C-ordered ``.npy`` file; ValueError for any other."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if dtype != np.uint8 or fortran:
            raise ValueError(f"holds {dtype} {'Fortran' if fortran else 'C'}-ordered data, not C-ordered uint8")
        return tuple(shape), f.tell()


# ---- reading --------------------------------------------------------------------------------------

class _Map:
    """One ``.npy`` file mapped read-only: ``array`` (its uint8 contents), read by :meth:`rows`."""

    def __init__(self, path):
        shape, offset = header(path)
        with open(path, "rb") as f:
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.array = np.frombuffer(self.mm, np.uint8, int(np.prod(shape)), offset).reshape(shape)
        self.path = Path(path)

    def rows(self, index) -> np.ndarray:
        """A copy of ``array[index]`` (a slice, or ascending row numbers), read RELEASE_ROWS rows at a
        time, the pages mapped for them let go after each: a page fault maps a whole folio of the page
        cache (a megabyte or two on recent kernels), so a few rows can map far more than they hold."""
        if isinstance(index, slice):
            index = np.arange(*index.indices(self.array.shape[0]))
        out = np.empty((len(index),) + self.array.shape[1:], np.uint8)
        for s in range(0, len(index), RELEASE_ROWS):
            out[s:s + RELEASE_ROWS] = self.array[index[s:s + RELEASE_ROWS]]
            self.mm.madvise(mmap.MADV_DONTNEED)     # the page cache keeps them; only this mapping drops them
        return out


class StreamedImages:
    """A split's uint8 images (N, H, W) or (N, H, W, C) in a memory-mapped ``.npy``, indexed like the
    float32 (N, C, H, W) array ``convert`` (``data.normalize``) would make of them all: ``images[a:b]``
    and ``images[index_array]`` return that array's rows (read from disk now); ``limit(n)`` the first n,
    ``view(a, b)`` images a..b-1, both as StreamedImages over the same map (nothing read)."""

    dtype = np.dtype(np.float32)
    ndim = 4

    def __init__(self, path, convert, _map: _Map | None = None, n: int | None = None, start: int = 0):
        self._map = _map or _Map(path)
        self.convert = convert           # uint8 rows -> float32 (B, C, H, W): data.normalize
        raw = self._map.array
        self.start = start               # the file's row of this one's image 0
        self.n = raw.shape[0] - start if n is None else min(n, raw.shape[0] - start)
        channels = 1 if raw.ndim == 3 else raw.shape[3]
        self.shape = (self.n, channels) + raw.shape[1:3]
        self.path = self._map.path

    def __len__(self) -> int:
        return self.n

    @property
    def raw(self) -> np.ndarray:
        """The mapped uint8 images, all of the file's (N, H, W) or (N, H, W, C)."""
        return self._map.array

    def __repr__(self) -> str:
        return f"StreamedImages({self.path}, shape={self.shape})"

    def limit(self, n: int) -> StreamedImages:
        """The first ``n`` images (all when fewer), sharing this one's map."""
        return self.view(0, n)

    def view(self, start: int, stop: int) -> StreamedImages:
        """Images start..stop-1 (clipped to this one's, as a slice is), sharing this one's map: an MPI
        rank's shard of a split (``training._my_rows``)."""
        start, stop, _ = slice(start, stop).indices(self.n)
        return StreamedImages(self.path, self.convert, self._map, max(0, stop - start), self.start + start)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            rows = self._map.rows(self.start + np.arange(*key.indices(self.n)))
        else:
            idx = np.asarray(key)
            if idx.ndim != 1 or idx.dtype.kind not in "iu":
                raise TypeError(f"StreamedImages takes a slice or a 1-D integer array, not {key!r}")
            if idx.size and (idx.min() < -self.n or idx.max() >= self.n):
                raise IndexError(f"an index in [{idx.min()}, {idx.max()}] is outside {self.n} images")
            idx = np.where(idx < 0, idx + self.n, idx)
            # read in the file's order (the disk's), then put the rows back in the order asked for
            order = np.argsort(idx, kind="stable")
            rows = np.empty((idx.size,) + self._map.array.shape[1:], np.uint8)
            rows[order] = self._map.rows(self.start + idx[order])
        return self.convert(rows)

    def __array__(self, *args, **kwargs):
        raise TypeError(f"{self!r} is read a batch at a time (images[a:b] or images[indices]); the whole "
                        f"split does not fit the memory budget")


def is_streamed(images) -> bool:
    return isinstance(images, StreamedImages)


# ---- reading ahead --------------------------------------------------------------------------------

_DONE = object()


def prefetch(iterable, depth: int = 2):
    """Yield ``iterable``'s items, computed ``depth`` ahead in a background thread (its exceptions are
    raised here, in order). Closing the generator early stops the thread."""
    items = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        try:
            for item in iterable:
                while not stop.is_set():
                    with contextlib.suppress(queue.Full):
                        items.put(("item", item), timeout=0.1)
                        break
                if stop.is_set():
                    return
            items.put(("done", _DONE))
        except BaseException as e:          # handed to the consumer
            items.put(("error", e))

    thread = threading.Thread(target=work, name="nnscratch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = items.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:                     # unblock a put waiting for room
                items.get_nowait()
        thread.join()
