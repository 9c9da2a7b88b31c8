"""Atomic file writing and model checkpoints.

Every file is first written to a temporary file in the same folder, then
renamed over the target (``os.replace`` is atomic on one file system), so an
interrupted run never leaves a half-written file behind.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .backend import to_numpy
from .errors import CheckpointError, UsageError
from .scoped import scoped


_DISCARD = contextvars.ContextVar("nnscratch_discard_writes", default=False)


def discarding():
    """Within this block (in this thread) the run's writers (``write_text``/``write_json``,
    ``save_model``, ``checkpoint.save``, the figures) return before writing: the ranks of an MPI job
    other than rank 0 run the same training and write nothing. A data set fetched meanwhile is still
    written (``atomic_path`` itself is not affected): it is a cache every rank reads."""
    return scoped(_DISCARD, True)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())      # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def discarded() -> bool:
    """Whether writes are being discarded here (``discarding()``)."""
    return _DISCARD.get()


def write_text(path, text: str):
    if discarded():
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


META_KEY = "__meta__"


def save_model(path, model, meta: dict):
    """Write ``model``'s weights and buffers and ``meta`` (what rebuilds it: arch, sizes, labels) to one .npz."""
    if discarded():
        return
    arrays = {name: to_numpy(v.data) for name, v in model.named_state()}
    arrays[META_KEY] = np.array(json.dumps(meta, default=_jsonable))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_checkpoint(path) -> tuple[dict, dict]:
    """(state dict name -> array, meta dict) from a file written by :func:`save_model`; a missing,
    damaged or foreign file raises ``CheckpointError`` naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no model file at {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        with np.load(path, allow_pickle=False) as z:
            if META_KEY not in z.files:
                raise CheckpointError(f"{path} is not an nnscratch model file: it has no {META_KEY} entry")
            meta = json.loads(str(z[META_KEY]))
            state = {k: z[k] for k in z.files if k != META_KEY}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{path} is damaged (cut short or overwritten: {e}); train again, or --resume "
                              f"its run") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not an nnscratch model file: its {META_KEY} entry is not JSON ({e})") from None
    except (KeyError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not an nnscratch model file ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is not an nnscratch model file: its {META_KEY} entry is a "
                              f"{type(meta).__name__}, not an object")
    return state, meta


def read_json_object(path) -> dict:
    """The JSON object in ``path``; a file that is missing, not JSON or not an object raises
    ``UsageError`` naming it."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"no file at {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON ({e}); it may have been edited or cut short") from None
    if not isinstance(value, dict):
        raise UsageError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value
