"""One writer per output folder: an advisory lock that a second run sees at once.

Two runs writing one folder would remove each other's temporary files and commit sets
over each other (design §10). ``predict`` and ``predict-many`` hold :func:`folder_lock`
on their output folder for the whole run. The lock is ``fcntl.flock`` on a hidden file in
the folder, holding the owner's process id and host for the message the second run
prints. The kernel drops a flock when its process dies, however it dies, so a lock left
by a killed run is simply taken over: there is no stale-lock guessing. (flock works
within one host; on network file systems that do not support it, see the README.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError
from .io import ensure_output_dir

#: The lock file's name inside a locked folder.
LOCK_NAME = ".gopt-geo.lock"


def _owner(handle: int) -> str:
    try:
        text = os.pread(handle, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "unknown process"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], wait: float = 0.0) -> Iterator[Path]:
    """Hold the folder's lock for the ``with`` block (the folder is created if needed).

    ``wait``: seconds to wait for another run to finish (0: refuse at once). Refused:
    :class:`InputError` naming the folder and the process that holds it.
    """
    folder = ensure_output_dir(folder)  # one line for a folder that cannot be made
    path = folder / LOCK_NAME
    deadline = time.monotonic() + max(wait, 0.0)
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(handle)
            os.close(handle)
            if time.monotonic() >= deadline:
                raise InputError(
                    f"{folder}: another gopt-geo run is writing to this folder ({owner}); "
                    "wait for it to finish or choose another output folder"
                ) from None
            time.sleep(0.5)
            continue
        # the holder before us may have removed the file between our open and our lock:
        # then we locked a name nobody will see, so start again on the current file
        try:
            same = os.fstat(handle).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(handle)
    try:
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before unlocking: a waiter then finds the name gone and retries
        os.close(handle)
