"""The files one prediction writes, from blended rows to a committed, self-describing set.

An :class:`OutputSet` is the life of one set of outputs: it takes the names
(:mod:`.naming`), finishes what a killed run left behind and refuses to replace
existing outputs before any work is done, opens one strip writer per raster, writes
each block of rows as :mod:`.products` encodes it while :mod:`.class_counts` counts
it, and finishes the rasters with their metadata, sidecars and QGIS styles. Every file
of the run - rasters, sidecars, styles, vectors, quicklook, STAC item, report - is
completed under its temporary name and the whole set is committed in one short step at
the end (:mod:`~gopt_geo.outputs.staging`, design §10), or every temporary file is
removed when the run fails. The predictor only hands it rows and files; the tiling never
sees a file.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import torch

from ..data.classes import ClassScheme
from ..io import ensure_output_dir
from . import styles
from .class_counts import ClassCounts
from .grid import Grid
from .naming import COMMIT_LAST, FAMILY, Products, output_family, output_paths
from .products import (
    CONFIDENCE_SCALE,
    PROBABILITY_PRODUCTS,
    PROBABILITY_SCALE,
    UNCERTAINTY_NODATA,
    UNCERTAINTY_SCALE,
    RowEncoder,
    normalised_entropy,
    raster_metadata,
    raster_settings,
)
from .staging import StagedSet
from .writers import StripRasterWriter, class_map_nodata, class_rat_xml

__all__ = [  # the names and encodings stay importable from here
    "COMMIT_LAST",
    "CONFIDENCE_SCALE",
    "FAMILY",
    "PROBABILITY_SCALE",
    "UNCERTAINTY_NODATA",
    "UNCERTAINTY_SCALE",
    "OutputSet",
    "Products",
    "normalised_entropy",
    "output_family",
    "output_paths",
]


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
        self.counts = ClassCounts(classes, None, uncertainty=False)  # replaced by open()
        self._encoder: RowEncoder | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self, grid: Grid) -> OutputSet:
        """Create the output folder and the rasters (under temporary names) on ``grid``."""
        ensure_output_dir(self.out_dir)
        self.grid = grid
        try:
            for name, settings in raster_settings(self.classes, self.nodata).items():
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
        self.counts = ClassCounts(self.classes, grid, uncertainty="uncertainty" in self.writers)
        self._encoder = RowEncoder(
            self.classes,
            self.nodata,
            [name for name in PROBABILITY_PRODUCTS if name in self.writers],
            self.options.uncertainty_threshold,
        )
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
            metadata = raster_metadata(
                name, self.classes, self.nodata, self.scene_id, self.adapter_sha256
            )
            writer.finish(target=self.temp(name), **metadata)  # type: ignore[arg-type]
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

    # ------------------------------------------------------------------ rows

    def write_rows(self, row0: int, logits: torch.Tensor, valid: torch.Tensor) -> None:
        """Rows ``row0 ..`` from blended logits [K, n, W] and validity [n, W]: class codes
        (nodata where invalid), confidence, probabilities, uncertainty; adds them to the
        class counts."""
        if self._encoder is None:
            raise RuntimeError("open() the output set before writing rows")
        rows = self._encoder.encode(logits, valid)
        for name, data in rows.bands.items():
            self.writers[name].write(data)
        self.counts.add(row0, rows.codes, valid.cpu().numpy(), rows.uncertain)

    @property
    def class_pixels(self) -> dict[int, int]:
        """Mapped pixels per class code (classes that occur)."""
        return self.counts.class_pixels

    @property
    def class_uncertain_pixels(self) -> dict[int, int] | None:
        """Pixels per class code whose uncertainty is above the threshold (classes that
        occur); None without the uncertainty output."""
        return self.counts.class_uncertain_pixels

    @property
    def class_area_m2(self) -> dict[int, float] | None:
        """Ground area per class code in m² (classes that occur); None without a CRS."""
        return self.counts.class_area_m2
