"""Class map -> land-cover polygons, block by block, merged across block seams.

``rasterio.features.shapes`` polygonises one block of rows at a time, in pixel
coordinates (integers, so unions across seams are exact). A polygon that touches the
seam with the next block is held back and merged (``shapely.union_all`` per class) with
the same-class polygons of the next block that touch that seam; everything else is
final and written straight away. Memory is bounded by the block size plus the polygons
that cross the current seam, not by the scene.

Each feature is one 4-connected region of one class, with its code, class name, area
in m² (projected CRS: planar area in metres; geographic CRS: area in the equal-area
EPSG:6933; no CRS: area in the raster's own units), the scene id and the short sha256 of
the adapter that made the map (from the class map's tags), so that polygons of many
scenes can be merged and still traced to their scene and model.

Optional: a minimum area and topology-preserving simplification. Regions smaller than
the minimum area are merged into their largest neighbour before polygonising (GDAL's
sieve filter), not dropped, so no hole is left where they were. The sieve runs on each
block of rows with a halo of as many rows above and below as the threshold has pixels:
a region smaller than the threshold is never taller than that, so every region that
touches the block is seen either whole or as at least the threshold (the halo is capped
at :data:`SIEVE_MAX_HALO` rows, which only matters for thresholds above that many pixels).
Small regions with no mapped neighbour (islands in nodata) cannot be merged and are
dropped. Simplification uses ``shapely.coverage_simplify``, which simplifies each edge
shared by two polygons once, so neighbours keep a common border without gaps or
overlaps. The outer boundary of each written batch is left as it is
(``simplify_boundary=False``): those are exactly the edges shared with polygons of other
batches, so batches fit together too.

Why one module over 500 lines: the block-wise pipeline (read, sieve with a halo, polygonise,
merge across seams, simplify, write in batches with the style) is one algorithm whose steps
share the seam bookkeeping; splitting it would pass that state between modules.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.features import shapes, sieve
from rasterio.transform import Affine
from rasterio.windows import Window
from shapely.errors import GEOSException
from shapely.geometry import shape

from ..data.classes import names_from_tags, scheme_from_tags
from ..errors import InputError
from ..io import (
    atomic_path,
    check_writable,
    ensure_output_dir,
    linear_unit_factor,
    open_raster,
    rasterio_reason,
    streaming_gdal_env,
)
from .grid import pixel_size_m
from .staging import pause_point
from .styles import add_gpkg_style, categorized_qml
from .writers import ADAPTER_TAG, SCENE_TAG

#: ``vector`` option of a prediction -> file suffix of the vector land cover.
VECTOR_FORMATS = {"gpkg": ".gpkg", "parquet": ".parquet", "geojson": ".geojson"}
#: The GeoPackage version written. GDAL >= 3.7 writes 1.4 by default, which GDAL 3.6 and
#: QGIS 3.22 (the long-term-support generation many agencies run) open with a warning
#: that it "may only be partially supported"; 1.2 opens without one in every GDAL >= 2.2
#: and holds all gopt-geo writes (polygons, the ``layer_styles`` table).
GPKG_VERSION = "1.2"
#: File suffix -> output driver.
DRIVERS = {
    ".gpkg": "GPKG",
    ".parquet": "Parquet",
    ".geoparquet": "Parquet",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
}
#: Equal-area CRS for areas of maps in a geographic CRS.
EQUAL_AREA_CRS = "EPSG:6933"
#: Raster types rasterio.features.shapes accepts.
_SHAPES_DTYPES = {"uint8", "int8", "uint16", "int16", "int32", "uint32"}
#: Raster types GDAL's sieve filter accepts (others are polygonised without a sieve).
_SIEVE_DTYPES = {"uint8", "uint16", "int16", "int32"}
#: Largest halo (rows) of the block-wise sieve: bounds memory for huge minimum areas.
SIEVE_MAX_HALO = 4096
#: Characters of the adapter's sha256 each polygon carries.
SHORT_HASH = 12


@dataclass
class VectorResult:
    """What :func:`vectorize` wrote."""

    path: Path
    driver: str
    features: int
    removed_small: int  # regions still below the minimum area after the sieve (islands)
    blocks: int
    seconds: float
    class_area_m2: dict[int, float]
    sieved_pixels: int = 0  # pixels of small regions merged into their neighbours
    sieve_pixels: int = 0  # the sieve threshold: regions with fewer pixels were merged

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def driver_for(path: Path) -> str:
    try:
        return DRIVERS[path.suffix.lower()]
    except KeyError:
        raise InputError(
            f"{path}: unknown vector format {path.suffix!r} (use .gpkg, .parquet or .geojson)"
        ) from None


def check_polygon_options(min_area: float, simplify: float) -> None:
    """Refuse a negative minimum area or tolerance (they would silently mean zero)."""
    if min_area < 0:
        raise InputError(f"--min-area {min_area}: the minimum polygon area must be >= 0 m²")
    if simplify < 0:
        raise InputError(f"--simplify {simplify}: the tolerance must be >= 0 metres")


class _Areas:
    """Polygon areas in m² from geometries in the raster's CRS."""

    def __init__(self, crs: CRS | None) -> None:
        self.crs = crs
        self.factor = linear_unit_factor(crs) ** 2

    def __call__(self, geoms: np.ndarray) -> np.ndarray:
        if self.crs is not None and self.crs.is_geographic:
            return gpd.GeoSeries(geoms, crs=self.crs).to_crs(EQUAL_AREA_CRS).area.to_numpy()
        return shapely.area(geoms) * self.factor


class _Sink:
    """Appends batches of polygons to ``tmp`` (the temporary name of the output).

    ``layer`` is the final file's stem: the layer name must not carry the temporary name.
    """

    def __init__(self, tmp: Path, layer: str, driver: str, crs: CRS | None) -> None:
        """``tmp``: the file to write; ``layer``: its layer name (GeoPackage)."""
        self.driver = driver
        self.crs = crs
        self.tmp = tmp
        self.layer = layer
        self.count = 0
        self._created = False  # OGR output file exists (GeoPackage, GeoJSON)
        self._parquet: pq.ParquetWriter | None = None
        self._bbox = [np.inf, np.inf, -np.inf, -np.inf]
        self._schema = pa.schema(
            [
                ("code", pa.int32()),
                ("class_name", pa.string()),
                ("area_m2", pa.float64()),
                ("scene_id", pa.string()),
                ("adapter_sha", pa.string()),
                ("geometry", pa.binary()),
            ]
        )

    def write(self, frame: gpd.GeoDataFrame) -> None:
        if self.driver == "Parquet":
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.tmp, self._schema)
            if len(frame):
                table = pa.table(
                    {
                        "code": pa.array(frame["code"].to_numpy(), pa.int32()),
                        "class_name": pa.array(frame["class_name"].tolist(), pa.string()),
                        "area_m2": pa.array(frame["area_m2"].to_numpy(), pa.float64()),
                        "scene_id": pa.array(frame["scene_id"].tolist(), pa.string()),
                        "adapter_sha": pa.array(frame["adapter_sha"].tolist(), pa.string()),
                        "geometry": pa.array(shapely.to_wkb(frame.geometry.values), pa.binary()),
                    },
                    schema=self._schema,
                )
                self._parquet.write_table(table)
                lo = frame.total_bounds
                self._bbox = [
                    *np.minimum(self._bbox[:2], lo[:2]),
                    *np.maximum(self._bbox[2:], lo[2:]),
                ]
        elif len(frame) or not self._created:
            with warnings.catch_warnings():  # a class map without CRS gives polygons without
                warnings.filterwarnings("ignore", message="'crs' was not provided")
                pyogrio.write_dataframe(
                    frame,
                    self.tmp,
                    driver=self.driver,
                    layer=self.layer,
                    append=self._created,
                    geometry_type="Polygon",
                    promote_to_multi=False,
                    **self._creation_options(),
                )
            self._created = True
        self.count += len(frame)

    def _creation_options(self) -> dict[str, Any]:
        """GeoPackage version :data:`GPKG_VERSION`, set when the file is created."""
        if self.driver == "GPKG" and not self._created:
            return {"dataset_options": {"VERSION": GPKG_VERSION}}
        return {}

    def close(self) -> None:
        """Complete the file (GeoParquet: its ``geo`` metadata); the caller renames it."""
        if self.driver == "Parquet":
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.tmp, self._schema)
            column: dict[str, Any] = {
                "encoding": "WKB",
                "geometry_types": ["Polygon"],
                "crs": self.crs.to_dict(projjson=True) if self.crs is not None else None,
            }
            if self.count:
                column["bbox"] = [float(v) for v in self._bbox]
            geo = {
                "version": "1.1.0",
                "primary_column": "geometry",
                "columns": {"geometry": column},
            }
            self._parquet.add_key_value_metadata({"geo": json.dumps(geo)})
            self._parquet.close()

    def abort(self) -> None:
        """Close what is open; the caller removes the temporary file."""
        if self._parquet is not None:
            try:
                self._parquet.close()
            except Exception:  # already failed; the file goes anyway
                pass


def _block_polygons(
    data: np.ndarray, valid: np.ndarray, row0: int
) -> tuple[np.ndarray, np.ndarray]:
    """Polygons (pixel coordinates, y = scene row) and codes of one block of rows."""
    geoms, codes = [], []
    for geom, value in shapes(
        data, mask=valid, connectivity=4, transform=Affine.translation(0, row0)
    ):
        geoms.append(shape(geom))
        codes.append(int(value))
    return np.array(geoms, dtype=object), np.array(codes, dtype=np.int64)


def _merge_across_seam(geoms: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union same-class polygons that touch along a seam; separate parts stay separate."""
    out_g: list[Any] = []
    out_c: list[int] = []
    for code in np.unique(codes):
        group = geoms[codes == code]
        parts = group if len(group) == 1 else shapely.get_parts(shapely.union_all(group))
        out_g.extend(parts)
        out_c.extend([int(code)] * len(parts))
    return np.array(out_g, dtype=object), np.array(out_c, dtype=np.int64)


def _simplify(geoms: np.ndarray, tolerance: float) -> np.ndarray:
    """Coverage simplification in pixel units (outer boundary of the batch kept).

    GEOS needs an edge-matched coverage (a shared edge has the same vertices on both
    sides). Polygonize does not always emit the collinear vertices where a neighbour
    ends, so every edge first gets a vertex at each pixel corner (segmentize to 1 pixel,
    rounded back onto the integer grid). Collinear vertices left on the kept boundary are
    dropped at the end: that moves no line, so neighbours still share their borders.
    """
    if tolerance <= 0 or len(geoms) == 0:
        return geoms
    geoms = shapely.transform(shapely.segmentize(geoms, 1.0), np.round)
    try:
        geoms = shapely.coverage_simplify(geoms, tolerance, simplify_boundary=False)
    except GEOSException:  # not a clean coverage: simplify polygon by polygon
        geoms = shapely.simplify(geoms, tolerance, preserve_topology=True)
    return shapely.simplify(geoms, 0.0, preserve_topology=True)


def _to_map(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    a, b, c, d, e, f = transform[:6]

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a * x + b * y + c, d * x + e * y + f])

    return shapely.transform(geoms, apply)


def sieve_threshold(min_area: float, crs: CRS | None, transform: Affine, height: int) -> int:
    """Pixels a region needs to reach ``min_area`` m² (map units² without a CRS); 0: none."""
    if min_area <= 0:
        return 0
    pixel_area = pixel_size_m(crs, transform, height) ** 2
    return max(1, int(np.ceil(min_area / pixel_area - 1e-9)))


def _read_block(
    src: rasterio.DatasetReader, class_map: Path, row0: int, row1: int, halo: int, size: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Codes and validity of rows ``row0:row1``, sieved (regions below ``size`` pixels
    merged into their largest neighbour) with ``halo`` rows of context on each side;
    also the number of pixels the sieve changed."""
    top, bottom = max(0, row0 - halo), min(src.height, row1 + halo)
    window = Window(0, top, src.width, bottom - top)
    try:
        data = src.read(1, window=window)
        valid = src.read_masks(1, window=window) > 0
    except rasterio.errors.RasterioError as err:
        raise InputError(f"{class_map}: cannot read pixels ({rasterio_reason(err)})") from None
    core = slice(row0 - top, row1 - top)
    if size <= 1 or not valid.any():
        return data[core], valid[core], 0
    sieved = sieve(data, size=size, mask=valid, connectivity=4)
    changed = int(((sieved != data) & valid)[core].sum())
    return sieved[core], valid[core], changed


def _final_polygons(
    src: rasterio.DatasetReader,
    class_map: Path,
    block_size: int,
    sieve_size: int = 0,
    counts: dict[str, int] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Final polygons (pixel coordinates) and codes, one batch per block of rows.

    Polygons that touch the seam with the next block are held back and merged with that
    block's same-class polygons along the seam, so each batch holds complete regions.
    With ``sieve_size`` each block is sieved first (module docstring); ``counts`` gets
    the number of pixels the sieve changed (``sieved``).
    """
    height = src.height
    halo = min(sieve_size, SIEVE_MAX_HALO) if sieve_size > 1 else 0
    pending_g = np.empty(0, dtype=object)
    pending_c = np.empty(0, dtype=np.int64)
    for row0 in range(0, height, block_size):
        row1 = min(height, row0 + block_size)
        data, valid, changed = _read_block(src, class_map, row0, row1, halo, sieve_size)
        if counts is not None:
            counts["sieved"] = counts.get("sieved", 0) + changed
        geoms, codes = _block_polygons(data, valid, row0)
        top = shapely.bounds(geoms)[:, 1] == row0 if len(geoms) else np.zeros(0, bool)
        if row0 == 0:
            top[:] = False
        merged_g, merged_c = _merge_across_seam(
            np.concatenate([pending_g, geoms[top]]), np.concatenate([pending_c, codes[top]])
        )
        geoms = np.concatenate([geoms[~top], merged_g])
        codes = np.concatenate([codes[~top], merged_c])
        if row1 < height and len(geoms):
            bottom = shapely.bounds(geoms)[:, 3] == row1
        else:
            bottom = np.zeros(len(geoms), dtype=bool)
        pending_g, pending_c = geoms[bottom], codes[bottom]
        yield geoms[~bottom], codes[~bottom]


def vectorize(
    class_map: str | Path,
    out_path: str | Path,
    *,
    min_area: float = 0.0,
    simplify: float = 0.0,
    block_size: int = 2048,
    overwrite: bool = False,
    attributes: dict[str, str | None] | None = None,
) -> VectorResult:
    """Polygonise a class map into ``out_path`` (.gpkg, .parquet or .geojson).

    ``min_area`` (m²): smaller regions are merged into their neighbours (module
    docstring); ``simplify`` is the simplification tolerance in metres (map units for a
    map without CRS); ``block_size`` is the number of rows polygonised at a time;
    ``attributes`` (``scene_id``, ``adapter_sha``) replace those read from the map's tags.
    The file is written under a temporary name and renamed when complete.
    """
    class_map, out_path = Path(class_map), Path(out_path)
    driver = driver_for(out_path)
    check_writable([out_path], overwrite)
    check_polygon_options(min_area, simplify)
    ensure_output_dir(out_path.parent)
    with atomic_path(out_path) as tmp:
        result = write_polygons(
            class_map,
            tmp,
            layer=out_path.stem,
            driver=driver,
            min_area=min_area,
            simplify=simplify,
            block_size=block_size,
            attributes=attributes,
        )
    result.path = out_path
    return result


def write_polygons(
    class_map: Path,
    target: Path,
    *,
    layer: str,
    driver: str,
    min_area: float = 0.0,
    simplify: float = 0.0,
    block_size: int = 2048,
    attributes: dict[str, str | None] | None = None,
) -> VectorResult:
    """:func:`vectorize` into ``target``, a temporary file the caller renames (or commits
    with an output set, design §10); ``layer`` is the final layer name. A GeoPackage also
    gets a default QGIS style (colours and names from the map)."""
    check_polygon_options(min_area, simplify)
    if block_size < 1:
        raise InputError(f"block size must be at least 1 row, got {block_size}")
    start = time.perf_counter()
    with streaming_gdal_env(), open_raster(class_map) as src:
        if src.dtypes[0] not in _SHAPES_DTYPES:
            raise InputError(
                f"{class_map}: not a class map (band 1 is {src.dtypes[0]}; expected integer codes)"
            )
        tags = src.tags()
        names = names_from_tags(tags, src.tags(1))
        fields = _attributes(class_map, tags, attributes)
        height, transform, crs = src.height, src.transform, src.crs
        tolerance_px = simplify / pixel_size_m(crs, transform, height) if simplify > 0 else 0.0
        size = sieve_threshold(min_area, crs, transform, height)
        if src.dtypes[0] not in _SIEVE_DTYPES:
            size = 0  # GDAL cannot sieve it: small regions are dropped instead
        areas = _Areas(crs)
        area_by_code: dict[int, float] = {}
        counts: dict[str, int] = {}
        removed = 0
        blocks = 0
        sink = _Sink(target, layer, driver, crs)
        try:
            for geoms, codes in _final_polygons(src, class_map, block_size, size, counts):
                blocks += 1
                removed += _write_batch(
                    sink,
                    geoms,
                    codes,
                    transform,
                    names,
                    areas,
                    tolerance_px,
                    min_area,
                    area_by_code,
                    fields,
                )
                if blocks == 1:
                    pause_point("vectorize")
            sink.close()
        except BaseException:
            sink.abort()
            raise
        if driver == "GPKG":
            entries = _style_entries(src, tags, names)
            if entries:
                add_gpkg_style(target, layer, categorized_qml(entries))
    return VectorResult(
        path=target,
        driver=driver,
        features=sink.count,
        removed_small=removed,
        blocks=blocks,
        seconds=time.perf_counter() - start,
        class_area_m2=area_by_code,
        sieved_pixels=counts.get("sieved", 0),
        sieve_pixels=size,
    )


def _attributes(
    class_map: Path, tags: dict[str, str], given: dict[str, str | None] | None
) -> dict[str, str | None]:
    """Scene id and short adapter hash for every polygon: given, else the map's tags
    (gopt-geo writes them), else the file name (``X_classes.tif`` -> ``X``) and none."""
    sha = tags.get(ADAPTER_TAG)
    fields: dict[str, str | None] = {
        "scene_id": tags.get(SCENE_TAG) or class_map.stem.removesuffix("_classes"),
        "adapter_sha": sha[:SHORT_HASH] if sha else None,
    }
    fields.update(given or {})
    return fields


def _style_entries(
    src: rasterio.DatasetReader, tags: dict[str, str], names: dict[int, str]
) -> list[tuple[int, str, tuple[int, ...]]]:
    """(code, name, colour) of the map's classes: its scheme, else names + colour table."""
    scheme = scheme_from_tags(tags)
    if scheme is not None:
        return [(c.code, c.name, c.color) for c in scheme.classes]
    try:
        cmap = src.colormap(1)
    except ValueError:  # no colour table
        return []
    return [(code, name, tuple(cmap[code][:3])) for code, name in names.items() if code in cmap]


def _write_batch(
    sink: _Sink,
    geoms: np.ndarray,
    codes: np.ndarray,
    transform: Affine,
    names: dict[int, str],
    areas: _Areas,
    tolerance_px: float,
    min_area: float,
    area_by_code: dict[int, float],
    fields: dict[str, str | None] | None = None,
) -> int:
    """Measure, filter, simplify, georeference and write final polygons; returns # dropped.

    The minimum area is checked on the pixel polygons (exact pixel areas, which the sieve
    counted), the reported area is that of the written (simplified) polygon.
    """
    if min_area > 0 and len(geoms):
        keep = areas(_to_map(geoms, transform)) >= min_area
        geoms, codes = geoms[keep], codes[keep]
        dropped = int((~keep).sum())
    else:
        dropped = 0
    world = _to_map(_simplify(geoms, tolerance_px), transform) if len(geoms) else geoms
    area = areas(world) if len(world) else np.zeros(0)
    class_names = np.array([names.get(int(c), str(int(c))) for c in codes], dtype=object)
    fields = fields or {"scene_id": None, "adapter_sha": None}
    frame = gpd.GeoDataFrame(
        {  # explicit types: an empty first batch must still create the right fields
            "code": codes.astype(np.int32),
            "class_name": class_names,
            "area_m2": area.astype(np.float64),
            "scene_id": np.array([fields.get("scene_id")] * len(codes), dtype=object),
            "adapter_sha": np.array([fields.get("adapter_sha")] * len(codes), dtype=object),
        },
        geometry=gpd.GeoSeries(world, crs=areas.crs),
    )
    for code, a in zip(codes, area, strict=True):
        area_by_code[int(code)] = area_by_code.get(int(code), 0.0) + float(a)
    sink.write(frame)
    return dropped


def read_polygons(path: str | Path, layer: str | None = None) -> gpd.GeoDataFrame:
    """The polygons of a gopt-geo vector output (or any .gpkg, .parquet, .geojson).

    GeoParquet is read with pyarrow (``geopandas.read_parquet``), never through GDAL: the
    GDAL inside pyogrio's wheels has no usable Parquet driver ("libduckdb.so: cannot open
    shared object file"), and GDAL's own Parquet driver needs GDAL >= 3.8 built with Arrow.
    Everything else goes through pyogrio.
    """
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        return gpd.read_parquet(path)
    return gpd.read_file(path, layer=layer, engine="pyogrio")
