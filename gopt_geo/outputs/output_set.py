"""The files one prediction writes, from blended logits to a committed, self-describing set.

An :class:`OutputSet` names every output after the scene, finishes what a killed run left
behind and refuses to replace existing outputs before any work is done, turns rows of
blended logits into the class map (dataset codes), the confidence, the probabilities and
the uncertainty, counts the mapped classes, and finishes the rasters with their metadata,
sidecars and QGIS styles. Every file of the run - rasters, sidecars, styles, vectors,
quicklook, STAC item, report - is completed under its temporary name and the whole set is
committed in one short step at the end (:mod:`~gopt_geo.outputs.staging`, design §10), or
every temporary file is removed when the run fails. The predictor only hands it rows and
files; the tiling never sees a file.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np
import torch

from ..data.classes import ClassScheme
from ..io import ensure_output_dir
from . import styles
from .grid import Grid, pixel_areas_m2
from .staging import StagedSet
from .vectorize import VECTOR_FORMATS
from .writers import (
    StripRasterWriter,
    class_map_metadata,
    class_map_nodata,
    class_rat_xml,
)


class Products(Protocol):
    """What a set holds beyond the class map, and whether it may replace an old set.

    :class:`~gopt_geo.inference.options.PredictOptions` is one; the output layer only
    reads these fields, so it needs nothing from the prediction layer above it.
    """

    confidence: bool
    probabilities: bool
    uncertainty: bool
    uncertainty_threshold: float
    vector: str | None
    overwrite: bool


#: Confidence: max class probability x 255, 0 for no prediction.
CONFIDENCE_SCALE = 255
#: Probabilities: p x 254, 255 for no prediction.
PROBABILITY_SCALE = 254
#: Uncertainty: normalised entropy (0: one class certain, 1: uniform) x 254, 255 for none.
UNCERTAINTY_SCALE = 254
UNCERTAINTY_NODATA = 255

#: Every file a run may write, as ``name: suffix after the scene stem``.
FAMILY = {
    "class_map": "_classes.tif",
    "class_map_rat": "_classes.tif.aux.xml",
    "class_map_style": "_classes.qml",
    "confidence": "_confidence.tif",
    "confidence_aux": "_confidence.tif.aux.xml",
    "confidence_style": "_confidence.qml",
    "probabilities": "_probabilities.tif",
    "probabilities_aux": "_probabilities.tif.aux.xml",
    "uncertainty": "_uncertainty.tif",
    "uncertainty_aux": "_uncertainty.tif.aux.xml",
    "uncertainty_style": "_uncertainty.qml",
    **{f"vector_{fmt}": f"_landcover{suffix}" for fmt, suffix in VECTOR_FORMATS.items()},
    "vector_style": "_landcover.qml",
    "quicklook": "_quicklook.png",
    "item": "_item.json",
    "report_markdown": "_report.md",
    "report_json": "_report.json",
}
#: The last files renamed into place when a set is committed, and (reversed) the first of
#: an old set removed when a run replaces it: the report JSON is the mark of a complete set.
COMMIT_LAST = ("item", "report_markdown", "report_json")


def output_family(scene: str | Path, out_dir: Path) -> list[Path]:
    """Every file name a run of ``scene`` may own in ``out_dir``, whatever its options
    (removed together when a run replaces the set; refused without ``overwrite``)."""
    stem = Path(scene).stem
    return [Path(out_dir) / f"{stem}{suffix}" for suffix in FAMILY.values()]


def output_paths(scene: str | Path, out_dir: Path, options: Products) -> dict[str, Path]:
    """File names of this run's outputs, derived from the scene's name."""
    stem = Path(scene).stem
    out_dir = Path(out_dir)

    def name(key: str) -> Path:
        return out_dir / f"{stem}{FAMILY[key]}"

    keys = ["class_map", "class_map_rat", "class_map_style"]
    if options.confidence:
        keys += ["confidence", "confidence_style"]
    if options.probabilities:
        keys += ["probabilities"]
    if options.uncertainty:
        keys += ["uncertainty", "uncertainty_style"]
    paths = {key: name(key) for key in keys}
    if options.vector is not None:
        paths["vector"] = name(f"vector_{options.vector}")
        if options.vector != "gpkg":  # a GeoPackage holds its style itself
            paths["vector_style"] = name("vector_style")
    for key in ("quicklook", "item", "report_markdown", "report_json"):
        paths[key] = name(key)
    return paths


class OutputSet:
    """The outputs of mapping ``scene`` into ``out_dir``: names, writers, class statistics.

    Made before the inputs are read (so an existing output is refused first, after the
    leftovers of a killed run were cleaned), opened on the grid, fed rows top to bottom,
    finished (rasters and sidecars under temporary names), completed with the files other
    modules write into :meth:`temp` paths (vectors, quicklook, item, report), then
    committed; as a context manager it removes every temporary file unless
    :meth:`commit` completed::

        outputs = OutputSet(scene, out_dir, classes, options)
        with outputs.open(grid):
            for row0, logits, valid in rows:
                outputs.write_rows(row0, logits, valid)
            outputs.finish()
            write_something(outputs.temp("report_json"))
            ...
            outputs.commit()

    ``scene_id`` and ``adapter_sha256`` are written into the class map's tags (and from
    there onto every polygon).
    """

    def __init__(
        self,
        scene: str | Path,
        out_dir: Path,
        classes: ClassScheme,
        options: Products,
        *,
        scene_id: str | None = None,
        adapter_sha256: str | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.classes = classes
        self.options = options
        self.scene_id = scene_id or Path(scene).stem
        self.adapter_sha256 = adapter_sha256
        self.nodata = class_map_nodata(classes)
        self.paths = output_paths(scene, self.out_dir, options)
        self.staging = StagedSet(self.out_dir, Path(scene).stem, output_family(scene, out_dir))
        #: temporary files of a killed earlier run that this run removed
        self.leftovers_removed = self.staging.prepare(options.overwrite)
        self.grid: Grid | None = None
        self.writers: dict[str, StripRasterWriter] = {}
        self._lut = torch.from_numpy(classes.index_to_code_lut())
        self._counts = np.zeros(256, dtype=np.int64)
        self._uncertain = np.zeros(256, dtype=np.int64)
        self._areas: np.ndarray | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self, grid: Grid) -> OutputSet:
        """Create the output folder and the rasters (under temporary names) on ``grid``."""
        ensure_output_dir(self.out_dir)
        self.grid = grid
        self._areas = np.zeros(256, dtype=np.float64) if grid.crs is not None else None
        rasters: dict[str, dict[str, object]] = {
            "class_map": {
                "count": 1,
                "nodata": self.nodata,
                "overview_resampling": "MODE",
                "colormap": self.classes.colormap(self.nodata),
            },
            "confidence": {"count": 1, "nodata": 0, "overview_resampling": "AVERAGE"},
            "probabilities": {
                "count": self.classes.num_classes,
                "nodata": 255,
                "overview_resampling": "AVERAGE",
            },
            "uncertainty": {
                "count": 1,
                "nodata": UNCERTAINTY_NODATA,
                "overview_resampling": "AVERAGE",
            },
        }
        try:
            for name, settings in rasters.items():
                if name in self.paths:
                    self.writers[name] = StripRasterWriter(
                        self.paths[name],
                        grid,
                        dtype="uint8",
                        **settings,  # type: ignore[arg-type]
                    )
        except BaseException:
            self.abort()
            raise
        return self

    def temp(self, name: str) -> Path:
        """The temporary path output ``name`` is written to until the set is committed."""
        return self.staging.stage(self.paths[name])

    def write_text(self, name: str, text: str) -> Path:
        """Write output ``name`` (a text file) under its temporary name."""
        path = self.temp(name)
        path.write_text(text, encoding="utf-8")
        return path

    def finish(self) -> None:
        """Metadata and COG layout for every raster, the class map's raster attribute table
        and the QGIS styles, all under temporary names (nothing is renamed yet)."""
        for name, writer in self.writers.items():
            writer.finish(target=self.temp(name), **self._metadata(name))  # type: ignore[arg-type]
        self.write_text("class_map_rat", class_rat_xml(self.classes))
        self.write_text("class_map_style", styles.class_map_qml(self.classes))
        if "confidence_style" in self.paths:
            self.write_text("confidence_style", styles.ramp_qml(styles.VIRIDIS))
        if "uncertainty_style" in self.paths:
            self.write_text("uncertainty_style", styles.ramp_qml(styles.INFERNO))
        if "vector_style" in self.paths:
            self.write_text("vector_style", styles.vector_qml(self.classes))

    def commit(self) -> None:
        """Put the whole set in place at once, replacing the previous one (with
        ``overwrite``); the report JSON is renamed last (design §10)."""
        last = [self.paths[k] for k in COMMIT_LAST]
        first = [p for p in self.paths.values() if p not in last]
        self.staging.commit(
            [*first, *last], overwrite=self.options.overwrite, remove_first=last[::-1]
        )

    @property
    def committed(self) -> bool:
        return self.staging.committed

    def abort(self) -> None:
        """Remove every temporary file (after an error or an interruption)."""
        for writer in self.writers.values():
            writer.abort()
        self.staging.discard()

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.committed:
            self.abort()

    def _metadata(self, name: str) -> dict[str, object]:
        if name == "class_map":
            return class_map_metadata(self.classes, self.nodata, self.scene_id, self.adapter_sha256)
        if name == "confidence":
            return {
                "descriptions": [f"confidence (max class probability x {CONFIDENCE_SCALE})"],
                "scales": [1 / CONFIDENCE_SCALE],
                "tags": {"NODATA_MEANING": "0: no prediction (input nodata)"},
            }
        if name == "uncertainty":
            return {
                "descriptions": [
                    f"uncertainty (entropy / log(classes) x {UNCERTAINTY_SCALE}; 0: certain)"
                ],
                "scales": [1 / UNCERTAINTY_SCALE],
                "tags": {"NODATA_MEANING": f"{UNCERTAINTY_NODATA}: no prediction"},
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
        (nodata where invalid), confidence, probabilities, uncertainty; adds them to the
        class counts."""
        if self._lut.device != logits.device:
            self._lut = self._lut.to(logits.device)
        # max(0).indices: the same as argmax(0), ~8x faster on CPU over [K, rows, W]
        codes = self._lut[logits.max(0).indices]
        codes = torch.where(valid, codes, self.nodata)
        codes_np = codes.cpu().numpy()
        self.writers["class_map"].write(codes_np[None])
        uncertain: np.ndarray | None = None
        if {"confidence", "probabilities", "uncertainty"} & self.writers.keys():
            probs = torch.softmax(logits, dim=0)
            if "confidence" in self.writers:
                conf = (probs.amax(0) * CONFIDENCE_SCALE).round().clamp(1, CONFIDENCE_SCALE)
                conf = torch.where(valid, conf.to(torch.uint8), 0)
                self.writers["confidence"].write(conf.cpu().numpy()[None])
            if "probabilities" in self.writers:
                p8 = (probs * PROBABILITY_SCALE).round().to(torch.uint8)
                p8 = torch.where(valid[None], p8, 255)
                self.writers["probabilities"].write(p8.cpu().numpy())
            if "uncertainty" in self.writers:
                entropy = normalised_entropy(logits, probs)
                u8 = (entropy * UNCERTAINTY_SCALE).round().clamp(0, UNCERTAINTY_SCALE)
                u8 = torch.where(valid, u8.to(torch.uint8), UNCERTAINTY_NODATA)
                self.writers["uncertainty"].write(u8.cpu().numpy()[None])
                uncertain = (entropy > self.options.uncertainty_threshold).cpu().numpy()
        self._count(row0, codes_np, valid.cpu().numpy(), uncertain)

    def _count(
        self, row0: int, codes: np.ndarray, valid: np.ndarray, uncertain: np.ndarray | None
    ) -> None:
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
        if "uncertainty" not in self.writers:
            return None
        return {c: int(self._uncertain[c]) for c in self.classes.codes if self._counts[c]}

    @property
    def class_area_m2(self) -> dict[int, float] | None:
        """Ground area per class code in m² (classes that occur); None without a CRS."""
        if self._areas is None:
            return None
        return {c: float(self._areas[c]) for c in self.classes.codes if self._counts[c]}


def normalised_entropy(logits: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy of the class distribution over dim 0, divided by log(K): 0 when one class
    has probability 1, 1 for the uniform distribution (whatever the number of classes)."""
    k = logits.shape[0]
    if k < 2:
        return torch.zeros(logits.shape[1:], dtype=logits.dtype, device=logits.device)
    probs = torch.softmax(logits, dim=0) if probs is None else probs
    entropy = -(probs * torch.log_softmax(logits, dim=0)).sum(0)
    return (entropy / math.log(k)).clamp(0.0, 1.0)
