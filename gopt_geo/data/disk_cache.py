"""Scenes stored on disk as ``.npy`` arrays, memory-mapped by every process that reads them.

The in-memory scene cache (scenes.py) holds a split only when it fits a RAM budget;
WHU-OPT-SAR's splits (about 10 GB of sources) never do, and torchgeo's per-patch reads
are about 5x slower than slicing. This module stores each scene once, as torchgeo read it,
in a folder of its own under a cache root::

    <root>/<scene>-<key>/image.npy   [C, H, W], float32 or a narrower exact dtype
    <root>/<scene>-<key>/mask.npy    [H, W] raw label codes (when the split has labels)
    <root>/<scene>-<key>/meta.json   the key, the sources' identity, shapes, build time

``key`` hashes everything the arrays depend on: the identity (absolute path, size,
mtime_ns) of every source file and the caller's *recipe* (band routing, grid, library
versions). A changed source gives a new key, so a stale entry is never opened; it is
deleted when its replacement is built (:meth:`SceneStore.prune`).

Why it is safe with several processes: an entry is written into a private temporary
folder and renamed into place (atomic on one file system) only once complete, so a
folder named ``<scene>-<key>`` is always whole; a per-entry ``flock`` makes a second
builder wait for the first instead of doing the work twice, and a builder that still
loses the rename (no working locks, e.g. some network file systems) discards its copy.
Data is written with ``pwrite`` rather than through a writable mapping, so a full disk
is an ``OSError`` (ENOSPC), not a SIGBUS.

Readers map the arrays read-only (``mmap_mode='r'``): DataLoader workers share the
page cache instead of each holding a copy, and nothing grows with the archive's size
but the kernel's page cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Environment variable naming the cache root; ``off``/``0``/``none`` turns the disk cache off.
CACHE_DIR_ENV = "GOPT_GEO_SCENE_CACHE_DIR"
#: Bumped whenever the layout or the meaning of the stored arrays changes.
FORMAT_VERSION = 1
#: Values of the setting (or of :data:`CACHE_DIR_ENV`) that turn the disk cache off.
OFF_VALUES = frozenset({"off", "0", "none", "false", "no", ""})
#: Free space kept on the cache's file system beyond what an entry needs.
SPARE_BYTES = 256 * 2**20
#: Temporary build folders older than this (seconds) are leftovers of killed builds.
STALE_BUILD_S = 24 * 3600
META = "meta.json"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gopt-geo/scenes``, or ``~/.cache/gopt-geo/scenes``."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "gopt-geo" / "scenes"


def resolve_cache_dir(setting: str | Path | None = "auto") -> Path | None:
    """The cache root for a setting, or None when the disk cache is off.

    ``"auto"`` (the default) means :data:`CACHE_DIR_ENV` if set, else
    :func:`default_cache_dir`; None or ``"off"`` turns the cache off; anything else is
    the folder itself (an explicit setting, e.g. a config key, wins over the environment).
    """
    if setting is None:
        return None
    if isinstance(setting, str) and setting.strip() == "auto":
        env = os.environ.get(CACHE_DIR_ENV)
        if env is None:
            return default_cache_dir()
        setting = env
    text = str(setting).strip()
    if text.lower() in OFF_VALUES:
        return None
    return Path(text).expanduser().absolute()


def file_identity(path: str | Path) -> list[Any]:
    """What says a source file is unchanged: absolute path, size and mtime in ns."""
    p = Path(path).absolute()
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def entry_key(sources: Sequence[str | Path], recipe: dict[str, Any]) -> str:
    """The hash naming an entry: the sources' identity and the recipe of the arrays."""
    payload = {
        "format": FORMAT_VERSION,
        "sources": [file_identity(p) for p in sources],
        "recipe": recipe,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class StoredScene:
    """One entry's arrays, mapped read-only, and the folder they live in."""

    folder: Path
    image: np.ndarray
    mask: np.ndarray | None

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + (self.mask.nbytes if self.mask is not None else 0)


def open_entry(folder: str | Path) -> StoredScene:
    """Map an entry's arrays read-only (no data is read until it is sliced)."""
    folder = Path(folder)
    meta = json.loads((folder / META).read_text())
    image = np.load(folder / "image.npy", mmap_mode="r")
    mask = np.load(folder / "mask.npy", mmap_mode="r") if meta.get("mask") else None
    return StoredScene(folder, image, mask)


class SceneWriter:
    """Fills a new entry's arrays strip by strip with ``pwrite`` (no writable mapping)."""

    def __init__(
        self,
        folder: Path,
        shape: tuple[int, int, int],
        image_dtype: np.dtype,
        mask_dtype: np.dtype | None,
    ) -> None:
        self.shape = shape
        self.image_dtype = np.dtype(image_dtype)
        self.mask_dtype = None if mask_dtype is None else np.dtype(mask_dtype)
        self._files: dict[str, tuple[int, int]] = {}
        arrays = [("image", self.image_dtype, shape)]
        if self.mask_dtype is not None:
            arrays.append(("mask", self.mask_dtype, shape[1:]))
        for name, dtype, shp in arrays:
            path = folder / f"{name}.npy"
            # writes the header and sizes the (sparse) file; the data is pwritten below
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shp)
            offset = int(mm.offset)
            del mm
            self._files[name] = (os.open(path, os.O_RDWR), offset)

    def write_rows(self, row: int, image: np.ndarray, mask: np.ndarray | None) -> None:
        """Store rows ``row ...`` of every channel (``image`` [C, h, W]) and of the mask."""
        c, h, w = self.shape
        if image.shape[0] != c or image.shape[2] != w or row + image.shape[1] > h:
            raise ValueError(f"strip {image.shape} at row {row} does not fit {self.shape}")
        fd, offset = self._files["image"]
        size = self.image_dtype.itemsize
        data = np.ascontiguousarray(image, dtype=self.image_dtype)
        for ch in range(c):
            _pwrite_all(fd, data[ch].tobytes(), offset + (ch * h + row) * w * size)
        if self.mask_dtype is not None:
            if mask is None or mask.shape != (image.shape[1], w):
                raise ValueError(f"mask strip missing or of the wrong shape at row {row}")
            fd, offset = self._files["mask"]
            block = np.ascontiguousarray(mask, dtype=self.mask_dtype)
            _pwrite_all(fd, block.tobytes(), offset + row * w * self.mask_dtype.itemsize)

    def close(self) -> None:
        """Flush every array to the disk and close it (before the entry is renamed)."""
        for fd, _ in self._files.values():
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._files = {}


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class SceneStore:
    """The cache root: finds, builds and prunes entries (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}"

    def open(self, name: str, key: str, shape: tuple[int, int, int]) -> StoredScene | None:
        """The complete entry ``name``/``key`` of that shape, or None."""
        folder = self.folder(name, key)
        try:
            meta = json.loads((folder / META).read_text())
            if meta.get("key") != key:
                return None
            stored = open_entry(folder)
        except (OSError, ValueError):
            return None
        if stored.image.shape != shape or (
            stored.mask is not None and stored.mask.shape != shape[1:]
        ):
            return None
        return stored

    def build(
        self,
        name: str,
        key: str,
        shape: tuple[int, int, int],
        image_dtype: np.dtype,
        mask_dtype: np.dtype | None,
        fill: Callable[[SceneWriter], None],
        meta: dict[str, Any] | None = None,
    ) -> tuple[StoredScene, bool]:
        """The entry, built by ``fill`` unless it exists; (entry, built here?).

        ``fill`` writes every row through the :class:`SceneWriter` it is given; whatever
        it raises leaves nothing behind. The entry is whole before anyone can open it.
        """
        with self._lock(name, key):
            found = self.open(name, key, shape)
            if found is not None:
                return found, False
            c, h, w = shape
            need = c * h * w * np.dtype(image_dtype).itemsize
            if mask_dtype is not None:
                need += h * w * np.dtype(mask_dtype).itemsize
            free = shutil.disk_usage(self.root).free
            if free < need + SPARE_BYTES:
                raise OSError(
                    28,  # ENOSPC
                    f"scene {name} needs {need / 2**20:.0f} MiB, "
                    f"{free / 2**20:.0f} MiB free in {self.root}",
                )
            start = time.perf_counter()
            tmp = Path(tempfile.mkdtemp(prefix=f".build-{name}-{key}-", dir=self.root))
            try:
                tmp.chmod(0o755)  # mkdtemp's 0o700 would keep a shared cache private
                writer = SceneWriter(tmp, shape, np.dtype(image_dtype), mask_dtype)
                try:
                    fill(writer)
                finally:
                    writer.close()
                record = {
                    **(meta or {}),
                    "format": FORMAT_VERSION,
                    "key": key,
                    "name": name,
                    "shape": list(shape),
                    "image_dtype": np.dtype(image_dtype).str,
                    "mask": mask_dtype is not None,
                    "mask_dtype": None if mask_dtype is None else np.dtype(mask_dtype).str,
                    "nbytes": need,
                    "build_s": round(time.perf_counter() - start, 3),
                    "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
                with open(tmp / META, "w") as f:  # written last: marks the entry whole
                    json.dump(record, f, indent=1)
                    f.flush()
                    os.fsync(f.fileno())
                final = self.folder(name, key)
                try:
                    os.rename(tmp, final)
                except OSError:
                    found = self.open(name, key, shape)  # another builder won the race
                    if found is None:  # a damaged entry is in the way: set it aside
                        self._discard(final)
                        os.rename(tmp, final)
                    else:
                        return found, False
                return open_entry(final), True
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)

    def prune(self, name: str, sources: Sequence[str | Path], keep: str) -> int:
        """Delete entries of scene ``name`` built from these same source paths when the
        files have changed since (they can never be valid again); returns how many."""
        paths = sorted(str(Path(p).absolute()) for p in sources)
        current = sorted(file_identity(p) for p in sources)
        removed = 0
        for folder in self.root.glob(f"{name}-*"):
            if folder.name == f"{name}-{keep}" or not folder.is_dir():
                continue
            try:
                meta = json.loads((folder / META).read_text())
                theirs = sorted(meta.get("sources", []))
            except (OSError, ValueError):
                continue
            if sorted(s[0] for s in theirs) == paths and theirs != current:
                self._discard(folder)
                (self.root / f".{folder.name}.lock").unlink(missing_ok=True)
                removed += 1
        self._prune_builds()
        return removed

    def _prune_builds(self) -> None:
        """Remove temporary build folders left by killed runs (old enough to be dead)."""
        now = time.time()
        for folder in self.root.glob(".build-*"):
            with contextlib.suppress(OSError):
                if now - folder.stat().st_mtime > STALE_BUILD_S:
                    shutil.rmtree(folder, ignore_errors=True)

    def _discard(self, folder: Path) -> None:
        """Rename then delete, so that nobody opens a half-deleted entry."""
        trash = folder.with_name(f".build-trash-{folder.name}-{os.getpid()}-{time.time_ns()}")
        try:
            os.rename(folder, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    @contextlib.contextmanager
    def _lock(self, name: str, key: str) -> Iterator[None]:
        """Hold ``<entry>.lock`` (flock) while the entry is checked and built."""
        path = self.root / f".{name}-{key}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def human_size(nbytes: float) -> str:
    """``nbytes`` in MiB below a GiB, else in GiB."""
    if nbytes < 2**30:
        return f"{nbytes / 2**20:.1f} MiB"
    return f"{nbytes / 2**30:.2f} GiB"
