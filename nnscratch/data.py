"""MedMNIST 2-D datasets: locate, fetch, verify, load and batch.

    python -m nnscratch.data fetch [--dataset bloodmnist] [--data-dir DIR]

Where a file ``<name>.npz`` is looked for, in order: ``--data-dir``, the
``NNSCRATCH_DATA_DIR`` environment variable, then ``~/.medmnist`` (the
``medmnist`` package's own default, so its downloads are reused). A missing file
is downloaded from Zenodo (with a progress bar and an MD5 check) into the first
of those folders; where that fails, BloodMNIST comes from a byte-identical copy
inside a wheel on the Python package index. Files are written atomically.

A loaded split holds images as float32 (N, C, H, W), scaled to [0, 1] then
normalised with mean 0.5 and std 0.5 (so in [-1, 1], as MedMNIST's own training
code does), and labels as int64 (N,).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import stream
from .backend import get_array_module, to_device
from .errors import UsageError
from .files import atomic_path
from .medmnist_info import DATASETS, SIZES, TASK_FLAGS, DatasetInfo, sized_name
from .progress import bars

SPLITS = ("train", "val", "test")
ENV_VAR = "NNSCRATCH_DATA_DIR"
DOWNLOAD_TIMEOUT_S = 30


class DataError(UsageError):
    """A data file is missing, unreachable or wrong; the message says what was tried and what to do."""


@dataclass(frozen=True)
class Mirror:
    """A wheel on the package index that carries a dataset file (only unzipped, never installed)."""
    requirement: str
    sha256: str
    member: str


MIRRORS = {
    "bloodmnist": Mirror("kosmos-core==0.6.2",
                         "97c673e3d405fe97f8efb0191ff4bb103f7d4b7fd3d4c6c5ed18eaf2edd7b4c5",
                         "kosmos/ml/datasets/data/bloodmnist.npz"),
}


# ---- where files live ----------------------------------------------------------------------

def search_dirs(data_dir=None) -> list[Path]:
    """The folders searched for dataset files, in order (see the module docstring)."""
    dirs = []
    if data_dir:
        folder = Path(data_dir).expanduser()
        if folder.exists() and not folder.is_dir():
            raise DataError(f"--data-dir {data_dir} is a file, not a folder: give the folder that holds (or "
                            f"is to hold) the dataset files")
        dirs.append(folder)
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]).expanduser())
    dirs.append(Path.home() / ".medmnist")
    return list(dict.fromkeys(dirs))


def resolve_name(name: str) -> str:
    """Lower-case name without ".npz"; refuses names that are not plain file names."""
    clean = name.strip().lower()
    clean = clean[:-4] if clean.endswith(".npz") else clean
    if not clean or "/" in clean or "\\" in clean or clean.startswith("."):
        raise DataError(f"dataset name {name!r} is not a plain name like 'bloodmnist'")
    return clean


def locate(name: str, data_dir=None) -> Path | None:
    """The first existing ``<name>.npz`` in :func:`search_dirs`, or None."""
    for d in search_dirs(data_dir):
        p = d / f"{resolve_name(name)}.npz"
        if p.is_file():
            return p
    return None


def md5sum(path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- fetching --------------------------------------------------------------------------------

def fetch(name: str = "bloodmnist", data_dir=None, progress: bool = True) -> Path:
    """Return the verified path of ``<name>.npz``, downloading it first when it is missing."""
    name = resolve_name(name)
    found = locate(name, data_dir)
    if found is not None:
        return found
    info = DATASETS.get(name)
    dirs = search_dirs(data_dir)
    if info is None:
        raise DataError(
            f"unknown dataset {name!r}: no {name}.npz in {', '.join(map(str, dirs))}, and it is not one of the "
            f"MedMNIST 2D sets this tool can download ({', '.join(sorted(n for n in DATASETS if '_' not in n))}, "
            f"each also at 64, 128 and 224 pixels as <name>_<size>); "
            f"put a MedMNIST-format {name}.npz in one of those folders")
    target = dirs[0] / f"{name}.npz"
    sources = [(info.url, lambda: _download(info, target, progress))]
    if name in MIRRORS:
        mirror = MIRRORS[name]
        sources.append((f"the wheel {mirror.requirement} on the package index",
                        lambda: _from_wheel(info, mirror, target)))
    tried = []
    for source, get in sources:
        try:
            if progress:
                print(f"fetching {name}.npz from {source} ...", file=sys.stderr)
            get()
            return target
        except Exception as e:   # every failure is reported together below
            tried.append(f"{source}: {e}")
    raise DataError(
        f"could not get {name}.npz. Tried:\n  - " + "\n  - ".join(tried) +
        f"\nDownload it by hand from {info.url} (MD5 {info.md5}) and put it in {dirs[0]} "
        f"(or pass --data-dir, or set {ENV_VAR}).")


def _download(info: DatasetInfo, target: Path, progress: bool):
    """Stream the file from its URL, hashing as it arrives; keep it only if the MD5 matches."""
    with urllib.request.urlopen(info.url, timeout=DOWNLOAD_TIMEOUT_S) as response, atomic_path(target) as tmp:
        total = int(response.headers.get("Content-Length") or 0) or None
        h = hashlib.md5()
        with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=target.name,
                                        disable=not bars(progress)) as bar:
            for chunk in iter(lambda: response.read(1 << 16), b""):
                f.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
        if h.hexdigest() != info.md5:
            raise DataError(f"downloaded file has MD5 {h.hexdigest()}, expected {info.md5}")


def _pip_download(mirror: Mirror, dest: Path) -> Path:
    """``pip download`` the mirror wheel, pinned by its hash, into ``dest``; returns the wheel's path.

    The wheel declares Requires-Python >= 3.13; it is only unzipped, so pip is told to
    fetch it for 3.13 whatever Python runs here.
    """
    req = dest / "requirements.txt"
    req.write_text(f"{mirror.requirement} --hash=sha256:{mirror.sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.13",
           "--require-hashes", "-r", str(req), "-d", str(dest), "--quiet", "--disable-pip-version-check"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"pip download failed ({last})")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise DataError("pip download reported success but left no wheel")
    return wheels[0]


def _from_wheel(info: DatasetInfo, mirror: Mirror, target: Path):
    """Take the dataset file out of the mirror wheel, checking the wheel's SHA-256 and the file's MD5."""
    with tempfile.TemporaryDirectory(prefix="nnscratch-mirror-") as tmpdir:
        wheel = _pip_download(mirror, Path(tmpdir))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != mirror.sha256:
            raise DataError(f"wheel has SHA-256 {digest}, expected {mirror.sha256}")
        with zipfile.ZipFile(wheel) as z, z.open(mirror.member) as src, atomic_path(target) as tmp:
            h = hashlib.md5()
            with open(tmp, "wb") as f:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    f.write(chunk)
                    h.update(chunk)
            if h.hexdigest() != info.md5:
                raise DataError(f"{mirror.member} in the wheel has MD5 {h.hexdigest()}, expected {info.md5}")


# ---- loading ---------------------------------------------------------------------------------

@dataclass
class Split:
    """images: float32 (N, C, H, W), normalised to [-1, 1]; labels: int64 (N,)."""
    images: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)


@dataclass
class Dataset:
    """A MedMNIST 2-D dataset in memory: three splits plus what the models need to know."""
    name: str
    path: Path
    md5: str
    label_names: tuple
    train: Split
    val: Split
    test: Split
    task: str = "multi-class"       # MedMNIST's task type (medmnist_info); a custom file: multi-class

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[2]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def multi_label(self) -> bool:
        """Labels (N, L) of 0 and 1, one yes/no per label (ChestMNIST), instead of one class (N,)."""
        return self.task.startswith("multi-label")

    def absent_classes(self) -> list:
        """The classes 0 .. num_classes - 1 that no image of any split has (none for a multi-label set)."""
        if self.multi_label:
            return []
        present = set()
        for s in SPLITS:
            present.update(np.unique(self.split(s).labels).tolist())
        return [k for k in range(self.num_classes) if k not in present]

    @property
    def streamed_from(self) -> str | None:
        """The folder of the unpacked images read from disk a batch at a time, or None (in memory)."""
        images = self.train.images
        return str(images.path.parent) if stream.is_streamed(images) else None

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
        return getattr(self, name)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1]: (x / 255 - 0.5) / 0.5."""
    x = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return (np.ascontiguousarray(x, dtype=np.float32) / np.float32(127.5) - np.float32(1.0))


def load(name: str = "bloodmnist", data_dir=None, download: bool = True, progress: bool = True,
         num_classes: int | None = None, memory_budget: int | None = None, log=print,
         task: str | None = None) -> Dataset:
    """Find (or fetch), verify and load a MedMNIST 2-D ``.npz``; see the module docstring. ``num_classes``
    and ``task`` set a custom file's class count (default: its largest label + 1) and task type;
    ``memory_budget`` (bytes) as in :func:`load_file`."""
    name = resolve_name(name)
    path = fetch(name, data_dir, progress) if download else locate(name, data_dir)
    if path is None:
        raise DataError(f"no {name}.npz in {', '.join(map(str, search_dirs(data_dir)))}; "
                        f"run: python -m nnscratch.data fetch --dataset {name}")
    return load_file(path, DATASETS.get(name), num_classes, memory_budget, progress, log, task)


def load_file(path, info: DatasetInfo | None = None, num_classes: int | None = None,
              memory_budget: int | None = None, progress: bool = True, log=print, task: str | None = None) -> Dataset:
    """Load and check one file. With ``info`` its MD5 must match; without, classes come from the labels
    (``num_classes`` of them when given, every label then below it) and the task type is ``task`` (a
    key of ``TASK_FLAGS``; default: multi-label for labels of several columns, else multi-class). Images that would take more than
    ``memory_budget`` bytes as float32 (default: ``stream.default_budget()``) are unpacked into the
    cache and streamed from disk (``stream.StreamedImages``); the rest are loaded into memory."""
    if info is not None and num_classes not in (None, len(info.labels)):
        raise DataError(f"--num-classes {num_classes}: {info.name} has {len(info.labels)} classes")
    if task is not None and task not in TASK_FLAGS:
        raise DataError(f"unknown task {task!r}: expected one of {', '.join(TASK_FLAGS)}")
    if info is not None and task is not None and TASK_FLAGS[task] != info.task:
        raise DataError(f"--task {task}: {info.name} is a {info.task} task (--task is for files of one's own)")
    task = info.task if info is not None else TASK_FLAGS.get(task)
    path = Path(path)
    digest = md5sum(path)
    if info is not None and digest != info.md5:
        raise DataError(f"{path} has MD5 {digest}, expected {info.md5} for {info.name}: the file is corrupt or "
                        f"not the official one; delete it and run: python -m nnscratch.data fetch --dataset {info.name}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels") if f"{s}_{kind}" not in z.files]
            if missing:
                raise DataError(f"{path} lacks the arrays {', '.join(missing)} (a MedMNIST file has train/val/test "
                                f"_images and _labels)")
            members = [f"{s}_images.npy" for s in SPLITS]
            need, budget = stream.float_bytes(path, members), memory_budget or stream.default_budget()
            streamed = need > budget
            arrays = {k: z[k] for k in z.files if not (streamed and k.endswith("_images"))}
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path} is not a readable .npz file ({e})") from None
    if streamed:
        log(f"{path.name}: its images take {need / 1e9:.1f} GB as float32, more than the memory budget of "
            f"{budget / 1e9:.1f} GB (--memory-budget): read from disk a batch at a time")
        try:
            folder = stream.unpack(path, digest, members, progress=progress, log=log)
            maps = {s: stream.StreamedImages(folder / f"{s}_images.npy", normalize) for s in SPLITS}
        except ValueError as e:
            raise DataError(f"{path}: an images array is not uint8 images ({e})") from None
        arrays.update({f"{s}_images": maps[s].raw for s in SPLITS})
    raw_labels = {}
    columns = {arrays[f"{s}_labels"].shape[1] if arrays[f"{s}_labels"].ndim == 2 else 1 for s in SPLITS}
    multi_label = task.startswith("multi-label") if task is not None else max(columns) > 1
    if multi_label and len(columns) != 1:
        raise DataError(f"{path}: the splits' labels have different numbers of columns: {sorted(columns)}")
    for s in SPLITS:
        images, labels = arrays[f"{s}_images"], arrays[f"{s}_labels"]
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
            raise DataError(f"{path}: {s}_images should be uint8 (N, H, W) or (N, H, W, 1|3), "
                            f"got {images.dtype} {images.shape}")
        if multi_label:
            if labels.ndim != 2 or labels.dtype.kind not in "iub" or (labels.size and not np.isin(labels, (0, 1)).all()):
                raise DataError(f"{path}: {s}_labels of a multi-label task should be 0 and 1 in (N, labels), got "
                                f"{labels.dtype} {labels.shape}")
            if labels.shape[0] != images.shape[0]:
                raise DataError(f"{path}: {s} has {images.shape[0]} images but {labels.shape[0]} label rows")
            raw_labels[s] = labels.astype(np.int64)
            continue
        labels = labels.reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"{path}: {s} has {images.shape[0]} images but {labels.shape[0]} labels")
        if labels.dtype.kind not in "iu":
            raise DataError(f"{path}: {s}_labels should be integers, got {labels.dtype}")
        raw_labels[s] = labels.astype(np.int64)
    shapes = {arrays[f"{s}_images"].shape[1:] for s in SPLITS}
    if len(shapes) != 1:
        raise DataError(f"{path}: the splits' images differ in shape: {sorted(shapes)}")
    if info is not None:
        names = info.labels
    elif multi_label:
        names = tuple(f"label {i}" for i in range(columns.pop()))
    elif num_classes is not None:
        names = tuple(f"class {i}" for i in range(num_classes))
    else:
        names = tuple(f"class {i}" for i in range(int(max(int(v.max()) for v in raw_labels.values() if v.size)) + 1))
    for s, labels in raw_labels.items():
        if multi_label:
            if labels.shape[1] != len(names):
                raise DataError(f"{path}: {s}_labels has {labels.shape[1]} columns, {len(names)} labels expected")
            continue
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise DataError(f"{path}: {s}_labels range from {labels.min()} to {labels.max()}, outside "
                            f"[0, {len(names)}) for {len(names)} classes")
    splits = {s: Split(maps[s] if streamed else normalize(arrays[f"{s}_images"]), raw_labels[s]) for s in SPLITS}
    task = task or ("multi-label, binary-class" if multi_label else "multi-class")
    if task == "binary-class" and len(names) != 2:
        raise DataError(f"{path}: a binary-class task has 2 classes, not {len(names)}")
    return Dataset(path.stem, path, digest, tuple(names), **splits, task=task)


def batches(images, labels, batch_size: int, shuffle: bool = False, rng=None, start: int = 0, device=None):
    """Yield (images[b], labels[b]) for consecutive index blocks b of ``batch_size``.

    With ``shuffle`` the order is a fresh permutation from ``rng`` (a seeded
    ``numpy.random.Generator``), drawn now: one per call, i.e. per epoch. The last,
    partial batch is kept. Batches before ``start`` are skipped (a resumed epoch).
    ``labels`` may be None (then so is each batch's). Images streamed from disk
    (``stream.StreamedImages``) are read ahead in a background thread and, with
    ``device``, moved there a batch at a time.
    """
    n = len(images) if labels is None else len(labels)
    order = (rng if rng is not None else np.random.default_rng()).permutation(n) if shuffle else None
    items = _batches(images, labels, n, batch_size, order, start)
    if not stream.is_streamed(images):
        return items
    items = stream.prefetch(items)
    if device is None:
        return items
    return ((to_device(x, device), None if y is None else to_device(y, device)) for x, y in items)


def _batches(images, labels, n: int, batch_size: int, order, start: int):
    xp = get_array_module(images)
    for s in range(start * batch_size, n, batch_size):
        idx = slice(s, s + batch_size) if order is None else xp.asarray(order[s:s + batch_size])
        yield images[idx], None if labels is None else labels[idx]    # indices live where the data lives


def on_device(images, labels, device: str):
    """(images, labels) moved to ``device``; streamed images (and their labels) stay on the host, their
    batches moved one at a time (``batches(device=)``)."""
    if stream.is_streamed(images):
        return images, labels
    return to_device(images, device), None if labels is None else to_device(labels, device)


def head(images, n: int):
    """The first ``n`` images, in memory or streamed."""
    return images.limit(n) if stream.is_streamed(images) else images[:n]


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


# ---- command line ------------------------------------------------------------------------------

def main(argv=None) -> int:
    from .cli import ArgumentParser, run_cli
    parser = ArgumentParser(prog="python -m nnscratch.data", description="Fetch and inspect MedMNIST 2-D datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="download and verify a dataset file if it is not already present")
    p.add_argument("--dataset", default="bloodmnist", help="MedMNIST 2-D set name (default: %(default)s)")
    p.add_argument("--data-dir", default=None,
                   help=f"folder to look in and download to first (default: ${ENV_VAR}, then ~/.medmnist)")
    p.add_argument("--size", type=int, default=28, choices=list(SIZES),
                   help="image size: <dataset>_<size>.npz above 28 pixels (MedMNIST+) (default: %(default)s)")
    args = parser.parse_args(argv)

    def body():
        ds = load(sized_name(args.dataset, args.size), args.data_dir)
        print(f"{ds.path} (MD5 {ds.md5} verified)" if ds.name in DATASETS else f"{ds.path} (no known MD5)")
        print(f"{ds.name}: {ds.channels} x {ds.image_size} x {ds.image_size} images, {ds.num_classes} classes; "
              f"train {len(ds.train)}, val {len(ds.val)}, test {len(ds.test)}")
        return 0
    return run_cli(body)


if __name__ == "__main__":
    # run the imported module's main, so that its DataError is the one run_cli catches
    from nnscratch.data import main as _main
    sys.exit(_main())
