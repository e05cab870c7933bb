"""GeoTIFF outputs written strip by strip and finished as Cloud-Optimized GeoTIFFs.

Prediction produces rows of the output from top to bottom and never holds the whole
map. :class:`StripRasterWriter` buffers those rows until a full row of tiles is ready,
writes it to a temporary tiled GeoTIFF, and on :meth:`~StripRasterWriter.finish` copies
that file to COG layout (GDAL's COG driver: tiles, DEFLATE, internal overviews) under a
second temporary name, which is renamed to the final name only when complete (or left
for an output set to commit with its other files, :mod:`~gopt_geo.outputs.staging`). A
failed or interrupted run therefore never leaves a file that looks finished.

The class map carries what a GIS or a notebook needs to read it without gopt-geo: the
nodata value, a colour table keyed by class code, the class names and codes as tags
(``GOPT_GEO_CLASSES`` holds the JSON class scheme) and, in GDAL's ``.aux.xml`` sidecar,
category names, a colour table without filler and a raster attribute table
(:func:`rat_xml`): QGIS shows the class names and colours from it without the ``.qml``.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from ..data.classes import CLASSES_TAG, ClassScheme
from ..io import atomic_path, remove_quietly, temporary_name, write_text_atomic
from .grid import Grid

#: Nodata of the class map, unless a class uses that code (see :func:`class_map_nodata`).
CLASS_MAP_NODATA = 255
#: Tile size of every raster output.
BLOCK_SIZE = 512
#: Class map tags that trace it (and the polygons made from it) to its scene and model.
SCENE_TAG = "GOPT_GEO_SCENE_ID"
ADAPTER_TAG = "GOPT_GEO_ADAPTER_SHA256"


def class_map_nodata(classes: ClassScheme) -> int:
    """255, or the highest uint8 value no class (nor the ignore code) uses."""
    used = set(classes.codes) | (
        {classes.ignore_code} if classes.ignore_code is not None else set()
    )
    for value in range(CLASS_MAP_NODATA, -1, -1):
        if value not in used:
            return value
    raise ValueError("a class scheme with 256 codes leaves no uint8 value for nodata")


class StripRasterWriter:
    """Writes an output raster row strip by row strip; finishes it as a COG.

    ``write(rows)`` takes ``[count, n, width]`` arrays in top-to-bottom order. Rows are
    buffered until a whole row of tiles is complete, so each compressed tile is written
    exactly once.
    """

    def __init__(
        self,
        path: Path,
        grid: Grid,
        *,
        count: int,
        dtype: str,
        nodata: float | None,
        overview_resampling: str,
        colormap: dict[int, tuple[int, int, int, int]] | None = None,
        block_size: int = BLOCK_SIZE,
    ) -> None:
        self.path = path
        self.grid = grid
        self.count = count
        self.overview_resampling = overview_resampling
        self.block_size = block_size
        self._tmp = temporary_name(path)
        profile = {
            "driver": "GTiff",
            "width": grid.width,
            "height": grid.height,
            "count": count,
            "dtype": dtype,
            "nodata": nodata,
            "crs": grid.crs,
            "transform": grid.transform,
            "tiled": True,
            "blockxsize": block_size,
            "blockysize": block_size,
            "compress": "deflate",
            "zlevel": 1,  # intermediate file: fast; the COG copy compresses properly
            "bigtiff": "if_safer",
        }
        self._dst = rasterio.open(self._tmp, "w", **profile)
        if colormap:  # TIFF allows the palette only before pixels are written
            self._dst.write_colormap(1, colormap)
        self._buffer = np.empty((count, block_size, grid.width), dtype=dtype)
        self._buffered = 0
        self._next_row = 0  # first row not yet written to the file

    @property
    def rows_done(self) -> int:
        return self._next_row + self._buffered

    def write(self, rows: np.ndarray) -> None:
        """Append ``rows`` ([count, n, width]) below the rows written so far."""
        if rows.shape[0] != self.count or rows.shape[2] != self.grid.width:
            raise ValueError(
                f"expected [{self.count}, n, {self.grid.width}] rows, got {rows.shape}"
            )
        start = 0
        while start < rows.shape[1]:
            take = min(self.block_size - self._buffered, rows.shape[1] - start)
            self._buffer[:, self._buffered : self._buffered + take] = rows[:, start : start + take]
            self._buffered += take
            start += take
            if self._buffered == self.block_size:
                self._flush()

    def _flush(self) -> None:
        if self._buffered:
            window = Window(0, self._next_row, self.grid.width, self._buffered)
            self._dst.write(self._buffer[:, : self._buffered], window=window)
            self._next_row += self._buffered
            self._buffered = 0

    def finish(
        self,
        *,
        tags: dict[str, str] | None = None,
        band_tags: dict[int, dict[str, str]] | None = None,
        descriptions: list[str] | None = None,
        scales: list[float] | None = None,
        target: Path | None = None,
    ) -> Path:
        """Write metadata and convert to COG; returns where the COG is.

        Alone, the COG is renamed into place at :attr:`path`. With ``target`` (a temporary
        name an output set owns, design §10) it is written there and left for the set to
        commit with its other files; the caller removes it on failure.
        """
        self._flush()
        if self.rows_done != self.grid.height:
            raise RuntimeError(f"{self.path}: {self.rows_done} of {self.grid.height} rows written")
        dst = self._dst
        if tags:
            dst.update_tags(**tags)
        for bidx, btags in (band_tags or {}).items():
            dst.update_tags(bidx, **btags)
        for bidx, text in enumerate(descriptions or [], start=1):
            dst.set_band_description(bidx, text)
        if scales:
            dst.scales = tuple(scales)
            dst.offsets = tuple(0.0 for _ in scales)
        dst.close()
        if target is not None:
            self._copy_cog(target)
        else:
            with atomic_path(self.path) as cog_tmp:
                self._copy_cog(cog_tmp)
        remove_quietly(self._tmp)
        return self.path if target is None else target

    def _copy_cog(self, out: Path) -> None:
        # NUM_THREADS: the model is idle by now, so DEFLATE may use every core (the copy
        # was the largest non-model step of a scene's prediction; benchmarks/RESULTS.md)
        rasterio.shutil.copy(
            self._tmp,
            out,
            driver="COG",
            COMPRESS="DEFLATE",
            BLOCKSIZE=str(self.block_size),
            OVERVIEWS="AUTO",
            OVERVIEW_RESAMPLING=self.overview_resampling,
            BIGTIFF="IF_SAFER",
            NUM_THREADS="ALL_CPUS",
        )

    def abort(self) -> None:
        """Close and delete the temporary file (after an error or an interruption)."""
        if not self._dst.closed:
            self._dst.close()
        remove_quietly(self._tmp)


def class_map_metadata(
    classes: ClassScheme,
    nodata: int,
    scene_id: str | None = None,
    adapter_sha256: str | None = None,
) -> dict[str, object]:
    """Tags, band tags and description that make a class map self-describing (and, given
    them, traceable to its scene and adapter)."""
    scheme = classes.to_dict() | {"nodata": nodata}
    provenance = {SCENE_TAG: scene_id, ADAPTER_TAG: adapter_sha256}
    return {
        "tags": {
            CLASSES_TAG: json.dumps(scheme),
            "CLASS_CODES": ",".join(str(c) for c in classes.codes),
            "CLASS_NAMES": json.dumps(classes.names),
            **{k: v for k, v in provenance.items() if v},
        },
        "band_tags": {1: {f"CLASS_{c.code}": c.name for c in classes.classes}},
        "descriptions": ["land cover class"],
    }


def rat_xml(rows: list[tuple[int, str, tuple[int, int, int]]]) -> str:
    """A GDAL PAM ``.aux.xml`` document that names and colours the classes of band 1:
    one row (value, name, red, green, blue) per class.

    It holds the classes three ways, because readers differ in which they use:

    - GDAL category names (``CategoryNames``, indexed by code; empty for unused codes):
      QGIS labels a paletted layer opened without its ``.qml`` with them;
    - a colour table as long as the highest code, unused codes transparent: GDAL takes
      it over the GeoTIFF's own palette, which TIFF fixes at 256 opaque entries (QGIS
      would list 248 of them as black classes);
    - a thematic raster attribute table (ArcGIS, ``gdalinfo``, GDAL's RAT API).

    Codes above 255 (a transition map of many classes) get the table only: a category
    list or palette that long would be mostly empty. GeoTIFF cannot hold any of this
    itself; GDAL keeps it in this sidecar.
    """
    lines = ["<PAMDataset>", '  <PAMRasterBand band="1">']
    top = max((value for value, _, _ in rows), default=-1)
    if 0 <= top <= 255 and all(value >= 0 for value, _, _ in rows):
        by_code = {value: (label, color) for value, label, color in rows}
        lines.append("    <CategoryNames>")
        for code in range(top + 1):
            label = escape(by_code[code][0]) if code in by_code else ""
            lines.append(f"      <Category>{label}</Category>")
        lines += ["    </CategoryNames>", "    <ColorInterp>Palette</ColorInterp>"]
        lines.append("    <ColorTable>")
        for code in range(top + 1):
            r, g, b, a = (*by_code[code][1][:3], 255) if code in by_code else (0, 0, 0, 0)
            lines.append(f'      <Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>')
        lines.append("    </ColorTable>")
    fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8)]
    lines.append('    <GDALRasterAttributeTable tableType="thematic">')
    for i, (name, ftype, usage) in enumerate(fields):
        lines.append(
            f'      <FieldDefn index="{i}"><Name>{name}</Name><Type>{ftype}</Type>'
            f"<Usage>{usage}</Usage></FieldDefn>"
        )
    for row, (value, label, color) in enumerate(rows):
        values = [str(value), escape(label), *(str(v) for v in color)]
        cells = "".join(f"<F>{v}</F>" for v in values)
        lines.append(f'      <Row index="{row}">{cells}</Row>')
    lines += ["    </GDALRasterAttributeTable>", "  </PAMRasterBand>", "</PAMDataset>", ""]
    return "\n".join(lines)


def class_rat_xml(classes: ClassScheme) -> str:
    """The raster attribute table of a class map (code, name, colour per class)."""
    return rat_xml([(c.code, c.name, c.color) for c in classes.classes])


def write_rat_sidecar(path: Path, classes: ClassScheme) -> Path:
    """Write :func:`class_rat_xml` as ``<path>.aux.xml``, under a temporary name first."""
    return write_text_atomic(Path(f"{path}.aux.xml"), class_rat_xml(classes))
