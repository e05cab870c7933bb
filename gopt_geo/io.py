"""Files and rasters: the one home of how gopt-geo opens, checks and writes things.

Every output (adapter, checkpoint, report, raster, vector file, sidecar) is written
under a hidden temporary name beside its final name and renamed when complete, so an
interrupted run never leaves a file that looks finished (:func:`atomic_path`). Every
input raster is opened by :func:`open_raster`, which turns GDAL's errors into one line
that names the file. Nothing here imports torch, so light commands stay light.

Why one module over 500 lines: it is the one home of how files and rasters are opened,
checked and written (atomic writes, GDAL environments, remote reads, disk errors), so
that every layer above goes through the same rules; each part is a few short functions.
"""

from __future__ import annotations

import errno
import html
import json
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from .errors import InputError

if TYPE_CHECKING:
    import torch

# -- writing -------------------------------------------------------------------------------

#: Marker in the names of temporary outputs; a later run may remove such leftovers.
PARTIAL_MARKER = ".partial-"


def temporary_name(final: Path) -> Path:
    """A hidden sibling of ``final`` that cannot be mistaken for a finished output.

    Same folder (so the final rename is atomic), same suffix (so drivers that look at
    the extension still recognise it).
    """
    final = Path(final)
    return final.with_name(f".{final.stem}{PARTIAL_MARKER}{uuid.uuid4().hex[:8]}{final.suffix}")


def remove_quietly(path: Path) -> None:
    """Delete a file and the sidecars GDAL may have written beside it, if they exist.

    A partial file is removed when its writing failed; if its disk is full at that moment
    this is noted (:func:`note_if_disk_full`), since removing it frees the space that
    would show it and the writer's own error rarely says so."""
    path = Path(path)
    if path.exists():
        note_if_disk_full(path.parent)
    for p in (path, Path(f"{path}.aux.xml"), Path(f"{path}.ovr")):
        p.unlink(missing_ok=True)


@contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write ``final`` to; rename it into place on success.

    On any error (or an interruption) the temporary file is removed and ``final`` is
    left as it was; a full disk is one :class:`InputError` naming the folder
    (:func:`disk_errors`).
    """
    final = Path(final)
    tmp = temporary_name(final)
    try:
        with disk_errors(final.parent):
            yield tmp
            os.replace(tmp, final)
    finally:
        remove_quietly(tmp)


# -- full disks ----------------------------------------------------------------------------

#: Free space (bytes) under which a folder's file system counts as full when a write has
#: just failed: a write fails with ENOSPC once less than one block is left.
FULL_DISK_BYTES = 1 << 20
#: How the writers we use say "disk full" when they do not pass ENOSPC on: GDAL, SQLite
#: (GeoPackage, through pyogrio or sqlite3), GDAL's GeoPackage driver on commit, Windows.
FULL_DISK_PHRASES = (
    "no space left on device",
    "database or disk is full",
    "failed to commit transaction",
    "disk quota exceeded",
    "not enough space on the disk",
)
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
#: Failures that say what they are, whatever the free space.
_OTHER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST}
#: (time, folder) of partial files removed while their disk was full (remove_quietly).
_full_seen: list[tuple[float, Path]] = []
_full_lock = threading.Lock()


def free_bytes(folder: str | os.PathLike[str]) -> int | None:
    """Bytes this process may still write under ``folder`` (root: the blocks reserved for
    it too); None when the folder's file system cannot tell."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


def disk_is_full(folder: str | os.PathLike[str]) -> bool:
    """True when less than :data:`FULL_DISK_BYTES` can be written under ``folder``."""
    free = free_bytes(folder)
    return free is not None and free < FULL_DISK_BYTES


def note_if_disk_full(folder: Path) -> None:
    """Remember that ``folder``'s disk was full just now (before a partial file there is
    removed), for :func:`disk_errors` to recognise a writer's vague error."""
    if disk_is_full(folder):
        with _full_lock:
            _full_seen.append((time.monotonic(), folder.absolute()))
            del _full_seen[:-64]


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _says_disk_full(err: BaseException) -> bool:
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        text = str(e).lower()
        if any(p in text for p in FULL_DISK_PHRASES):
            return True
    return False


def _full_since(start: float, folder: Path) -> bool:
    folder = folder.absolute()
    with _full_lock:
        return any(
            t >= start and (seen == folder or folder in seen.parents) for t, seen in _full_seen
        )


#: What a failed write raises: OSError (rasterio's I/O errors are OSErrors), GDAL's own
#: errors as rasterio passes them on (CPLE_*), RuntimeError (torch's writer, pyogrio's),
#: SQLite's errors.
_WRITE_ERRORS = (
    OSError,
    CPLE_BaseError,
    rasterio.errors.RasterioError,
    RuntimeError,
    sqlite3.Error,
)


def is_full_disk_error(err: BaseException, folder: str | os.PathLike[str], since: float) -> bool:
    """Whether ``err``, raised while writing under ``folder`` since ``since``
    (``time.monotonic()``), comes from a full disk: ENOSPC/EDQUOT anywhere in its chain,
    a writer's words for it (:data:`FULL_DISK_PHRASES`), or, for a failed write that does
    not say why (torch's ``unexpected pos``, GDAL's ``Write failed``), the disk found full
    now or when a partial file was removed since ``since``."""
    if not isinstance(err, _WRITE_ERRORS):
        return False
    if _says_disk_full(err):
        return True
    if isinstance(err, OSError) and err.errno in _OTHER_ERRNOS:
        return False
    folder = Path(folder)
    return disk_is_full(folder) or _full_since(since, folder)


@contextmanager
def disk_errors(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a full disk while writing under ``folder`` into one :class:`InputError`:
    ``FOLDER: no space left on device (the writer's reason)``.

    Wrap whole commands that write (``predict``, ``predict-many``, ``train``): whatever
    writer failed (GDAL, pyogrio, SQLite, torch), the user learns the disk is full and
    which folder, not a driver's traceback. Other errors pass unchanged.
    """
    start = time.monotonic()
    try:
        yield
    except InputError:
        raise
    except Exception as err:
        if not is_full_disk_error(err, folder, start):
            raise
        raise InputError(f"{folder}: no space left on device ({rasterio_reason(err)})") from None


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinite float (nested in dicts/lists) turned into None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def strict_json(value: Any) -> str:
    """Strict JSON (no ``NaN``/``Infinity``, which most JSON readers refuse): a value that
    does not exist is ``null``; the Markdown beside it says why."""
    return json.dumps(finite_or_none(value), indent=2, allow_nan=False, default=str) + "\n"


def ensure_output_dir(path: str | os.PathLike[str]) -> Path:
    """Create an output folder (and its parents), or fail with one line naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{path}: cannot create the output folder ({err.strerror})") from None
    if not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder")
    probe = path / f".gopt-geo-write-test-{uuid.uuid4().hex[:8]}"
    try:  # a read-only file system or a folder without permission, found now, not at the end
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise InputError(f"{path}: cannot write into the output folder ({err.strerror})") from None
    return path


def check_writable(paths: Iterable[Path], overwrite: bool) -> None:
    """Refuse to replace existing outputs unless asked to, before any work is done."""
    for path in paths:
        if path.exists() and not overwrite:
            raise InputError(f"{path}: output already exists (use --overwrite / overwrite=True)")


# -- devices -------------------------------------------------------------------------------


#: torch's CPU threads for every command (``--threads``); unset: torch's default.
THREADS_ENV = "GOPT_GEO_THREADS"


def resolve_device(device: Any = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; ``cpu``, ``cuda``, ``cuda:N``.

    Unknown names and a GPU asked for on a machine without one are user errors. Every
    command that computes with torch resolves its device here first, so this is also
    where the thread setting (``GOPT_GEO_THREADS`` / ``--threads``) is applied.
    """
    import torch

    threads = os.environ.get(THREADS_ENV)
    if threads:
        try:
            torch.set_num_threads(max(1, int(threads)))
        except ValueError:
            raise InputError(f"{THREADS_ENV}={threads!r}: expected a whole number") from None

    name = str(device).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "gpu":
        name = "cuda"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {device!r}: expected auto, cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r}: expected auto, cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device!r}: no CUDA GPU is available on this machine")
    return dev


# -- GDAL ----------------------------------------------------------------------------------

#: GDAL's block cache for streaming work (writing scenes, predicting, vectorising): every
#: block is read or written once, in order, so a large cache only inflates memory, and
#: GDAL's default (5 % of RAM) lets it grow with the scene up to more than a gigabyte.
STREAMING_GDAL_CACHE = 128 * 2**20


def streaming_gdal_env() -> rasterio.Env:
    """A rasterio environment with the bounded block cache of :data:`STREAMING_GDAL_CACHE`."""
    return rasterio.Env(GDAL_CACHEMAX=STREAMING_GDAL_CACHE)


def linear_unit_factor(crs: CRS | None) -> float:
    """Metres per unit of a projected CRS (1.0 without a CRS or a linear unit)."""
    if crs is None or crs.is_geographic:
        return 1.0
    try:
        return float(crs.linear_units_factor[1])
    except Exception:  # a CRS without a linear unit: assume metres
        return 1.0


# -- reading -------------------------------------------------------------------------------


#: What rasterio says when GDAL's reason is in the chained exception, not in its own text.
_SEE_PREVIOUS = "see previous exception"


def rasterio_reason(err: BaseException) -> str:
    """GDAL's own one-line reason for a rasterio error: rasterio chains it as the cause
    and says only "Read failed. See previous exception for details." itself."""
    for e in _chain(err):
        text = str(e).strip()
        if text and _SEE_PREVIOUS not in text.lower():
            return text.splitlines()[0]
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextmanager
def reading(name: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a failed read of pixels inside the block (a truncated or corrupt file, a
    server gone) into one :class:`InputError` naming the file or URL (``name``, as
    :func:`display_name` gives it) and GDAL's reason."""
    try:
        yield
    except (rasterio.errors.RasterioError, CPLE_BaseError) as err:
        raise InputError(f"{name}: cannot read pixels ({rasterio_reason(err)})") from None


#: URL scheme -> the GDAL virtual file system that reads it (byte ranges, no download).
URL_FILESYSTEMS = {
    "http": "/vsicurl/",
    "https": "/vsicurl/",
    "s3": "/vsis3/",
    "gs": "/vsigs/",
    "az": "/vsiaz/",
}
#: GDAL options for remote rasters: do not list the remote "folder" on open (one request
#: per file instead of a directory crawl; the sidecars a listing would find are not used).
REMOTE_GDAL_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
#: GDAL's HTTP settings for remote rasters, set as process-wide defaults the first time a
#: remote raster is opened (environment variables the user set win; README "Remote
#: rasters"). Without them a server that accepts the connection and never answers holds
#: a run for as long as the operating system keeps the socket open (many minutes):
#: connect within 10 s; a transfer slower than 1 byte/s for 30 s is a failure; HTTP 429
#: and 5xx answers and connection errors are retried 3 times with GDAL's exponential
#: backoff from 1 s. A failure after that names the URL and GDAL's reason.
HTTP_DEFAULTS = {
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
    "GDAL_HTTP_LOW_SPEED_TIME": "30",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_RETRY_CODES": "429,500,502,503,504",
}
#: Metadata keys of an in-memory VRT document (gopt_geo.inference.sources): the label
#: that names it in messages and reports, and the stem its outputs are named after.
VRT_LABEL_KEY = "GOPT_GEO_LABEL"
VRT_NAME_KEY = "GOPT_GEO_NAME"


def is_vrt_document(path: object) -> bool:
    """True for a VRT given as its XML text: GDAL opens the text itself as a dataset, so a
    stack of single-band files exists only in memory and travels as a plain string."""
    return isinstance(path, str) and path.lstrip().startswith("<VRTDataset")


def _scheme(text: str) -> str:
    head, sep, _ = text.partition("://")
    return head.lower() if sep and head.isalnum() else ""


def is_remote(path: object) -> bool:
    """True when GDAL, not the local file system, resolves ``path``: a URL (``https://``,
    ``s3://``, ...), a GDAL virtual path (``/vsicurl/``, ``/vsis3/``, ``/vsimem/``, ...) or a
    VRT document. Only strings can be: a ``Path`` folds the ``//`` of a URL."""
    if not isinstance(path, str):
        return False
    return is_vrt_document(path) or path.startswith("/vsi") or _scheme(path) in URL_FILESYSTEMS


def gdal_path(path: str | os.PathLike[str]) -> str | Path:
    """What to open ``path`` as: a local ``Path`` (``file://`` URLs too), or GDAL's name for
    anything remote (``https://h/a.tif`` -> ``/vsicurl/https://h/a.tif``, ``s3://b/k`` ->
    ``/vsis3/b/k``; ``/vsi...`` names and VRT documents unchanged)."""
    if isinstance(path, str) and _scheme(path) == "file":
        return Path(path[len("file://") :])
    if not is_remote(path):
        return Path(path)
    text = str(path)
    scheme = _scheme(text)
    if scheme in ("http", "https"):
        return URL_FILESYSTEMS[scheme] + text
    if scheme:
        return URL_FILESYSTEMS[scheme] + text.split("://", 1)[1]
    return text


def _vrt_metadata(document: str, key: str) -> str | None:
    found = re.search(rf'<MDI key="{key}">([^<]*)</MDI>', document)
    return html.unescape(found.group(1)) if found else None


def display_name(path: str | os.PathLike[str]) -> str:
    """How messages and reports name an input: the path or URL as given; a VRT document by
    its label (e.g. ``STAC item X (optical: B02, B03)``), never by its XML."""
    if is_vrt_document(path):
        return _vrt_metadata(str(path), VRT_LABEL_KEY) or "in-memory VRT"
    return str(path)


def raster_stem(path: str | os.PathLike[str]) -> str:
    """The name an input's outputs are named after: a file's stem, the last part of a URL
    without its query (``https://h/a.tif?sig=..`` -> ``a``), a VRT document's name."""
    if is_vrt_document(path):
        return _vrt_metadata(str(path), VRT_NAME_KEY) or "vrt"
    text = str(path)
    if is_remote(text):
        text = text.split("?", 1)[0].rstrip("/")
    return Path(text).stem


def interruptible[T](fn: Callable[[], T]) -> T:
    """``fn()``, run so that Ctrl-C and SIGTERM stop the caller while ``fn`` waits on the
    network: in a daemon thread, the main thread waiting on it.

    A GDAL call that waits on a stalled server holds the main thread in C, and the
    signal's KeyboardInterrupt, raised inside rasterio's logging callback when GDAL
    reports a retry, is swallowed there ("Exception ignored in rasterio._env.log_error"):
    the run goes on for minutes. A waiting main thread takes the signal at once; the
    abandoned thread ends with the process (a daemon thread is not waited for). Outside
    the main thread (a Dask worker's task thread), ``fn`` simply runs.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn()
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the caller, re-raised there
            box["error"] = err
        finally:
            done.set()

    threading.Thread(target=run, name="gopt-gdal-wait", daemon=True).start()
    done.wait()  # lock waits are interrupted by signals in the main thread
    if "error" in box:
        raise box["error"]
    return box["value"]


def open_raster(path: str | os.PathLike[str]) -> rasterio.DatasetReader:
    """Open a raster, turning rasterio's errors into one line that names the file.

    A local path that does not exist is "file not found"; anything remote (see
    :func:`is_remote`) is handed to GDAL, which reads it by byte ranges, and a failure
    names the URL with GDAL's reason (HTTP status, credentials, ...). A remote open runs
    :func:`interruptible`: Ctrl-C stops a run waiting on a stalled server.
    """
    if is_remote(path):
        label = display_name(path)
        apply_http_defaults()

        def remote() -> rasterio.DatasetReader:
            with rasterio.Env(**REMOTE_GDAL_OPTIONS):
                return rasterio.open(gdal_path(path))

        try:
            return interruptible(remote)
        except rasterio.errors.RasterioIOError as err:
            raise InputError(f"{label}: cannot open ({rasterio_reason(err)})") from None
    path = gdal_path(path)
    if not Path(path).exists():
        raise InputError(f"{path}: file not found")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as err:
        raise InputError(f"{path}: not a readable raster ({rasterio_reason(err)})") from None


def apply_http_defaults() -> None:
    """Put :data:`HTTP_DEFAULTS` in the process environment where the user set nothing.

    GDAL reads its HTTP options when each request is made, from its own configuration or
    else the environment; the environment is what reaches every thread (the predictor's
    read-ahead) and every Dask worker started from this process.
    """
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def value_counts(src: Any, skip_nodata: bool = False) -> dict[int, int]:
    """Pixels per integer value of band 1 of an open raster, read block by block (every
    value its type holds counted as it is: -1, 255, 1000; NaN never). ``skip_nodata``
    leaves the nodata value's pixels out. Label checks, ``init-config`` and ``summary``
    all count codes this way."""
    counts: dict[int, int] = {}
    nodata = src.nodata if skip_nodata and src.nodata is not None else None
    for _, window in src.block_windows(1):
        block = src.read(1, window=window).ravel()
        if nodata is not None and np.isfinite(nodata):
            block = block[block != nodata]
        if block.dtype.kind == "f":
            block = block[np.isfinite(block)]
        values, n = np.unique(block, return_counts=True)
        for v, k in zip(values.tolist(), n.tolist(), strict=True):
            counts[int(v)] = counts.get(int(v), 0) + int(k)
    return counts


def alpha_band(src: Any) -> int | None:
    """Index (1-based) of the raster's alpha band, if it has one."""
    for i, interp in enumerate(src.colorinterp, start=1):
        if interp == ColorInterp.alpha:
            return i
    return None


def data_band_count(src: Any) -> int:
    """Bands that hold data (an alpha band is a mask, not a band the model reads)."""
    return src.count - (alpha_band(src) is not None)


def check_band_count(
    path: str | os.PathLike[str],
    count: int,
    expected: Sequence[str],
    role: str,
    *,
    exact: bool = True,
) -> None:
    """Fail unless a raster has the bands named for it: exactly as many (a model's inputs)
    or at least as many (``exact=False``: a training file whose first bands are read)."""
    if count == len(expected) or (not exact and count > len(expected)):
        return
    names = ", ".join(expected)
    if exact:
        raise InputError(
            f"{path}: {role} raster has {count} band(s), but the model expects "
            f"{len(expected)} ({names})"
        )
    raise InputError(
        f"{path}: {role} raster has {count} band(s), but {len(expected)} are configured ({names})"
    )


def same_grid(a: Any, b: Any) -> bool:
    """True when two open rasters share CRS, transform and shape (no warp needed)."""
    return (
        a.crs == b.crs
        and a.transform.almost_equals(b.transform)
        and (a.width, a.height) == (b.width, b.height)
    )


def warp_onto(src: Any, like: Any, resampling: Any, **kwargs: Any) -> WarpedVRT:
    """A ``WarpedVRT`` of ``src`` on ``like``'s grid (CRS, transform, width, height), read
    window by window: the one way every consumer puts a raster onto another's grid."""
    return WarpedVRT(
        src,
        crs=like.crs,
        transform=like.transform,
        width=like.width,
        height=like.height,
        resampling=resampling,
        **kwargs,
    )


def bounds_in(path: str | os.PathLike[str], crs: CRS | None) -> tuple[float, float, float, float]:
    """The raster's bounds, in ``crs`` when both have a CRS."""
    with open_raster(path) as src:
        return _bounds_of(src, crs)


def _bounds_of(src: Any, crs: CRS | None) -> tuple[float, float, float, float]:
    """An open raster's bounds, in ``crs`` when both have a CRS."""
    if crs is None or src.crs is None or src.crs == crs:
        return tuple(src.bounds)  # type: ignore[return-value]
    return transform_bounds(src.crs, crs, *src.bounds, densify_pts=21)


def _ordered(b: tuple[float, ...]) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) whatever the transform's orientation (no-CRS files are y-down)."""
    return min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])


def check_overlap(
    optical: str | os.PathLike[str],
    other: str | os.PathLike[str],
    role: str = "SAR",
    *,
    cover: bool = False,
) -> None:
    """Fail with a clear message when ``other`` does not overlap the optical raster, or,
    with ``cover``, does not cover all of it (labels must: a label file shifted off its
    scene would otherwise train on fill).

    Also refuses mixing a raster without CRS with one that has a CRS: there is no way
    to know where one lies relative to the other.
    """
    with open_raster(optical) as o, open_raster(other) as s:  # each opened once
        optical_name, other_name = display_name(optical), display_name(other)
        if (o.crs is None) != (s.crs is None):
            missing, has = (
                (optical_name, other_name) if o.crs is None else (other_name, optical_name)
            )
            raise InputError(
                f"{missing}: raster has no CRS, but {has} has one; cannot place them relative "
                "to each other (give both a CRS, or neither)"
            )
        if o.crs is None and s.crs is None and not same_grid(o, s):
            raise InputError(
                f"{other_name}: neither this {role} raster nor the optical raster "
                f"{optical_name} has a CRS, and their grids differ ({s.width}x{s.height} px "
                f"vs {o.width}x{o.height} px, or another transform); without a CRS they can "
                "only be paired pixel for pixel on one grid (give both a CRS, or the same grid)"
            )
        ob = _ordered(tuple(o.bounds))
        sb = _ordered(_bounds_of(s, o.crs))
    if sb[0] >= ob[2] or sb[2] <= ob[0] or sb[1] >= ob[3] or sb[3] <= ob[1]:
        raise InputError(
            f"{other_name}: {role} raster does not overlap the optical raster {optical_name}"
        )
    if cover:
        w = min(ob[2], sb[2]) - max(ob[0], sb[0])
        h = min(ob[3], sb[3]) - max(ob[1], sb[1])
        share = (w * h) / ((ob[2] - ob[0]) * (ob[3] - ob[1]))
        if share < 0.999:
            raise InputError(
                f"{other_name}: {role} raster covers only {100 * share:.1f}% of the optical "
                f"raster {optical_name}; it must cover the whole scene"
            )


def band_indexes(
    path: str | os.PathLike[str],
    src: Any,
    names: Sequence[str],
    role: str,
    indices: Sequence[int] = (),
) -> list[int]:
    """The 1-based bands of ``src`` to read as ``names``, in that order.

    When every band of the file carries a description (GDAL band names, as Sentinel-2
    products and gopt-geo's own files have), the names select and order the bands, and a
    name the file does not have is an error naming both lists. Without descriptions,
    ``indices`` (1-based) say which bands to read, or else the first ``len(names)``.
    """
    # a band GDAL calls alpha is a mask, unless the names need it (4-band uint8 RGB+NIR
    # files are often tagged RGBA)
    count = data_band_count(src) if data_band_count(src) >= len(names) else src.count
    descriptions = list(src.descriptions[:count])
    if count and all(descriptions) and len(set(descriptions)) == count:
        missing = [n for n in names if n not in descriptions]
        if missing:
            raise InputError(
                f"{path}: the {role} bands are named {descriptions} in the file, but the "
                f"model/config names {list(names)} ({', '.join(missing)} not in the file); "
                "rename them in the config (or give the file's bands those descriptions)"
            )
        return [descriptions.index(n) + 1 for n in names]
    named = [d for d in descriptions if d]
    if named and not indices:
        # some bands are named but not as a set we can select by: reading by position
        # would silently take NIR for red when a file is ordered NIR, R, G, B
        unnamed = [i for i, d in enumerate(descriptions, start=1) if not d]
        duplicated = sorted({d for d in named if named.count(d) > 1})
        problem = (
            f"band(s) {unnamed} have no description"
            if unnamed
            else f"the descriptions {duplicated} name more than one band"
        )
        raise InputError(
            f"{path}: the {role} bands are described as {descriptions} in the file: "
            f"{problem}, so the bands {list(names)} cannot be found by name; give every "
            "band a distinct description (or the band indices in the config)"
        )
    if indices:
        if len(indices) != len(names) or max(indices) > count or min(indices) < 1:
            raise InputError(
                f"{path}: {role} band indices {list(indices)} do not fit a file with {count} "
                f"band(s) for the bands {list(names)}"
            )
        return list(indices)
    check_band_count(path, count, names, role, exact=False)
    return list(range(1, len(names) + 1))
