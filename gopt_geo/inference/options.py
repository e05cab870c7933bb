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
from .tiling import check_window
from .vectorize import check_polygon_options

#: ``vector`` option -> file suffix of the vector land cover.
VECTOR_FORMATS = {"gpkg": ".gpkg", "parquet": ".parquet", "geojson": ".geojson"}


@dataclass(frozen=True)
class PredictOptions:
    """Tiling, outputs and loading of one prediction run.

    Tiling: ``window`` (pixels, at least 16), ``overlap`` (fraction of a window, 0 to <1),
    ``batch_size`` (windows per forward pass). Outputs: ``confidence``, ``probabilities``
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
    overlap: float = 0.25
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

    def output_settings(self) -> dict[str, object]:
        """The options that decide what a run writes, as the run report records them.

        Not ``overwrite``, ``progress``, ``device`` or ``weights``: those say how and
        where a run goes, not what it makes, so ``predict-many --resume`` may skip a scene
        mapped with other values of them, and maps it again when any of these differ.
        """
        return {
            "window": self.window,
            "overlap": self.overlap,
            "batch_size": self.batch_size,
            "probabilities": self.probabilities,
            "confidence": self.confidence,
            "uncertainty": self.uncertainty,
            "uncertainty_threshold": self.uncertainty_threshold,
            "vector": self.vector,
            "min_area": self.min_area,
            "simplify": self.simplify,
        }
