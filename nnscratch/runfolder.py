"""The run folder: checked before anything is computed, never clobbered by accident, its status always true.

``config.json``'s "status" says what happened to the run: "running" (with the training process's
"pid" and "host": a run killed without warning leaves "running" and a process that is gone),
"interrupted" (Ctrl-C; "stopped_at" says
where), "failed" ("error" says why), "diverged", or "completed", written last, once every other
file of the run is in place.
"""
from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path

from .errors import UsageError
from .files import read_json_object

# every file a training run (and evaluate) writes into its folder; --overwrite removes these only
RUN_FILE_PATTERNS = ("config.json", "history.json", "history.csv", "model.npz", "checkpoint.npz", "metrics.json",
                     "metrics_*.json", "loss_curves.png", "accuracy_curves.png", "per_class_precision_recall*.png",
                     "confusion_matrix*.png", ".*.tmp")
MARKERS = ("config.json", "checkpoint.npz", "model.npz")        # a folder holding one of these holds a run
NAME_MAX, PATH_MAX = 255, 4096          # Linux's limits for one name and a whole path, in bytes


def holds_run(folder: Path) -> bool:
    return any((folder / name).is_file() for name in MARKERS)


def status(folder: Path) -> str:
    """The status config.json records, or "unknown" when it cannot be read."""
    try:
        return str(read_json_object(folder / "config.json").get("status", "unknown"))
    except UsageError:
        return "unknown"


def owner(folder: Path) -> int | None:
    """The id of a live process on this machine that config.json says is training the run in
    ``folder`` (status "running"), or None: a run killed without warning leaves "running" behind
    with a process that no longer exists."""
    try:
        saved = read_json_object(folder / "config.json")
    except UsageError:
        return None
    pid = saved.get("pid")
    if saved.get("status") != "running" or not isinstance(pid, int) or saved.get("host") != socket.gethostname():
        return None
    if pid == os.getpid():
        return None
    return pid if live_python_process(pid) else None


def live_python_process(pid: int) -> bool:
    """Whether the process ``pid`` on this machine still runs (and, where /proc says, runs Python: an id
    may have been reused since the process that wrote it down ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:             # alive, another user's
        return True
    try:
        return b"python" in Path(f"/proc/{pid}/cmdline").read_bytes().lower()
    except OSError:
        return True


def check_not_running(folder: Path, what: str):
    """Refuse to touch a run that a live process is still training: two writers would mix their files."""
    pid = owner(folder)
    if pid is not None:
        raise UsageError(f"{what}: the run in {folder} is still being trained by process {pid} on this machine; "
                         f"stop it first (Ctrl-C saves a checkpoint)")


def check_out(folder: Path, overwrite: bool, flag: str = "--out"):
    """Refuse a folder that cannot be written or that holds a run (unless ``overwrite``): one line that
    says what is wrong and what to do. Creates nothing."""
    long = next((part for part in folder.parts if len(os.fsencode(part)) > NAME_MAX), None)
    if long is not None:
        raise UsageError(f"{flag}: the name {long[:40]}... is {len(os.fsencode(long))} bytes long, more than a file "
                         f"system allows ({NAME_MAX}); choose a shorter one")
    if len(os.fsencode(str(folder.absolute()))) >= PATH_MAX:
        raise UsageError(f"{flag}: the path is {len(os.fsencode(str(folder.absolute())))} bytes long, more than "
                         f"the system allows ({PATH_MAX - 1}); choose a shorter one")
    try:
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{flag} {folder} is a file, not a folder: name a folder for the run")
        for parent in list(reversed(folder.parents)) + [folder]:
            if parent.exists() and not parent.is_dir():
                raise UsageError(f"{flag} {folder}: {parent} is a file, so no folder can be made under it")
        existing = next((p for p in [folder] + list(folder.parents) if p.exists()), Path("."))
    except OSError as e:
        raise UsageError(f"{flag} {folder}: cannot use it ({_reason(e)})") from None
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {folder}: {existing} is not writable (permission denied); choose another folder")
    if holds_run(folder):
        check_not_running(folder, f"{flag} {folder}")
        if not overwrite:
            raise UsageError(f"{flag} {folder} already holds a run (status: {status(folder)}); continue it with "
                             f"--resume {folder}, or add --overwrite to replace it")


def create(folder: Path, overwrite: bool, flag: str = "--out"):
    """Make the folder (after ``check_out``), removing an old run's files first with ``overwrite``, and
    prove it writable."""
    check_out(folder, overwrite, flag)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if overwrite:
            remove_run_files(folder)
        fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"{flag} {folder}: cannot write there ({_reason(e)})") from None


def remove_run_files(folder: Path):
    for pattern in RUN_FILE_PATTERNS:
        for path in folder.glob(pattern):
            if path.is_file():
                path.unlink()


def remove_stale_temporaries(folder: Path):
    """Temporary files a killed write left behind (the files they were to replace are whole)."""
    for path in folder.glob(".*.tmp"):
        path.unlink(missing_ok=True)


def _reason(e: OSError) -> str:
    if e.errno == errno.ENAMETOOLONG:
        return "the path is too long"
    return e.strerror or str(e)
