"""Files and rasters: the one home of how gopt-geo opens, checks and writes things.

Every output (adapter, checkpoint, report, raster, vector file, sidecar) is written
under a hidden temporary name beside its final name and renamed when complete, so an
interrupted run never leaves a file that looks finished (:func:`atomic_path`). Every
input raster is opened by :func:`open_raster`, which turns GDAL's errors into one line
that names the file. Nothing here imports torch, so light commands stay light.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rasterio
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
    """Delete a file and the sidecars GDAL may have written beside it, if they exist."""
    for p in (Path(path), Path(f"{path}.aux.xml"), Path(f"{path}.ovr")):
        p.unlink(missing_ok=True)


@contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write ``final`` to; rename it into place on success.

    On any error (or an interruption) the temporary file is removed and ``final`` is
    left as it was.
    """
    final = Path(final)
    tmp = temporary_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        remove_quietly(tmp)


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


def rasterio_reason(err: BaseException) -> str:
    """GDAL's own one-line reason for a rasterio error (rasterio chains it as the cause)."""
    cause = err.__cause__ or err
    text = str(cause).strip() or str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def open_raster(path: str | os.PathLike[str]) -> rasterio.DatasetReader:
    """Open a raster, turning rasterio's errors into one line that names the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as err:
        raise InputError(f"{path}: not a readable raster ({str(err).splitlines()[0]})") from None


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
    with open_raster(optical) as o, open_raster(other) as s:
        if (o.crs is None) != (s.crs is None):
            missing, has = (optical, other) if o.crs is None else (other, optical)
            raise InputError(
                f"{missing}: raster has no CRS, but {has} has one; cannot place them relative "
                "to each other (give both a CRS, or neither)"
            )
        ob = _ordered(tuple(o.bounds))
        sb = _ordered(bounds_in(other, o.crs))
    if sb[0] >= ob[2] or sb[2] <= ob[0] or sb[1] >= ob[3] or sb[3] <= ob[1]:
        raise InputError(f"{other}: {role} raster does not overlap the optical raster {optical}")
    if cover:
        w = min(ob[2], sb[2]) - max(ob[0], sb[0])
        h = min(ob[3], sb[3]) - max(ob[1], sb[1])
        share = (w * h) / ((ob[2] - ob[0]) * (ob[3] - ob[1]))
        if share < 0.999:
            raise InputError(
                f"{other}: {role} raster covers only {100 * share:.1f}% of the optical raster "
                f"{optical}; it must cover the whole scene"
            )
