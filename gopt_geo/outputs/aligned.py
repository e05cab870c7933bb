"""A raster read on another raster's grid, strip by strip, with its validity.

Comparing maps (``gopt-geo change``: two class maps and their confidences;
``gopt-geo evaluate``: a class map against a reference) reads every input on one
reference grid. Rasters already on it are read as they are; others are warped onto it
with nearest-neighbour through a ``WarpedVRT`` (codes must never be blended), read window
by window so memory stays flat. Validity is GDAL's mask: the nodata value, or, for a
warped raster without one, an alpha band that marks the source's footprint (pixels the
source does not cover are never valid, whatever value the warp filled them with).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from ..errors import InputError
from ..io import open_raster, rasterio_reason, same_grid, warp_onto


class AlignedRaster:
    """Band 1 of ``path`` on the grid of the open dataset ``like`` (warped when needed).

    ``role`` names the raster in errors ("AFTER class map", "reference"). ``scale`` and
    ``offset`` are the raster's own (a confidence map's 0..255 -> 0..1).
    """

    def __init__(self, path: str | Path, like: Any, role: str) -> None:
        self.path = Path(path)
        self.role = role
        self.src = open_raster(path)
        self.vrt: Any = None
        self.alpha: int | None = None
        self.scale = float(self.src.scales[0] or 1.0)
        self.offset = float(self.src.offsets[0] or 0.0)
        try:
            if not same_grid(self.src, like):
                if like.crs is None or self.src.crs is None:
                    raise InputError(
                        f"{path}: {role} is on another grid than {like.name}, and one of them "
                        "has no CRS; give both a CRS (or the same grid)"
                    )
                if self.src.nodata is not None:
                    self.vrt = warp_onto(self.src, like, Resampling.nearest, nodata=self.src.nodata)
                else:  # the footprint is only known through an alpha band
                    self.vrt = warp_onto(self.src, like, Resampling.nearest, add_alpha=True)
                    self.alpha = self.src.count + 1
        except BaseException:
            self.close()
            raise

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """(values, valid) of band 1 in ``window`` of the reference grid."""
        return read_with_mask(
            self.vrt if self.vrt is not None else self.src, window, self.path, self.alpha
        )

    def close(self) -> None:
        if self.vrt is not None:
            self.vrt.close()
        self.src.close()

    def __enter__(self) -> AlignedRaster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_with_mask(
    ds: Any, window: Window, path: str | Path, alpha: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Band 1 of ``ds`` in ``window`` and where it is valid (GDAL's mask, or ``alpha``),
    a read failure as one line naming ``path``."""
    try:
        data = ds.read(1, window=window)
        if alpha is not None:
            valid = ds.read(alpha, window=window) > 0
        else:
            valid = ds.read_masks(1, window=window) > 0
    except rasterio.errors.RasterioError as err:
        raise InputError(f"{path}: cannot read pixels ({rasterio_reason(err)})") from None
    return data, valid


def strips(height: int, width: int, rows: int) -> Iterator[tuple[int, Window]]:
    """(first row, window) of consecutive full-width strips of ``rows`` rows."""
    if rows < 1:
        raise InputError(f"block rows must be at least 1, got {rows}")
    for row0 in range(0, height, rows):
        yield row0, Window(0, row0, width, min(rows, height - row0))
