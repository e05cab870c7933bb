"""The reference grid every output is written on, and the ground size of its pixels.

Outputs (rasters, vectors, areas in reports and change tables) all live on the optical
raster's grid (design §1); this module says what that grid is and what one of its
pixels measures on the ground, for projected, geographic and CRS-less rasters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from affine import Affine
from pyproj import Geod
from rasterio.crs import CRS

from ..io import linear_unit_factor


@dataclass(frozen=True)
class Grid:
    """The reference (optical) grid every output is written on."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


_GEOD = Geod(ellps="WGS84")


def pixel_areas_m2(crs: CRS | None, transform: Affine, row0: int, nrows: int) -> np.ndarray | None:
    """Ground area of one pixel for each row ``row0 .. row0+nrows-1`` in m², or None.

    Projected CRS: constant, |det(transform)| in the CRS's linear unit, converted to metres.
    Geographic CRS: varies with latitude, so each row's pixel is measured on the WGS84
    ellipsoid. No CRS: unknown (None), areas are then reported in pixels only.
    """
    if crs is None:
        return None
    if not crs.is_geographic:
        unit = linear_unit_factor(crs)
        return np.full(nrows, abs(transform.determinant) * unit * unit, dtype=np.float64)
    a, b, c, d, e, f = transform[:6]
    areas = np.empty(nrows, dtype=np.float64)
    for i, r in enumerate(range(row0, row0 + nrows)):
        cols, rows = (0, 1, 1, 0), (r, r, r + 1, r + 1)  # the pixel's corners in column 0
        lons = [a * x + b * y + c for x, y in zip(cols, rows, strict=True)]
        lats = [d * x + e * y + f for x, y in zip(cols, rows, strict=True)]
        area, _ = _GEOD.polygon_area_perimeter(lons, lats)
        areas[i] = abs(area)
    return areas


def pixel_size_m(crs: CRS | None, transform: Affine, height: int) -> float:
    """Typical pixel side in metres (in map units when there is no CRS), at mid-scene."""
    areas = pixel_areas_m2(crs, transform, height // 2, 1)
    if areas is None:
        return float(np.sqrt(abs(transform.determinant)))
    return float(np.sqrt(areas[0]))
