"""The files one prediction writes, from blended logits to finished, self-describing COGs.

An :class:`OutputSet` names every output after the scene, refuses to replace existing
ones before any work is done, turns rows of blended logits into the class map (dataset
codes), the confidence and the probabilities, counts the mapped classes, and finishes
the rasters with their metadata and final names, or removes every temporary file when the
run fails. The predictor only hands it rows; the tiling never sees a file.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np
import torch

from ..data.classes import ClassScheme
from ..io import check_writable, ensure_output_dir
from .options import VECTOR_FORMATS, PredictOptions
from .reader import Grid, pixel_areas_m2
from .writers import (
    StripRasterWriter,
    class_map_metadata,
    class_map_nodata,
    write_rat_sidecar,
)

#: Confidence: max class probability x 255, 0 for no prediction.
CONFIDENCE_SCALE = 255
#: Probabilities: p x 254, 255 for no prediction.
PROBABILITY_SCALE = 254


def output_paths(scene: Path, out_dir: Path, options: PredictOptions) -> dict[str, Path]:
    """File names of a run's outputs, derived from the scene's name (report order)."""
    stem = Path(scene).stem
    out_dir = Path(out_dir)
    paths = {
        "class_map": out_dir / f"{stem}_classes.tif",
        "report_json": out_dir / f"{stem}_report.json",
        "report_markdown": out_dir / f"{stem}_report.md",
    }
    if options.confidence:
        paths["confidence"] = out_dir / f"{stem}_confidence.tif"
    if options.probabilities:
        paths["probabilities"] = out_dir / f"{stem}_probabilities.tif"
    if options.vector is not None:
        paths["vector"] = out_dir / f"{stem}_landcover{VECTOR_FORMATS[options.vector]}"
    return paths


class OutputSet:
    """The outputs of mapping ``scene`` into ``out_dir``: names, writers, class statistics.

    Made before the inputs are read (so an existing output is refused first), opened on
    the grid, fed rows top to bottom, then finished; as a context manager it removes the
    temporary files unless :meth:`finish` completed::

        outputs = OutputSet(scene, out_dir, classes, options)
        with outputs.open(grid):
            for row0, logits, valid in rows:
                outputs.write_rows(row0, logits, valid)
            outputs.finish()

    The vector file and the reports are named here too (and checked), but written by
    :func:`~gopt_geo.inference.vectorize.vectorize` and
    :func:`~gopt_geo.inference.report.write_report`, each under a temporary name.
    """

    def __init__(
        self, scene: Path, out_dir: Path, classes: ClassScheme, options: PredictOptions
    ) -> None:
        self.out_dir = Path(out_dir)
        self.classes = classes
        self.nodata = class_map_nodata(classes)
        self.paths = output_paths(scene, self.out_dir, options)
        check_writable(self.paths.values(), options.overwrite)
        self.grid: Grid | None = None
        self.writers: dict[str, StripRasterWriter] = {}
        self._lut = torch.from_numpy(classes.index_to_code_lut())
        self._counts = np.zeros(256, dtype=np.int64)
        self._areas: np.ndarray | None = None
        self._finished = False

    # ------------------------------------------------------------------ lifecycle

    def open(self, grid: Grid) -> OutputSet:
        """Create the output folder and the rasters (under temporary names) on ``grid``."""
        ensure_output_dir(self.out_dir)
        self.grid = grid
        self._areas = np.zeros(256, dtype=np.float64) if grid.crs is not None else None
        try:
            self.writers["class_map"] = StripRasterWriter(
                self.paths["class_map"],
                grid,
                count=1,
                dtype="uint8",
                nodata=self.nodata,
                overview_resampling="MODE",
                colormap=self.classes.colormap(self.nodata),
            )
            if "confidence" in self.paths:
                self.writers["confidence"] = StripRasterWriter(
                    self.paths["confidence"],
                    grid,
                    count=1,
                    dtype="uint8",
                    nodata=0,
                    overview_resampling="AVERAGE",
                )
            if "probabilities" in self.paths:
                self.writers["probabilities"] = StripRasterWriter(
                    self.paths["probabilities"],
                    grid,
                    count=self.classes.num_classes,
                    dtype="uint8",
                    nodata=255,
                    overview_resampling="AVERAGE",
                )
        except BaseException:
            self.abort()
            raise
        return self

    def finish(self) -> None:
        """Metadata, COG layout and final names for every raster; the class map's RAT."""
        for name, writer in self.writers.items():
            writer.finish(**self._metadata(name))  # type: ignore[arg-type]
        write_rat_sidecar(self.paths["class_map"], self.classes)
        self._finished = True

    def abort(self) -> None:
        """Remove every temporary file (after an error or an interruption)."""
        for writer in self.writers.values():
            writer.abort()

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._finished:
            self.abort()

    def _metadata(self, name: str) -> dict[str, object]:
        if name == "class_map":
            return class_map_metadata(self.classes, self.nodata)
        if name == "confidence":
            return {
                "descriptions": [f"confidence (max class probability x {CONFIDENCE_SCALE})"],
                "scales": [1 / CONFIDENCE_SCALE],
                "tags": {"NODATA_MEANING": "0: no prediction (input nodata)"},
            }
        classes = self.classes.classes
        return {
            "descriptions": [f"p({c.name}) x {PROBABILITY_SCALE}" for c in classes],
            "scales": [1 / PROBABILITY_SCALE] * len(classes),
            "band_tags": {i + 1: {"CLASS_CODE": str(c.code)} for i, c in enumerate(classes)},
        }

    # ------------------------------------------------------------------ rows

    @torch.inference_mode()
    def write_rows(self, row0: int, logits: torch.Tensor, valid: torch.Tensor) -> None:
        """Rows ``row0 ..`` from blended logits [K, n, W] and validity [n, W]: class codes
        (nodata where invalid), confidence, probabilities; adds them to the class counts."""
        if self._lut.device != logits.device:
            self._lut = self._lut.to(logits.device)
        # max(0).indices: the same as argmax(0), ~8x faster on CPU over [K, rows, W]
        codes = self._lut[logits.max(0).indices]
        codes = torch.where(valid, codes, self.nodata)
        codes_np = codes.cpu().numpy()
        self.writers["class_map"].write(codes_np[None])
        if "confidence" in self.writers or "probabilities" in self.writers:
            probs = torch.softmax(logits, dim=0)
            if "confidence" in self.writers:
                conf = (probs.amax(0) * CONFIDENCE_SCALE).round().clamp(1, CONFIDENCE_SCALE)
                conf = torch.where(valid, conf.to(torch.uint8), 0)
                self.writers["confidence"].write(conf.cpu().numpy()[None])
            if "probabilities" in self.writers:
                p8 = (probs * PROBABILITY_SCALE).round().to(torch.uint8)
                p8 = torch.where(valid[None], p8, 255)
                self.writers["probabilities"].write(p8.cpu().numpy())
        self._count(row0, codes_np, valid.cpu().numpy())

    def _count(self, row0: int, codes: np.ndarray, valid: np.ndarray) -> None:
        self._counts += np.bincount(codes[valid], minlength=256)
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
    def class_area_m2(self) -> dict[int, float] | None:
        """Ground area per class code in m² (classes that occur); None without a CRS."""
        if self._areas is None:
            return None
        return {c: float(self._areas[c]) for c in self.classes.codes if self._counts[c]}
