"""Class schemes: dataset label codes <-> contiguous training indices, names, colours.

Datasets store land cover as codes (WHU-OPT-SAR: 10, 20, ... 70, background 0). The
model predicts contiguous indices 0..K-1. The scheme is written into the adapter file
so that a predicted map carries the dataset's codes, names and colours, never the
internal indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Index given to ignored pixels (background, nodata) in training targets. It fits in
#: uint8 and is torch's usual choice for segmentation.
IGNORE_INDEX = 255


@dataclass(frozen=True)
class LandCoverClass:
    """One class: the code in label/map rasters, a name and an RGB colour."""

    code: int
    name: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class ClassScheme:
    """The trainable classes, in index order, and the code that means "ignore"."""

    classes: tuple[LandCoverClass, ...]
    ignore_code: int | None = 0
    ignore_name: str = "background"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def codes(self) -> list[int]:
        return [c.code for c in self.classes]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def valid_codes(self) -> set[int]:
        """Codes a label raster may contain (classes plus the ignore code)."""
        codes = set(self.codes)
        if self.ignore_code is not None:
            codes.add(self.ignore_code)
        return codes

    def code_to_index_lut(self) -> np.ndarray:
        """A 256-entry lookup table code -> index (IGNORE_INDEX for ignore/unknown codes)."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for i, c in enumerate(self.classes):
            lut[c.code] = i
        return lut

    def index_to_code_lut(self) -> np.ndarray:
        """A 256-entry lookup table index -> code (unknown indices map to 0)."""
        lut = np.zeros(256, dtype=np.uint8)
        for i, c in enumerate(self.classes):
            lut[i] = c.code
        return lut

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """A rasterio-style colormap keyed by code (RGBA)."""
        cmap = {c.code: (*c.color, 255) for c in self.classes}
        if self.ignore_code is not None:
            cmap[self.ignore_code] = (0, 0, 0, 0)
        return cmap

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": [
                {"code": c.code, "name": c.name, "color": list(c.color)} for c in self.classes
            ],
            "ignore_code": self.ignore_code,
            "ignore_name": self.ignore_name,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassScheme:
        return cls(
            classes=tuple(
                LandCoverClass(int(c["code"]), str(c["name"]), tuple(int(v) for v in c["color"]))  # type: ignore[arg-type]
                for c in d["classes"]
            ),
            ignore_code=d.get("ignore_code"),
            ignore_name=d.get("ignore_name", "background"),
        )


#: WHU-OPT-SAR's label codes (its README); background (0) is ignored in training and
#: evaluation, as in the published results.
WHU_OPT_SAR_CLASSES = ClassScheme(
    classes=(
        LandCoverClass(10, "farmland", (204, 178, 102)),
        LandCoverClass(20, "city", (230, 25, 75)),
        LandCoverClass(30, "village", (245, 130, 48)),
        LandCoverClass(40, "water", (0, 92, 230)),
        LandCoverClass(50, "forest", (34, 139, 34)),
        LandCoverClass(60, "road", (128, 128, 128)),
        LandCoverClass(70, "others", (170, 110, 200)),
    ),
    ignore_code=0,
)
