"""Constants shared by the data pipeline and the models, below both.

``gopt_geo.data`` and ``gopt_geo.models`` both need them, and neither may import the
other for them (models sit beside data, not above it); this module imports nothing of
gopt_geo.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Index given to ignored pixels (background, nodata) in training targets. It fits in
#: uint8 and is torch's usual choice for segmentation.
IGNORE_INDEX = 255

#: Per image of a batch, the (row, col, height, width) box of the pixels whose logits
#: will be used (a window's core when predicting): a model's per-pixel work may skip the
#: rest. Shared by the tiling (which knows the boxes) and the models (which take them).
Keep = Sequence[tuple[int, int, int, int]]
