"""Constants shared by the data pipeline and the models, below both.

``gopt_geo.data`` and ``gopt_geo.models`` both need them, and neither may import the
other for them (models sit beside data, not above it); this module imports nothing.
"""

from __future__ import annotations

#: Index given to ignored pixels (background, nodata) in training targets. It fits in
#: uint8 and is torch's usual choice for segmentation.
IGNORE_INDEX = 255
