"""What a prediction run is asked to do, as one checked value, and the one declaration of
every prediction option.

The command line builds a :class:`PredictOptions` from its flags and hands it to the
library; scripts build the same object. Each field is declared once, here: its default,
its type and its help (``field(metadata={"help": ...})``); ``gopt-geo predict`` and
``predict-many`` derive their flags from these fields (:func:`option_fields`, read by
``cli.py``), so a default or a help text cannot differ between the two commands and the
library. Checking the values here, when the object is made, reports a bad option as one
line before any file is opened, and spares every layer below (predictor, tiling,
outputs, vectorising) from passing a dozen keywords along.

This module imports nothing heavy at import time (the command line reads it to build
its flags, and ``gopt-geo info`` must not import torch): the checks that live beside the
code they protect (:mod:`.tiling`, :mod:`gopt_geo.outputs.vectorize`) are imported when
an object is made.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError


def _option(default: Any, help: str, cli_type: Any = None) -> Any:
    """A field with its command-line help; ``cli_type``: the type the flag is parsed as,
    when it is not the field's own (a union the command line cannot parse)."""
    metadata: dict[str, Any] = {"help": help}
    if cli_type is not None:
        metadata["cli_type"] = cli_type
    return field(default=default, metadata=metadata)


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

    Each field's ``metadata["help"]`` is its command-line help.
    """

    window: int = _option(512, "Window size in pixels.")
    # no overlap by default: the margin already gives every kept pixel its context
    # (benchmarks/window_independence.py: at window 128, overlap 0 + margin 64 agrees
    # with a whole-scene pass on 99.3 % of pixels, overlap 0.25 + margin 64 on 99.1 %),
    # and it is cheaper: 1.56 model pixels per scene pixel at window 512, not 1.78
    overlap: float = _option(
        0.0,
        "Overlap between windows, 0 <= overlap < 1, blended (the margin makes it rarely needed).",
    )
    margin: int | str = _option(
        "auto",
        "Pixels of scene read around each window as context and cut off again "
        "(0 to the window), or auto (64, at most half the window).",
        cli_type=str,
    )
    batch_size: int = _option(4, "Windows per forward pass.")
    probabilities: bool = _option(False, "Also write per-class probabilities.")
    confidence: bool = _option(True, "Write the confidence map.")
    uncertainty: bool = _option(False, "Also write the uncertainty map (normalised entropy, 0..1).")
    uncertainty_threshold: float = _option(
        0.5,
        "Uncertainty (0..1, exclusive) above which a pixel counts as uncertain in the "
        "report's share of uncertain pixels per class (with --uncertainty).",
    )
    vector: str | None = _option("gpkg", "gpkg, parquet, geojson or none.", cli_type=str)
    min_area: float = _option(0.0, "Merge regions smaller than this (m²) into their neighbours.")
    simplify: float = _option(0.0, "Simplification tolerance in metres (0: none).")
    overwrite: bool = _option(False, "Replace existing outputs.")
    progress: bool = _option(True, "Show a progress bar.")
    wait: float = _option(
        0.0,
        "Seconds to wait for another gopt-geo run writing to the output folder "
        "(default 0: refuse at once, naming it).",
    )
    device: str = _option("auto", "auto, cpu or cuda.")
    weights: str | Path | None = _option(
        None,
        "Local copy of the backbone weights the adapter was trained on (.safetensors or "
        ".pth; default: the source the adapter records). Other weights are refused.",
        cli_type=Path | None,
    )

    def __post_init__(self) -> None:
        from ..outputs.vectorize import VECTOR_FORMATS, check_polygon_options
        from .tiling import check_margin, check_window

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
        if not self.wait >= 0:
            raise InputError(f"--wait must be 0 or more seconds, got {self.wait}")
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
        from .tiling import AUTO_MARGIN

        if self.margin == "auto":
            return min(AUTO_MARGIN, self.window // 2)
        return int(self.margin)

    def output_settings(self) -> dict[str, object]:
        """The options that decide what a run writes, as the run report records them.

        Not ``overwrite``, ``progress``, ``wait``, ``device`` or ``weights``: those say how and
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


def option_fields() -> dict[str, tuple[Any, Any, str]]:
    """Every option as ``name: (command-line type, default, help)``, in declaration order:
    what the command line builds its prediction flags from."""
    hints = typing.get_type_hints(PredictOptions)
    return {
        f.name: (f.metadata.get("cli_type", hints[f.name]), f.default, f.metadata["help"])
        for f in dataclasses.fields(PredictOptions)
    }
