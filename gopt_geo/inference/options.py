"""What a prediction run is asked to do, as one checked value.

The command line builds a :class:`PredictOptions` from its flags and hands it to the
library; scripts build the same object. Checking the values here, when the object is
made, reports a bad option as one line before any file is opened, and spares every layer
below (predictor, tiling, outputs, vectorising) from passing a dozen keywords along.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..outputs.vectorize import VECTOR_FORMATS, check_polygon_options
from .tiling import AUTO_MARGIN, check_margin, check_window


@dataclass(frozen=True)
class PredictOptions:
    """Tiling, outputs and loading of one prediction run.

    Tiling: ``window`` (pixels, at least 16), ``overlap`` (fraction of a window, 0 to <1),
    ``margin`` (pixels of context read around each window and cut off again, 0 to the
    window; ``"auto"``: :data:`~gopt_geo.inference.tiling.AUTO_MARGIN`, at most half the
    window; :attr:`margin_pixels` is the number used), ``batch_size`` (windows per
    forward pass). Outputs: ``confidence``, ``probabilities``
    and ``uncertainty`` (normalised entropy) rasters beside the class map, with
    ``uncertainty_threshold`` (0..1) for the report's share of uncertain pixels per class;
    ``vector`` (``gpkg``, ``parquet``, ``geojson``, or None / ``"none"`` for no polygons)
    with ``min_area`` (m², smaller regions merged into their neighbours) and ``simplify``
    (tolerance in metres, 0: none); ``overwrite`` the previous output set; ``progress``
    bar. Every run also writes a STAC item, QGIS styles, a quicklook and the report.
    Loading (used where an adapter file is loaded,
    :func:`~gopt_geo.inference.predictor.predict_scene`): ``device`` (auto, cpu, cuda) and
    ``weights`` (a local copy of the adapter's backbone weights). A
    :class:`~gopt_geo.inference.predictor.Predictor` built around a model keeps its device.
    """

    window: int = 512
    # no overlap by default: the margin already gives every kept pixel its context
    # (benchmarks/window_independence.py: at window 128, overlap 0 + margin 64 agrees
    # with a whole-scene pass on 99.3 % of pixels, overlap 0.25 + margin 64 on 99.1 %),
    # and it is cheaper: 1.56 model pixels per scene pixel at window 512, not 1.78
    overlap: float = 0.0
    margin: int | str = "auto"
    batch_size: int = 4
    probabilities: bool = False
    confidence: bool = True
    uncertainty: bool = False
    uncertainty_threshold: float = 0.5
    vector: str | None = "gpkg"
    min_area: float = 0.0
    simplify: float = 0.0
    overwrite: bool = False
    progress: bool = True
    device: str = "auto"
    weights: str | Path | None = None

    def __post_init__(self) -> None:
        check_window(self.window, self.overlap)
        margin = self.margin
        if isinstance(margin, str):
            text = margin.strip().lower()
            if text != "auto" and not text.isdigit():
                raise InputError(f"margin must be auto or a whole number of pixels, got {margin!r}")
            margin = "auto" if text == "auto" else int(text)
        if margin != "auto":
            check_margin(margin, self.window)
            margin = int(margin)
        object.__setattr__(self, "margin", margin)  # frozen: normalise once, here
        if self.batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {self.batch_size}")
        vector = self.vector.lower() if self.vector is not None else None
        if vector == "none":
            vector = None
        if vector is not None and vector not in VECTOR_FORMATS:
            raise InputError(
                f"unknown vector format {self.vector!r} (use {', '.join(VECTOR_FORMATS)} or none)"
            )
        object.__setattr__(self, "vector", vector)  # frozen: normalise once, here
        check_polygon_options(self.min_area, self.simplify)
        if not 0.0 < self.uncertainty_threshold < 1.0:
            raise InputError(
                f"uncertainty threshold must be between 0 and 1, got {self.uncertainty_threshold}"
            )

    @property
    def margin_pixels(self) -> int:
        """The margin in pixels: ``"auto"`` resolved against the window (a 64-pixel window
        gets 32, never more than half of itself; see :data:`AUTO_MARGIN`)."""
        if self.margin == "auto":
            return min(AUTO_MARGIN, self.window // 2)
        return int(self.margin)

    def output_settings(self) -> dict[str, object]:
        """The options that decide what a run writes, as the run report records them.

        Not ``overwrite``, ``progress``, ``device`` or ``weights``: those say how and
        where a run goes, not what it makes, so ``predict-many --resume`` may skip a scene
        mapped with other values of them, and maps it again when any of these differ.
        """
        return {
            "window": self.window,
            "overlap": self.overlap,
            # the pixels, not "auto": maps made with another margin are not these maps
            "margin": self.margin_pixels,
            "batch_size": self.batch_size,
            "probabilities": self.probabilities,
            "confidence": self.confidence,
            "uncertainty": self.uncertainty,
            "uncertainty_threshold": self.uncertainty_threshold,
            "vector": self.vector,
            "min_area": self.min_area,
            "simplify": self.simplify,
        }
