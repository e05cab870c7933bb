"""What a map holds, counted as its rows are written: pixels, ground area and uncertain
pixels per class code.

Counted on the fly, one block of rows at a time, so that the report never reads the
class map back; the ground area uses each row's own pixel area
(:func:`~gopt_geo.outputs.grid.pixel_areas_m2`: exact for geographic CRSs, whose pixels
shrink towards the poles) and is None for a grid without a CRS.
"""

from __future__ import annotations

import numpy as np

from ..data.classes import ClassScheme
from .grid import Grid, pixel_areas_m2


class ClassCounts:
    """Pixels, uncertain pixels and m² per class code of a map on ``grid``."""

    def __init__(self, classes: ClassScheme, grid: Grid | None, uncertainty: bool) -> None:
        self.classes = classes
        self.grid = grid
        self.uncertainty = uncertainty
        self._counts = np.zeros(256, dtype=np.int64)
        self._uncertain = np.zeros(256, dtype=np.int64)
        has_crs = grid is not None and grid.crs is not None
        self._areas = np.zeros(256, dtype=np.float64) if has_crs else None

    def add(
        self, row0: int, codes: np.ndarray, valid: np.ndarray, uncertain: np.ndarray | None
    ) -> None:
        """Count rows ``row0 ..`` of class ``codes`` [n, W] where ``valid`` (and, of
        those, the ``uncertain`` ones)."""
        self._counts += np.bincount(codes[valid], minlength=256)
        if uncertain is not None:
            self._uncertain += np.bincount(codes[valid & uncertain], minlength=256)
        if self._areas is not None:
            assert self.grid is not None
            row_area = pixel_areas_m2(self.grid.crs, self.grid.transform, row0, codes.shape[0])
            assert row_area is not None
            per_pixel = np.broadcast_to(row_area[:, None], codes.shape)
            self._areas += np.bincount(codes[valid], weights=per_pixel[valid], minlength=256)

    @property
    def class_pixels(self) -> dict[int, int]:
        """Mapped pixels per class code (classes that occur)."""
        return {c: int(self._counts[c]) for c in self.classes.codes if self._counts[c]}

    @property
    def class_uncertain_pixels(self) -> dict[int, int] | None:
        """Pixels per class code whose uncertainty is above the threshold (classes that
        occur); None without the uncertainty output."""
        if not self.uncertainty:
            return None
        return {c: int(self._uncertain[c]) for c in self.classes.codes if self._counts[c]}

    @property
    def class_area_m2(self) -> dict[int, float] | None:
        """Ground area per class code in m² (classes that occur); None without a CRS."""
        if self._areas is None:
            return None
        return {c: float(self._areas[c]) for c in self.classes.codes if self._counts[c]}
